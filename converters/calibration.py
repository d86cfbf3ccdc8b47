"""The representative data set that calibrates a full-integer (int8) model.

Two sources:

* **automatic** (the default): a stratified, seeded selection of ``per_class`` images of each class
  from the run's *training* split (``split.csv`` rows with ``split == "train"``; never val or
  test, so the parity check stays an honest held-out measurement). Exact duplicates are taken
  once. Same run + same seed -> the same selection, in the same order -> the same int8 bytes.
* **a user-curated folder** (``--calibration DIR``), in one of three layouts, checked in order:

  1. ``DIR/manifest.csv`` with columns ``file,class[,sha256]`` (paths relative to ``DIR``);
  2. class folders ``DIR/<class>/...`` named like the model's classes;
  3. a flat folder of images (no labels: class balance cannot be checked).

Images are preprocessed with the one shared preprocessing (:mod:`firmware_host.preprocess`), so
any size or format works. Unreadable files are reported and skipped. Fewer than
:data:`MIN_IMAGES` usable images is an error; fewer than :data:`RECOMMENDED_PER_CLASS` per class
or :data:`RECOMMENDED_TOTAL` in all is a warning.

A selection is written as a manifest (``file,class,sha256``; POSIX paths relative to the folder
the images came from), see ``calibration_data/README.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecell.runfolder import SPLIT_FILE
from firmware_host.decode import map_in_threads
from firmware_host.errors import DataError, ImageError, os_reason
from firmware_host.paths import list_files
from firmware_host.preprocess import IMAGE_SUFFIXES, decode, read_bytes

DEFAULT_PER_CLASS = 50
"""Images per class of the automatic selection (measured; see calibration_data/README.md)."""
MAX_PER_CLASS = 10_000
"""The most images per class ``--calib-size`` takes (a representative set is a few hundred images in all)."""
MIN_IMAGES = 10
"""Fewer usable calibration images than this is an error."""
RECOMMENDED_PER_CLASS = 20
RECOMMENDED_TOTAL = 100
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("file", "class", "sha256")


@dataclass
class CalibrationItem:
    """One calibration image: ``file`` is a POSIX path relative to the calibration source's root."""

    file: str
    label: str | None
    sha256: str


@dataclass
class CalibrationSet:
    """Preprocessed calibration images and where they came from.

    Attributes:
        root: the folder ``items[*].file`` are relative to (the data folder, or the user's folder).
        source: "train-split" (automatic) or "folder:manifest" / "folder:classes" / "folder:flat".
        images: uint8 (N, S, S, 3), aligned with ``items``.
        skipped: (path, reason) of files reported and left out.
        warnings: one-line warnings (too few per class, ...).
        notes: what the parity report records about the set (its images in the run's test split).
        per_class: requested images per class (automatic selection), else None.
        seed: the selection seed (automatic selection), else None.
    """

    root: Path
    source: str
    items: list[CalibrationItem]
    images: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_class: int | None = None
    seed: int | None = None

    def counts(self, classes: Sequence[str]) -> dict[str, int]:
        out = {c: 0 for c in classes}
        for it in self.items:
            if it.label is not None:
                out[it.label] = out.get(it.label, 0) + 1
        unlabelled = sum(1 for it in self.items if it.label is None)
        if unlabelled:
            out["(unlabelled)"] = unlabelled
        return out

    def summary(self, classes: Sequence[str]) -> dict:
        """What the sidecar and parity report record about the calibration."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.file}\t{it.label or ''}\t{it.sha256}\n".encode("utf-8", "surrogateescape"))
        return {
            "source": self.source,
            "root": str(self.root),
            "n": len(self.items),
            "per_class": self.per_class,
            "seed": self.seed,
            "counts": self.counts(classes),
            "selection_sha256": h.hexdigest(),
            "skipped": len(self.skipped),
        }

    def representative_dataset(self, views: int = 1) -> Callable:
        """The converter's ``representative_dataset``: one float32 (1, S, S, 3) batch (0-255) per image and
        view (:mod:`firmware_host.mirrors`: the network is calibrated on what the runtime will give it)."""
        from firmware_host.mirrors import view

        images = self.images

        def gen():
            for img in images:
                for k in range(views):
                    yield [view(img, k)[None].astype(np.float32)]

        return gen


# --------------------------------------------------------------------------- manifests


def manifest_text(items: Sequence[CalibrationItem]) -> str:
    from firmware_host.atomic import csv_writer

    buf = io.StringIO()
    w = csv_writer(buf)  # quotes a CR or LF in a file name
    w.writerow(MANIFEST_FIELDS)
    for it in items:
        w.writerow([it.file, it.label or "", it.sha256])
    return buf.getvalue()


def write_manifest(path: str | os.PathLike, items: Sequence[CalibrationItem]) -> Path:
    from firmware_host.atomic import write_text

    return write_text(path, manifest_text(items))


def copied_files(folder: Path) -> frozenset[str]:
    """What :func:`copy_selection` wrote in ``folder``: its manifest and the files the manifest lists (nothing when
    the manifest cannot be read)."""
    from firmware_host.atomic import read_csv_text

    try:
        rows = csv.DictReader(io.StringIO(read_csv_text(folder / MANIFEST_NAME)))
        return frozenset({MANIFEST_NAME, *(r["file"] for r in rows if r.get("file"))})
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return frozenset({MANIFEST_NAME})


def copy_selection(cal: CalibrationSet, out_dir: str | os.PathLike) -> Path:
    """Copy the selected images to ``out_dir`` (same relative paths) with a ``manifest.csv``.

    Built with :func:`firmware_host.atomic.staged_dir`, so a folder that is not an earlier
    calibration folder (no ``manifest.csv``) is never overwritten, nor one holding files the manifest does not list
    (images a person added to curate it). The copy is a starting point for a curated ``--calibration`` folder.
    """
    from firmware_host.atomic import staged_dir

    with staged_dir(out_dir, marker=MANIFEST_NAME, owned=copied_files) as tmp:
        for it in cal.items:
            if not inside(it.file):  # read from a manifest, which refuses them; never written outside the copy
                raise DataError(f"{it.file!r} is not inside the calibration folder; not copied", cal.root)
            dst = tmp / it.file
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cal.root / it.file, dst)
        write_manifest(tmp / MANIFEST_NAME, cal.items)
    return Path(out_dir)


# --------------------------------------------------------------------------- automatic selection


def select_from_split(rows, classes: Sequence[str], per_class: int, seed: int) -> list:
    """A stratified, seeded choice of ``per_class`` training rows per class.

    ``rows`` are :class:`edgecell.data.ManifestRow`; only ``split == "train"`` rows are eligible.
    Within a class, rows are put in a fixed order (by source, then file), exact duplicates (same SHA-256)
    are dropped, the rest is shuffled with ``seed`` and the first ``per_class`` are taken. The result
    is sorted by source, then file, so it does not depend on the manifest's row order.
    """
    if per_class < 1:
        raise DataError(f"--calib-size must be at least 1 image per class, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        seen: set[str] = set()
        pool = []
        for r in sorted((r for r in rows if r.split == "train" and r.label == c), key=lambda r: (r.source, r.file)):
            if r.sha256 not in seen:
                seen.add(r.sha256)
                pool.append(r)
        order = rng.permutation(len(pool))
        chosen.extend(pool[i] for i in order[:per_class])
    return sorted(chosen, key=lambda r: (r.source, r.file))


def from_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | dict[str, Path],
    classes: Sequence[str],
    size: int,
    per_class: int,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """The automatic selection from a run's training split, loaded from ``data_dir`` (one folder,
    or source name -> folder as :func:`edgecell.data.run_sources` gives)."""
    from edgecell import data as data_mod

    rows = data_mod.read_manifest(Path(run_dir) / SPLIT_FILE)
    picked = select_from_split(rows, classes, per_class, seed)
    x, _, picked = data_mod.load_from_manifest(data_dir, picked, size, classes, on_progress=on_progress)
    folders = {k: Path(v).resolve() for k, v in data_dir.items()} if isinstance(data_dir, dict) else {r.source: Path(data_dir).resolve() for r in picked}
    # with several sources, items are named relative to the folder that holds them all
    root = Path(os.path.commonpath([str(f) for f in folders.values()])) if folders else Path(".")
    items = [CalibrationItem((folders[r.source] / r.file).relative_to(root).as_posix(), r.label, r.sha256) for r in picked]
    cal = CalibrationSet(root, "train-split", items, x, per_class=per_class, seed=seed)
    counts = cal.counts(classes)
    short = {c: n for c, n in counts.items() if n < per_class}
    if short:
        cal.warnings.append(
            "the training split has fewer than --calib-size "
            f"{per_class} distinct images for {', '.join(f'{c} ({n})' for c, n in short.items())}; all of them are used"
        )
    _check_amount(cal, classes, root)
    return cal


# --------------------------------------------------------------------------- a user's folder


def _list_images(root: Path) -> list[Path]:
    return [p for p in list_files(root) if p.name != MANIFEST_NAME]


def inside(rel: str) -> bool:
    """Whether a manifest's path names a file inside its folder: relative, with no ``..`` (on any system's reading)."""
    from pathlib import PurePosixPath, PureWindowsPath

    return not any(p.is_absolute() or p.drive or ".." in p.parts for p in (PurePosixPath(rel), PureWindowsPath(rel)))


def _read_user_manifest(root: Path, classes: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    from firmware_host.atomic import read_csv_text

    path = root / MANIFEST_NAME
    try:
        text = read_csv_text(path, encoding="utf-8-sig", errors="strict")  # line ends untouched
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read calibration manifest ({os_reason(exc)})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "file" not in fields or "class" not in fields:
        raise DataError("calibration manifest needs a header with columns file,class[,sha256]", path)
    out = []
    unknown = set()
    for r in reader:
        r = {(k or "").strip(): (v or "").strip() for k, v in r.items()}
        if not r.get("file"):
            continue
        if not inside(r["file"]):  # --calibration-out copies each file to its path: "../x.jpg" would land outside it
            raise DataError(
                f"calibration manifest lists {r['file']!r}, which is not inside the folder (an absolute path, or one with '..'): "
                "list each image by its path relative to the folder, and put the images there",
                path,
            )
        label = r.get("class") or None
        if label is not None and label not in classes:
            unknown.add(label)
        out.append((r["file"], label, r.get("sha256") or None))
    if unknown:
        raise DataError(
            f"calibration manifest names class(es) the model does not know: {', '.join(sorted(unknown))} (model classes: {', '.join(classes)})", path
        )
    return out


def from_folder(
    folder: str | os.PathLike,
    classes: Sequence[str],
    size: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """A user-curated calibration folder (manifest, class folders or flat), preprocessed to ``size``."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError("calibration folder does not exist or is not a folder", root)
    skipped: list[tuple[str, str]] = []
    hints: list[str] = []
    jobs: list[tuple[str, str | None, str | None]] = []
    if (root / MANIFEST_NAME).is_file():
        source = "folder:manifest"
        jobs = _read_user_manifest(root, classes)
    else:
        files = _list_images(root)
        top = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
        source = "folder:classes" if top & set(classes) else "folder:flat"
        if top:  # a misspelt class folder would calibrate as unlabelled, and its class look short
            from edgecell.data import close_name

            odd = [f"{t} -> {m[0]}?" for t in sorted(top - set(classes)) if (m := close_name(t, classes))]
            if odd:
                hints.append(f"folder(s) not named after a model class are read as unlabelled images; rename {', '.join(odd)}")
        for p in files:
            rel = p.relative_to(root)
            if not p.name.lower().endswith(IMAGE_SUFFIXES):
                skipped.append((str(p), f"not an image file (suffix {p.suffix or 'none'!r}; expected {', '.join(IMAGE_SUFFIXES)})"))
                continue
            label = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in classes else None
            jobs.append((rel.as_posix(), label, None))

    def work(job):
        rel, label, want = job
        path = root / rel
        try:
            data = read_bytes(path)
            digest = hashlib.sha256(data).hexdigest()
            if want and digest != want.lower():
                raise ImageError("file changed since the calibration manifest was written (SHA-256 differs)", path)
            arr = decode(data, size, path)
        except ImageError as exc:
            return None, (str(path), exc.reason)
        return (CalibrationItem(rel, label, digest), arr), None

    items: list[CalibrationItem] = []
    arrays: list[np.ndarray] = []
    for k, (ok, bad) in enumerate(map_in_threads(work, jobs)):  # Ctrl-C drops the queued images
        if bad is not None:
            skipped.append(bad)
        else:
            items.append(ok[0])
            arrays.append(ok[1])
        if on_progress:
            on_progress(k + 1, len(jobs))
    # keep the folder's order stable and independent of listing order; drop exact duplicates
    order = sorted(range(len(items)), key=lambda i: items[i].file)
    seen: set[str] = set()
    keep = []
    for i in order:
        if items[i].sha256 in seen:
            continue
        seen.add(items[i].sha256)
        keep.append(i)
    images = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
    cal = CalibrationSet(root, source, [items[i] for i in keep], images, skipped=sorted(skipped), warnings=hints)
    _check_amount(cal, classes, root, duplicates=len(items) - len(keep))
    return cal


def _check_amount(cal: CalibrationSet, classes: Sequence[str], root: Path, duplicates: int = 0) -> None:
    n = len(cal.items)
    if duplicates:
        cal.warnings.append(f"{duplicates} exact duplicate calibration image(s) ignored (identical bytes count once)")
    if n < MIN_IMAGES:
        extra = f"; {len(cal.skipped)} unusable file(s) skipped (first: {cal.skipped[0][0]}: {cal.skipped[0][1]})" if cal.skipped else ""
        extra += f"; {duplicates} exact duplicate(s) ignored" if duplicates else ""
        raise DataError(
            f"only {n} usable calibration image(s){extra}; int8 calibration needs at least {MIN_IMAGES} "
            f"(recommended: {RECOMMENDED_PER_CLASS}+ per class, {RECOMMENDED_TOTAL}+ in all)",
            root,
        )
    if n < RECOMMENDED_TOTAL:
        cal.warnings.append(f"only {n} calibration images (recommended: {RECOMMENDED_TOTAL} or more); int8 accuracy may suffer")
    if any(it.label is not None for it in cal.items) or cal.source == "train-split":
        counts = cal.counts(classes)
        few = {c: counts.get(c, 0) for c in classes if counts.get(c, 0) < RECOMMENDED_PER_CLASS}
        if few:
            cal.warnings.append(
                f"fewer than {RECOMMENDED_PER_CLASS} calibration images for {', '.join(f'{c} ({k})' for c, k in few.items())}; "
                "int8 ranges may not cover those cells"
            )
    elif cal.source != "train-split":
        cal.warnings.append("calibration images carry no class labels, so class balance cannot be checked")
