"""Soak: ``edgecell classify`` on 20,000 images in one process; resident memory must not creep.

Part of ``make test`` (about 45 s on 2 shared cores). Alone::

    .venv/bin/pytest tests/test_soak.py -s  # -s prints the RSS figures

The real command line, as a user runs it on the Pi::

    python -m edgecell classify --model EXPORT FOLDER --csv out.csv --threads 1

on a folder of 20,000 small JPEGs in class folders (a few distinct generated images per class,
copied many times, with 20 unreadable files among them so the error path is soaked too).
While the child runs, the test polls its ``VmRSS`` (/proc/PID/status) and counts the rows already
streamed into the CSV's temporary file, which locates each sample in the run. From the sample
at 1,000 rows (caches, thread pool and interpreter arenas warm) to the end, RSS may not grow by
more than 10 percent. Before classify streamed its results, it kept every result in memory and
grew by far more than that.
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests._tflite_fixtures import CLASSES, build_models, distinct_copy, save_jpeg

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 20_000
N_BAD = 20  # every 1,000th file is unreadable
WARM = 1_000
MAX_GROWTH = 0.10
DISTINCT_PER_CLASS = 16
POLL_S = 0.05


def _image_folder(root: Path) -> Path:
    """N_IMAGES files in class folders: DISTINCT_PER_CLASS generated JPEGs per class, copied."""
    rng = np.random.default_rng(0)
    sources = {}
    for c in CLASSES:
        sources[c] = []
        for k in range(DISTINCT_PER_CLASS):
            img = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 30, (96, 96, 3)), 0, 255).astype(np.uint8)
            sources[c].append(save_jpeg(root / "src" / c / f"{k:02d}.jpg", img))
    data = root / "data"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
    truncated = sources[CLASSES[0]][0].read_bytes()[:300]
    for i in range(N_IMAGES):
        c = CLASSES[i % len(CLASSES)]
        dst = data / c / f"cell_{i:05d}.jpg"
        if i % (N_IMAGES // N_BAD) == N_IMAGES // N_BAD - 1:
            dst.write_bytes(truncated + i.to_bytes(4, "big") if i % 2 else b"")  # each broken file its own bytes
            continue
        src = sources[c][(i // len(CLASSES)) % DISTINCT_PER_CLASS]
        distinct_copy(src, dst, i)  # the same pixels in other bytes: copies and links are classified once
    return data


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:  # the process has just exited
        return None
    return None


def test_classify_cli_20000_images_memory_is_flat(tmp_path_factory, tmp_path):
    models = build_models(tmp_path_factory)
    data = _image_folder(tmp_path)
    out = tmp_path / "out" / "results.csv"
    out.parent.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("EDGECELL_INTERPRETER", None)
    cmd = [sys.executable, "-m", "edgecell", "classify", "--model", str(models.export), str(data), "--csv", str(out), "--threads", "1"]

    samples: list[tuple[int, int, float]] = []  # (CSV lines written so far, incl. header; VmRSS KiB; seconds)
    lines, tmp_csv = 0, None
    t0 = time.monotonic()
    with open(tmp_path / "stdout.txt", "wb") as so, open(tmp_path / "stderr.txt", "wb") as se:
        child = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, env=env)
        try:
            while child.poll() is None:
                if tmp_csv is None:
                    found = glob.glob(str(out.parent / ".results.csv.*.tmp.csv"))
                    tmp_csv = open(found[0], "rb") if found else None  # noqa: SIM115 - closed in the finally below
                if tmp_csv is not None:
                    lines += tmp_csv.read().count(b"\n")
                rss = _rss_kib(child.pid)
                if rss is not None and child.poll() is None:
                    samples.append((lines, rss, time.monotonic() - t0))
                if time.monotonic() - t0 > 1800:
                    raise AssertionError(f"classify still running after 30 minutes; {lines} CSV lines written")
                time.sleep(POLL_S)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            if tmp_csv is not None:
                tmp_csv.close()
    runtime = time.monotonic() - t0
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")

    # the run itself: every image classified or reported, the CSV complete and renamed into place
    assert child.returncode == 1, stderr  # the unreadable files make the exit code 1
    assert "Traceback" not in stderr
    assert f"{N_BAD} of {N_IMAGES} inputs could not be classified" in stderr, stderr[-2000:]
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_IMAGES
    assert sum(bool(r["error"]) for r in rows) == N_BAD
    assert {r["true_label"] for r in rows if not r["error"]} == set(CLASSES)
    assert glob.glob(str(out.parent / ".*")) == []

    # results were streamed: the temporary CSV filled up while the images were being classified
    warm = [i for i, (n, _, _) in enumerate(samples) if n > WARM]
    assert warm, f"fewer than {WARM} CSV rows were written before classify finished: results are not streamed ({len(samples)} samples)"
    assert samples[-1][0] >= 0.9 * N_IMAGES, f"last sample at {samples[-1][0]} CSV lines: the end of the run was not sampled"
    after = samples[warm[0] :]
    assert len(after) >= 20, f"only {len(after)} RSS samples after the first {WARM} images"

    base = after[0][1]
    peak = max(kib for _, kib, _ in after)
    growth = (peak - base) / base
    per_k = {}
    for n, kib, _ in samples:
        per_k.setdefault(n // 1000, kib)
    report = (
        f"soak: edgecell classify, {N_IMAGES} images ({N_BAD} unreadable), --threads 1, {runtime:.0f} s; "
        f"RSS after {WARM}: {base / 1024:.1f} MiB, peak after: {peak / 1024:.1f} MiB, "
        f"last: {samples[-1][1] / 1024:.1f} MiB, growth {100 * growth:+.1f}% ({len(samples)} samples)"
    )
    print(report)
    print("soak: RSS MiB at each 1,000 CSV rows:", " ".join(f"{kib / 1024:.1f}" for _, kib in sorted(per_k.items())))
    assert growth <= MAX_GROWTH, report
