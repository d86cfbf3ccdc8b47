"""Evaluating a run's Keras model or any edgecell .tflite on a split of a data folder.

``evaluate`` resolves what it was given (a run folder, a ``model.keras``, a ``.tflite`` or an
export folder), finds the split manifest of the run the model came from, loads exactly the
images of the requested split, and computes metrics with scikit-learn.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from edgecell import data as data_mod
from edgecell.console import shown
from edgecell.options import DEFAULT_SEED
from edgecell.runfolder import EVALUATION_DIR, EVALUATION_OUTPUTS, EXPORT_DIR, KERAS_FILE, RUN_MARKER, RUN_OWNED, SPLIT_FILE
from firmware_host.errors import DataError, EdgecellError


@dataclass
class Target:
    """What is evaluated.

    Attributes:
        kind: "keras" or a TFLite precision ("float32", "int8", "float16").
        model_path: the .keras or .tflite file.
        run_dir: the run folder the model belongs to (holds split.csv and metadata.json), if found.
        classes: class names in output order; input_size: model input size.
        temperature: the calibration temperature stored with the model.
        lab_check: the slide-level lab check stored with it (:func:`firmware_host.runtime.lab_warning`).
    """

    kind: str
    model_path: Path
    run_dir: Path | None
    classes: list[str]
    input_size: int
    temperature: float
    dataset: dict | None = None
    lab_check: dict | None = None


def resolve(target: str | os.PathLike) -> Target:
    from edgecell.runfolder import RunFolder

    p = Path(target)
    if p.is_dir() and not RunFolder.is_run(p) and (p / KERAS_FILE).exists():
        raise EdgecellError(f"holds {KERAS_FILE} but no {RUN_MARKER}: not a whole run folder (train writes both; copy the run whole)", p)
    if RunFolder.is_run(p) or p.suffix == ".keras":
        run = RunFolder.read(p if p.is_dir() else p.parent)
        if not p.is_dir() and not (p.exists() and run.keras_path.exists() and p.samefile(run.keras_path)):
            raise EdgecellError(
                f"is not its run's {KERAS_FILE}: a Keras model is evaluated with its run's metadata (classes, calibration, "
                "never-seen score); give the run folder it was trained into",
                p,
            )
        return Target(
            "keras", run.keras_path if p.is_dir() else p, run.path, run.classes, run.input_size, run.temperature, run.dataset, run.extra.get("lab_check")
        )
    from firmware_host.metadata import read_metadata
    from firmware_host.runtime import resolve_model

    model = resolve_model(p)
    meta = read_metadata(model)
    run = RunFolder.containing(model)
    # an export folder copied away from its run: the data folders its sidecar records (what `--split all` reads)
    recorded = {"sources": meta.source.get("dataset_sources") or {}, "path": meta.source.get("dataset_path")}
    dataset = run.dataset if run else (recorded if recorded["sources"] or recorded["path"] else None)
    return Target(meta.precision.value, model, run and run.path, list(meta.classes), int(meta.input_size), float(meta.temperature), dataset, meta.lab_check)


def reads(target: Target, data_dir: str | None = None) -> list[tuple[str, str]]:
    """What evaluating ``target`` reads, for :func:`firmware_host.atomic.check_outputs`: the model, its
    sidecar or run files, and the data folder (``data_dir``, else the one the run was trained on)."""
    from firmware_host.metadata import model_reads

    out = [(str(target.model_path), "the model")] if target.kind == "keras" else model_reads(target.model_path)
    if target.run_dir is not None:  # every record of the run but evaluate's own (metrics, history, parity, ...)
        mine = [n for n in sorted(RUN_OWNED) if not n.startswith(f"{EVALUATION_DIR}/") and f"/{EVALUATION_DIR}/" not in n and "*" not in n]
        out += [(str(target.run_dir / name), f"the run's {name}") for name in mine if (target.run_dir / name).exists()]
        if (target.run_dir / EXPORT_DIR).is_dir():  # convert replaces it whole, and refuses a folder holding files it did not write
            out.append((str(target.run_dir / EXPORT_DIR), "the run's export folder"))
    given = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir or [])
    recorded = [str(f) for f in data_mod.recorded_folders(target.dataset or {})]
    out += [(str(d), "the data folder being read") for d in given or recorded]
    # with --data, the folders it was trained on still hold class folders that an output could join
    out += [(d, "the model's training data") for d in dict.fromkeys(recorded) if given and d not in map(str, given) and Path(d).is_dir()]
    return out


class Predictor:
    """Raw (uncalibrated) softmax probabilities for uint8 image batches, Keras or TFLite."""

    def __init__(self, target: Target, threads: int | None = None):
        self.target = target
        if target.kind == "keras":
            from edgecell.runfolder import RunFolder

            self.model = RunFolder.read(target.run_dir).load_keras()
            self.clf = None
        else:
            from firmware_host.runtime import Classifier

            self.model = None
            self.clf = Classifier.load(target.model_path, threads=threads, allow_unverified=True)  # measuring it is how to see why

    @property
    def other_score(self):
        """The never-seen score (:class:`firmware_host.otherscore.OtherScore`) of the run or the sidecar, or None."""
        from firmware_host.otherscore import OtherScore

        if self.clf is not None:
            return self.clf.other_score
        from edgecell.runfolder import RunFolder

        return OtherScore.from_dict(RunFolder.read(self.target.run_dir).extra.get("other_score") or {})

    def scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw probabilities and the never-seen scores (None for a model without a score)."""
        score = self.other_score
        if self.model is not None:
            if score is None:
                return self(x), None
            from edgecell.model import predict_with_features

            probs, feats = predict_with_features(self.model, x)
            return probs, score.scores(feats)
        return self.clf.predict_batch_scored(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.model is not None:
            from edgecell.train import predict

            return predict(self.model, x)
        # The Pi's steps 2-3 (quantise the input, invoke, dequantise, renormalise), without step 4
        # (the temperature), which the caller applies so it can report before and after.
        return self.clf.predict_batch_uncalibrated(x)


@dataclass
class Split:
    """The images of one split, with where each came from and their nucleus offsets
    (:func:`firmware_host.preprocess.prepare_cell`)."""

    x: np.ndarray
    y: np.ndarray
    files: list[str]
    sources: list[str]
    types: list[str]
    offsets: np.ndarray
    folders: dict[str, str] = field(default_factory=dict)
    """With ``--split all``: each source's name and its folder (resolved), which name the outputs (:func:`output_stem`)."""
    roots: dict[str, str] = field(default_factory=dict)
    """Each source's name and the folder its ``files`` are relative to (resolved), for any split."""
    skipped: list[dict] = field(default_factory=list)
    """With ``--split all``: the files left out (``path``, ``reason``: unreadable, not images, ambiguous labels)."""


def trained_on(target: Target, samples) -> int:
    """How many of ``samples`` (by SHA-256) are in the run's training or validation split (0 without a run folder)."""
    if target.run_dir is None or not (target.run_dir / SPLIT_FILE).is_file():
        return 0
    fitted = {r.sha256 for r in data_mod.read_manifest(target.run_dir / SPLIT_FILE) if r.split in ("train", "val")}
    return sum(s.sha256 in fitted for s in samples)


def load_split(target: Target, data_dir: str | Sequence[str] | None, split: str, con: Console) -> Split:
    """Images and labels of ``split`` ("train", "val", "test" or "all"), from the run's data
    folders or from ``data_dir`` (one folder or several, as ``train --data``)."""
    from edgecell.console import progress

    given = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir or [])
    if split == "all":
        from edgecell.train import report_skipped

        recorded = not given
        if recorded:
            given = data_mod.recorded_folders(target.dataset or {})
            gone = [f for f in given if not Path(f).is_dir()]
            if not given or gone:
                raise DataError("the data folder the model was trained on is not there; pass --data DIR", gone[0] if gone else "--data")
        with progress(con, transient=True) as bar:
            task = bar.add_task("reading images", total=None)
            ds = data_mod.scan_for_model(given, target.classes, target.input_size, on_progress=lambda d, n: bar.update(task, completed=d, total=n))
        report_skipped(ds, con)
        seen = trained_on(target, ds.samples)
        if recorded and not seen and (target.run_dir is None or not (target.run_dir / SPLIT_FILE).is_file()):
            con.print(
                "[yellow]warning:[/yellow] these are the folders the model was trained on (as its sidecar records them), and no "
                "split manifest is beside it to tell its training images from the rest: these figures are not a held-out test "
                "(give --data with images the model has not seen, or evaluate it in its run folder with --split test)",
                soft_wrap=True,
            )
        if seen:
            con.print(
                f"[yellow]warning:[/yellow] {seen} of the {len(ds.samples)} images are in this run's training or validation split: "
                "these figures are not a held-out test (use --split test, or --data with images the run has not seen)",
                soft_wrap=True,
            )
        index = {c: i for i, c in enumerate(target.classes)}
        y = np.array([index[s.label] for s in ds.samples], dtype=np.int64)
        folders = {name: str(Path(folder).resolve()) for name, folder in ds.sources.items()}
        skipped = [{"path": s.path, "reason": s.reason} for s in ds.skipped]
        samples = ds.samples
        return Split(
            ds.images, y, [s.rel for s in samples], [s.source for s in samples], [s.type for s in samples], ds.nucleus_offsets, folders, folders, skipped
        )
    if target.run_dir is None:
        raise EdgecellError(f"no split manifest (split.csv) beside this model, so --split {split} is unknown; use --split all", target.model_path)
    roots = data_mod.run_sources(target.dataset or {}, given)
    rows = [r for r in data_mod.read_manifest(target.run_dir / SPLIT_FILE) if r.split == split]
    with progress(con, transient=True) as bar:
        task = bar.add_task(f"reading {split} images", total=len(rows))
        x, y, rows, offsets = data_mod.load_cells_from_manifest(
            roots, rows, target.input_size, target.classes, on_progress=lambda d, n: bar.update(task, completed=d)
        )
    used = {r.source for r in rows}
    where = {name: str(Path(folder).resolve()) for name, folder in roots.items() if name in used}
    return Split(x, y, [r.file for r in rows], [r.source for r in rows], [r.type for r in rows], offsets, roots=where)


def flagged(probs: np.ndarray, classes: Sequence[str], threshold: float, pred: np.ndarray | None = None, offsets: np.ndarray | None = None) -> np.ndarray:
    """Which calibrated predictions the runtime flags (uncertain, review or other; see
    :func:`firmware_host.runtime.triage`), as a boolean array; ``pred``: the labels (default: the most probable class);
    ``offsets``: the images' nucleus offsets (an image with no colour is flagged)."""
    from firmware_host.runtime import Prediction, triage

    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred)
    conf = probs[np.arange(len(pred)), pred]
    offset = np.full(len(pred), math.nan) if offsets is None else np.asarray(offsets, dtype=np.float64)
    return np.array(
        [
            triage(Prediction("", classes[k], float(c), [], probs[i], nucleus_offset=float(offset[i])), threshold) != ""
            for i, (k, c) in enumerate(zip(pred, conf))
        ],
        dtype=bool,
    )


def outcomes(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float, pred: np.ndarray | None = None, offsets: np.ndarray | None = None
) -> dict:
    """What a clinic would see on a labelled set, from calibrated probabilities: ``n``, ``accuracy``
    (``other`` counted as a class), ``macro_f1`` (:func:`edgecell.metrics.compute`'s), ``flagged`` (share with
    any flag) and ``wrong_unflagged`` (share wrong and not flagged: the errors nobody is told to check).
    ``pred``: the labels given (default: the most probable class; see :func:`firmware_host.otherscore.decide`)."""
    from edgecell.metrics import compute

    n = len(y)
    if not n:
        return {"n": 0, "accuracy": None, "macro_f1": None, "flagged": None, "wrong_unflagged": None}
    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred)
    flags = flagged(probs, classes, threshold, pred, offsets)
    right = pred == y
    return {
        "n": int(n),
        "accuracy": float(right.mean()),
        "macro_f1": compute(y, probs, classes, pred)["macro_f1"],
        "flagged": float(flags.mean()),
        "wrong_unflagged": float((~right & ~flags).mean()),
    }


def by_source(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    types: Sequence[str],
    threshold: float,
    scores: np.ndarray | None = None,
    other_threshold: float | None = None,
    offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
    lab_check: dict | None = None,
) -> dict:
    """What a clinic would see, per source and per (source, cell type), from calibrated probabilities.

    The label is the runtime's: the most probable class, or ``other`` when the never-seen score
    (``scores``) is above ``other_threshold`` or the nucleus offset (``offsets``) above ``nucleus_max``
    (:func:`firmware_host.otherscore.decide`).

    For each group: ``n``; ``accuracy`` (right class, ``other`` counted); ``flagged`` (share with any
    flag: uncertain, review, other); ``wrong_unflagged`` (share wrong AND without a flag: the errors
    nobody is told to check); ``called``: how many were given each label; per source also
    ``macro_f1`` (:func:`edgecell.metrics.compute`'s), and ``lab_warning``: what ``classify`` would say of the
    source's images as one set (:func:`firmware_host.runtime.lab_warning` with ``lab_check``; None: it would not
    warn, or the model has no check).
    """
    from edgecell.metrics import compute
    from firmware_host.otherscore import decide
    from firmware_host.preprocess import no_nucleus
    from firmware_host.runtime import lab_warning

    pred = decide(probs, scores, other_threshold, classes, nucleus_offsets=offsets, nucleus_max=nucleus_max)
    flags = flagged(probs, classes, threshold, pred, offsets)
    right = pred == y
    src = np.array(sources, dtype=object)
    key = np.array([f"{s}/{t}" for s, t in zip(sources, types)], dtype=object)

    def group(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        called = np.bincount(pred[mask], minlength=len(classes))
        return {
            "n": n,
            "accuracy": float(right[mask].mean()) if n else 0.0,
            "flagged": float(flags[mask].mean()) if n else 0.0,
            "wrong_unflagged": float((~right[mask] & ~flags[mask]).mean()) if n else 0.0,
            "called": {c: int(k) for c, k in zip(classes, called) if k},
        }

    out_src = {}
    for s in sorted(set(sources)):
        mask = src == s
        g = group(mask)
        g["macro_f1"] = compute(y[mask], probs[mask], classes, pred[mask])["macro_f1"]
        median = float(np.median(scores[mask])) if scores is not None else None
        bare = int(no_nucleus(np.asarray(offsets)[mask], nucleus_max).sum()) if offsets is not None and nucleus_max is not None else 0
        g["lab_warning"] = lab_warning(float(probs[mask].max(axis=1).mean()), g["n"], lab_check or {}, median, no_nucleus=bare)
        out_src[s] = g
    return {
        "threshold": threshold,
        "other_threshold": other_threshold,
        "by_source": out_src,
        "by_type": {k: group(key == k) for k in sorted(set(key.tolist()))},
    }


def blast_report(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    pred: np.ndarray,
    sources: Sequence[str],
    threshold: float,
    offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
) -> dict:
    """What happens to the blasts of a labelled set (cells of :data:`~firmware_host.runtime.BLAST_CLASSES`), as
    ``classify`` would give them, from calibrated ``probs`` and the labels ``pred``: over all sources (``all``) and per
    source (``by_source``), ``n`` blasts; ``possible_blast``, the share said first as a possible blast
    (:func:`~firmware_host.runtime.is_possible_blast`); ``to_haematologist``, flagged for review; ``flagged_otherwise``
    (uncertain, other); ``silent``, no flag at all, and what those were ``called``; and among the other cells
    (``n_other``), ``false_alarms``, the share said to be a possible blast. Empty for a model without a blast class.
    ``offsets`` and ``nucleus_max``: the nucleus check, which :func:`~firmware_host.runtime.triage` reads too."""
    from firmware_host.preprocess import no_nucleus
    from firmware_host.runtime import BLAST_CLASSES, FLAG_REVIEW, OTHER_BY_NUCLEUS, Prediction, is_possible_blast, triage

    blast = np.isin(np.asarray(y), [k for k, c in enumerate(classes) if c in BLAST_CLASSES])
    if not any(c in BLAST_CLASSES for c in classes):
        return {}
    offset = np.full(len(y), math.nan) if offsets is None else np.asarray(offsets, dtype=np.float64)
    flags, possible = [], []
    for i, k in enumerate(pred):
        top3 = [(classes[j], float(probs[i, j])) for j in np.argsort(-probs[i], kind="stable")[:3]]
        bare = nucleus_max is not None and no_nucleus(float(offset[i]), nucleus_max)
        p = Prediction("", classes[k], float(probs[i, k]), top3, probs[i], nucleus_offset=float(offset[i]), other_reason=OTHER_BY_NUCLEUS if bare else "")
        flags.append(triage(p, threshold))
        possible.append(is_possible_blast(classes[k], top3))
    flags, possible, src = np.array(flags, dtype=object), np.array(possible, dtype=bool), np.array(sources, dtype=object)

    def tally(mask: np.ndarray) -> dict:
        b, rest = mask & blast, mask & ~blast
        n = int(b.sum())
        silent = b & (flags == "")
        return {
            "n": n,
            "possible_blast": float(possible[b].mean()) if n else None,
            "to_haematologist": float((flags[b] == FLAG_REVIEW).mean()) if n else None,
            "flagged_otherwise": float(((flags[b] != FLAG_REVIEW) & (flags[b] != "")).mean()) if n else None,
            "silent": float(silent.sum() / n) if n else None,
            "called": dict(Counter(classes[k] for k in np.asarray(pred)[silent]).most_common()),
            "n_other": int(rest.sum()),
            "false_alarms": float(possible[rest].mean()) if rest.any() else None,
        }

    everything = np.ones(len(y), dtype=bool)
    return {"all": tally(everything), "by_source": {s: tally(src == s) for s in sorted(set(src.tolist()))}}


def blast_line(rep: dict) -> str | None:
    """The blasts' fate in one line (:func:`blast_report`'s ``all``), or None without blasts."""
    a = (rep or {}).get("all") or {}
    if not a.get("n"):
        return None
    n = a["n"]
    called = ", ".join(f"{c} {k}" for c, k in a["called"].items())
    alarms = f"; {a['false_alarms']:.1%} of the other {a['n_other']} cells were said to be possible blasts" if a["n_other"] else ""
    return (
        f"blasts (n={n}): {a['possible_blast']:.1%} said first as a possible blast, {a['to_haematologist']:.1%} sent to the haematologist, "
        f"{a['flagged_otherwise']:.1%} flagged otherwise, {a['silent']:.1%} counted without a flag" + (f" ({called})" if called else "") + alarms
    )


def image_records(
    sp: Split,
    probs: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    scores: np.ndarray | None = None,
    other_threshold: float | None = None,
    nucleus_max: float | None = None,
) -> list[dict]:
    """One record per image of ``sp``, from calibrated ``probs``: what ``classify --json`` gives for it (label,
    confidence, flag, top-3, probabilities, ``other_score``, ``nucleus_offset``, ``other_reason``:
    :func:`firmware_host.runtime.make_prediction`, :func:`~firmware_host.runtime.triage`), with where it came from
    (``file``, relative to its source's folder, ``source``, ``type``), its folder's class (``true``) and whether the
    label is that class (``right``). The cells a figure counts, named: to see which ones were wrong, and to show them
    to a person."""
    from firmware_host.runtime import make_prediction, triage

    out = []
    for i, (file, source, kind) in enumerate(zip(sp.files, sp.sources, sp.types)):
        score = None if scores is None else float(scores[i])
        pred = make_prediction(file, probs[i], classes, other_threshold, nucleus_max, other_score=score, nucleus_offset=float(sp.offsets[i]))
        rec = pred.to_dict(classes)
        for timing in ("preprocess_ms", "inference_ms"):  # measured in a batch, not per image
            del rec[timing]
        true = classes[int(sp.y[i])]
        out.append({"file": rec.pop("path"), "source": source, "type": kind, "true": true, **rec, "flag": triage(pred, threshold), "right": pred.label == true})
    return out


def source_table(rep: dict, title: str = "By source and cell type (calibrated; flags: uncertain, review, other)"):
    """Rich table of :func:`by_source`: one row per source, then its cell types."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("source / type", "n", "right", "flagged", "wrong, no flag", "called"):
        t.add_column(col, justify="left" if col in ("source / type", "called") else "right")
    for s, g in rep["by_source"].items():
        lab = "; [yellow]unlike the training labs[/yellow]" if g.get("lab_warning") else ""
        t.add_row(
            f"[bold]{shown(s)}[/bold]",
            str(g["n"]),
            f"{g['accuracy']:.1%}",
            f"{g['flagged']:.1%}",
            f"{g['wrong_unflagged']:.1%}",
            f"macro-F1 {g['macro_f1']:.3f}{lab}",
        )
        for k, tg in rep["by_type"].items():
            if k.split("/", 1)[0] == s:
                top = ", ".join(f"{c} {n}" for c, n in sorted(tg["called"].items(), key=lambda kv: -kv[1])[:3])
                t.add_row(f"  {shown(k.split('/', 1)[1])}", str(tg["n"]), f"{tg['accuracy']:.1%}", f"{tg['flagged']:.1%}", f"{tg['wrong_unflagged']:.1%}", top)
    return t


OTHER_CURVE_POINTS = 41
"""Thresholds of the never-seen score's curve (:func:`other_report`), from the lowest score to the highest."""


def other_report(
    y: np.ndarray,
    probs: np.ndarray,
    scores: np.ndarray | None,
    threshold: float | None,
    classes: Sequence[str],
    sources: Sequence[str],
    types: Sequence[str],
    points: int = OTHER_CURVE_POINTS,
    offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
) -> dict:
    """What the ``other`` decision does on these images, per source and per cell type, and against the threshold.

    ``probs`` calibrated, ``scores`` the never-seen scores (None: argmax only). Per source:
    ``five_n`` and ``five_sent_to_other`` (the five types' cells wrongly labelled ``other``),
    ``other_n`` and ``other_caught`` (cells of types taught or scored as ``other``, labelled
    ``other``). Per source/type: ``n``, ``other`` (whether the type is ``other``) and
    ``sent_to_other``. ``curve``: the same two shares over every image, and the share caught per
    ``other`` type, at ``points`` thresholds from the lowest to the highest score (with a score).
    ``offsets`` and ``nucleus_max``: the nucleus check, part of the decision at every threshold.
    """
    from firmware_host.otherscore import decide
    from firmware_host.paths import OTHER_CLASS

    if OTHER_CLASS not in classes:
        return {}
    other = list(classes).index(OTHER_CLASS)
    y = np.asarray(y)
    is_other = y == other
    src = np.array(sources, dtype=object)
    key = np.array([f"{s}/{t}" for s, t in zip(sources, types)], dtype=object)

    def sent(thr):
        return decide(probs, scores, thr, classes, nucleus_offsets=offsets, nucleus_max=nucleus_max) == other

    def share(mask, hit):
        return float(hit[mask].mean()) if mask.any() else None

    hit = sent(threshold)
    out = {"threshold": threshold, "score": scores is not None, "five_n": int((~is_other).sum()), "five_sent_to_other": share(~is_other, hit)}
    out["other_n"], out["other_caught"] = int(is_other.sum()), share(is_other, hit)
    out["by_source"] = {
        s: {
            "five_n": int((~is_other & (src == s)).sum()),
            "five_sent_to_other": share(~is_other & (src == s), hit),
            "other_n": int((is_other & (src == s)).sum()),
            "other_caught": share(is_other & (src == s), hit),
        }
        for s in sorted(set(sources))
    }
    out["by_type"] = {
        k: {"n": int((key == k).sum()), "other": bool(is_other[key == k].all()), "sent_to_other": share(key == k, hit)} for k in sorted(set(key.tolist()))
    }
    curve = []
    if scores is not None and np.isfinite(scores).any():
        finite = scores[np.isfinite(scores)]
        other_types = [k for k, v in out["by_type"].items() if v["other"]]
        for t in np.unique(np.r_[np.linspace(finite.min(), finite.max(), points), [] if threshold is None else [threshold]]):
            h = sent(float(t))
            curve.append(
                {
                    "threshold": float(t),
                    "five_sent_to_other": share(~is_other, h),
                    "other_caught": share(is_other, h),
                    "by_type": {k: share(key == k, h) for k in other_types},
                }
            )
    out["curve"] = curve
    return out


def other_table(rep: dict, title: str = "Sent to other, per source and cell type"):
    """Rich table of :func:`other_report`."""
    from rich.table import Table

    thr = rep["threshold"]
    t = Table(title=f"{title} (never-seen score threshold {'none: argmax only' if thr is None else f'{thr:.3g}'})")
    for col in ("source / type", "five types: n", "wrongly sent to other", "other types: n", "caught as other"):
        t.add_column(col, justify="left" if col == "source / type" else "right")

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    for s, g in rep["by_source"].items():
        t.add_row(f"[bold]{shown(s)}[/bold]", str(g["five_n"]), pct(g["five_sent_to_other"]), str(g["other_n"]), pct(g["other_caught"]))
        for k, tg in rep["by_type"].items():
            if k.split("/", 1)[0] == s:
                name = f"  {shown(k.split('/', 1)[1])}"
                if tg["other"]:
                    t.add_row(name, "", "", str(tg["n"]), pct(tg["sent_to_other"]))
                else:
                    t.add_row(name, str(tg["n"]), pct(tg["sent_to_other"]), "", "")
    return t


RISK_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

JSON_FORMAT = "edgecell-evaluation/1"
"""The first member of an evaluation's metrics JSON: what it is and the version of its layout, for a script to check."""


def risk_coverage(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    pred: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    thresholds=RISK_THRESHOLDS,
) -> list[dict]:
    """What each ``classify --threshold`` would do on these images: every flag of the runtime
    (:func:`flagged`: below the threshold, a review class, ``other``, no colour), on the labels it gives (``pred``,
    :func:`firmware_host.otherscore.decide`'s; default the most probable class).

    ``probs`` should be the calibrated probabilities (what ``classify`` sees). Per threshold: share referred
    (flagged), images kept (not flagged), accuracy of the kept ones (None if none kept), errors kept, and the share
    of all errors that get referred. The review and ``other`` flags do not depend on the threshold, so the share
    referred never falls below theirs.
    """
    y_true = np.asarray(y_true)
    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred)
    correct = pred == y_true
    n, n_err = len(y_true), int((~correct).sum())
    rows = []
    for t in thresholds:
        kept = ~flagged(probs, classes, t, pred, offsets)
        k = int(kept.sum())
        err_kept = int((kept & ~correct).sum())
        rows.append(
            {
                "threshold": float(t),
                "referred": float(1 - k / n) if n else 0.0,
                "kept": k,
                "kept_accuracy": float(correct[kept].mean()) if k else None,
                "errors_kept": err_kept,
                "errors_referred": float((n_err - err_kept) / n_err) if n_err else None,
            }
        )
    return rows


def risk_coverage_table(rows: list[dict], n: int, default: float | None = None, title: str = "Risk-coverage: what classify --threshold refers (every flag)"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("--threshold", "referred", "kept", "accuracy of kept", "errors kept", "errors referred"):
        t.add_column(col, justify="right")
    for r in rows:
        mark = " (default)" if default is not None and abs(r["threshold"] - default) < 1e-9 else ""
        t.add_row(
            f"{r['threshold']:.2f}{mark}",
            f"{r['referred']:.1%}",
            f"{r['kept']}/{n}",
            "-" if r["kept_accuracy"] is None else f"{r['kept_accuracy']:.2%}",
            str(r["errors_kept"]),
            "-" if r["errors_referred"] is None else f"{r['errors_referred']:.0%}",
        )
    return t


def stain_shift(predictor, x: np.ndarray, y: np.ndarray, classes, temperature: float, seed: int, clean_probs: np.ndarray | None = None, on_step=None) -> dict:
    """Accuracy and macro-F1 of the argmax (the network alone, without the ``other`` rules of the headline) under each
    member of :func:`edgecell.stain.family`, the worst case and its drop."""
    from edgecell import stain
    from edgecell.metrics import apply_temperature, compute, expected_calibration_error

    clean_probs = predictor(x) if clean_probs is None else clean_probs
    clean = compute(y, clean_probs, classes)
    clean_pred = clean_probs.argmax(axis=1)
    rows = []
    for p in stain.family():
        probs = predictor(p(x, seed))
        m = compute(y, probs, classes)
        rows.append(
            {
                "name": p.name,
                "description": p.description,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "drop_points": 100 * (clean["accuracy"] - m["accuracy"]),
                "changed": float((probs.argmax(axis=1) != clean_pred).mean()),
                "ece_calibrated": expected_calibration_error(y, apply_temperature(probs, temperature)),
                "confusion_matrix": m["confusion_matrix"],
            }
        )
        if on_step:
            on_step(p.name)
    worst = min(rows, key=lambda r: r["accuracy"])
    return {
        "seed": seed,
        "n": len(y),
        "clean": {"accuracy": clean["accuracy"], "macro_f1": clean["macro_f1"]},
        "perturbations": rows,
        "worst": {"name": worst["name"], "accuracy": worst["accuracy"], "macro_f1": worst["macro_f1"], "drop_points": worst["drop_points"]},
    }


def stain_table(s: dict, title: str = "Stain shift"):
    from rich.table import Table

    t = Table(title=f"{title} (n={s['n']}, seed {s['seed']}; the argmax alone)")
    t.add_column("perturbation")
    for col in ("accuracy", "macro-F1", "drop (points)", "predictions changed", "ECE (T)"):
        t.add_column(col, justify="right")
    t.add_row("none (clean)", f"{s['clean']['accuracy']:.4f}", f"{s['clean']['macro_f1']:.4f}", "", "", "")
    t.add_section()
    for r in s["perturbations"]:
        style = "bold red" if r["name"] == s["worst"]["name"] else ""
        drop = f"{r['drop_points']:+.1f}"
        t.add_row(
            r["name"],
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            f"[{style}]{drop}[/{style}]" if style else drop,
            f"{r['changed']:.1%}",
            f"{r['ece_calibrated']:.4f}",
        )
    return t


STEM_SOURCES_MAX = 40
"""Longest source part of an output name (``keras_all_<sources>-<hash>``) before it is shortened."""


def output_stem(kind: str, split: str, folders: Mapping[str, str]) -> str:
    """The start of every output file's name: ``{kind}_{split}``; with ``--split all``, the names of the sources
    evaluated and a short hash of their folders (``keras_all_bccd-1f0e3a2b``), so that evaluating another lab's
    images (even in a folder of the same name) does not replace the first lab's results, and evaluating the same
    folders again does."""
    if split != "all":
        return f"{kind}_{split}"
    names = "+".join(sorted(folders)) or "data"
    names = "".join(c if c.isascii() and (c.isalnum() or c in "+-._") else "_" for c in names)[:STEM_SOURCES_MAX]
    digest = hashlib.sha256("\n".join(f"{n}={f}" for n, f in sorted(folders.items())).encode()).hexdigest()[:8]
    return f"{kind}_all_{names}-{digest}"


def evaluate(
    target: Target,
    data_dir: str | None,
    split: str,
    con: Console,
    out_dir: str | None = None,
    threads: int | None = None,
    stain: bool = False,
    seed: int = DEFAULT_SEED,
    other_threshold: float | None = None,
) -> dict:
    """Metrics of ``target`` on ``split``; writes metrics JSON, every image's record (:func:`image_records`, JSON
    Lines), confusion-matrix and reliability PNGs to ``out_dir``.

    Also computes the risk-coverage table on the calibrated probabilities and, with ``stain``,
    the same metrics under each stain/colour perturbation of :mod:`edgecell.stain`, and what the
    ``other`` decision does (:func:`other_report`, with its curve against the never-seen score's
    threshold as ``{stem}_other.json`` and ``_other.png``, :func:`output_stem`); ``other_threshold`` replaces the model's.
    """
    from edgecell.metrics import apply_temperature, decided_metrics, expected_calibration_error
    from edgecell.plots import confusion_matrix_png, other_curve_png, reliability_png
    from firmware_host.atomic import file_set, json_text, write_json, write_text
    from firmware_host.otherscore import decide
    from firmware_host.runtime import DEFAULT_THRESHOLD

    sp = load_split(target, data_dir, split, con)
    x, y = sp.x, sp.y
    if len(x) == 0:  # named by its manifest (the run's split) or the first data folder given
        given = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir or [])
        where = target.run_dir / SPLIT_FILE if split != "all" and target.run_dir is not None else (given[0] if given else target.model_path)
        raise DataError(f"no images in the {split} split", where)
    predictor = Predictor(target, threads)
    probs, scores = predictor.scored(x)
    score = predictor.other_score
    if other_threshold is not None and score is None:
        raise EdgecellError(
            "has no never-seen score, so --other-threshold cannot apply (a run trained before it, or a model converted from one)", target.model_path
        )
    thr = other_threshold if other_threshold is not None else (score.threshold if score else None)
    nucleus_max = score.nucleus_max if score else None
    # the headline is what `classify` gives: the argmax, then `other` by the never-seen score and the nucleus check
    decided = decide(probs, scores, thr, target.classes, nucleus_offsets=sp.offsets, nucleus_max=nucleus_max)
    m = decided_metrics(y, probs, target.classes, decided)
    cal = apply_temperature(probs, target.temperature)
    m["sources"] = by_source(y, cal, target.classes, sp.sources, sp.types, DEFAULT_THRESHOLD, scores, thr, sp.offsets, nucleus_max, target.lab_check)
    m["other"] = other_report(y, cal, scores, thr, target.classes, sp.sources, sp.types, offsets=sp.offsets, nucleus_max=nucleus_max)
    m["blasts"] = blast_report(y, cal, target.classes, decided, sp.sources, DEFAULT_THRESHOLD, sp.offsets, nucleus_max)
    m.update(
        {
            "split": split,
            "model": str(target.model_path),
            "kind": target.kind,
            "temperature": target.temperature,
            "ece": expected_calibration_error(y, probs),
            "ece_calibrated": expected_calibration_error(y, cal),
            "risk_coverage": risk_coverage(y, cal, target.classes, decided, sp.offsets),
            "folders": sp.roots,  # what each record's `file` is relative to, by its `source`
            "skipped": sp.skipped,
        }
    )
    if stain:
        from edgecell.console import progress
        from edgecell.stain import family

        with progress(con, transient=True) as bar:
            task = bar.add_task("stain shifts", total=len(family()))
            m["stain_shift"] = stain_shift(
                predictor,
                x,
                y,
                target.classes,
                target.temperature,
                seed,
                probs,
                on_step=lambda name: bar.update(task, advance=1, description=f"stain shift: {name}"),
            )
    from firmware_host.metadata import report_head

    m = report_head(JSON_FORMAT) | m
    out = Path(out_dir) if out_dir else ((target.run_dir or target.model_path.parent) / EVALUATION_DIR)
    stem = output_stem(target.kind, split, sp.folders)
    records = image_records(sp, cal, target.classes, DEFAULT_THRESHOLD, scores, thr, nucleus_max)
    m["outputs"] = {
        "metrics": str(out / f"{stem}_metrics.json"),
        "predictions": str(out / f"{stem}_predictions.jsonl"),
        "confusion_matrix": str(out / f"{stem}_confusion_matrix.png"),
        "reliability": str(out / f"{stem}_reliability.png"),
    }
    curve = m["other"].get("curve")
    if curve:
        m["outputs"] |= {"other": str(out / f"{stem}_other.json"), "other_curve": str(out / f"{stem}_other.png")}
    with file_set(out, [f"{stem}_{name}" for name in EVALUATION_OUTPUTS]) as stage:  # one evaluation's files, never two mixed
        write_json(stage / f"{stem}_metrics.json", m)
        write_text(stage / f"{stem}_predictions.jsonl", "".join(json_text(r, indent=None) + "\n" for r in records))  # JSON Lines
        confusion_matrix_png(stage / f"{stem}_confusion_matrix.png", m["confusion_matrix"], target.classes, f"{target.kind}, {split} split (n={m['n']})")
        reliability_png(stage / f"{stem}_reliability.png", y, {"uncalibrated": probs, f"T={target.temperature:.2f}": cal})
        if curve:
            write_json(stage / f"{stem}_other.json", m["other"])
            other_curve_png(stage / f"{stem}_other.png", curve, thr, f"{target.kind}, {split} split: the other decision against the threshold")
    return m
