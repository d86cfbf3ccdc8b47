#!/usr/bin/env python3
"""Cross-lab benchmark: does edgecell read the cell, not the lab? (issues #12 and #13)

    python benchmarks/crosslab.py [--shared ../shared] [--seeds 42] [--reuse]

1. The default model: ``train --data bloodcells --data more_cells`` (timed, wall clock), then
   ``convert --int8``; the same-lab test split per source and cell type (Keras and int8), int8
   file size and latency (``edgecell bench``, 1 thread), and the runtime's preprocessing cost per
   400x400 JPEG on 1 thread.
2. Leave one source out, each trained with the same defaults on everything else and tested on
   what was left out (``evaluate --split all``):
   - ``no-bccd``: the third lab (``more_cells/bccd``) held out whole;
   - ``no-barcelona-neutrophils``: Barcelona's and BCCD's segmented neutrophils held out, so the
     model has seen neutrophils from Munich only; tested on Barcelona's.
   - ``no-barcelona-lymphocytes-eosinophils``: the reverse of ``no-bccd`` for the types taught as
     ``other``: Barcelona's lymphocytes and eosinophils held out, learnt from BCCD's few alone; tested
     on Barcelona's (the share caught as ``other``).
   With ``--seeds 42,7`` each is trained once per seed and the spread is reported.
3. Never-seen things (issue #13): the default model's int8 export on drawn blank backgrounds,
   red-cell-only crops and non-blood patterns, and on windows of BCCD fields of view that touch
   no white cell (:mod:`benchmarks.never_seen` makes them); the share labelled ``other``.
4. Every bar of the issues is set beside its figure in ``benchmarks/results/crosslab.json`` and
   ``crosslab.md``.

With ``--reuse``, a finished run trained before the never-seen score or the nucleus check existed gets
them fitted on its own training and validation splits (:func:`edgecell.metrics.fit_other_threshold`,
:func:`edgecell.metrics.fit_nucleus_check`, the post-fit step of ``train``; no weights change) and is
converted again, so the figures need no new training.

Figures are from the machine this runs on (an x86 machine, not a Raspberry Pi).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_SHARED = ROOT.parent / "shared"
WORK = HERE / "work" / "crosslab"
RESULTS = HERE / "results"

# leave-one-source-out experiments: name -> (train --exclude patterns, evaluated folder under shared/, types the bar reads)
LOSO = {
    "no-bccd": (["bccd"], "more_cells/bccd", None),
    "no-barcelona-neutrophils": (["barcelona/seg_neutrophil", "bccd/seg_neutrophil"], "more_cells/barcelona", ["seg_neutrophil"]),
    # the reverse of no-bccd for issue #13's unknown types: lymphocytes and eosinophils learnt from BCCD's only
    "no-barcelona-lymphocytes-eosinophils": (["barcelona/lymphocyte", "barcelona/eosinophil"], "more_cells/barcelona", ["lymphocyte", "eosinophil"]),
}
BLASTS = {"myeloblast"}


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def edgecell(*args) -> None:
    sh([sys.executable, "-m", "edgecell", *args], stdout=subprocess.DEVNULL)


def train(out: Path, data: list[Path], seed: int, exclude: list[str] = (), reuse: bool = False) -> float | None:
    """Train (unless reusing a finished run); the wall-clock seconds of the whole command."""
    if reuse and (out / "metadata.json").is_file():
        return None
    args = ["train", *(a for d in data for a in ("--data", d)), *(a for e in exclude for a in ("--exclude", e)), "--seed", seed, "--out", out]
    t0 = time.perf_counter()
    edgecell(*args)
    return time.perf_counter() - t0


def ensure_other_score(run: Path) -> bool:
    """Fit what a finished run trained before them lacks of ``train``'s post-fit step: the never-seen score, the
    nucleus check and the lab check's score test (each fitted as ``train`` fits it, nothing else changed); True if
    it fitted anything."""
    from rich.console import Console

    from edgecell.evaluate import load_split, resolve
    from edgecell.metrics import fit_nucleus_check, fit_other_threshold
    from edgecell.runfolder import RunFolder

    folder = RunFolder.read(run)
    score = folder.extra.get("other_score")
    if "other" not in folder.classes or (score and "nucleus_max_offset" in score):
        return ensure_lab_check(run)
    print(f"fitting the {'nucleus check' if score else 'never-seen score'} of {run} (post-fit step only)", flush=True)
    quiet = Console(stderr=True, quiet=True)
    tr = load_split(resolve(run), None, "train", quiet)
    if score:
        folder.extra["other_score"] = {**score, "nucleus_max_offset": fit_nucleus_check(tr.offsets)}
    else:
        va = load_split(resolve(run), None, "val", quiet)
        folder.extra["other_score"] = fit_other_threshold(folder.load_keras(), tr.x, tr.y, va.x, va.y, folder.classes, offsets_train=tr.offsets)
    folder.write()
    ensure_lab_check(run)
    return True


def ensure_lab_check(run: Path) -> bool:
    """Fit the lab check's never-seen-score test on a finished run trained before it (as ``train.calibrate`` fits
    it, on the validation split with its sources; nothing else changed); True if it fitted it."""
    from rich.console import Console

    from edgecell.evaluate import load_split, resolve
    from edgecell.metrics import apply_temperature, fit_lab_check
    from edgecell.model import predict_with_features
    from edgecell.runfolder import RunFolder
    from firmware_host.otherscore import OtherScore

    folder = RunFolder.read(run)
    score = OtherScore.from_dict(folder.extra.get("other_score") or {})
    if score is None or "max_median_score" in (folder.extra.get("lab_check") or {}):
        return False
    print(f"fitting the lab check of {run} (post-fit step only)", flush=True)
    va = load_split(resolve(run), None, "val", Console(stderr=True, quiet=True))
    probs, feats = predict_with_features(folder.load_keras(), va.x)
    folder.extra["lab_check"] = fit_lab_check(apply_temperature(probs, folder.temperature), score.scores(feats), va.sources)
    folder.write()
    return True


NEVER_SEEN_N = 300
"""Images per never-seen set (each drawn kind, and BCCD field windows)."""


def never_seen_figures(model: Path, run: Path, shared: Path, size: int, n: int = NEVER_SEEN_N) -> dict:
    """Share of each never-seen set labelled ``other`` by ``model`` (the Pi's Classifier, int8); the damaged
    cells are made from the five types' cells of ``run``'s test split."""
    from benchmarks.never_seen import DAMAGE, damaged_cells, drawn_cells, field_window_cells
    from edgecell import data as data_mod
    from firmware_host.runtime import Classifier

    clf = Classifier.load(model, threads=1)
    sets = {f"drawn {k}": drawn_cells(k, n, size) for k in ("background", "red_cells", "pattern")}
    sets["BCCD field windows (no white cell)"] = field_window_cells(shared / "more_cells" / "bccd_fields", n, size)
    roots = data_mod.run_sources(json.loads((run / "metadata.json").read_text())["dataset"])
    rows = [r for r in data_mod.read_manifest(run / "split.csv") if r.split == "test" and r.label != "other"]
    files = [Path(roots[r.source]) / r.file for r in rows]
    for kind in DAMAGE:
        sets[f"{kind} cells (test split, five types)"] = damaged_cells(files, kind, n, size)
    per = {
        k: {"n": len(x), "other": sum(clf.classify_array(k, img, nucleus_offset=o).label == "other" for img, o in zip(x, offsets)) / len(x)}
        for k, (x, offsets) in sets.items()
    }
    total = sum(v["n"] for v in per.values())
    return {"model": str(model), "other_threshold": clf.other_threshold, "sets": per, "other": sum(v["other"] * v["n"] for v in per.values()) / total}


def evaluate(target: Path, js: Path, *extra) -> dict:
    edgecell("evaluate", target, "--json", js, "--out", js.with_suffix(""), *extra)
    return json.loads(js.read_text())


def preprocess_ms(folder: Path, size: int, n: int = 200, rounds: int = 7) -> dict:
    """Median over rounds of the mean time to preprocess one 400x400 JPEG (bytes in memory), 1 thread,
    interleaved with version 1's preprocessing (the whole image resized to 112 px) as a reference."""
    import io

    import numpy as np
    from PIL import Image

    from firmware_host.preprocess import RESAMPLE, decode, read_bytes

    def v1(b: bytes, side: int = 112):
        im = Image.open(io.BytesIO(b))
        im.draft("RGB", (side, side))
        return np.asarray(im.convert("RGB").resize((side, side), RESAMPLE))

    blobs = [read_bytes(f) for f in sorted(folder.glob("*.jpg"))[:n]]
    per: dict[str, list[float]] = {"v2": [], "v1": []}
    for _ in range(rounds):
        for name, fn in (("v2", lambda b: decode(b, size)), ("v1", v1)):
            t0 = time.perf_counter()
            for b in blobs:
                fn(b)
            per[name].append((time.perf_counter() - t0) * 1000 / len(blobs))
    return {"ms": statistics.median(per["v2"]), "v1_ms": statistics.median(per["v1"]), "load_average": os.getloadavg()[0]}


def preprocess_figures(shared: Path, size: int) -> dict:
    pp = preprocess_ms(shared / "bloodcells" / "myeloblast", size)
    return {"preprocess_ms_400px_jpeg": pp["ms"], "preprocess_v1_ms_400px_jpeg": pp["v1_ms"], "preprocess_load_average": pp["load_average"]}


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def loso_figures(m: dict, types: list[str] | None) -> dict:
    """The figures the bars read, from an ``evaluate --split all`` JSON of the held-out source."""
    by_type = {k.split("/", 1)[1]: v for k, v in m["sources"]["by_type"].items()}
    if types:
        by_type = {k: v for k, v in by_type.items() if k in types}
    n = sum(v["n"] for v in by_type.values())
    non_blast = {k: v for k, v in by_type.items() if k not in BLASTS}
    nb_n = sum(v["n"] for v in non_blast.values())
    records = [json.loads(line) for line in Path(m["outputs"]["predictions"]).read_text().splitlines()]
    return {
        "wrong_unflagged_cells": {
            r["file"]: {"type": r["type"], "label": r["label"]} for r in records if r["type"] in by_type and not r["right"] and not r["flag"]
        },
        "per_type": {k: {f: v[f] for f in ("n", "accuracy", "flagged", "wrong_unflagged", "called")} for k, v in by_type.items()},
        "accuracy": sum(v["accuracy"] * v["n"] for v in by_type.values()) / n,
        "wrong_unflagged": sum(v["wrong_unflagged"] * v["n"] for v in by_type.values()) / n,
        "non_blast_called_myeloblast": sum(v["called"].get("myeloblast", 0) for v in non_blast.values()) / max(1, nb_n),
    }


def bars(r: dict) -> list[dict]:
    out = []

    def bar(issue, what, value, target, ok, fmt="{:.1%}"):
        out.append({"issue": issue, "bar": what, "measured": fmt.format(value) if value is not None else "not measured", "target": target, "met": ok})

    nb = r["loso"].get("no-bccd")
    if nb:
        pt = nb["mean"]["per_type"]
        for typ, goal in (("seg_neutrophil", 0.80), ("monocyte", 0.60)):
            v = pt.get(typ, {}).get("accuracy")
            bar("#12", f"held-out BCCD {typ} right (mean of seeds)", v, f">= {goal:.0%}", v is not None and v >= goal)
        v = nb["mean"]["wrong_unflagged"]
        bar("#12", "held-out BCCD wrong and not flagged", v, "<= 3%", v <= 0.03)
        v = nb["mean"]["non_blast_called_myeloblast"]
        bar("#12", "held-out BCCD non-blast cells called myeloblast", v, "<= 5%", v <= 0.05)
        for typ in ("lymphocyte", "eosinophil"):
            v = pt.get(typ, {}).get("accuracy")
            bar("#13", f"held-out BCCD {typ} caught as other", v, ">= 90%", v is not None and v >= 0.90)
    bn = r["loso"].get("no-barcelona-neutrophils")
    if bn:
        v = bn["mean"]["accuracy"]
        bar("#12", "held-out Barcelona neutrophils right", v, ">= 80%", v >= 0.80)
        v = bn["mean"]["wrong_unflagged"]
        bar("#12", "held-out Barcelona neutrophils wrong and not flagged", v, "<= 3%", v <= 0.03)
    bo = r["loso"].get("no-barcelona-lymphocytes-eosinophils")
    if bo:
        for typ in ("lymphocyte", "eosinophil"):
            v = bo["mean"]["per_type"].get(typ, {}).get("accuracy")
            bar("#13", f"held-out Barcelona {typ} (learnt from BCCD's) caught as other", v, ">= 90%", v is not None and v >= 0.90)
    d = r.get("default")
    if d:
        v = d["five_macro_f1"]
        bar("#12", "default model, same-lab test split, macro-F1 over the five", v, ">= 0.985", v >= 0.985, "{:.4f}")
        v = d["int8_drop_points"]
        bar("#12", "int8 accuracy drop vs Keras, points", v, "<= 0.5", v <= 0.5, "{:+.2f}")
        v = d["int8_kb"]
        bar("#12", "int8 file, KB", v, "<= 300", v <= 300, "{:.0f}")
        v = d["int8_ms"]
        bar("#12", "int8 inference, 1 thread, ms per image", v, "<= 0.5", v <= 0.5, "{:.3f}")
        v = d["preprocess_ms_400px_jpeg"]
        bar("#12", "runtime preprocessing per 400x400 JPEG, 1 thread, ms", v, "<= 2", v <= 2, "{:.2f}")
        v = d.get("train_wall_minutes")
        bar("#12", "training with defaults on all sources, minutes", v, "<= 20", v is not None and v <= 20, "{:.1f}")
        v = d["other_share_of_five"]
        bar("#13", "cells of the five sent to other, same-lab test split", v, "<= 2%", v <= 0.02)
        v = d["other_caught_same_source"]
        bar("#13", "other types of training sources caught as other (held-out images)", v, ">= 97%", v >= 0.97)
        ns = d.get("never_seen")
        if ns:
            v = ns["other"]
            bar(
                "#13",
                "never-seen things caught as other (int8; drawn background, red cells, non-blood; BCCD windows; cut and smudged cells)",
                v,
                ">= 90%",
                v >= 0.90,
            )
    return out


def default_figures(run: Path, shared: Path, reuse: bool) -> dict:
    from firmware_host.metadata import read_metadata

    fitted = ensure_other_score(run)
    ev_keras = evaluate(run, WORK / "default_keras.json")
    int8 = run / "export" / "model_int8.tflite"
    if fitted or not (reuse and int8.is_file() and read_metadata(int8).other_score):
        edgecell("convert", run, "--int8", "--max-drop", "100", "--json", WORK / "convert.json")
    ev_int8 = evaluate(int8, WORK / "default_int8.json")
    edgecell("bench", int8, "--threads", "1", "--runs", "500", "--json", WORK / "bench.json")
    bench = json.loads((WORK / "bench.json").read_text())
    classes = ev_keras["classes"]
    five = [c for c in classes if c != "other"]
    cm = ev_keras["confusion_matrix"]
    idx = {c: i for i, c in enumerate(classes)}
    five_rows = [cm[idx[c]] for c in five]
    to_other = sum(r[idx["other"]] for r in five_rows) if "other" in idx else 0
    n_five = sum(sum(r) for r in five_rows)
    other_row = cm[idx["other"]] if "other" in idx else None
    int8_ms = next(row["latency_ms"]["p50"] for row in bench["results"] if row["threads"] == 1)
    size = json.loads((run / "metadata.json").read_text())["input_size"]
    other = ev_keras.get("other") or {}  # the runtime's decision: argmax other OR the never-seen score
    return {
        "keras": {k: ev_keras[k] for k in ("accuracy", "macro_f1", "n")},
        "int8": {k: ev_int8[k] for k in ("accuracy", "macro_f1", "n")},
        "by_source": ev_keras["sources"]["by_source"],
        "by_type": ev_keras["sources"]["by_type"],
        "five_macro_f1": statistics.fmean(ev_keras["per_class"][c]["f1"] for c in five),
        "int8_drop_points": (ev_keras["accuracy"] - ev_int8["accuracy"]) * 100,
        "int8_kb": int8.stat().st_size / 1024,
        "int8_ms": int8_ms,
        "bench": bench,
        **preprocess_figures(shared, size),
        "other_share_of_five": other["five_sent_to_other"] if other else to_other / max(1, n_five),
        "other_caught_same_source": other["other_caught"] if other else ((other_row[idx["other"]] / max(1, sum(other_row))) if other_row else 0.0),
        "other_threshold": other.get("threshold"),
        "never_seen": never_seen_figures(int8, run, shared, size),
    }


def markdown(r: dict) -> str:
    lines = [f"# Cross-lab benchmark ({r['date']})", "", f"Machine: {r['machine']}. Seeds: {', '.join(map(str, r['seeds']))}.", ""]
    d = r.get("default")
    if d:
        lines += [
            "## Default model (all sources), same-lab test split",
            "",
            f"Keras accuracy {d['keras']['accuracy']:.2%}, macro-F1 {d['keras']['macro_f1']:.4f} over the six classes (`other` included; "
            f"over the five: {d['five_macro_f1']:.4f}, the bar's, the mean of their F1 in the six-class matrix, so a five-type cell sent to `other` "
            f"and an `other` cell named one of the five both count against it; n={d['keras']['n']}); "
            f"int8 accuracy {d['int8']['accuracy']:.2%}; int8 file {d['int8_kb']:.0f} KB; preprocessing {d['preprocess_ms_400px_jpeg']:.2f} ms per 400x400 JPEG "
            f"(version 1, the whole image to 112 px: {d.get('preprocess_v1_ms_400px_jpeg', float('nan')):.2f} ms, measured alongside; load average {d.get('preprocess_load_average', float('nan')):.1f}).",
            "",
            "| source / type | n | right | flagged | wrong, no flag |",
            "|---|---|---|---|---|",
        ]
        for k, v in d["by_type"].items():
            lines.append(f"| {k} | {v['n']} | {v['accuracy']:.1%} | {v['flagged']:.1%} | {v['wrong_unflagged']:.1%} |")
        lines.append("")
        ns = d.get("never_seen")
        if ns:
            lines += [
                f"## Never-seen things, default model, int8 (never-seen score threshold {ns['other_threshold']})",
                "",
                "| set | n | labelled other |",
                "|---|---|---|",
            ]
            lines += [f"| {k} | {v['n']} | {v['other']:.1%} |" for k, v in ns["sets"].items()]
            lines += [f"| all | {sum(v['n'] for v in ns['sets'].values())} | {ns['other']:.1%} |", ""]
    for name, res in r["loso"].items():
        lines += [f"## Leave one source out: {name} (trained without {', '.join(LOSO[name][0])})", ""]
        lines += ["| type | n | right (mean; per seed) | flagged (mean) | wrong, no flag (mean) | called (first seed) |", "|---|---|---|---|---|---|"]
        for typ, v in res["mean"]["per_type"].items():
            per_seed = "; ".join(f"{s['per_type'][typ]['accuracy']:.1%}" for s in res["seeds"].values())
            called = ", ".join(f"{c} {n}" for c, n in sorted(next(iter(res["seeds"].values()))["per_type"][typ]["called"].items(), key=lambda kv: -kv[1]))
            lines.append(f"| {typ} | {v['n']} | {v['accuracy']:.1%} ({per_seed}) | {v['flagged']:.1%} | {v['wrong_unflagged']:.1%} | {called} |")
        every = res["mean"].get("wrong_unflagged_every_seed")
        if every is not None:
            pairs = Counter(f"{c['type']} called {c['label']}" for c in every.values())
            said = ", ".join(f"{k} {n}" for k, n in pairs.most_common()) or "none"
            lines += [
                "",
                f"Wrong without a flag in every seed: {len(every)} cell{'' if len(every) == 1 else 's'} ({said}); their files are in crosslab.json (`wrong_unflagged_every_seed`).",
            ]
        lines.append("")
    lines += ["## Bars", "", "| issue | bar | measured | target | met |", "|---|---|---|---|---|"]
    for b in r["bars"]:
        lines.append(f"| {b['issue']} | {b['bar']} | {b['measured']} | {b['target']} | {'yes' if b['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def mean_figures(per_seed: dict) -> dict:
    first = next(iter(per_seed.values()))
    out = {k: statistics.fmean(s[k] for s in per_seed.values()) for k in ("accuracy", "wrong_unflagged", "non_blast_called_myeloblast")}
    # the cells every seed got wrong without a flag: what to show a haematologist first (a wrong label, or a blind spot)
    every = set.intersection(*(set(s["wrong_unflagged_cells"]) for s in per_seed.values()))
    out["wrong_unflagged_every_seed"] = {f: first["wrong_unflagged_cells"][f] for f in sorted(every)}
    out["per_type"] = {
        typ: {
            "n": first["per_type"][typ]["n"],
            **{f: statistics.fmean(s["per_type"][typ][f] for s in per_seed.values()) for f in ("accuracy", "flagged", "wrong_unflagged")},
        }
        for typ in first["per_type"]
    }
    return out


def main(argv: list[str] | None = None) -> int:
    global WORK
    from benchmarks._results import common_options, publish, shared_data
    from benchmarks.run import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(ap, WORK, RESULTS, DEFAULT_SHARED, "reuse finished run folders in --work instead of training again")
    ap.add_argument("--seeds", default="42", help="comma-separated training seeds for the leave-one-source-out runs")
    ap.add_argument("--only", choices=["default", "preprocess", *LOSO], action="append", help="run only these parts (repeatable)")
    args = ap.parse_args(argv)
    WORK = Path(args.work)
    WORK.mkdir(parents=True, exist_ok=True)
    shared, data = Path(args.shared), shared_data(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = args.only or ["default", *LOSO]
    results = Path(args.results)
    previous = json.loads((results / "crosslab.json").read_text()) if (results / "crosslab.json").is_file() else {}
    r = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "seeds": seeds, "loso": dict(previous.get("loso", {}))}
    if previous.get("default") and "default" not in parts:
        r["default"] = previous["default"]
    t_start = time.perf_counter()
    if "default" in parts:
        run = WORK / "run-all"
        secs = train(run, data, seeds[0], reuse=args.reuse)
        r["default"] = default_figures(run, shared, args.reuse)
        if secs is not None:
            r["default"]["train_wall_minutes"] = secs / 60
        elif previous.get("default", {}).get("train_wall_minutes") is not None:  # the reused run's own training, measured when it was trained
            r["default"]["train_wall_minutes"] = previous["default"]["train_wall_minutes"]
    if "preprocess" in parts and r.get("default"):
        size = json.loads((WORK / "run-all" / "metadata.json").read_text())["input_size"] if (WORK / "run-all" / "metadata.json").is_file() else 64
        r["default"].update(preprocess_figures(shared, size))
    for name in (p for p in parts if p in LOSO):
        exclude, folder, types = LOSO[name]
        per_seed = {}
        for seed in seeds:
            run = WORK / f"run-{name}-{seed}"
            train(run, data, seed, exclude, reuse=args.reuse)
            ensure_other_score(run)
            m = evaluate(run, WORK / f"{name}-{seed}.json", "--data", shared / folder, "--split", "all")
            per_seed[str(seed)] = loso_figures(m, types)
        mean = mean_figures(per_seed)
        for figures in per_seed.values():  # each seed's own list stays in its evaluation's records (--work)
            del figures["wrong_unflagged_cells"]
        r["loso"][name] = {"seeds": per_seed, "mean": mean}
    r["seconds"] = time.perf_counter() - t_start
    r["bars"] = bars(r)
    publish(results, "crosslab", r, markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
