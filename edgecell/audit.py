"""Shortcut audit: how far do features that carry no cell morphology get on the same split?

In the Kaggle blood-cell set, three classes come from one lab (peach background, 360x363 px) and
two from another (lavender background, 400x400 px). A classifier can score well by recognising the
lab instead of the cell. The audit fits simple scikit-learn models (standardised features, then
multinomial logistic regression) on features that say nothing about a cell's shape:

- ``size``: the original width and height, read from the file header;
- ``mean colour``: mean RGB of the whole original image;
- ``corner colour``: mean RGB of the four 16x16 corner patches (the background);
- ``colour histogram``: 16 bins per channel, normalised;
- ``8x8 thumbnail``: the image shrunk to 8x8 pixels (192 numbers);
- ``all of the above``: the five concatenated;

and a control: the same model on all features with the *training labels shuffled*, which must land
at chance; if it does not, the split leaks. Each image is read once (in a thread pool); every
feature comes from that one decode. Test accuracies are set beside the CNN's (the run's
``metrics.json``) and a warning is raised when a baseline comes within ``margin`` points of it.

Accuracy alone cannot settle it (on the blood-cell set the colour histogram comes within a point of
the CNN), so every baseline, fit on the clean training images only, is also scored on the test images
under each stain shift of :func:`edgecell.stain.family` (hue, saturation, brightness, grayscale, a
background-tint swap between the labs, a seeded random mix): a model that reads the lab falls, one
that reads the cell holds. The shifts are applied to each test image at its original size (read and
decoded again, one image per worker at a time; random draws seeded per image by :func:`image_seed`);
the size features do not change. The CNN's figures under the same shifts are read from
``RUN/evaluation/keras_test_metrics.json`` (written by ``edgecell evaluate RUN --stain-shift``, which
applies them to the CNN's preprocessed input).

"Lab groups" are found from the data, not assumed: classes whose most common image size is the same
form one acquisition group. The lab-group accuracy of a model is the share of test images whose
predicted class is in the right group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecell import data as data_mod
from edgecell.runfolder import EVALUATION_DIR, METRICS_FILE, SPLIT_FILE
from firmware_host.errors import DataError, EdgecellError, first_line
from firmware_host.preprocess import read_bytes

CORNER = 16
"""Side of each corner patch used for the background colour, in original pixels."""
HIST_BINS = 16
THUMB = 8
DEFAULT_MARGIN = 3.0
"""Warn when a baseline's test accuracy is within this many percentage points of the CNN's."""
SHUFFLE_REPEATS = 3
MAX_ITER = 300
"""L-BFGS iterations: every baseline converges in under 200 on the blood-cell set; the shuffled control
(fitting noise) would take minutes to converge and scores chance either way."""

BASELINES = (
    ("size", "image size only (original width, height from the file header)", ("size",)),
    ("mean colour", "mean RGB of the whole image", ("mean",)),
    ("corner colour", f"mean RGB of the four {CORNER}x{CORNER} corner patches (background)", ("corner",)),
    ("colour histogram", f"{HIST_BINS}-bin histogram per channel", ("hist",)),
    (f"{THUMB}x{THUMB} thumbnail", f"the image shrunk to {THUMB}x{THUMB} pixels", ("thumb",)),
    ("all of the above", "the five feature sets together", ("size", "mean", "corner", "hist", "thumb")),
)
"""(name, description, feature blocks) of each baseline, in report order."""


# ----------------------------------------------------------------------------------------------
# Features: one decode per image


def decode_rgb(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[np.ndarray, tuple[int, int]]:
    """One encoded image as a ``uint8`` RGB array, upright (:func:`firmware_host.preprocess.decode_rgb`:
    its checks and conversions, at full resolution), and its (width, height) from the header."""
    from PIL import Image

    from firmware_host.preprocess import decode_rgb as decode_upright

    a = decode_upright(data, None, path)
    with Image.open(io.BytesIO(data)) as img:  # the header again: read, not decoded
        return a, img.size


_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.uint16)


def rgb_features(a: np.ndarray, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The morphology-free features of one decoded ``uint8`` RGB image ``(H, W, 3)`` (see the module docstring).

    ``size`` is the (width, height) from the file header; default: the array's own.
    """
    from PIL import Image

    a = np.asarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {a.dtype} {a.shape}")
    w, h = size if size is not None else (a.shape[1], a.shape[0])
    thumb = np.asarray(Image.fromarray(a).resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    p = max(1, min(CORNER, a.shape[0] // 4, a.shape[1] // 4))
    corners = np.concatenate([a[:p, :p], a[:p, -p:], a[-p:, :p], a[-p:, -p:]]).reshape(-1, 3)
    flat = a.reshape(-1, 3)
    # one pass: the 256-level count of each channel gives both the exact mean and the coarser histogram
    counts = np.bincount((flat.astype(np.uint16) + _CHANNEL_OFFSET).ravel(), minlength=768).reshape(3, 256)
    hist = counts.reshape(3, HIST_BINS, 256 // HIST_BINS).sum(axis=2).reshape(-1).astype(np.float32) / len(flat)
    mean = (counts @ np.arange(256, dtype=np.int64)) / len(flat)
    return {
        "size": np.array([w, h], dtype=np.float32),
        "mean": mean.astype(np.float32) / 255.0,
        "corner": corners.mean(axis=0, dtype=np.float64).astype(np.float32) / 255.0,
        "hist": hist,
        "thumb": thumb.reshape(-1),
    }


def image_features(data: bytes, path: str | os.PathLike = "<bytes>") -> dict[str, np.ndarray]:
    """The morphology-free features of one encoded image: :func:`decode_rgb` then :func:`rgb_features`."""
    a, size = decode_rgb(data, path)
    return rgb_features(a, size)


@dataclass
class FeatureSet:
    """Features of every usable image, aligned with ``samples``."""

    root: Path
    classes: list[str]
    samples: list[data_mod.Sample]
    features: dict[str, np.ndarray]
    skipped: list[data_mod.Skipped] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], dtype=np.int64)

    def block(self, names: Sequence[str]) -> np.ndarray:
        return np.concatenate([self.features[n] for n in names], axis=1)


def load_features(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> FeatureSet:
    """Read every image under ``root`` once: SHA-256 and features. Unusable files are skipped, not raised.

    The folder is walked and read as :func:`edgecell.data.scan` does (:func:`~edgecell.data.find_images`,
    :func:`~edgecell.data.read_images`, :func:`~edgecell.data.drop_ambiguous`): the same class
    folders (a lymphocyte folder teaches ``other``), the same files, the same refusals.
    """
    found = data_mod.find_images(root, classes)
    if len(found.sources) > 1:
        names = ", ".join(s.name for s in found.sources)
        raise DataError(f"holds several sources ({names}); the audit compares baselines within one: give --data one of them", found.root)
    ok = data_mod.drop_ambiguous(found, data_mod.read_images(found, image_features, on_progress, workers))
    if not ok:
        raise DataError("no usable images", found.root)
    features = {k: np.stack([f[k] for _, f in ok]) for k in ok[0][1]}
    return FeatureSet(found.root, found.classes, [s for s, _ in ok], features, sorted(found.skipped, key=lambda s: s.path))


# ----------------------------------------------------------------------------------------------
# Stain shift: the test images' features under each member of edgecell.stain.family()

_POINTWISE_PREFIXES = ("hue ", "saturation x", "brightness ")
_POINTWISE_NAMES = ("grayscale", "random mix")


def is_pointwise(name: str) -> bool:
    """Whether the family member ``name`` maps each pixel's colour on its own (the same colour always
    gives the same result within one image): hue, saturation, brightness, grayscale and random mix,
    whose draws are per image. Those are applied to the image's distinct colours only (a palette of
    about 20,000 instead of 160,000 pixels) with the same result, bit for bit; any other member (the
    background swap, which reads the image's border, and members added later) to the whole image."""
    return name.startswith(_POINTWISE_PREFIXES) or name in _POINTWISE_NAMES


def image_seed(seed: int, sha256: str) -> int:
    """The seed a stain perturbation gets for one image: ``seed`` XOR the first 32 bits of the image's SHA-256.

    :class:`edgecell.stain.Perturbation` then derives the member's own generator from it, as for a
    batch; one image gets the same draw whatever the order of the files or the split.
    """
    return (int(seed) ^ int(sha256[:8], 16)) & 0xFFFFFFFF


class _Palette:
    """The distinct colours of one image, as a 1 x U image, and where each pixel's colour sits in it."""

    def __init__(self, a: np.ndarray):
        code = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
        u, inv = np.unique(code.ravel(), return_inverse=True)
        self.colours = np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=-1).astype(np.uint8)[None]
        self.inverse = inv.ravel()
        self.shape = a.shape


def perturb(member, a: np.ndarray, seed: int, palette: _Palette | None = None) -> np.ndarray:
    """``member(a, seed)`` for one ``uint8`` RGB image, through ``palette`` when the member is pointwise."""
    if palette is not None and is_pointwise(member.name):
        return np.take(member(palette.colours, seed)[0], palette.inverse, axis=0).reshape(palette.shape)
    return member(a, seed)


def shifted_features(
    fs: FeatureSet,
    indices: Sequence[int],
    seed: int,
    members: Sequence | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Features of the images ``fs.samples[indices]`` under each stain-shift member: ``{member: {block: (n, d)}}``.

    Each image is read and decoded again (one at a time per worker, so memory stays bounded), each
    member of ``members`` (default: the whole :func:`edgecell.stain.family`) is applied to the
    original-size RGB image with :func:`image_seed`, and :func:`rgb_features` is computed from the
    result. The ``size`` block is the header's and does not change.
    """
    from edgecell import stain

    members = list(stain.family() if members is None else members)
    idx = [int(i) for i in indices]

    def work(i):
        sample = fs.samples[i]
        path = fs.root / sample.rel
        raw = read_bytes(path)
        if hashlib.sha256(raw).hexdigest() != sample.sha256:
            raise DataError("file changed while the audit was running (SHA-256 differs)", path)
        a, size = decode_rgb(raw, path)
        pal = _Palette(a)
        s = image_seed(seed, sample.sha256)
        return [rgb_features(perturb(m, a, s, pal), size) for m in members]

    rows = []
    for k, feats in enumerate(data_mod.map_in_threads(work, idx, workers)):
        rows.append(feats)
        if on_progress:
            on_progress(k + 1, len(idx))
    blocks = list(fs.features)
    return {
        m.name: {b: np.stack([r[j][b] for r in rows]) if rows else np.zeros((0,) + fs.features[b].shape[1:], np.float32) for b in blocks}
        for j, m in enumerate(members)
    }


def read_cnn_stain_shift(run_dir: str | os.PathLike | None) -> tuple[dict | None, str | None]:
    """The CNN's test accuracy under each stain shift, from ``RUN/evaluation/keras_test_metrics.json``.

    Returns ``(figures, None)`` or ``(None, note)``, the note saying where the figures come from.
    ``figures``: ``source``, ``seed``, ``n``, ``clean`` accuracy and ``shifted`` ``{member: accuracy}``.
    """
    if run_dir is None:
        return None, "No CNN figures without a run folder: `edgecell evaluate RUN --stain-shift` gives the CNN's accuracy under the same shifts"
    p = Path(run_dir) / EVALUATION_DIR / "keras_test_metrics.json"
    hint = f"`edgecell evaluate {run_dir} --stain-shift` writes the CNN's accuracy under the same shifts"
    if not p.is_file():
        return None, f"No CNN figures: {p} is missing; {hint}"
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
        s = m.get("stain_shift")
        if not s:
            return None, f"No CNN figures: {p} has no stain-shift section; {hint}"
        figures = {
            "source": str(p),
            "seed": s.get("seed"),
            "n": int(s["n"]),
            "clean": float(s["clean"]["accuracy"]),
            "shifted": {r["name"]: float(r["accuracy"]) for r in s["perturbations"]},
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgecellError(f"unreadable evaluation metrics ({type(exc).__name__}: {first_line(exc, '')})", p) from None
    return figures, None


# ----------------------------------------------------------------------------------------------
# Split, lab groups, models


def split_for(fs: FeatureSet, seed: int, run_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """The train/val/test assignment of each sample: the run's ``split.csv`` or :func:`make_split` with ``seed``."""
    if run_dir is None:
        counts = Counter(s.label for s in fs.samples)
        small = {c: counts.get(c, 0) for c in fs.classes if counts.get(c, 0) < data_mod.MIN_PER_CLASS}
        if small:
            desc = ", ".join(f"{c} has {n}" for c, n in small.items())
            raise DataError(f"too few usable images: {desc} (each class needs at least {data_mod.MIN_PER_CLASS})", fs.root)
        ds = data_mod.Dataset(root=fs.root, classes=fs.classes, samples=fs.samples)
        return np.array(data_mod.make_split(ds, seed)), f"make_split(seed={seed})"
    manifest = Path(run_dir) / SPLIT_FILE
    rows = data_mod.read_manifest(manifest)
    # the audit reads one source: the split's rows of that source (one of a run of several; a run of one source
    # whose folder was moved or renamed has its rows under the old name)
    have = {s.source for s in fs.samples}
    if renamed := data_mod.renamed_source({r.source for r in rows}, have):
        rows = [dataclasses.replace(r, source=renamed[1]) for r in rows]
    recorded = {r.source for r in rows}
    if recorded and "" not in recorded and not have & recorded:
        raise DataError(
            f"is read as source {', '.join(sorted(have))}, which the run's split does not have (it has: {', '.join(sorted(recorded))}); "
            "give the folder as --data NAME=FOLDER with its name at training",
            fs.root,
        )
    rows = [r for r in rows if r.source in have or not r.source]
    by_file = {(s.source, s.rel): i for i, s in enumerate(fs.samples)}
    by_rel = {s.rel: i for i, s in enumerate(fs.samples)}  # rows without a source (split files of older runs)
    out = np.array([""] * len(fs.samples), dtype=object)
    missing = []
    for r in rows:
        i = by_file.get((r.source, r.file)) if r.source else by_rel.get(r.file)
        if i is None:
            missing.append(r.file)
            continue
        if fs.samples[i].sha256 != r.sha256:
            raise DataError(
                "is not the image of that name in the run's split (SHA-256 differs): changed since, or --data is not the folder the model was trained on",
                fs.root / r.file,
            )
        if fs.samples[i].label != r.label:
            raise DataError(f"filed under {fs.samples[i].label} but the split manifest says {r.label}", fs.root / r.file)
        out[i] = r.split
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the run's split are not usable here (first: {missing[0]}); is --data the folder the model was trained on?",
            fs.root,
        )
    return out.astype(str), str(manifest)


def lab_groups(fs: FeatureSet) -> list[dict]:
    """Classes grouped by their most common original image size (a proxy for lab and scanner)."""
    sizes = fs.features["size"].astype(int)
    y = fs.labels()
    modal = {}
    for i, c in enumerate(fs.classes):
        cnt = Counter(map(tuple, sizes[y == i]))
        modal[c] = cnt.most_common(1)[0][0] if cnt else None
    groups: dict[tuple, list[str]] = defaultdict(list)
    for c in fs.classes:
        if modal[c] is not None:
            groups[modal[c]].append(c)
    return [{"size": f"{w}x{h}", "classes": cs} for (w, h), cs in sorted(groups.items(), key=lambda t: fs.classes.index(t[1][0]))]


def group_accuracy(y_true: np.ndarray, y_pred: np.ndarray, groups: list[dict], classes: Sequence[str]) -> float | None:
    """Share of predictions in the right lab group; None when there are fewer than two groups or one per class."""
    if not (2 <= len(groups) < len(classes)):
        return None
    gid = np.zeros(len(classes), dtype=np.int64)
    for g, grp in enumerate(groups):
        for c in grp["classes"]:
            gid[list(classes).index(c)] = g
    return float((gid[y_true] == gid[y_pred]).mean())


def within_group_accuracy(y_true: np.ndarray, y_pred: np.ndarray, groups: list[dict], classes: Sequence[str]) -> float | None:
    """Accuracy among the test images whose prediction is in the right lab group: how well a model
    tells apart classes from the *same* lab. Near the in-group chance level for a pure lab shortcut."""
    if group_accuracy(y_true, y_pred, groups, classes) is None:
        return None
    gid = np.zeros(len(classes), dtype=np.int64)
    for g, grp in enumerate(groups):
        for c in grp["classes"]:
            gid[list(classes).index(c)] = g
    same = gid[y_true] == gid[y_pred]
    return float((y_true[same] == y_pred[same]).mean()) if same.any() else None


def _from_confusion(cm):
    cm = np.asarray(cm)
    t, p = np.nonzero(cm)
    return np.repeat(t, cm[t, p]), np.repeat(p, cm[t, p])


def group_accuracy_from_confusion(cm: Sequence[Sequence[int]], groups: list[dict], classes: Sequence[str]) -> float | None:
    return group_accuracy(*_from_confusion(cm), groups, classes)


def _model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, C=1.0))


def fit(x_train: np.ndarray, y_train: np.ndarray):
    """Standardise, fit a multinomial logistic regression; returns the fitted pipeline."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _model().fit(x_train, y_train)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Standardise, fit a multinomial logistic regression, predict the test labels."""
    return fit(x_train, y_train).predict(x_test)


def chance_level(y_test: np.ndarray, n_classes: int) -> float:
    """Accuracy of always answering the commonest test class (0.2 for five balanced classes)."""
    return float(np.bincount(y_test, minlength=n_classes).max() / max(len(y_test), 1))


def chance_tolerance(chance: float, n_test: int) -> float:
    """How far the shuffled control may stray from chance: 3 binomial standard errors plus 2 points."""
    return float(3 * np.sqrt(chance * (1 - chance) / max(n_test, 1)) + 0.02)


# ----------------------------------------------------------------------------------------------
# The audit


def read_cnn(run_dir: str | os.PathLike, groups: list[dict], classes: Sequence[str]) -> dict | None:
    """The CNN's test metrics from the run's ``metrics.json`` (None if the run has none): accuracy and macro-F1 of its
    argmax, as the baselines' are (``metrics.json``'s headline also sends cells to ``other`` by the never-seen score and
    the nucleus check, which no baseline has); the group accuracies from its confusion matrix."""
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgecellError(f"unreadable metrics ({exc})", p) from None
    alone = m.get("argmax") or m  # runs written before the headline was the labels classify gives hold the argmax's
    return {
        "source": str(p),
        "decision": "argmax",  # not metrics.json's headline (the labels classify gives): a script comparing the two is told
        "accuracy": float(alone["accuracy"]),
        "macro_f1": float(alone.get("macro_f1", float("nan"))),
        "n": int(m.get("n", 0)),
        "group_accuracy": group_accuracy_from_confusion(m["confusion_matrix"], groups, classes) if "confusion_matrix" in m else None,
        "within_group_accuracy": within_group_accuracy(*_from_confusion(m["confusion_matrix"]), groups, classes) if "confusion_matrix" in m else None,
    }


def _shift_summary(clean: float, shifted: dict[str, float]) -> dict:
    worst = min(shifted, key=shifted.get) if shifted else None
    return {
        "clean": clean,
        "shifted": shifted,
        "worst": None if worst is None else {"name": worst, "accuracy": shifted[worst], "drop_points": 100 * (clean - shifted[worst])},
    }


def audit(
    fs: FeatureSet,
    splits: np.ndarray,
    seed: int,
    cnn: dict | None = None,
    margin: float = DEFAULT_MARGIN,
    groups: list[dict] | None = None,
    repeats: int = SHUFFLE_REPEATS,
    shifted: dict[str, dict[str, np.ndarray]] | None = None,
    cnn_shift: dict | None = None,
    cnn_shift_note: str | None = None,
) -> dict:
    """Fit every baseline on the train split, score it on the test split, compare with ``cnn``.

    ``shifted``: features of the test images (in split order) under each stain shift, from
    :func:`shifted_features`; every baseline, fit on the clean training images, is scored on each.
    ``cnn_shift``/``cnn_shift_note``: :func:`read_cnn_stain_shift`. Without ``shifted``,
    ``result["stain_shift"]`` is None.
    """
    from edgecell.metrics import compute

    y = fs.labels()
    tr, te = splits == "train", splits == "test"
    if not tr.any() or not te.any():
        raise DataError(
            f"the split puts {int(tr.sum())} of these images in training and {int(te.sum())} in the test, and the audit fits on "
            "the one and scores on the other, so it needs both (a run adapted with --holdout-share 0 tests none of its lab's cells)",
            fs.root,
        )
    groups = groups if groups is not None else lab_groups(fs)
    k = len(fs.classes)
    rows = []
    shift_rows: dict[str, dict] = {}
    for name, desc, blocks in BASELINES:
        x = fs.block(blocks)
        model = fit(x[tr], y[tr])
        pred = model.predict(x[te])
        if shifted is not None:
            accs = {}
            for member, feats in shifted.items():
                xs = np.concatenate([feats[b] for b in blocks], axis=1)
                if len(xs) != int(te.sum()):
                    raise ValueError(f"stain-shift features for {len(xs)} images, the test split has {int(te.sum())}")
                accs[member] = float((model.predict(xs) == y[te]).mean())
            shift_rows[name] = _shift_summary(float((pred == y[te]).mean()), accs)
        rows.append(
            {
                "name": name,
                "description": desc,
                "features": int(x.shape[1]),
                "accuracy": float((pred == y[te]).mean()),
                "macro_f1": compute(y[te], None, fs.classes, pred)["macro_f1"],
                "group_accuracy": group_accuracy(y[te], pred, groups, fs.classes),
                "within_group_accuracy": within_group_accuracy(y[te], pred, groups, fs.classes),
            }
        )
    # control: the strongest feature set, labels shuffled within the training split
    rng = np.random.default_rng(seed)
    x_all = fs.block(BASELINES[-1][2])
    accs = []
    for _ in range(repeats):
        pred = fit_predict(x_all[tr], rng.permutation(y[tr]), x_all[te])
        accs.append(float((pred == y[te]).mean()))
    chance = chance_level(y[te], k)
    control = {
        "features": BASELINES[-1][0],
        "repeats": repeats,
        "accuracy": float(np.mean(accs)),
        "accuracies": accs,
        "chance": chance,
        "tolerance": chance_tolerance(chance, int(te.sum())),
    }
    control["at_chance"] = bool(abs(control["accuracy"] - chance) <= control["tolerance"])

    best = max(rows, key=lambda r: r["accuracy"])
    result = {
        "data": str(fs.root),
        "classes": list(fs.classes),
        "seed": seed,
        "n": {s: int((splits == s).sum()) for s in data_mod.SPLITS},
        "skipped": len(fs.skipped),
        "lab_groups": groups,
        "baselines": rows,
        "shuffled_control": control,
        "cnn": cnn,
        "margin_points": margin,
        "best_baseline": best["name"],
        "cnn_lead_points": None if cnn is None else 100 * (cnn["accuracy"] - best["accuracy"]),
        "stain_shift": None,
    }
    if shifted is not None:
        from edgecell import stain

        members = list(shifted)
        descriptions = {p.name: p.description for p in stain.family()}
        cnn_rows = None
        note = cnn_shift_note
        if cnn_shift is not None:
            missing = [m for m in members if m not in cnn_shift["shifted"]]
            if missing:
                note = f"No CNN figures: {cnn_shift['source']} has none for {', '.join(missing)}; re-run `edgecell evaluate --stain-shift`"
            else:
                cnn_rows = dict(
                    _shift_summary(cnn_shift["clean"], {m: cnn_shift["shifted"][m] for m in members}),
                    source=cnn_shift["source"],
                    seed=cnn_shift.get("seed"),
                    n=cnn_shift.get("n"),
                )
                if cnn_shift.get("n") is not None and cnn_shift["n"] != int(te.sum()):
                    note = f"The CNN's stain-shift figures are on {cnn_shift['n']} test images, the audit's on {int(te.sum())}"
        result["stain_shift"] = {
            "members": members,
            "descriptions": {m: descriptions.get(m, "") for m in members},
            "seed": seed,
            "per_image_seed": "seed XOR the first 32 bits of the image's SHA-256 (edgecell.audit.image_seed)",
            "applied_to": "each test image at its original size; models fit on the clean training images",
            "n": int(te.sum()),
            "baselines": shift_rows,
            "cnn": cnn_rows,
            "cnn_note": note,
        }
    result["warnings"] = warnings_for(result)
    return result


def _shift_figures(row: dict) -> str:
    """'W at worst (member; grayscale G, background swap B)' for one model's stain-shift summary."""
    if all(v == row["clean"] for v in row["shifted"].values()):
        return f"{row['clean']:.1%} under every shift (unchanged)"
    parts = [f"{m} {row['shifted'][m]:.1%}" for m in ("grayscale", "background swap") if m in row["shifted"] and m != row["worst"]["name"]]
    return f"{row['worst']['accuracy']:.1%} at worst ({row['worst']['name']}" + (f"; {', '.join(parts)})" if parts else ")")


def _shift_sentence(result: dict, name: str) -> str:
    """How baseline ``name`` and the CNN hold under stain shift, in words, for the near-CNN warning."""
    ss = result.get("stain_shift")
    row = (ss or {}).get("baselines", {}).get(name)
    if not row or row["worst"] is None:
        return "Check it with `edgecell evaluate --stain-shift` and on another lab's slides."
    text = f"Under stain shift (fit on clean training images, tested on shifted test images) the baseline scores {_shift_figures(row)}"
    c = ss.get("cnn")
    if c is None:
        return text + ". " + (ss.get("cnn_note") or "`edgecell evaluate RUN --stain-shift` gives the CNN's figures") + ". Check it on another lab's slides too."
    text += f" and the CNN {_shift_figures(c)}. "
    lead = 100 * (c["worst"]["accuracy"] - row["worst"]["accuracy"])
    if lead > result["margin_points"]:
        return text + (f"The CNN holds {lead:.1f} points better at worst, so it reads more than the lab's colours; still check it on another lab's slides.")
    return text + "The CNN holds no better than the baseline: its accuracy may rest on the same shortcut."


def stain_summary(result: dict) -> list[str]:
    """Plain-words lines on the stain shift: the best baseline (and the colour histogram, when it is not the best) beside the CNN."""
    ss = result.get("stain_shift")
    if not ss or not ss["baselines"]:
        return []

    def move(a: float, b: float) -> str:
        if b < a - 0.005:
            return f"falls from {a:.1%} to {b:.1%}"
        if b > a + 0.005:
            return f"rises from {a:.1%} to {b:.1%}"
        return f"holds at {b:.1%}"

    names = [n for n in dict.fromkeys([result["best_baseline"], "colour histogram"]) if n in ss["baselines"]]
    c = ss.get("cnn")
    out = []
    for m, words in (("background swap", "a background-tint swap"), ("grayscale", "grayscale")):
        if m not in ss["members"]:
            continue
        parts = [f"the '{n}' baseline {move(ss['baselines'][n]['clean'], ss['baselines'][n]['shifted'][m])}" for n in names]
        if c is not None:
            parts.append(f"the CNN {move(c['clean'], c['shifted'][m]).replace('falls', 'drops').replace('holds at', 'keeps')}")
        out.append(f"Under {words} " + "; ".join(parts) + ".")
    worst = [f"'{n}' {ss['baselines'][n]['worst']['accuracy']:.1%} ({ss['baselines'][n]['worst']['name']})" for n in names]
    if c is not None:
        worst.append(f"CNN {c['worst']['accuracy']:.1%} ({c['worst']['name']})")
    out.append("Worst stain shift: " + ", ".join(worst) + ".")
    if ss.get("cnn_note"):
        out.append(ss["cnn_note"] + ".")
    return out


def short_name(name: str) -> str:
    """A compact column header for a baseline ('colour histogram' -> 'colour hist.')."""
    return {"all of the above": "all", "colour histogram": "colour hist.", f"{THUMB}x{THUMB} thumbnail": f"{THUMB}x{THUMB} thumb"}.get(name, name)


def short_member(name: str) -> str:
    """A compact row label for a stain-shift member ('saturation x0.6' -> 'sat. x0.6')."""
    return name.replace(" deg", "").replace("saturation ", "sat. ").replace("brightness ", "bright. ").replace("background swap", "bg swap")


def stain_table(result: dict):
    """Test accuracy (%) of each baseline and the CNN, clean and under each stain shift, as a rich table.

    One row per shift and one column per model (the other way round, 14 columns, does not fit 80 characters).
    """
    from rich.table import Table

    ss = result["stain_shift"]
    models = list(ss["baselines"].items()) + [("CNN", ss.get("cnn"))]
    t = Table(title=f"Stain shift: test accuracy %, models fit on clean training images (n={ss['n']})")
    t.add_column("shift", no_wrap=True)
    for name, _ in models:
        t.add_column("[bold]CNN[/bold]" if name == "CNN" else short_name(name), justify="right")

    def cell(row, member=None):
        if row is None:
            return "-"
        v = row["clean"] if member is None else row["shifted"][member]
        text = f"{100 * v:.1f}"
        worst = member is not None and member == row["worst"]["name"] and row["worst"]["accuracy"] < row["clean"]
        return f"[bold red]{text}[/bold red]" if worst else text

    t.add_row("none (clean)", *(cell(r) for _, r in models))
    t.add_section()
    for m in ss["members"]:
        t.add_row(short_member(m), *(cell(r, m) for _, r in models))
    t.add_section()
    t.add_row("worst", *("-" if r is None else f"{100 * r['worst']['accuracy']:.1f}" for _, r in models))
    t.caption = (
        "baselines: each shift applied to the original-size test images; CNN: `edgecell evaluate --stain-shift` "
        "on its preprocessed input" + ("" if ss.get("cnn") is not None else " (not available: see below)") + "; red: each model's worst shift"
    )
    return t


def warnings_for(result: dict) -> list[str]:
    """The plain-words warnings of an audit result."""
    out = []
    cnn = result.get("cnn")
    margin = result["margin_points"]
    if cnn is not None:
        for r in result["baselines"]:
            gap = 100 * (cnn["accuracy"] - r["accuracy"])
            if gap <= margin:
                where = f"{-gap:.1f} points above" if gap < 0 else f"within {gap:.1f} points of"
                out.append(
                    f"the '{r['name']}' baseline reaches {r['accuracy']:.1%} test accuracy from size and colour statistics alone "
                    f"(without looking at a cell's shape), {where} the CNN ({cnn['accuracy']:.1%}). On this split the CNN's accuracy "
                    "does not show that it learnt cell morphology: it may rest on image size, background tint or stain colour, which "
                    "another lab's slides do not share. " + _shift_sentence(result, r["name"])
                )
    groups = result.get("lab_groups") or []
    size = next((r for r in result["baselines"] if r["name"] == "size"), None)
    if size and size.get("group_accuracy") is not None and size["group_accuracy"] >= 0.99:
        desc = " vs ".join(f"{'/'.join(g['classes'])} ({g['size']})" for g in groups)
        out.append(
            f"image size alone tells the acquisition groups apart ({size['group_accuracy']:.1%} of test images): {desc}. "
            "These classes come from different labs or scanners, so a model can score well by recognising the source instead of the cell."
        )
    c = result["shuffled_control"]
    if not c["at_chance"]:
        out.append(
            f"the shuffled-label control scores {c['accuracy']:.1%}, not chance ({c['chance']:.1%} ± {c['tolerance']:.1%}): "
            "the test split is not independent of the training labels (duplicates across splits?) or the audit is broken."
        )
    return out


def table(result: dict):
    """The audit as a rich table."""
    from rich.table import Table

    cnn = result.get("cnn")
    t = Table(title=f"Shortcut audit: baselines without cell shape, test split (n={result['n']['test']})")
    t.add_column("model")
    t.add_column("feat.", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("macro-F1", justify="right")
    t.add_column("lab group", justify="right")
    t.add_column("within lab", justify="right")
    if cnn is not None:
        t.add_column("CNN lead", justify="right")

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    for r in result["baselines"]:
        lead = None if cnn is None else 100 * (cnn["accuracy"] - r["accuracy"])
        style = "bold red" if lead is not None and lead <= result["margin_points"] else ""
        cells = [r["name"], str(r["features"]), fmt(r["accuracy"]), fmt(r["macro_f1"]), fmt(r["group_accuracy"]), fmt(r.get("within_group_accuracy"))]
        if cnn is not None:
            cells.append(f"[{style}]{lead:+.1f}[/{style}]" if style else fmt(lead, "+.1f"))
        t.add_row(*cells)
    t.add_section()
    c = result["shuffled_control"]
    pad = [""] * (len(t.columns) - 3)
    t.add_row("shuffled labels (control)", "", fmt(c["accuracy"]), *pad)
    t.add_row("chance", "", fmt(c["chance"]), *pad)
    if cnn is not None:
        t.add_section()
        t.add_row(
            "[bold]CNN[/bold] (argmax)",
            "",
            f"[bold]{cnn['accuracy']:.3f}[/bold]",
            fmt(cnn["macro_f1"]),
            fmt(cnn["group_accuracy"]),
            fmt(cnn.get("within_group_accuracy")),
            "",
        )
    t.caption = "lab group: share predicted into the right lab; within lab: accuracy among those" + (
        "; CNN: the run's metrics.json, its argmax as the baselines'; CNN lead: CNN accuracy minus the baseline's, in points" if cnn is not None else ""
    )
    return t
