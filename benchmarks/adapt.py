#!/usr/bin/env python3
"""Adapt benchmark: a model that has never seen a lab, fitted to it from a few dozen labelled cells (issue #19).

    python benchmarks/adapt.py [--shared ../shared] [--picks 1,2,3] [--reuse] [--only bccd|barcelona]
                               [--scale N] [--name NAME] [-- ADAPT OPTIONS]

``-- --method fine-tune`` (or ``fine-tune+prototypes``) measures adapt's other methods; each method has its own results file.
``--scale N`` labels N times the issue's cells of each type (at most half of a type's cells: the rest is the test), so
that runs at 1, 2, 4 ... say how the rest's accuracy grows with the cells a clinic labels (``NAME-xN`` results).

For each experiment the parent is trained on every source except one lab (as the cross-lab
benchmark's leave-one-source-out; reused from ``benchmarks/work/crosslab`` when there), then for
each pick seed:

1. a seeded pick of labelled cells of the held-out lab (``EXPERIMENTS``) is linked into a folder, the
   rest of that lab into another;
2. ``edgecell adapt PARENT --data PICK --holdout-share 0`` (every picked cell trains: the rest of
   the lab is the hold-out), wall-clock timed;
3. ``edgecell evaluate --split all`` on the rest, for the parent and for the adapted run;
4. the original same-lab test split, before and after, from adapt's own report.

Results: ``benchmarks/results/NAME.{json,md}`` (``adapt-METHOD`` unless ``--name``), mean and range over the picks.
Figures are from the machine this runs on (2 shared x86 cores), not from a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.crosslab import DEFAULT_SHARED, RESULTS, edgecell, ensure_other_score, train  # noqa: E402
from benchmarks.crosslab import WORK as CROSSLAB_WORK  # noqa: E402

WORK = HERE / "work" / "adapt"
PARENT_SEED = 42

# experiment -> (train --exclude, the held-out lab's folder under shared/, labelled cells picked per type)
EXPERIMENTS = {
    "bccd": (["bccd"], "more_cells/bccd", {"seg_neutrophil": 20, "monocyte": 10, "lymphocyte": 10, "eosinophil": 10}),
    "barcelona": (["barcelona"], "more_cells/barcelona", {"seg_neutrophil": 20, "lymphocyte": 10, "eosinophil": 10, "ig": 10, "platelet": 10}),
}
BARS = {"rest_accuracy": 0.95, "original_drop_points": 1.0, "adapt_minutes": 5.0}


def parent_run(name: str, data: list[Path], reuse: bool) -> Path:
    """The parent trained without the lab; the cross-lab benchmark's run when it holds the same lab out."""
    exclude = EXPERIMENTS[name][0]
    shared_run = CROSSLAB_WORK / f"run-no-{name}-{PARENT_SEED}"
    run = shared_run if reuse and (shared_run / "metadata.json").is_file() else WORK / f"parent-no-{name}-{PARENT_SEED}"
    if train(run, data, PARENT_SEED, exclude, reuse=reuse) is None:
        ensure_other_score(run)  # a run trained before today's post-fit steps: fit them, so "before" is today's model
    return run


def scaled_pick(name: str, scale: int) -> dict[str, int]:
    """The issue's labelled cells per type of one experiment, ``scale`` times over (:func:`link_pick` caps each)."""
    return {typ: n * scale for typ, n in EXPERIMENTS[name][2].items()}


def link_pick(lab: Path, pick: dict[str, int], seed: int, where: Path) -> tuple[Path, Path]:
    """Symbolic links: ``where/pick/clinic/TYPE/`` (the seeded pick) and ``where/rest/clinic/TYPE/`` (the rest of the lab).

    At most half of a type's cells are picked, so at least half of each type is left to test."""
    import random
    import shutil

    shutil.rmtree(where, ignore_errors=True)
    rng = random.Random(seed)
    for typ_dir in sorted(p for p in lab.iterdir() if p.is_dir()):
        files = sorted(p for p in typ_dir.iterdir() if p.is_file())
        chosen = set(rng.sample(files, min(pick.get(typ_dir.name, 0), len(files) // 2)))
        for f in files:
            d = where / ("pick" if f in chosen else "rest") / "clinic" / typ_dir.name
            d.mkdir(parents=True, exist_ok=True)
            (d / f.name).symlink_to(f)
    return where / "pick" / "clinic", where / "rest" / "clinic"


def rest_figures(m: dict) -> dict:
    """Figures on the rest of the lab, from ``evaluate --split all --json``."""
    by_type = {k.split("/", 1)[1]: v for k, v in m["sources"]["by_type"].items()}
    n = sum(v["n"] for v in by_type.values())
    return {
        "n": n,
        "accuracy": sum(v["accuracy"] * v["n"] for v in by_type.values()) / n,
        "wrong_unflagged": sum(v["wrong_unflagged"] * v["n"] for v in by_type.values()) / n,
        "flagged": sum(v["flagged"] * v["n"] for v in by_type.values()) / n,
        "per_type": {k: {f: v[f] for f in ("n", "accuracy", "flagged", "wrong_unflagged", "called")} for k, v in by_type.items()},
        # classify's slide-level lab check on the rest as one set (False too for a model without a lab check)
        "lab_warning": any(g.get("lab_warning") for g in m["sources"].get("by_source", {}).values()),
    }


def method_of(adapt_options: list[str]) -> str:
    """The adapt method the options name (edgecell adapt's default when they name none)."""
    from edgecell.adapt import DEFAULT_METHOD

    opts = list(adapt_options)
    return opts[opts.index("--method") + 1] if "--method" in opts[:-1] else DEFAULT_METHOD


def one_pick(name: str, parent: Path, lab: Path, pick: dict[str, int], seed: int, extra: list[str], label: str) -> dict:
    where = WORK / f"{label}-{name}-pick{seed}"
    pick_dir, rest_dir = link_pick(lab, pick, seed, where / "data")
    out = where / "run"
    t0 = time.perf_counter()
    edgecell("adapt", parent, "--data", pick_dir, "--out", out, "--holdout-share", "0", "--seed", seed, "--json", where / "adapt.json", *extra)
    wall = time.perf_counter() - t0
    load = os.getloadavg()[1]  # the 5-minute load average as adapt ends: other work on the shared cores slows it
    rep = json.loads((where / "adapt.json").read_text())
    figs = {}
    for label, target in (("before", parent), ("after", out)):
        js = where / f"rest-{label}.json"
        edgecell("evaluate", target, "--data", rest_dir, "--split", "all", "--json", js, "--out", js.with_suffix(""))
        figs[label] = rest_figures(json.loads(js.read_text()))
    orig = rep["original_test"]
    return {
        "picked": rep["local"]["counts"],
        "rest": figs,
        "original_test": orig,
        "original_drop_points": 100 * (orig["before"]["accuracy"] - orig["after"]["accuracy"]),
        "adapt_wall_seconds": wall,
        "load_average": load,
        "fine_tune_seconds": rep["seconds"],
    }


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def summary(per_pick: dict) -> dict:
    picks = list(per_pick.values())
    types = picks[0]["rest"]["after"]["per_type"]
    return {
        "rest_accuracy_before": spread([p["rest"]["before"]["accuracy"] for p in picks]),
        "rest_accuracy": spread([p["rest"]["after"]["accuracy"] for p in picks]),
        "rest_wrong_unflagged": spread([p["rest"]["after"]["wrong_unflagged"] for p in picks]),
        "per_type_accuracy": {t: spread([p["rest"]["after"]["per_type"][t]["accuracy"] for p in picks]) for t in types},
        "per_type_accuracy_before": {t: spread([p["rest"]["before"]["per_type"][t]["accuracy"] for p in picks]) for t in types},
        "lab_warning_before": sum(p["rest"]["before"]["lab_warning"] for p in picks),
        "lab_warning_after": sum(p["rest"]["after"]["lab_warning"] for p in picks),
        "original_drop_points": spread([p["original_drop_points"] for p in picks]),
        "adapt_minutes": spread([p["adapt_wall_seconds"] / 60 for p in picks]),
        "load_average": spread([p["load_average"] for p in picks]),
    }


def markdown(r: dict) -> str:
    pct = "{:.1%}".format
    lines = [
        "# Adapt benchmark (issue #19)",
        "",
        f"{r['date']}, {r['machine'].get('cpu', '')}, {r['machine'].get('cores', '')} cores. Command: `{r.get('command', 'python benchmarks/adapt.py')}`"
        + f" (adapt's options: {' '.join(r['adapt_options']) or 'the defaults'})"
        + f". Mean [min-max] over {len(r['picks'])} seeded picks {r['picks']}; one parent per experiment (seed {PARENT_SEED}).",
        "",
        "Each parent was trained on every source except the lab named; adapted with the picked labelled cells of that lab "
        "(all trained on, `--holdout-share 0`) and a replay of its own training split, by the method its options name; tested on the rest of the lab "
        "(the five types and `other`, each counted right only when named right).",
        "",
    ]
    for name, e in r["experiments"].items():
        s = e["summary"]
        picked = next(iter(e["picks"].values()))["picked"]  # the counts after link_pick's cap (the same for every pick)
        lines += [f"## {name}: picked {picked}" + (f" (asked: {e['pick']})" if picked != e["pick"] else ""), ""]
        lines += ["| figure | before | after (mean [range]) | bar |", "|---|---|---|---|"]
        rng = lambda d, f=pct: f"{f(d['mean'])} [{f(d['min'])}-{f(d['max'])}]"  # noqa: E731
        pts = "{:+.1f} pts".format
        lines.append(f"| rest of the lab right | {rng(s['rest_accuracy_before'])} | {rng(s['rest_accuracy'])} | >= {pct(BARS['rest_accuracy'])} |")
        lines.append(f"| rest: wrong and not flagged | | {rng(s['rest_wrong_unflagged'])} | |")
        for t, v in s["per_type_accuracy"].items():
            lines.append(f"| rest, {t} right | {rng(s['per_type_accuracy_before'][t])} | {rng(v)} | |")
        if "lab_warning_after" in s:
            n = len(r["picks"])
            lines.append(f"| the rest, as one set: the lab check warns (picks) | {s['lab_warning_before']} of {n} | {s['lab_warning_after']} of {n} | |")
        lines.append(f"| original test split: accuracy drop | | {rng(s['original_drop_points'], pts)} | <= {BARS['original_drop_points']:.0f} pt |")
        lines.append(
            f"| adapt wall time, minutes (2 cores; load average {rng(s['load_average'], '{:.1f}'.format)}) | | {rng(s['adapt_minutes'], '{:.1f}'.format)} "
            f"| <= {BARS['adapt_minutes']:.0f} |"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global WORK
    from benchmarks._results import common_options, publish, shared_data
    from benchmarks.run import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(ap, WORK, RESULTS, DEFAULT_SHARED, "reuse finished parent runs instead of training them again")
    ap.add_argument("--picks", default="1,2,3", help="comma-separated seeds of the labelled picks (and of adapt)")
    ap.add_argument("--only", choices=list(EXPERIMENTS), action="append", help="run only these experiments (repeatable)")
    ap.add_argument("--scale", type=int, default=1, help="label N times the issue's cells of each type (default 1: the issue's pick)")
    ap.add_argument("--name", help="the results files' name (NAME.json, NAME.md) and the picks' work folder (default: adapt-METHOD, -xN with --scale N)")
    ap.add_argument("adapt_options", nargs="*", help="extra options passed to edgecell adapt (after --)")
    args = ap.parse_args(argv)
    args.name = args.name or f"adapt-{method_of(args.adapt_options)}" + (f"-x{args.scale}" if args.scale != 1 else "")
    WORK = Path(args.work)
    WORK.mkdir(parents=True, exist_ok=True)
    shared, data = Path(args.shared), shared_data(args)
    picks = [int(s) for s in args.picks.split(",")]
    results = Path(args.results)
    previous = json.loads((results / f"{args.name}.json").read_text()) if (results / f"{args.name}.json").is_file() else {}
    r = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(["python benchmarks/adapt.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    r.update(picks=picks, adapt_options=args.adapt_options, scale=args.scale)
    same = previous.get("picks") == picks and previous.get("scale", 1) == args.scale
    r["experiments"] = {k: v for k, v in previous.get("experiments", {}).items() if same}
    for name in args.only or list(EXPERIMENTS):
        parent = parent_run(name, data, args.reuse)
        lab = shared / EXPERIMENTS[name][1]
        pick = scaled_pick(name, args.scale)
        per_pick = {str(s): one_pick(name, parent, lab, pick, s, args.adapt_options, args.name) for s in picks}
        r["experiments"][name] = {"parent": str(parent), "pick": pick, "picks": per_pick, "summary": summary(per_pick)}
    publish(results, args.name, r, markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
