"""Adapting a trained run to a clinic's own microscope from a few dozen labelled cells.

::

    from edgecell.adapt import AdaptOptions, adapt
    res = adapt(AdaptOptions(run_dir="runs/cells", data_dir=("clinic/labelled",), out_dir="runs/clinic"))
    res.report["local_holdout"]["after"]["accuracy"]

By default (``method="prototypes"``) the parent's network is kept as it is and its last layers become a
nearest-prototype head: one prototype per cell type of a seeded replay sample of the parent's own
training split, and one per cell type of the clinic's labelled images (class folders, as for ``train``;
lymphocyte, eosinophil, ... folders teach ``other``) (:func:`fit_prototypes`,
:func:`edgecell.model.with_prototypes`). With ``method="fine-tune"`` the model is trained on the labelled
images mixed with the replay, so the labs it learnt from are not forgotten; a class with no local image is
kept and trained from the replay alone. ``method="fine-tune+prototypes"`` does both: fine-tunes, then puts the
prototype head on the fine-tuned network (the parent's labs kept within a point on both held-out labs measured;
minutes, not seconds). Afterwards the post-fit calibration is fitted again on the parent's
validation split exactly as ``train`` fits it (:func:`edgecell.train.calibrate`).

A seeded, stratified share of the local images (``holdout_share``) is held out and never trained
on: the report gives, before and after, on that hold-out and on the parent's test split, accuracy,
macro-F1, the flagged share and the share wrong and not flagged.

The new run folder has the layout of a trained one (``convert`` and ``evaluate`` take it
unchanged): its ``split.csv`` is the parent's plus the local images (trained on: ``train``; held
out: ``test``), its metadata records the local sources next to the parent's, and ``adapted_from``
gives the lineage (parent run, its model's SHA-256, the local data fingerprint and counts).
``adapt.json`` holds the before/after report.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from rich.console import Console

from edgecell import __version__
from edgecell import data as data_mod
from edgecell.console import progress, stderr_console
from edgecell.options import DEFAULT_SEED
from edgecell.runfolder import ADAPT_FILE, KERAS_FILE, RUN_MARKER, RUN_OWNED, SPLIT_FILE, RunFolder, replacing
from firmware_host.atomic import check_stageable, staged_dir, write_json
from firmware_host.errors import DataError, EdgecellError
from firmware_host.metadata import sha256_file

DEFAULT_EPOCHS = 40
"""Fine-tuning epochs (each: the replay sample plus the local images, repeated to :data:`LOCAL_SHARE`)."""
DEFAULT_HOLDOUT_SHARE = 0.25
"""Share of each local class (and cell type) held out for the before/after report."""
DEFAULT_REPLAY_PER_CLASS = 300
"""Images per class drawn (seeded) from the parent's training split and trained on again."""
MIN_REPLAY_PER_CLASS = 10
"""The fewest replayed images per class: they give the parent's prototypes and the spread of its features (one image
per class gives no spread at all, and a head of infinities)."""
DEFAULT_LEARNING_RATE = 1e-3
"""Initial fine-tuning learning rate (half of training's; cosine decay as in training). At a tenth of this the
local cells were not learnt (docs/design.md, "Adapting to a clinic's lab")."""
LOCAL_SHARE = 0.5
"""Share of each epoch's images that are local: the few local images are repeated (and augmented) to reach it."""
RECOMMENDED_PER_CLASS = 20
"""Labelled local cells per class that adapting is designed for (20 to 50)."""
MIN_PER_CLASS = 2
"""Local images a class needs to give one to training and hold one out."""
REPORT_FILE = ADAPT_FILE
METHODS = ("prototypes", "fine-tune", "fine-tune+prototypes")
"""How ``adapt`` fits the model: adding the local cell types as prototypes to a nearest-prototype head over the
parent's unchanged features (:func:`fit_prototypes`), fine-tuning every layer on the local cells and a replay, or
fine-tuning and then adding prototypes over the fine-tuned features."""
PROTOTYPE_METHODS = frozenset({"prototypes", "fine-tune+prototypes"})
"""The methods whose run has a prototype head (which fine-tuning cannot train again)."""
DEFAULT_METHOD = "prototypes"
"""Prototypes take seconds and name as many of a held-out lab's cells as fine-tuning and then prototypes (75 and 83 %
of BCCD's and Barcelona's rest, against 77 and 81 %; fine-tuning alone 79 and 68 %), which take minutes. On the
parent's own test split prototypes lose 2.1 points on the parent without Barcelona (flagged `other`), where
fine-tuning and then prototypes keep both parents within a point (docs/design.md, "Fine-tuning, then prototypes")."""
PROTOTYPE_SHRINK = 0.01
"""Share of the within-type covariance replaced by its mean variance (shrinkage: a few thousand replay images
estimate a covariance of a few hundred features; docs/design.md, "Adapting by prototypes")."""
LABEL_CHECK_MIN = 5
"""The fewest local cells of a type over which :func:`label_check` reads what the parent called them."""
LABEL_CHECK_SHARE = 0.5
"""A type more than this share of whose cells the parent names one other class..."""
LABEL_CHECK_CONFIDENCE = 0.8
"""...with at least this mean confidence (calibrated) is said before adapting: a folder of the wrong cells (a review
adapted to 25 neutrophils filed as basophils, and nothing said so) or a type the parent reads wrongly on this lab."""
MAX_ORIGINAL_DROP = 1.0
"""Points of accuracy on the run's own test split that adapting may lose before :func:`report_warnings` says so
(issue #19's bar)."""
MAX_WRONG_UNFLAGGED_RISE = 0.5
"""Points by which the share wrong and not flagged may rise on either set (and by at least
:data:`MIN_WRONG_UNFLAGGED_CELLS` cells) before :func:`report_warnings` says so: the errors no one is asked to check."""
MIN_WRONG_UNFLAGGED_CELLS = 2
"""More cells wrong and not flagged than before that :func:`report_warnings` needs to speak: one is a cell, not a trend."""
SCALE_GRID = np.geomspace(1e-3, 10.0, 81)
"""Scales of the prototype head's outputs tried (the one that fits the parent's validation split best is kept)."""


@dataclass
class AdaptOptions:
    """What ``edgecell adapt`` was asked to do.

    Attributes:
        run_dir: the trained run to start from (never modified).
        data_dir: the clinic's labelled folder(s): class folders, or source folders of class folders.
        out_dir: the new run folder.
        parent_data: where the parent's training data is, when it has moved (default: as recorded).
        epochs, learning_rate, batch_size: fine-tuning.
        holdout_share: share of each local class held out for the report (0: none held out).
        replay_per_class: images per class replayed from the parent's training split.
        seed: seeds the hold-out, the replay pick, augmentation and shuffling.
        method: one of :data:`METHODS`; with ``prototypes`` (the default) the epochs and learning rate are not
            used, and the replay gives the parent's type means and the features' covariance (after fine-tuning,
            with ``fine-tune+prototypes``).
    """

    run_dir: str
    data_dir: tuple[str, ...]
    out_dir: str
    parent_data: tuple[str, ...] = ()
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = 32
    holdout_share: float = DEFAULT_HOLDOUT_SHARE
    replay_per_class: int = DEFAULT_REPLAY_PER_CLASS
    seed: int = DEFAULT_SEED
    method: str = DEFAULT_METHOD


@dataclass
class AdaptResult:
    """What adapting produced: the new run folder and the before/after report (``adapt.json``)."""

    run_dir: Path
    report: dict
    seconds: float
    advice: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- choosing images


def holdout(samples: Sequence[data_mod.Sample], share: float, seed: int) -> np.ndarray:
    """Which local samples are held out: a seeded share of every (class, cell type) stratum, at
    least one and never all of it; copies of one image (same SHA-256) stay together."""
    out = np.zeros(len(samples), dtype=bool)
    if share <= 0:
        return out
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, s in enumerate(samples):
        strata[(s.label, s.type)][s.sha256].append(i)
    for key in sorted(strata):
        groups = [strata[key][h] for h in sorted(strata[key])]
        if len(groups) < MIN_PER_CLASS:
            continue  # one image (or one image in copies): it trains; the class's other types give the hold-out
        want = min(max(1, round(share * len(groups))), len(groups) - 1)
        for gi in rng.permutation(len(groups))[:want]:
            out[groups[gi]] = True
    return out


def check_local(ds: data_mod.Dataset, held: np.ndarray, share: float) -> list[str]:
    """Refuse a local set too small to train on and hold anything out; returns advice lines for
    cell types below :data:`RECOMMENDED_PER_CLASS`."""
    counts = ds.counts()
    present = {c: n for c, n in counts.items() if n}
    if share > 0:
        short = sorted(c for c in present if not held[[i for i, s in enumerate(ds.samples) if s.label == c]].any())
        if short:
            # holdout() holds out of each cell type with two or more different images (copies count once)
            distinct: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
            for s in ds.samples:
                distinct[s.label][s.type].add(s.sha256)
            listed = "; ".join(f"{c}: " + ", ".join(str(len(h)) if t == c else f"{len(h)} {t}" for t, h in sorted(distinct[c].items())) for c in short)
            # named by the class folders that hold them (with several --data folders, not the first one's)
            folders = sorted({ds.sources[s.source] / s.rel.split("/", 1)[0] for s in ds.samples if s.label in short})
            where = folders[0] if len(folders) == 1 else ds.root
            found_in = f" (in {', '.join(map(str, folders))})" if len(folders) > 1 else ""
            raise DataError(
                f"too few labelled cells to hold any out ({listed}{found_in}; copies of one image count once): each class needs "
                f"{MIN_PER_CLASS} or more different cells of one type ({RECOMMENDED_PER_CLASS} or more help); "
                "label more, or move the folder of such a class out of --data (the model keeps the class from its own "
                "training cells), or pass --holdout-share 0 to train on all of them without a local check",
                where,
            )
    # per cell type: each is a prototype of its own (a clinic's lymphocytes and eosinophils both teach `other`)
    per_type = Counter(s.type or s.label for s in ds.samples)
    return [f"{t}: {n} labelled; {RECOMMENDED_PER_CLASS - n} more would help" for t, n in sorted(per_type.items()) if n < RECOMMENDED_PER_CLASS]


def label_check(probs: np.ndarray, samples: Sequence[data_mod.Sample], classes: Sequence[str]) -> list[dict]:
    """For each local cell type (its folder) of :data:`LABEL_CHECK_MIN` cells or more: when the parent, before adapting,
    names most of them (:data:`LABEL_CHECK_SHARE`) one other class with a mean confidence of
    :data:`LABEL_CHECK_CONFIDENCE` or more, ``{"type", "label", "n", "named", "count", "mean_confidence"}``. ``probs``:
    the parent's calibrated probabilities of ``samples``. ``unflags_review``: the class named is one the runtime flags
    for review and the folder's is not."""
    from firmware_host.runtime import REVIEW_CLASSES

    by_type: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_type[(s.type or s.label, s.label)].append(i)
    out = []
    for (typ, label), idx in sorted(by_type.items()):
        if len(idx) < LABEL_CHECK_MIN:
            continue
        p = probs[idx]
        named, count = Counter(classes[k] for k in p.argmax(axis=1)).most_common(1)[0]
        if named == label or count <= LABEL_CHECK_SHARE * len(idx):
            continue
        mine = p.argmax(axis=1) == list(classes).index(named)
        confidence = float(p[mine].max(axis=1).mean())
        if confidence >= LABEL_CHECK_CONFIDENCE:
            out.append(
                {
                    "type": typ,
                    "label": label,
                    "n": len(idx),
                    "named": named,
                    "count": int(count),
                    "mean_confidence": round(confidence, 3),
                    # a review class (a possible blast) taught away: such cells would no longer be flagged
                    "unflags_review": named in REVIEW_CLASSES and label not in REVIEW_CLASSES,
                }
            )
    return out


def label_note(c: dict) -> str:
    """One line on a :func:`label_check` finding (a warning when ``unflags_review``, a note otherwise)."""
    line = (
        f"before adapting, the model named {c['count']} of your {c['n']} {c['type']} cells {c['named']} (mean confidence "
        f"{c['mean_confidence']:.2f}): if the folder is right, adapting teaches it that; if those cells are not {c['type']}, "
        "correct their labels first"
    )
    if c.get("unflags_review"):
        line += (
            f"; {c['named']} is flagged for a haematologist's review and {c['label']} is not, so the adapted model will stop "
            "flagging cells like these: have a haematologist confirm the labels before it is used"
        )
    return line


def report_warnings(rep: dict) -> list[str]:
    """Lines on what the adapted model does worse than its parent, from the before/after report (``adapt.json``):
    fewer of the local held-out cells right; more than :data:`MAX_ORIGINAL_DROP` points lost on the run's own test
    split; more cells wrong and not flagged on either (:data:`MAX_WRONG_UNFLAGGED_RISE`,
    :data:`MIN_WRONG_UNFLAGGED_CELLS`); no local cell held out, so nothing measured on the lab. The run is written either
    way; these say when to keep the parent instead."""
    out = []
    for key, what in (("local_holdout", "your held-out cells"), ("original_test", "the run's own test split")):
        b, a = rep[key]["before"], rep[key]["after"]
        n = b["n"]
        if not n:  # nothing held out (--holdout-share 0): no figures (None), and said (a review: 3 cells, exit 0, "+2.1 pts")
            if key == "local_holdout":
                out.append(
                    "no local cell was held out (--holdout-share 0): nothing here measures the adapted model on your lab's "
                    "cells; the test split's figures are of the labs it was trained on"
                )
            continue
        if key == "local_holdout" and round(a["accuracy"] * n) < round(b["accuracy"] * n):
            out.append(
                f"on your {n} held-out cells the adapted model is right less often than the run it came from "
                f"({a['accuracy']:.1%} against {b['accuracy']:.1%}): keep that run, or label more cells and adapt it again"
            )
        drop = 100 * (b["accuracy"] - a["accuracy"])
        if key == "original_test" and drop > MAX_ORIGINAL_DROP:
            out.append(
                f"on the run's own test split ({n} cells of the labs it was trained on) the adapted model is right on "
                f"{drop:.1f} points fewer ({a['accuracy']:.1%} against {b['accuracy']:.1%}; more than {MAX_ORIGINAL_DROP:g}): it reads those labs worse"
            )
        more = round(a["wrong_unflagged"] * n) - round(b["wrong_unflagged"] * n)
        if more >= MIN_WRONG_UNFLAGGED_CELLS and 100 * (a["wrong_unflagged"] - b["wrong_unflagged"]) > MAX_WRONG_UNFLAGGED_RISE:
            out.append(
                f"on {what} ({n} cells) the share wrong and not flagged rose from {b['wrong_unflagged']:.1%} to "
                f"{a['wrong_unflagged']:.1%} ({more} more cells): errors no one would be asked to check"
            )
    return out


def adapted_sources(parent: RunFolder) -> list[str]:
    """The sources that earlier ``adapt`` runs added to ``parent`` (their labelled cells are training rows of its
    split), as its lineage records them (``adapted_from.adapted_sources``; for a run adapted before that was
    recorded, the sources of its own adapt)."""
    lineage = parent.extra.get("adapted_from") or {}
    return list(dict.fromkeys([*lineage.get("adapted_sources", []), *sorted((lineage.get("local_counts_by_type") or {}).keys())]))


def step_sources(run: RunFolder) -> list[str]:
    """The sources that the ``adapt`` which made ``run`` added (none for a trained run)."""
    return sorted(((run.extra.get("adapted_from") or {}).get("local_counts_by_type") or {}).keys())


def walk_back(parent: RunFolder, passing) -> tuple[str, list[RunFolder]]:
    """Follow ``adapted_from`` back from ``parent`` while ``passing(run)``: the first run that does not pass (its path;
    or the path recorded for the next one back, when that folder is gone or holds another run now), and the runs passed
    on the way.

    A recorded parent's folder counts as gone when its model is not the one recorded (``model_sha256``): a run replaced
    by one adapted from it would otherwise lead back to itself, for ever (R, then A adapted from R, then R replaced by
    a run adapted from A)."""
    run, passed, seen = parent, [], set()
    while passing(run):
        passed.append(run)
        seen.add(os.path.realpath(run.path))
        lineage = run.extra.get("adapted_from") or {}
        recorded = lineage.get("run", "?")
        try:
            earlier = RunFolder.read(recorded)
            same = sha256_file(earlier.keras_path) == lineage.get("model_sha256") if lineage.get("model_sha256") else True
        except (EdgecellError, OSError):
            return recorded, passed
        if not same or os.path.realpath(earlier.path) in seen:
            return recorded, passed
        run = earlier
    return str(run.path), passed


def adapted_by_prototypes(run: RunFolder) -> bool:
    """Whether ``run`` was made by an adapt method of :data:`PROTOTYPE_METHODS` (its outputs are prototypes, not a trained head)."""
    return (run.extra.get("adapted_from") or {}).get("method") in PROTOTYPE_METHODS


def run_before(parent: RunFolder, lab: str) -> tuple[str, list[str]]:
    """Where to adapt ``lab`` again from: the run before ``lab`` was first adapted into ``parent``'s lineage (or, when
    that run's folder is gone, the last one found on the way), and the labs adapted after it (they must be given
    again with it)."""
    start, passed = walk_back(parent, lambda run: lab in adapted_sources(run))
    return start, [s for run in reversed(passed) for s in step_sources(run) if s != lab]


def replay_rows_of(rows: Sequence[data_mod.ManifestRow], per_class: int, seed: int, adapted: Sequence[str] = ()) -> list[data_mod.ManifestRow]:
    """What adapting replays of the parent's training rows: a seeded pick (:func:`replay_pick`) of its labs' rows, and
    every row of the ``adapted`` sources (a few dozen labelled cells of a lab fitted before, kept whole)."""
    kept = set(adapted)
    train = [r for r in rows if r.split == "train"]
    return replay_pick([r for r in train if r.source not in kept], per_class, seed) + [r for r in train if r.source in kept]


def replay_pick(rows: Sequence[data_mod.ManifestRow], per_class: int, seed: int) -> list[data_mod.ManifestRow]:
    """A seeded pick of ``per_class`` training rows of each class, spread over its sources and types."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[data_mod.ManifestRow]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.label, r.source, r.type, r.sha256, r.file)):
        by_class[r.label].append(r)
    out = []
    for c in sorted(by_class):
        rs = by_class[c]
        out += [rs[i] for i in sorted(rng.permutation(len(rs))[:per_class])]
    return out


# --------------------------------------------------------------------------- the whole adaptation


@dataclass
class PrototypeHead:
    """A nearest-prototype head over pooled features ``f`` (:func:`edgecell.model.pooled_features`).

    ``z = (f - centre) @ whitening`` puts the features where the parent's within-type covariance is the identity,
    in the coordinates of the prototypes' span (the rest of that space changes no output, so it is left out);
    prototype ``k`` sits at ``means[k]`` there, and its output is ``z . means[k] - |means[k]|^2 / 2``: minus half
    the squared distance, plus ``|z|^2 / 2``, which is the same for every prototype (the softmax does not see it).
    Two linear steps, each well scaled, so that int8 keeps them (one step, the inverse covariance times the means,
    did not: docs/design.md, "Adapting by prototypes"). ``names``: each prototype's cell type.
    """

    centre: np.ndarray
    whitening: np.ndarray
    means: np.ndarray
    names: list[str]

    @property
    def bias(self) -> np.ndarray:
        return -0.5 * np.einsum("kd,kd->k", self.means, self.means)

    def whiten(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.centre) @ self.whitening

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.whiten(features) @ self.means.T + self.bias


def fit_prototypes(
    features: np.ndarray,
    types: Sequence[str],
    local_features: np.ndarray,
    local_types: Sequence[str],
    shrink: float = PROTOTYPE_SHRINK,
    groups: Sequence[str] | None = None,
) -> PrototypeHead:
    """One prototype per cell type of the parent's images (``features``, ``types``; per ``groups`` and type when
    given: a lab fitted by an earlier adapt keeps prototypes of its own), then one per local cell type, each the
    mean of its images; the distance is Mahalanobis, with the within-type covariance of the parent's images shrunk
    towards its mean variance by ``shrink``."""
    features, types = np.asarray(features, np.float64), np.asarray(types)
    groups = np.asarray(groups if groups is not None else [""] * len(types))
    keys = sorted(set(zip(groups.tolist(), types.tolist())))
    names = [t for _, t in keys]
    row_key = np.array([keys.index(k) for k in zip(groups.tolist(), types.tolist())], dtype=np.int64)
    means = np.stack([features[row_key == i].mean(axis=0) for i in range(len(keys))])
    cov = np.cov(features - means[row_key], rowvar=False)
    cov = (1.0 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
    values, vectors = np.linalg.eigh(cov)
    if not np.isfinite(values).all() or values.min() <= 0:
        raise EdgecellError(f"the replayed images' features do not vary (a head of infinities); replay more images (--replay, at least {MIN_REPLAY_PER_CLASS})")
    head = PrototypeHead(features.mean(axis=0), vectors / np.sqrt(values), np.zeros((0, len(cov))), [])
    local_types = np.asarray(local_types)
    local_names = sorted(set(local_types.tolist()))
    if local_names:
        local = np.asarray(local_features, np.float64)
        means = np.concatenate([means, np.stack([local[local_types == t].mean(axis=0) for t in local_names])])
    head.means, head.names = head.whiten(means), names + local_names
    # the outputs read the whitened features along the prototypes' span only: keep just those directions (the same
    # outputs, a whitening of one column per prototype rather than one per feature: 50 KB less in int8)
    basis, _ = np.linalg.qr(head.means.T)
    head.whitening, head.means = head.whitening @ basis, head.means @ basis
    return head


def fit_scale(logits: np.ndarray, merge: np.ndarray, y: np.ndarray) -> float:
    """The scale of the prototype head's outputs (from :data:`SCALE_GRID`) whose class probabilities (the prototypes'
    softmax, added up by ``merge``) give the labels ``y`` the highest likelihood. ``logits``: (images, prototypes),
    or (views, images, prototypes) for a model that averages the probabilities of mirrored views, as it does."""
    from scipy.special import logsumexp

    logits = logits if logits.ndim == 3 else logits[None]

    def nll(scale: float) -> float:
        z = scale * logits
        probs = np.exp(z - logsumexp(z, axis=2, keepdims=True)).mean(axis=0) @ merge
        log_p = np.log(np.maximum(probs, 1e-300))
        return float(-log_p[np.arange(len(y)), y].mean())

    return float(min(SCALE_GRID, key=nll))


def freeze_batchnorm(model) -> None:
    """Every batch normalisation layer keeps the parent's statistics (and runs in inference mode):
    a few dozen local images, repeated, would otherwise drag statistics learnt from thousands."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _load_rows(roots: dict, rows: list, size: int, classes: Sequence[str], con: Console, what: str):
    """Images, labels and nucleus offsets of manifest rows."""
    with progress(con, transient=True) as bar:
        task = bar.add_task(f"reading {what}", total=len(rows))
        x, y, _, offsets = data_mod.load_cells_from_manifest(roots, rows, size, classes, on_progress=lambda d, n: bar.update(task, completed=d))
    return x, y, offsets


def _train_options(parent: RunFolder, opts: AdaptOptions, views: int):
    """The parent's training options, with adapt's learning rate, batch and seed, and the parent model's views."""
    from edgecell.train import TrainOptions

    recorded = parent.extra.get("options") or {}
    names = {f.name for f in fields(TrainOptions)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items() if k in names}
    kw.update(
        data_dir=opts.data_dir,
        out_dir=opts.out_dir,
        img_size=parent.input_size,
        learning_rate=opts.learning_rate,
        batch_size=opts.batch_size,
        seed=opts.seed,
        augment=True,
        views=views,
    )
    return TrainOptions(**kw)


def view_features(net, x: np.ndarray, views: int) -> np.ndarray:
    """(views, images, features): the Keras ``net``'s output on each of the first ``views`` mirrored views of each
    image (:mod:`firmware_host.mirrors`, the order the model and the Pi average them in)."""
    from edgecell.model import run_batches
    from firmware_host.mirrors import view

    return np.stack([run_batches(net, np.stack([view(im, k) for im in x]) if len(x) else x)[0] for k in range(views)])


def _add_prototypes(model, classes: Sequence[str], x_replay, replay_types, replay_groups, x_loc, local_types, x_val, y_val):
    """``model`` with a nearest-prototype head (:func:`edgecell.model.with_prototypes`): the replay's cell types (per
    ``replay_groups``, :func:`fit_prototypes`) and the local ones as prototypes, its scale fitted on the parent's
    validation split. Every image counts once per mirrored view the model averages (the views' features are the
    head's input on the Pi too). Returns the model, its outputs' cell types and the seconds it took."""
    from edgecell.model import merge_matrix, pooled_features, views_of, with_prototypes

    t0 = time.perf_counter()
    net, views = pooled_features(model), views_of(model)

    def pooled(x: np.ndarray) -> np.ndarray:
        return view_features(net, x, views)

    def flat(f: np.ndarray) -> np.ndarray:
        return f.reshape(-1, f.shape[-1])

    f_replay, f_loc = pooled(x_replay), pooled(x_loc)
    head = fit_prototypes(flat(f_replay), list(replay_types) * views, flat(f_loc), list(local_types) * views, groups=list(replay_groups) * views)
    scale = fit_scale(head.logits(pooled(x_val)), merge_matrix(head.names, list(classes)), y_val)
    return with_prototypes(model, head, scale, list(classes)), head.names, time.perf_counter() - t0


def adapt(opts: AdaptOptions, con: Console | None = None) -> AdaptResult:
    """Fit ``opts.run_dir`` to the local images (by ``opts.method``) and write the new run folder ``opts.out_dir``."""
    from edgecell.evaluate import outcomes
    from edgecell.metrics import apply_temperature
    from edgecell.model import learnt_outputs, predict_with_features, target_matrix, views_of
    from edgecell.train import calibrate, fit, predict, report_skipped, write_results
    from firmware_host.otherscore import OtherScore, decide
    from firmware_host.runtime import DEFAULT_THRESHOLD

    con = con or stderr_console
    if opts.method not in METHODS:
        raise EdgecellError(f"unknown adapt method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.replay_per_class < MIN_REPLAY_PER_CLASS:
        raise EdgecellError(f"--replay must be at least {MIN_REPLAY_PER_CLASS} images per class (got {opts.replay_per_class})")
    if not 0 <= opts.holdout_share < 1:
        raise EdgecellError(f"--holdout-share must be at least 0 and below 1 (got {opts.holdout_share})")
    parent = RunFolder.read(opts.run_dir)
    split_path = parent.require_split(" (adapting replays the parent's training split)")
    parent.require_keras()  # before reading the local and replayed images
    if Path(opts.out_dir).resolve() == parent.path.resolve():
        raise EdgecellError("--out is the run being adapted; give a new folder (the parent run is never changed)", opts.out_dir)
    check_stageable(opts.out_dir, marker=RUN_MARKER, owned=RUN_OWNED)
    classes, size = parent.classes, parent.input_size
    if opts.method != "prototypes" and adapted_by_prototypes(parent):
        # its outputs are prototypes, two of a type for a lab adapted before; training them would mix the labs up
        start, _ = walk_back(parent, adapted_by_prototypes)
        where = (
            "a trained run (the one before any prototypes has been replaced since)"
            if os.path.realpath(start) == os.path.realpath(parent.path)
            else f"{start} (the run before any prototypes)"
        )
        raise EdgecellError(
            f"this run was adapted by prototypes, which fine-tuning cannot train; fine-tune {where} with every lab's labelled cells", parent.path
        )
    try:
        roots = parent.sources(opts.parent_data)
    except DataError as exc:
        if opts.parent_data:
            raise
        raise DataError("the parent run's training data is not there (adapt replays some of it); pass --parent-data DIR", exc.path) from None

    with progress(con, transient=True) as bar:
        task = bar.add_task("reading local images", total=None)
        local = data_mod.scan_for_model(list(opts.data_dir), classes, size, on_progress=lambda d, n: bar.update(task, completed=d, total=n))
    report_skipped(local, con)
    earlier = adapted_sources(parent)
    rows = data_mod.read_manifest(split_path)

    def again_from(lab: str) -> str:
        start, later = run_before(parent, lab)
        also = f", then adapt the result to {', '.join(later)} again" if later else ""
        return f"adapt {start} again with all of {lab}'s labelled cells{also}"

    clash = sorted(set(local.sources) & {r.source for r in rows if r.source})  # the names the parent's split records
    if clash and clash[0] in earlier:
        raise DataError(f"this run was already adapted to {clash[0]!r}; {again_from(clash[0])}", local.sources[clash[0]])
    source_of = {r.sha256: r.source for r in rows}
    again = [s for s in local.samples if s.sha256 in source_of]
    if again:  # they teach the run nothing new, and one held out would make the before/after a test on training cells
        lab = source_of[again[0].sha256]
        instead = again_from(lab) if lab in earlier else "give cells the run has not seen"
        raise DataError(
            f"{len(again)} local image(s) are already in the run's split (first: {again[0].rel}); leave them out, or {instead}",
            local.sources[again[0].source],
        )
    if clash:
        raise DataError(
            f"local source {clash[0]!r} has the name of one of the parent run's sources; give it another name (--data NAME=FOLDER)",
            local.sources[clash[0]],
        )
    held = holdout(local.samples, opts.holdout_share, opts.seed)
    advice = check_local(local, held, opts.holdout_share)
    index = {c: i for i, c in enumerate(classes)}
    y_local = np.array([index[s.label] for s in local.samples], dtype=np.int64)

    replay_rows = replay_rows_of(rows, opts.replay_per_class, opts.seed, earlier)
    val_rows = [r for r in rows if r.split == "val"]
    test_rows = [r for r in rows if r.split == "test"]
    x_replay, y_replay, o_replay = _load_rows(roots, replay_rows, size, classes, con, "replay images")
    x_val, y_val, _ = _load_rows(roots, val_rows, size, classes, con, "validation images")
    x_test, y_test, o_test = _load_rows(roots, test_rows, size, classes, con, "test images")
    x_hold, y_hold, o_hold = local.images[held], y_local[held], local.nucleus_offsets[held]
    x_loc, y_loc, o_loc = local.images[~held], y_local[~held], local.nucleus_offsets[~held]

    model = parent.load_keras()
    labels = label_check(apply_temperature(predict(model, local.images), parent.temperature), local.samples, classes)
    for c in labels:  # said before minutes of fine-tuning, so that a wrong folder can be stopped
        con.print(f"[yellow]{'warning' if c['unflags_review'] else 'note'}:[/yellow] {label_note(c)}", soft_wrap=True, highlight=False)

    def report(temperature: float, other_score: dict | None) -> dict:
        """What the runtime would say: calibrated, labelled ``other`` by the argmax or the never-seen score."""
        score = OtherScore.from_dict(other_score or {})
        out = {}
        for name, x, y, offsets in (("local_holdout", x_hold, y_hold, o_hold), ("original_test", x_test, y_test, o_test)):
            if score is None:
                probs, pred = predict(model, x), None
            else:
                probs, feats = predict_with_features(model, x)
                pred = decide(probs, score.scores(feats), score.threshold, classes, nucleus_offsets=offsets, nucleus_max=score.nucleus_max)
            out[name] = outcomes(y, apply_temperature(probs, temperature), classes, DEFAULT_THRESHOLD, pred, offsets)
        return out

    before = report(parent.temperature, parent.extra.get("other_score"))
    local_trained = [s for s, h in zip(local.samples, held) if not h]
    epochs = opts.epochs if opts.method != "prototypes" else 0  # what the report and lineage record
    groups = None  # the never-seen score's means: one per class, as train fits them
    seconds = 0.0
    if opts.method != "prototypes":
        repeat = max(1, round(LOCAL_SHARE / (1 - LOCAL_SHARE) * len(x_replay) / max(1, len(x_loc))))
        x_train = np.concatenate([x_replay, np.repeat(x_loc, repeat, axis=0)])
        y_train = np.concatenate([y_replay, np.repeat(y_loc, repeat)])
        # the model is trained on what it learnt (`other` as its types, edgecell.model.with_classes), then added up again
        learnt = parent.learnt_as
        outputs = learnt_outputs(model)  # the network itself: one image, one output per type (no views)
        freeze_batchnorm(outputs)

        def teach(samples) -> np.ndarray:
            return target_matrix([s.label for s in samples], [s.type for s in samples], learnt, list(classes))

        t_replay, t_loc = teach(replay_rows), teach(local_trained)
        # replayed images teach their labels only: the parent's own probabilities as part of their targets
        # (distillation) lost more of its labs (docs/design.md, "Adapting to a clinic's lab")
        targets = np.concatenate([t_replay, np.repeat(t_loc, repeat, axis=0)])
        hard = targets.argmax(axis=1)  # class weights follow these
        topts = _train_options(parent, opts, views_of(model))
        model, history, seconds = fit(
            x_train,
            hard,
            x_val,
            teach(val_rows).argmax(axis=1),
            len(learnt),
            topts,
            opts.epochs,
            con,
            label="adapt ",
            model=outputs,
            early_stopping=False,
            targets=targets,
            learn_as=(learnt, list(classes)),
        )
        offsets_train = np.concatenate([o_replay, np.repeat(o_loc, repeat)])  # the nucleus check clears the local cells too
    if opts.method != "fine-tune":
        replay_types, local_types = [r.type or r.label for r in replay_rows], [s.type for s in local_trained]
        # a lab fitted by an earlier adapt keeps its own prototypes (merged into its types' others, it would be lost)
        replay_groups = [r.source if r.source in earlier else "" for r in replay_rows]
        ft_seconds = seconds
        model, learnt, seconds = _add_prototypes(model, classes, x_replay, replay_types, replay_groups, x_loc, local_types, x_val, y_val)
        seconds += ft_seconds
        if opts.method == "prototypes":
            history: dict = {}
            repeat = 1
        x_train, y_train = np.concatenate([x_replay, x_loc]), np.concatenate([y_replay, y_loc])
        offsets_train = np.concatenate([o_replay, o_loc])
        # the never-seen score measures to the nearest prototype, so the lab's own cells are no longer "never seen"
        keys = [(g, t) for g, t in zip(replay_groups, replay_types)] + [("local:", t) for t in local_types]
        groups = np.unique([f"{g}\x00{t}" for g, t in keys], return_inverse=True)[1]
    # the never-seen score re-fitted (the features moved, or the local cells join its means), and the lab check on
    # the parent's validation sources
    cal = calibrate(model, x_val, y_val, classes, x_train, y_train, offsets_train, [r.source for r in val_rows], groups)
    labs = list(dict.fromkeys([*earlier, *sorted(local.sources)]))  # this adapt's and every earlier one's
    if cal["lab_check"]:  # the check's advice names them and how many labelled cells they gave
        cells = sum(r.split == "train" and r.source in earlier for r in rows) + len(x_loc)
        cal["lab_check"]["adapted_to"] = {"sources": labs, "cells": int(cells)}
    after = report(cal["temperature"], cal.get("other_score"))

    sets = {name: {"before": before[name], "after": after[name]} for name in before}
    rep = {
        **sets,
        "threshold": DEFAULT_THRESHOLD,
        "local": {
            "sources": {k: str(Path(v).resolve()) for k, v in local.sources.items()},
            "counts": {c: n for c, n in local.counts().items() if n},
            "trained": int((~held).sum()),
            "held_out": int(held.sum()),
            "holdout_share": opts.holdout_share,
        },
        "replay": {"per_class": opts.replay_per_class, "images": len(replay_rows), "local_repeat": repeat},
        "method": opts.method,
        "epochs": epochs,
        "seconds": seconds,
        "advice": advice,
        "label_check": labels,
    }
    rep["warnings"] = report_warnings(rep)
    local_rows = [data_mod.ManifestRow(s.rel, s.label, "test" if h else "train", s.sha256, s.source, s.type) for s, h in zip(local.samples, held)]
    new_rows = rows + local_rows
    replaced = replacing(opts.out_dir)
    with staged_dir(opts.out_dir, marker=RUN_MARKER, owned=RUN_OWNED) as tmp:
        data_mod.write_rows(tmp / SPLIT_FILE, new_rows)
        write_results(
            tmp,
            model,
            history,
            np.concatenate([x_test, x_hold]),
            np.concatenate([y_test, y_hold]),
            classes,
            cal["temperature"],
            cal["other_score"],
            np.concatenate([o_test, o_hold]),
        )
        write_json(tmp / REPORT_FILE, rep)
        meta = parent.to_dict()
        dataset = dict(parent.dataset)
        dataset["sources"] = {**{k: str(Path(v).resolve()) for k, v in roots.items() if k}, **rep["local"]["sources"]}
        counts: dict[str, int] = defaultdict(int)
        by_source: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in new_rows:
            counts[r.label] += 1
            by_source[r.source][r.type] += 1
        dataset["counts"] = {c: counts.get(c, 0) for c in classes}
        dataset["counts_by_source"] = {s: dict(sorted(t.items())) for s, t in sorted(by_source.items())}
        dataset["fingerprint"] = data_mod.rows_fingerprint(new_rows)
        split_counts = {sp: sum(1 for r in new_rows if r.split == sp) for sp in data_mod.SPLITS}
        meta.update(
            dataset=dataset,
            split={**(meta.get("split") or {}), **split_counts},
            **cal,
            adapted_from={
                "run": str(parent.path.resolve()),
                "model_sha256": sha256_file(parent.keras_path),
                "dataset_fingerprint": parent.dataset_fingerprint,
                "local_fingerprint": local.fingerprint(),
                "local_counts": rep["local"]["counts"],
                "local_counts_by_type": {k: dict(v) for k, v in local.counts_by_source().items()},
                "held_out": rep["local"]["held_out"],
                "method": opts.method,
                "adapted_sources": labs,
                "replay_per_class": opts.replay_per_class,
                "epochs": epochs,
                "learning_rate": opts.learning_rate if opts.method != "prototypes" else None,  # prototypes train nothing
                "seed": opts.seed,
                "seconds": seconds,
            },
            edgecell_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        meta["model"] = {**(meta.get("model") or {}), "learnt_as": list(learnt), "params": int(model.count_params()), "sha256": sha256_file(tmp / KERAS_FILE)}
        meta["training"] = {**(meta.get("training") or {}), "adapt_history": {k: v for k, v in history.items() if k in ("loss", "accuracy")}}
        RunFolder.from_dict(tmp, meta).write(tmp)
    if replaced:
        con.print(f"[yellow]note:[/yellow] {replaced}", soft_wrap=True)
    return AdaptResult(Path(opts.out_dir), rep, seconds, advice)


def report_table(rep: dict):
    """Rich table of the before/after report: one row per (set, measure)."""
    from rich.table import Table

    n = rep["local_holdout"]["before"]["n"]
    # a few dozen held-out cells move the figures in steps a person may read as gains (a review: +20.8 pts on 24)
    caption = f"with {n} local held-out cells, each cell moves a share of them by {100 / n:.1f} points" if n else None
    t = Table(title=f"Before and after adapting (calibrated; flag threshold {rep['threshold']})", caption=caption, caption_justify="left")
    for col, just in (("set", "left"), ("n", "right"), ("measure", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        t.add_column(col, justify=just)
    names = {"local_holdout": "local, held out", "original_test": "original test split"}
    for key, label in names.items():
        b, a = rep[key]["before"], rep[key]["after"]
        if not b["n"]:
            t.add_row(label, "0", "(nothing held out)", "", "", "")
            continue
        for i, (m, what) in enumerate((("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("flagged", "flagged"), ("wrong_unflagged", "wrong, not flagged"))):
            fmt = "{:.3f}" if m == "macro_f1" else "{:.1%}"
            delta = a[m] - b[m]
            change = f"{delta:+.3f}" if m == "macro_f1" else f"{100 * delta:+.1f} pts"
            t.add_row(label if i == 0 else "", str(b["n"]) if i == 0 else "", what, fmt.format(b[m]), fmt.format(a[m]), change)
        t.add_section()
    return t
