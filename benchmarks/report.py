#!/usr/bin/env python3
"""The review page at 1,000 cells: its size, its load time in a browser, and what it adds to classify.

    python benchmarks/report.py [--data ../shared/bloodcells] [--run RUN_DIR] [--n 1000] [--rounds 7]

1. Reuses ``--run`` (a run folder with ``export/``) or trains a small model with the default
   network (2 epochs on 20 images per class, 112 px) and converts it to int8: the page's cost does
   not depend on the model's accuracy, and the default network keeps inference time realistic.
2. Takes ``--n`` images (equal shares of each class folder of ``--data``, linked, not copied).
3. Classifies them ``--rounds`` times without and with ``--report``, alternating within each
   round so machine drift hits both alike, in this process through the library call the command
   makes (``edgecell.commands.classify.run``; model loading included). The ratio of the medians is
   the cost of the page; the target is at most 1.20. The ratio of the fastest runs is given too,
   and the ratio of CPU time with ``--threads 1`` (everything in this process, so its CPU time is
   the whole cost): on a shared machine wall time moves by more than the page costs.
4. Opens the page in headless Chromium (the system's, driven by Playwright) ``--rounds`` times and
   takes the median (and the fastest) of the navigation's ``loadEventEnd`` (target: median at most 2 s) and the page's size
   (target: at most 15 MB). A screenshot goes to benchmarks/work/report/page.png.

Writes benchmarks/results/report.json and benchmarks/results/report.md. Figures are from the
machine this runs on (see ``machine``), not from a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_DATA = ROOT.parent / "shared" / "bloodcells"
WORK = HERE / "work" / "report"
RESULTS = HERE / "results"
MAX_PAGE_MB = 15.0
MAX_LOAD_S = 2.0
MAX_RATIO = 1.20


def machine() -> dict:
    import platform

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}


def small_model(data: Path) -> Path:
    """Train and convert a small model (the default network, 2 epochs on 20 images per class)."""
    run = WORK / "run"
    if (run / "export" / "model_int8.tflite").is_file():
        return run
    sl = WORK / "train-slice"
    link_images(data, sl, 20 * len(class_folders(data)))
    cmd = [sys.executable, "-m", "edgecell"]
    subprocess.run([*cmd, "train", "--data", str(sl), "--out", str(run), "--epochs", "2", "--patience", "2"], check=True)
    subprocess.run([*cmd, "convert", str(run), "--int8", "--max-drop", "100"], check=True)
    return run


def class_folders(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))


def link_images(data: Path, dst: Path, n: int) -> Path:
    """``n`` images of ``data`` in equal shares per class folder, as symbolic links under ``dst/<class>/``."""
    folders = class_folders(data)
    per = -(-n // len(folders))
    made = 0
    for f in folders:
        (dst / f.name).mkdir(parents=True, exist_ok=True)
        for img in sorted(f.iterdir())[:per]:
            if made == n:
                break
            link = dst / f.name / img.name
            if not link.exists():
                link.symlink_to(img.resolve())
            made += 1
    return dst


def classify_seconds(export: Path, cells: Path, report: Path | None, threads: int | None = None, cpu: bool = False) -> float:
    """Wall-clock seconds of one classify run (or, with ``cpu``, this process's CPU seconds: all its threads)."""
    from edgecell.commands.classify import ClassifyOptions, run

    opts = ClassifyOptions(model_path=str(export), paths=(str(cells),), report_out=str(report) if report else None, threads=threads)
    clock = time.process_time if cpu else time.perf_counter
    t0 = clock()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(opts)
    dt = clock() - t0
    assert summary.n_classified and not summary.failed
    return dt


def browser_load(page_path: Path, rounds: int) -> dict:
    from playwright.sync_api import sync_playwright

    from tests._browser import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    if exe is None:
        return {"error": "no Chromium found (apt-get install chromium)"}
    loads, dcl, errors = [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            for r in range(rounds):
                page = b.new_page(viewport={"width": 1280, "height": 900})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(page_path.as_uri(), wait_until="load", timeout=60_000)
                nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
                nav = json.loads(nav)
                loads.append(nav["loadEventEnd"] / 1000.0)
                dcl.append(nav["domContentLoadedEventEnd"] / 1000.0)
                n_cells = page.locator("li.cell").count()
                if r == rounds - 1:
                    page.screenshot(path=str(WORK / "page.png"))
                page.close()
        finally:
            b.close()
    return {
        "load_s_median": statistics.median(loads),
        "load_s_min": min(loads),
        "load_s": loads,
        "dom_content_loaded_s_median": statistics.median(dcl),
        "cells_shown": n_cells,
        "console_errors": errors,
        "chromium": exe,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--run", default=None, help="A run folder with export/ (default: train a small one under benchmarks/work/report)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data}: no such folder (the real data set; give --data)", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else small_model(data)
    export = run / "export"
    cells = link_images(data, WORK / f"cells-{args.n}", args.n)
    page = WORK / "review.html"

    classify_seconds(export, cells, None)  # warm the file cache and the imports
    without, with_report = [], []
    for _ in range(args.rounds):
        without.append(classify_seconds(export, cells, None))
        with_report.append(classify_seconds(export, cells, page))
    m0, m1 = statistics.median(without), statistics.median(with_report)
    # CPU time is far less disturbed by other people's jobs than wall time. It is measurable in
    # this process only when everything runs here: --threads 1 (decoding threads + the interpreter).
    cpu0, cpu1 = [], []
    for _ in range(args.rounds):
        cpu0.append(classify_seconds(export, cells, None, threads=1, cpu=True))
        cpu1.append(classify_seconds(export, cells, page, threads=1, cpu=True))
    c0, c1 = statistics.median(cpu0), statistics.median(cpu1)
    size = page.stat().st_size
    browser = browser_load(page, args.rounds)

    from firmware_host.report import THUMB_MAX_PX, THUMB_QUALITY

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "data": str(data),
        "model": str(export),
        "n_images": args.n,
        "rounds": args.rounds,
        "thumbnail": {"max_px": THUMB_MAX_PX, "jpeg_quality": THUMB_QUALITY, "source": "the model's input pixels, encoded where they were decoded"},
        "classify_s": {"without_report": without, "with_report": with_report, "median_without": m0, "median_with": m1},
        "report_cost_ratio": m1 / m0,
        "report_cost_ratio_fastest": min(with_report) / min(without),
        "classify_cpu_s_threads1": {"without_report": cpu0, "with_report": cpu1, "median_without": c0, "median_with": c1},
        "report_cost_ratio_cpu": c1 / c0,
        "page_bytes": size,
        "page_mb": size / 1e6,
        "bytes_per_cell": size / args.n,
        "browser": browser,
        "targets": {"page_mb_max": MAX_PAGE_MB, "load_s_max": MAX_LOAD_S, "ratio_max": MAX_RATIO},
    }
    ok = {
        "page size": result["page_mb"] <= MAX_PAGE_MB,
        "load time": "load_s_median" in browser and browser["load_s_median"] <= MAX_LOAD_S,
        "classify cost": result["report_cost_ratio"] <= MAX_RATIO,
    }
    result["met"] = ok
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    load = f"{browser['load_s_median']:.2f} s (fastest {browser['load_s_min']:.2f} s)" if "load_s_median" in browser else browser.get("error", "?")
    md = [
        "# Review page benchmark (`python benchmarks/report.py`)",
        "",
        f"{result['date']}, {result['machine']['cpu']} ({result['machine']['cores']} cores), {args.n} images from `{data}`, "
        f"model `{export}`, median of {args.rounds} rounds.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| page size, {args.n} cells | {result['page_mb']:.2f} MB ({result['bytes_per_cell'] / 1000:.1f} kB per cell) | <= {MAX_PAGE_MB:.0f} MB | {'yes' if ok['page size'] else 'no'} |",
        f"| load in headless Chromium (loadEventEnd) | {load} | <= {MAX_LOAD_S:.0f} s | {'yes' if ok['load time'] else 'no'} |",
        f"| classify without --report | {m0:.2f} s (fastest {min(without):.2f} s) | | |",
        f"| classify with --report | {m1:.2f} s (fastest {min(with_report):.2f} s) | | |",
        f"| cost of the page (ratio of medians; of fastest) | {result['report_cost_ratio']:.3f}; {result['report_cost_ratio_fastest']:.3f} | <= {MAX_RATIO:.2f} | {'yes' if ok['classify cost'] else 'no'} |",
        f"| CPU time, classify --threads 1, without / with --report | {c0:.2f} s / {c1:.2f} s | | |",
        f"| cost of the page in CPU time (ratio of medians) | {result['report_cost_ratio_cpu']:.3f} | <= {MAX_RATIO:.2f} | {'yes' if result['report_cost_ratio_cpu'] <= MAX_RATIO else 'no'} |",
        "",
        f"Thumbnails: JPEG (quality {THUMB_QUALITY}) of the model's input as it is (at most {THUMB_MAX_PX} px), made where it was decoded.",
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. x86 figures from a shared machine; not Raspberry Pi figures.",
        "",
    ]
    (RESULTS / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if all(ok.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
