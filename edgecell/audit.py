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

"Lab groups" are found from the data, not assumed: classes whose most common image size is the same
form one acquisition group. The lab-group accuracy of a model is the share of test images whose
predicted class is in the right group.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgecell import data as data_mod
from firmware_host.errors import DataError, EdgecellError, ImageError
from firmware_host.preprocess import IMAGE_SUFFIXES, MAX_PIXELS, MIN_SIDE, read_bytes

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


def image_features(data: bytes, path: str | os.PathLike = "<bytes>") -> dict[str, np.ndarray]:
    """The morphology-free features of one encoded image (see the module docstring)."""
    from PIL import Image, ImageOps

    from firmware_host.preprocess import _to_rgb

    if not data:
        raise ImageError("empty file (0 bytes)", path)
    # (no warnings.catch_warnings() here: it is not thread-safe, and this runs in a thread pool;
    # the size check below refuses decompression bombs before anything is decoded)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size  # from the header, before anything is decoded
        if w * h > MAX_PIXELS:
            raise ImageError(f"image is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit", path)
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"image is {w}x{h} pixels, too small to hold a cell", path)
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img))
        a = np.asarray(img, dtype=np.uint8)
        thumb = np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    except ImageError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"cannot decode image ({reason})", path) from None
    p = max(1, min(CORNER, a.shape[0] // 4, a.shape[1] // 4))
    corners = np.concatenate([a[:p, :p], a[:p, -p:], a[-p:, :p], a[-p:, -p:]]).reshape(-1, 3)
    flat = a.reshape(-1, 3)
    q = flat >> (8 - int(np.log2(HIST_BINS)))
    hist = np.concatenate([np.bincount(q[:, c], minlength=HIST_BINS) for c in range(3)]).astype(np.float32) / len(flat)
    return {
        "size": np.array([w, h], dtype=np.float32),
        "mean": flat.mean(axis=0, dtype=np.float64).astype(np.float32) / 255.0,
        "corner": corners.mean(axis=0, dtype=np.float64).astype(np.float32) / 255.0,
        "hist": hist,
        "thumb": thumb.reshape(-1),
    }


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
    """Read every image under ``root`` once: SHA-256 and features. Unusable files are skipped, not raised."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    by_name = {p.name: p for p in data_mod.list_class_folders(root)}
    if classes is not None:
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DataError(f"no folder for class(es) {', '.join(missing)} (found: {', '.join(by_name) or 'none'})", root)
        class_names = list(classes)
    else:
        class_names = sorted(by_name)
    if len(class_names) < 2:
        raise DataError(f"needs at least two class folders (one sub-folder of images per class); found {len(class_names)}", root)

    skipped: list[data_mod.Skipped] = []
    jobs: list[tuple[Path, str]] = []
    for name in class_names:
        for f in data_mod._candidate_files(by_name[name]):
            if f.is_dir() or not f.name.lower().endswith(IMAGE_SUFFIXES):
                skipped.append(data_mod.Skipped(str(f), "not an image file"))
            else:
                jobs.append((f, name))

    def work(job):
        path, label = job
        try:
            raw = read_bytes(path)
            feats = image_features(raw, path)
        except ImageError as exc:
            return None, data_mod.Skipped(str(path), exc.reason)
        return (data_mod.Sample(path.relative_to(root).as_posix(), label, hashlib.sha256(raw).hexdigest()), feats), None

    results = []
    pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
    try:
        for i, res in enumerate(pool.map(work, jobs)):
            results.append(res)
            if on_progress:
                on_progress(i + 1, len(jobs))
    finally:  # on Ctrl-C, drop the queued images instead of reading all of them first
        pool.shutdown(wait=True, cancel_futures=True)
    ok = [r for r, bad in results if bad is None]
    skipped += [bad for _, bad in results if bad is not None]
    # identical bytes under two classes: ambiguous, left out (as `edgecell.data.scan` does)
    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for s, _ in ok:
        labels_by_hash[s.sha256].add(s.label)
    conflicted = {h for h, labs in labels_by_hash.items() if len(labs) > 1}
    for s, _ in ok:
        if s.sha256 in conflicted:
            skipped.append(data_mod.Skipped(str(root / s.rel), "identical image also filed under another class: ambiguous label, left out"))
    ok = [(s, f) for s, f in ok if s.sha256 not in conflicted]
    if not ok:
        raise DataError("no usable images", root)
    features = {k: np.stack([f[k] for _, f in ok]) for k in ok[0][1]}
    return FeatureSet(root, class_names, [s for s, _ in ok], features, sorted(skipped, key=lambda s: s.path))


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
    manifest = Path(run_dir) / "split.csv"
    rows = data_mod.read_manifest(manifest)
    by_file = {s.rel: i for i, s in enumerate(fs.samples)}
    out = np.array([""] * len(fs.samples), dtype=object)
    missing = []
    for r in rows:
        i = by_file.get(r.file)
        if i is None:
            missing.append(r.file)
            continue
        if fs.samples[i].sha256 != r.sha256:
            raise DataError("file changed since the split manifest was written (SHA-256 differs)", fs.root / r.file)
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


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Standardise, fit a multinomial logistic regression, predict the test labels."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _model().fit(x_train, y_train).predict(x_test)


def chance_level(y_test: np.ndarray, n_classes: int) -> float:
    """Accuracy of always answering the commonest test class (0.2 for five balanced classes)."""
    return float(np.bincount(y_test, minlength=n_classes).max() / max(len(y_test), 1))


def chance_tolerance(chance: float, n_test: int) -> float:
    """How far the shuffled control may stray from chance: 3 binomial standard errors plus 2 points."""
    return float(3 * np.sqrt(chance * (1 - chance) / max(n_test, 1)) + 0.02)


# ----------------------------------------------------------------------------------------------
# The audit


def read_cnn(run_dir: str | os.PathLike, groups: list[dict], classes: Sequence[str]) -> dict | None:
    """The CNN's test metrics from the run's ``metrics.json`` (None if the run has none)."""
    p = Path(run_dir) / "metrics.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgecellError(f"unreadable metrics ({exc})", p) from None
    return {
        "source": str(p),
        "accuracy": float(m["accuracy"]),
        "macro_f1": float(m.get("macro_f1", float("nan"))),
        "n": int(m.get("n", 0)),
        "group_accuracy": group_accuracy_from_confusion(m["confusion_matrix"], groups, classes) if "confusion_matrix" in m else None,
        "within_group_accuracy": within_group_accuracy(*_from_confusion(m["confusion_matrix"]), groups, classes) if "confusion_matrix" in m else None,
    }


def audit(fs: FeatureSet, splits: np.ndarray, seed: int, cnn: dict | None = None, margin: float = DEFAULT_MARGIN,
          groups: list[dict] | None = None, repeats: int = SHUFFLE_REPEATS) -> dict:
    """Fit every baseline on the train split, score it on the test split, compare with ``cnn``."""
    from sklearn.metrics import f1_score

    y = fs.labels()
    tr, te = splits == "train", splits == "test"
    if not tr.any() or not te.any():
        raise DataError("the split has no training or no test images", fs.root)
    groups = groups if groups is not None else lab_groups(fs)
    k = len(fs.classes)
    labels = list(range(k))
    rows = []
    for name, desc, blocks in BASELINES:
        x = fs.block(blocks)
        pred = fit_predict(x[tr], y[tr], x[te])
        rows.append(
            {
                "name": name,
                "description": desc,
                "features": int(x.shape[1]),
                "accuracy": float((pred == y[te]).mean()),
                "macro_f1": float(f1_score(y[te], pred, labels=labels, average="macro", zero_division=0)),
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
    }
    result["warnings"] = warnings_for(result)
    return result


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
                    "another lab's slides do not share. Check it with `edgecell evaluate --stain-shift` and on another lab's slides."
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
        t.add_row("[bold]CNN[/bold] (metrics.json)", "", f"[bold]{cnn['accuracy']:.3f}[/bold]", fmt(cnn["macro_f1"]), fmt(cnn["group_accuracy"]),
                  fmt(cnn.get("within_group_accuracy")), "")
    t.caption = "lab group: share predicted into the right lab; within lab: accuracy among those" + (
        "; CNN lead: CNN accuracy minus the baseline's, in points" if cnn is not None else "")
    return t
