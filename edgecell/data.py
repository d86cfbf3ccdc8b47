"""Reading a data folder, validating it, grouping duplicates and splitting it reproducibly.

The layout is the Kaggle "Blood Cell Images for Cancer Detection" one: ``ROOT/<class>/<image>``.
Nothing here imports TensorFlow or scikit-learn, so ``edgecell inspect`` runs anywhere.

The split manifest (``split.csv``: file, class, split, sha256) is written once per run, and every
later step (training, calibration selection, evaluation, parity) reads it, so no step ever tests
on a training image. Exact duplicates (same SHA-256) always land in the same split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_host.decode import map_in_threads  # re-exported: audit uses data_mod.map_in_threads
from firmware_host.errors import DataError, ImageError
from firmware_host.paths import list_files
from firmware_host.preprocess import IMAGE_SUFFIXES, decode, read_bytes

MIN_PER_CLASS = 5
"""A class needs at least this many usable images (one each for val and test, three to train)."""
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
MANIFEST_FIELDS = ("file", "class", "split", "sha256")


@dataclass
class Sample:
    """One usable image: ``rel`` is its POSIX path relative to the data root."""

    rel: str
    label: str
    sha256: str


@dataclass
class Skipped:
    """A file that was reported and left out, with the reason in one line."""

    path: str
    reason: str


@dataclass
class Dataset:
    """A validated data folder.

    Attributes:
        root: the data folder.
        classes: class names (sorted folder names).
        samples: usable images, in sorted order.
        skipped: files reported and left out (unreadable, not images, conflicting labels).
        images: preprocessed uint8 array (N, S, S, 3) aligned with ``samples``, if decoded.
        size: the size ``images`` were preprocessed to, or None.
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    images: np.ndarray | None = None
    size: int | None = None

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in self.classes}

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], dtype=np.int64)

    def duplicate_groups(self) -> list[list[Sample]]:
        """Groups of two or more samples with identical bytes."""
        by_hash: dict[str, list[Sample]] = defaultdict(list)
        for s in self.samples:
            by_hash[s.sha256].append(s)
        return [g for _, g in sorted(by_hash.items()) if len(g) > 1]

    def fingerprint(self) -> str:
        """SHA-256 over (file, class, hash) of every sample: names this exact data set."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.rel):
            h.update(f"{s.rel}\t{s.label}\t{s.sha256}\n".encode("utf-8", "surrogateescape"))  # names as their bytes
        return h.hexdigest()

    def path(self, sample: Sample) -> Path:
        return self.root / sample.rel

    def subset(self, indices: Sequence[int]) -> Dataset:
        idx = list(indices)
        return Dataset(
            root=self.root,
            classes=list(self.classes),
            samples=[self.samples[i] for i in idx],
            skipped=list(self.skipped),
            images=None if self.images is None else self.images[idx],
            size=self.size,
        )


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def list_class_folders(root: Path) -> list[Path]:
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    except OSError as exc:
        raise DataError(f"cannot list folder ({exc.strerror or exc})", root) from None
    return entries


def _candidate_files(folder: Path) -> list[Path]:
    return list_files(folder, image_named_dirs=True)  # a directory named like an image is a user error worth reporting


def scan(
    root: str | os.PathLike,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    min_per_class: int = MIN_PER_CLASS,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Dataset:
    """Read, hash and validate every image under ``root``.

    Each file is read once: its bytes are hashed and decoded with the shared preprocessing
    (to ``size`` pixels if given, else to a small size just to prove it decodes). Unreadable and
    non-image files are recorded in ``Dataset.skipped`` rather than raised. Raises
    :class:`DataError` for fewer than two classes or a class with fewer than ``min_per_class``
    usable images. ``classes`` restricts and orders the classes (folders not named are ignored;
    a named class with no folder is an error); with ``classes`` given (evaluating a model), one
    class is enough and a class folder without a usable image is allowed, as long as some
    image is usable. A :class:`DataError` about too few images carries ``.skipped``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    folders = list_class_folders(root)
    by_name = {p.name: p for p in folders}
    if classes is not None:
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DataError(f"no folder for class(es) {', '.join(missing)} (found: {', '.join(by_name) or 'none'})", root)
        class_names = list(classes)
    else:
        class_names = sorted(by_name)
    if classes is not None and not class_names:
        # Evaluating a model: any one of its classes is enough (e.g. a folder of only basophils).
        raise DataError(
            f"holds no class folder (one sub-folder of images per class, named after a model class; found: {', '.join(by_name) or 'none'})",
            root,
        )
    if classes is None and len(class_names) < 2:
        raise DataError(
            f"needs at least two class folders (one sub-folder of images per class); found {len(class_names)}" + (f": {class_names[0]}" if class_names else ""),
            root,
        )

    skipped: list[Skipped] = []
    jobs: list[tuple[Path, str]] = []
    for name in class_names:
        for f in _candidate_files(by_name[name]):
            if f.is_dir():
                skipped.append(Skipped(str(f), "is a directory, not an image file"))
            elif not f.name.lower().endswith(IMAGE_SUFFIXES):
                skipped.append(Skipped(str(f), f"not an image file (suffix {f.suffix or 'none'!r}; expected {', '.join(IMAGE_SUFFIXES)})"))
            else:
                jobs.append((f, name))

    decode_size = size or 16

    def work(job: tuple[Path, str]):
        path, label = job
        try:
            data = read_bytes(path)
            arr = decode(data, decode_size, path)
        except ImageError as exc:
            return None, Skipped(str(path), exc.reason)
        return (Sample(path.relative_to(root).as_posix(), label, hashlib.sha256(data).hexdigest()), arr if size else None), None

    results = []
    for done, res in enumerate(map_in_threads(work, jobs, workers), 1):
        results.append(res)
        if on_progress:
            on_progress(done, len(jobs))

    samples: list[Sample] = []
    arrays: list[np.ndarray] = []
    for ok, bad in results:
        if bad is not None:
            skipped.append(bad)
        else:
            samples.append(ok[0])
            if size:
                arrays.append(ok[1])

    # The same bytes under two classes: the label is ambiguous, so neither copy is used.
    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        labels_by_hash[s.sha256].add(s.label)
    conflicted = {h for h, labs in labels_by_hash.items() if len(labs) > 1}
    if conflicted:
        keep = []
        for i, s in enumerate(samples):
            if s.sha256 in conflicted:
                others = sorted(labels_by_hash[s.sha256] - {s.label})
                skipped.append(Skipped(str(root / s.rel), f"identical image also filed under {', '.join(others)}: ambiguous label, left out"))
            else:
                keep.append(i)
        samples = [samples[i] for i in keep]
        if size:
            arrays = [arrays[i] for i in keep]

    ds = Dataset(
        root=root,
        classes=class_names,
        samples=samples,
        skipped=sorted(skipped, key=lambda s: s.path),
        images=np.stack(arrays) if size and arrays else (np.zeros((0, size, size, 3), np.uint8) if size else None),
        size=size,
    )
    counts = ds.counts()
    if classes is not None:
        # Evaluating a model: a class folder with nothing usable in it contributes nothing (its
        # files are in ``skipped``, for the caller to list); only no usable image at all is fatal.
        if not ds.samples:
            err = DataError(f"no usable images in {', '.join(class_names)} ({len(ds.skipped)} unusable file(s) skipped)", root)
            err.skipped = ds.skipped
            raise err
        counts = {c: n for c, n in counts.items() if n > 0}
    small = {c: n for c, n in counts.items() if n < min_per_class}
    if small:
        unusable = Counter(Path(s.path).relative_to(root).parts[0] for s in ds.skipped if Path(s.path).is_relative_to(root))
        desc = ", ".join(f"{c} has {n}" + (f" ({unusable[c]} unusable file(s) skipped)" if unusable[c] else "") for c, n in small.items())
        err = DataError(f"too few usable images: {desc} (each class needs at least {min_per_class})", root)
        err.skipped = ds.skipped  # so a caller can list them before giving up
        raise err
    return ds


# --------------------------------------------------------------------------- split


def make_split(ds: Dataset, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[str]:
    """A stratified, seeded train/val/test assignment, one entry per sample.

    Duplicates (same SHA-256) form one group and go to one split. Within each class, groups are
    put in a fixed order (by hash), shuffled with ``seed``, and dealt to test, then val, until
    each reaches its share; the rest is train. Every class gets at least one image in each split.
    The result depends only on the files' contents, names and the seed, not on listing order.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    assignment = [""] * len(ds.samples)
    by_class: dict[str, dict[str, list[int]]] = {c: defaultdict(list) for c in ds.classes}
    for i, s in enumerate(ds.samples):
        by_class[s.label][s.sha256].append(i)
    for c in ds.classes:
        groups = [by_class[c][h] for h in sorted(by_class[c])]
        order = rng.permutation(len(groups))
        n = sum(len(g) for g in groups)
        want_test = max(1, int(round(fractions[2] * n)))
        want_val = max(1, int(round(fractions[1] * n)))
        got = {"test": 0, "val": 0}
        for gi in order:
            g = groups[gi]
            if got["test"] < want_test:
                split = "test"
            elif got["val"] < want_val:
                split = "val"
            else:
                split = "train"
            if split != "train":
                got[split] += len(g)
            for i in g:
                assignment[i] = split
    return assignment


def write_manifest(path: str | os.PathLike, ds: Dataset, splits: Sequence[str]) -> Path:
    from firmware_host.atomic import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_FIELDS)
    for s, sp in sorted(zip(ds.samples, splits), key=lambda t: t[0].rel):
        w.writerow([s.rel, s.label, sp, s.sha256])
    return write_text(path, buf.getvalue())


@dataclass
class ManifestRow:
    file: str
    label: str
    split: str
    sha256: str


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    p = Path(path)
    try:
        # surrogateescape: file names that are not valid UTF-8 were written as their raw bytes
        text = p.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read split manifest ({exc.strerror or exc})", p) from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or set(MANIFEST_FIELDS) - set(rows[0]):
        raise DataError(f"not a split manifest (needs columns {', '.join(MANIFEST_FIELDS)})", p)
    out = []
    for r in rows:
        if r["split"] not in SPLITS:
            raise DataError(f"unknown split {r['split']!r} for {r['file']}", p)
        out.append(ManifestRow(r["file"], r["class"], r["split"], r["sha256"]))
    return out


def load_from_manifest(
    root: str | os.PathLike,
    rows: Iterable[ManifestRow],
    size: int,
    classes: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
    check_hash: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[ManifestRow]]:
    """Load the images a manifest names from ``root``, preprocessed to ``size``.

    Returns (images uint8 (N,S,S,3), labels int64 (N,), rows). A missing file or one whose bytes
    changed since the manifest was written is a :class:`DataError` naming it: evaluating on
    different images than the split promised would give a silently wrong answer.
    """
    root = Path(root)
    rows = list(rows)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise DataError(f"manifest has class(es) the model does not know: {', '.join(unknown)}", root)

    def work(r: ManifestRow):
        path = root / r.file
        try:
            data = read_bytes(path)
        except ImageError as exc:
            raise DataError(f"{exc.reason} (listed in the split manifest; is --data the folder the model was trained on?)", path) from None
        if check_hash and hashlib.sha256(data).hexdigest() != r.sha256:
            raise DataError("file changed since the split manifest was written (SHA-256 differs)", path)
        return decode(data, size, path)

    arrays = []
    for i, a in enumerate(map_in_threads(work, rows)):
        arrays.append(a)
        if on_progress:
            on_progress(i + 1, len(rows))
    x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    y = np.array([index[r.label] for r in rows], dtype=np.int64)
    return x, y, rows
