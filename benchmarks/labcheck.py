#!/usr/bin/env python3
"""Does the slide-level lab check tell a lab the model has not seen from its training labs? (issue #12, item 4)

    python benchmarks/labcheck.py [--work benchmarks/work/crosslab] [--seeds 42] [--run NAME=RUN ...]

Reads the run folders of the cross-lab benchmark (``benchmarks/crosslab.py`` trains them; this script never
writes into them): ``run-all`` (every source) and one run per leave-one-source-out experiment
(``run-<experiment>-<seed>``); ``--run NAME=RUN`` points at another folder. For each run, with its Keras model
(mirrored views averaged, as it runs) and its recorded temperature and never-seen score:

1. the lab check is fitted on the run's validation split as ``train`` fits it
   (:func:`edgecell.metrics.fit_lab_check`), both rules: the mean calibrated confidence of a set (the rule of
   a model without the never-seen score) and the median never-seen score of a set (the rule of one with it);
2. random sets of ``batch`` (20) cells are drawn, seeded, from the run's own test split, per source: the share of
   sets on which each rule fires is its false-alarm rate on the training labs (1 % is what the limit allows);
3. and from the cells the run was trained without (the experiment's folder and cell types, as
   ``crosslab.py`` evaluates them), all together and per type: the share on which it fires on a lab it has
   not seen.

Writes ``benchmarks/results/labcheck.json`` and ``.md``. Figures are from this machine's runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._results import publish  # noqa: E402
from benchmarks.crosslab import DEFAULT_SHARED, LOSO, RESULTS, WORK  # noqa: E402

DRAWS = 2000
"""Random cell sets per figure."""
DEFAULT_RUN = "default"
"""The name of the run on every source (its test split only: nothing was held out of it)."""


def draw_sets(n: int, batch: int, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """``draws`` seeded sets of ``batch`` different cells among ``n`` (indices, one row per set)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((draws, n)), axis=1)[:, :batch]


class Cells:
    """Calibrated probabilities, top probability and never-seen score of each cell of one set, and its source and type."""

    def __init__(self, predictor, temperature: float, split) -> None:
        from edgecell.metrics import apply_temperature

        probs, scores = predictor.scored(split.x)
        self.probs = apply_temperature(probs, temperature)
        self.conf = self.probs.max(axis=1)
        self.score = np.asarray(scores, np.float64)
        self.source = np.array(split.sources)
        self.type = np.array(split.types)

    def where(self, mask: np.ndarray) -> Cells:
        out = object.__new__(Cells)
        out.probs, out.conf, out.score = self.probs[mask], self.conf[mask], self.score[mask]
        out.source, out.type = self.source[mask], self.type[mask]
        return out

    def fires(self, check: dict) -> dict:
        """How often each rule of ``check`` fires on random sets of these cells."""
        from firmware_host.runtime import lab_warning

        batch = int(check["batch"])
        row = {"n": len(self.conf), "mean_confidence": float(self.conf.mean()), "median_score": float(np.median(self.score))}
        if len(self.conf) < batch:
            return row | {"confidence_rule": None, "score_rule": None, "either": None}
        sets = draw_sets(len(self.conf), batch)
        rules = {
            "confidence_rule": {k: v for k, v in check.items() if k != "max_median_score"},
            "score_rule": {k: v for k, v in check.items() if k != "min_mean_confidence"},
            "either": check,  # edgecell's
        }
        for name, rule in rules.items():
            row[name] = float(np.mean([lab_warning(self.conf[s].mean(), batch, rule, float(np.median(self.score[s]))) is not None for s in sets]))
        return row


def measure(run: Path, held: tuple[Path, list[str] | None] | None) -> dict:
    """The lab check of ``run`` fitted on its validation split; how often it fires on its test split's sources and
    on the ``held`` folder's cells (all, or the listed types)."""
    from rich.console import Console

    from edgecell.evaluate import Predictor, load_split, resolve
    from edgecell.metrics import fit_lab_check
    from edgecell.runfolder import RunFolder

    quiet = Console(stderr=True, quiet=True)
    target = resolve(run)
    predictor = Predictor(target)
    if predictor.other_score is None:
        raise SystemExit(f"{run}: the run has no never-seen score; train it again with this edgecell")
    temperature = RunFolder.read(run).temperature
    val = Cells(predictor, temperature, load_split(target, None, "val", quiet))
    check = fit_lab_check(val.probs, val.score, val.source)
    test = Cells(predictor, temperature, load_split(target, None, "test", quiet))
    sets = {"test split, every source": test.fires(check)}
    for source in sorted(set(test.source)):
        sets[f"test split, {source}"] = test.where(test.source == source).fires(check)
    if held is not None:
        folder, types = held
        cells = Cells(predictor, temperature, load_split(target, str(folder), "all", quiet))
        if types:
            cells = cells.where(np.isin(cells.type, types))
        sets[f"held out: {folder.parent.name}/{folder.name}"] = cells.fires(check)
        for kind in sorted(set(cells.type)):
            sets[f"held out: {folder.name} {kind}"] = cells.where(cells.type == kind).fires(check)
    return {"run": str(run), "check": check, "sets": sets}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(result: dict) -> str:
    lines = [
        f"# Slide-level lab check ({result['date']})",
        "",
        f"Command: `{result['command']}`. Sets of {result['batch']} cells, {DRAWS} seeded draws per row; Keras, "
        "calibrated. Each run's check is fitted on its own validation split as `train` fits it (each rule may fire on "
        "1 % of such sets from each training source). *Confidence*: the set's mean confidence below its limit. "
        "*Score*: the median never-seen score of the set's cells above its limit. *Either*: what `classify`, `scan` "
        "and `evaluate` do (a model without the never-seen score has the confidence rule alone).",
    ]
    for name, r in result["runs"].items():
        c = r["check"]
        lines += [
            "",
            f"## {name} (`{r['run']}`)",
            "",
            f"Limits: mean confidence {c['min_mean_confidence']:.3f}, median score {c['max_median_score']:.2f}.",
            "",
            "| cells | n | mean confidence | median score | fires: confidence | score | either |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, s in r["sets"].items():
            figures = " | ".join(pct(s[rule]) for rule in ("confidence_rule", "score_rule", "either"))
            lines.append(f"| {k} | {s['n']} | {s['mean_confidence']:.3f} | {s['median_score']:.2f} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edgecell.metrics import LAB_CHECK_BATCH

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--work", default=str(WORK), help="the cross-lab benchmark's run folders")
    ap.add_argument("--seeds", default="42", help="comma-separated; the leave-one-source-out runs of each")
    ap.add_argument(
        "--run", action="append", default=[], metavar="NAME=RUN", help=f"a run folder for {DEFAULT_RUN!r} or an experiment of crosslab.py ({', '.join(LOSO)})"
    )
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    shared, work = Path(args.shared), Path(args.work)
    given = dict(r.split("=", 1) for r in args.run)
    unknown = set(given) - {DEFAULT_RUN, *LOSO}
    if unknown:
        ap.error(f"--run: unknown name(s) {', '.join(sorted(unknown))}")
    plan = {DEFAULT_RUN: (Path(given.get(DEFAULT_RUN, work / "run-all")), None)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, (_, folder, types) in LOSO.items():
            plan[f"{name}, seed {seed}"] = (Path(given.get(name, work / f"run-{name}-{seed}")), (shared / folder, types))
    runs = {}
    for name, (run, held) in plan.items():
        if not (run / "metadata.json").is_file():
            print(f"skipping {name}: no run at {run}", file=sys.stderr)
            continue
        print(f"measuring {name} ({run})", file=sys.stderr, flush=True)
        runs[name] = measure(run, held)
    if not runs:
        ap.error(f"no run folder found under {work}; train them with benchmarks/crosslab.py, or pass --run")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/labcheck.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "batch": LAB_CHECK_BATCH,
        "draws": DRAWS,
        "runs": runs,
    }
    publish(args.results, "labcheck", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
