"""Reading a data folder, validating it, grouping duplicates and splitting it reproducibly.

The layout is the Kaggle "Blood Cell Images for Cancer Detection" one: ``ROOT/<class>/<image>``.
Several roots may be given, and a root may instead hold one sub-folder per *source* (a lab, a
scanner, a clinic), each holding class folders: ``ROOT/<source>/<class>/<image>``
(:func:`discover_sources`). Every image carries its source, so a model can be tested on a lab it
never saw. Class folders named after a cell type that is not one of the model's types
(:data:`OTHER_TYPES`: lymphocytes, eosinophils, platelets, immature granulocytes) teach the class
:data:`OTHER_CLASS`; each sample keeps its folder's name as its ``type``.
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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from firmware_host.atomic import some_of
from firmware_host.decode import map_in_threads  # re-exported: audit uses data_mod.map_in_threads
from firmware_host.errors import DataError, ImageError, os_reason
from firmware_host.paths import OTHER_CLASS, OTHER_TYPES, class_of, is_image_name, list_files
from firmware_host.preprocess import IMAGE_SUFFIXES, PROBE_SIZE, decode_cell, read_bytes

T = TypeVar("T")

MIN_PER_CLASS = 5
"""A class needs at least this many usable images (one each for val and test, three to train)."""
SPLITS = ("train", "val", "test")
MIN_STRATUM = 5
"""A (class, source) stratum smaller than this is not split when the class has other sources."""
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
MANIFEST_FIELDS = ("file", "class", "split", "sha256")
SOURCE_FIELDS = ("source", "type")
"""Manifest columns added with several sources (a manifest without them has one unnamed source)."""
CELL_TYPES = ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil")
"""The cell types edgecell's default model names; with :data:`OTHER_TYPES`, the folder names that
mark a folder as a source of class folders (see :func:`discover_sources`)."""
KNOWN_TYPES = frozenset((*CELL_TYPES, *OTHER_TYPES))
"""Folder names read as cell types: a folder holding one of them is a source, not a class."""


@dataclass
class Sample:
    """One usable image: ``rel`` is its POSIX path relative to its source's folder.

    ``label`` is the class it teaches; ``type`` the name of its class folder (the same, except for
    the :data:`OTHER_TYPES` taught as :data:`OTHER_CLASS`); ``source`` the name of its source.
    """

    rel: str
    label: str
    sha256: str
    source: str = ""
    type: str = ""

    def __post_init__(self):
        self.type = self.type or self.label


@dataclass(frozen=True)
class Source:
    """A folder of class folders from one lab or scanner, and the name it is reported under."""

    name: str
    folder: Path


def _is_type_folder(folder: Path) -> bool:
    """Whether ``folder`` is named after a known cell type, in any case (``Basophil`` is refused later, by name)."""
    return folder.name.lower() in KNOWN_TYPES


def discover_sources(paths: Sequence[str | os.PathLike]) -> tuple[list[Source], list[str]]:
    """The sources under the data folders ``paths``, and notes on folders left out.

    A folder is a folder of sources when one or more of its sub-folders hold a folder named after a known
    cell type (:data:`KNOWN_TYPES`, in any case): each such sub-folder is a source, whatever else it holds (one
    stray picture in a lab's folder once made the labs the classes); the other sub-folders (say, whole fields
    with annotations) are left out with a note, and so are images beside them. Sub-folders that look like
    classes beside them (named after a cell type, or holding images of their own) are an error: read either
    way, a lab or a class would be lost. Any other folder is one source (named after the folder) whose
    sub-folders are its classes. A source is named after its folder, or as given (``--data NAME=FOLDER``:
    :class:`edgecell.options.NamedFolder`). Two sources with one name are an error.
    """
    sources: list[Source] = []
    notes: list[str] = []
    given: dict[Path, Path] = {}
    for raw in paths:
        root = Path(raw)
        if str(raw) == "" or not root.is_dir():
            raise DataError("not a folder", root)
        if (before := given.setdefault(root.resolve(), root)) is not root:
            raise DataError("is given twice" + ("" if before == root else f" (also as {before})") + "; give each data folder once", root)
        children = list_class_folders(root)
        nested = [c for c in children if any(_is_type_folder(g) for g in list_class_folders(c))]  # labs: cell-type folders inside
        named = getattr(raw, "source_name", None)  # --data NAME=FOLDER (edgecell.options.NamedFolder)
        if not nested:
            sources.append(Source(named or root.resolve().name or str(root), root))
            continue
        classes = [c for c in children if c not in nested and (_is_type_folder(c) or _top_images(c))]
        if classes:  # read as labs, these would be left out; read as one lab, the labs would be classes: neither silently
            raise DataError(
                f"holds folders of labs (each with cell-type folders inside: {some_of([c.name for c in nested])}) beside folders of "
                f"images ({some_of([c.name for c in classes])}): move the image folders out, or give each lab as --data",
                root,
            )
        if named:
            raise DataError(
                f"holds sources ({', '.join(c.name for c in nested)}), each named after its folder; {named}= names a folder of "
                "class folders: give each source as --data NAME=FOLDER, or leave the name out",
                root,
            )
        for child in children:
            if child in nested:
                sources.append(Source(child.name, child))
            else:
                notes.append(f"{child}: no class folder named after a cell type inside; left out")
        if loose := sorted(p.name for p in _top_images(root)):
            notes.append(
                f"{root}: {len(loose)} image(s) ({some_of(loose)}) lie beside its source folders, in none: left out (put each in a class folder of its source)"
            )
    seen: dict[str, Path] = {}
    where: dict[Path, Source] = {}
    for s in sources:
        if (before := where.setdefault(s.folder.resolve(), s)) is not s:  # a link, or a source inside another --data
            raise DataError(f"is the folder of source {before.name!r} ({before.folder}) already, so its images would be read twice; give it once", s.folder)
        if s.name in seen:
            raise DataError(
                f"two sources are named {s.name!r} ({seen[s.name]} and {s.folder}); give one another name (NAME=FOLDER), or rename its folder",
                s.folder,
            )
        seen[s.name] = s.folder
    return sources, notes


def refuse_empty_sources(sources: Sequence[Source]) -> None:
    """One of several data folders with no class folder inside (a class folder given as a data folder, say) would
    add nothing in silence: an error. A data folder given alone gets the caller's message about class folders."""
    empty = [s for s in sources if not list_class_folders(s.folder)]
    if empty and len(sources) > 1:
        raise DataError("holds no class folder (one sub-folder of images per class): give the folder above it, or leave it out", empty[0].folder)


def matches(sample_source: str, sample_type: str, patterns: Iterable[str]) -> bool:
    """True when ``SOURCE`` or ``SOURCE/TYPE`` in ``patterns`` names this sample."""
    for pat in patterns:
        src, _, typ = pat.partition("/")
        if src == sample_source and (not typ or typ == sample_type):
            return True
    return False


@dataclass
class Skipped:
    """A file that was reported and left out, with the reason in one line."""

    path: str
    reason: str


@dataclass
class Dataset:
    """A validated data folder.

    Attributes:
        root: the first source's folder (for messages).
        classes: class names (sorted folder names).
        samples: usable images, in sorted order.
        skipped: files reported and left out (unreadable, not images, conflicting labels).
        images: preprocessed uint8 array (N, S, S, 3) aligned with ``samples``, if decoded.
        size: the size ``images`` were preprocessed to, or None.
        nucleus_offsets: float array (N,) aligned with ``samples``, if decoded: each image's nucleus offset
            (:func:`firmware_host.preprocess.prepare_cell`).
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    images: np.ndarray | None = None
    size: int | None = None
    sources: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nucleus_offsets: np.ndarray | None = None
    shortage: DataError | None = None
    """What training would refuse (too few usable images of a class), when :func:`scan` was asked to read on."""

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in self.classes}

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], dtype=np.int64)

    def targets(self) -> tuple[list[str], np.ndarray]:
        """What a model learns from these samples: the names of its outputs, and each sample's index among them.

        Each class is one output, except :data:`OTHER_CLASS` when two or more types are taught as it: then each
        type is its own output (``lymphocyte``, ``eosinophil``, ...), and :func:`edgecell.model.with_classes`
        adds them back up into ``other``. One ``other`` output would have to hold a lymphocyte, a platelet and an
        immature granulocyte in one region of the feature space; measured, learning them apart catches more of
        them at the same share of the five sent to ``other`` (docs/design.md, "Learning `other` as its types").
        """
        other_types = sorted({s.type for s in self.samples if s.label == OTHER_CLASS})
        if len(other_types) < 2:
            return list(self.classes), self.labels()
        names = sorted({*(c for c in self.classes if c != OTHER_CLASS), *other_types})
        index = {c: i for i, c in enumerate(names)}
        return names, np.array([index[s.type if s.label == OTHER_CLASS else s.label] for s in self.samples], dtype=np.int64)

    def counts_by_source(self) -> dict[str, dict[str, int]]:
        """Images per source and class folder type: ``{source: {type: n}}``."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (src, typ), n in sorted(Counter((s.source, s.type) for s in self.samples).items()):
            out[src][typ] = n
        return dict(out)

    def confounding(self) -> list[str]:
        """Plain-words warnings when a class comes from one source only, or sources split the classes."""
        if len(self.sources) < 2 and len({s.source for s in self.samples}) < 2:
            by_class = self.counts()
            return (
                [
                    f"every class comes from one source ({next(iter(self.sources), '?')}): the model cannot learn which differences are the lab's and which the cell's"
                ]
                if by_class
                else []
            )
        out = []
        per_class: dict[str, set[str]] = defaultdict(set)
        for s in self.samples:
            per_class[s.label].add(s.source)
        single = {c: next(iter(v)) for c, v in per_class.items() if len(v) == 1}
        for c, src in sorted(single.items()):
            out.append(f"class {c} comes from one source only ({src}): the model may learn that lab's look as the class")
        if len(single) == len(per_class) and len({*single.values()}) > 1:
            out.append("sources and classes are confounded: no class is seen from two sources")
        return out

    def duplicate_groups(self) -> list[list[Sample]]:
        """Groups of two or more samples with identical bytes."""
        by_hash: dict[str, list[Sample]] = defaultdict(list)
        for s in self.samples:
            by_hash[s.sha256].append(s)
        return [g for _, g in sorted(by_hash.items()) if len(g) > 1]

    def fingerprint(self) -> str:
        """SHA-256 over (file, class, hash) of every sample: names this exact data set."""
        return fingerprint_of((s.source, s.rel, s.label, s.sha256) for s in self.samples)

    def path(self, sample: Sample) -> Path:
        return self.sources.get(sample.source, self.root) / sample.rel

    def subset(self, indices: Sequence[int]) -> Dataset:
        idx = list(indices)
        return Dataset(
            root=self.root,
            classes=list(self.classes),
            samples=[self.samples[i] for i in idx],
            skipped=list(self.skipped),
            images=None if self.images is None else self.images[idx],
            size=self.size,
            sources=dict(self.sources),
            notes=list(self.notes),
            nucleus_offsets=None if self.nucleus_offsets is None else self.nucleus_offsets[idx],
        )


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def list_class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` (hidden ones left out); a link back to ``root`` or a folder above it is an error,
    not a class that holds every class again."""
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
        here = root.resolve()
        for p in entries:
            if p.is_symlink() and ((up := p.resolve()) == here or up in here.parents):
                raise DataError(f"is a link to {up}, which holds it (a loop); remove it or link a class folder instead", p)
    except OSError as exc:
        raise DataError(f"cannot list folder ({os_reason(exc)})", root) from None
    return entries


def _candidate_files(folder: Path) -> list[Path]:
    return list_files(folder, image_named_dirs=True)  # a directory named like an image is a user error worth reporting


def _top_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not hidden), sorted."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_image_name(p.name) and p.is_file())
    except OSError:
        return []


@dataclass
class ImageFiles:
    """The candidate image files under data folders, before any is read (:func:`find_images`).

    Attributes:
        root: the first data folder (for messages).
        sources: the sources found (:func:`discover_sources`); ``notes`` on folders left out.
        classes: the classes to read, in order.
        files: ``(file, source, class folder name)`` of every file with an image suffix.
        skipped: files refused so far (not image files; later also unreadable and ambiguous ones).
        unusable: refused files per class.
    """

    root: Path
    sources: list[Source]
    notes: list[str]
    classes: list[str]
    files: list[tuple[Path, Source, str]]
    skipped: list[Skipped] = field(default_factory=list)
    unusable: Counter = field(default_factory=Counter)


def find_images(root: str | os.PathLike | Sequence[str | os.PathLike], classes: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> ImageFiles:
    """Walk the data folder(s) ``root``: sources, class folders and their image files (nothing is read).

    ``classes`` restricts and orders the classes (a named class with no folder is an error);
    without it every class folder counts and there must be two. ``exclude`` as in :func:`scan`.
    """
    paths = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not paths:
        raise DataError("no data folder given")
    root = Path(paths[0])
    if str(paths[0]) == "" or not root.is_dir():
        raise DataError("not a folder", root)
    sources, notes = discover_sources(paths)
    folders = [(src, f) for src in sources for f in list_class_folders(src.folder)]
    refuse_empty_sources(sources)
    for pat in exclude:
        if not any(matches(src.name, f.name, [pat]) for src, f in folders):
            raise DataError(f"--exclude {pat}: no source or SOURCE/TYPE of that name (sources: {', '.join(s.name for s in sources)})")
    kept = [(src, f) for src, f in folders if not matches(src.name, f.name, exclude)]
    if folders and not kept:
        raise DataError(f"--exclude {' --exclude '.join(exclude)} leaves no class folder of the data to use", root)
    lost = sorted({class_of(f.name) for _, f in folders} - {class_of(f.name) for _, f in kept})
    folders = kept
    if exclude:  # a source left out whole is not one of the data's (a run recorded it, and evaluate read it again)
        sources = [s for s in sources if any(src is s for src, _ in kept)]
    found = sorted({class_of(f.name) for _, f in folders})
    if classes is None:  # training: a class gone, or one made of a folder's name, changes what the model can say
        if lost:
            notes.append(
                f"--exclude {' --exclude '.join(exclude)} leaves no folder of {', '.join(lost)}: the model will not know {'it' if len(lost) == 1 else 'them'}"
            )
        cased = [f for _, f in folders if f.name not in KNOWN_TYPES and f.name.lower() in KNOWN_TYPES]
        if cased:  # MYELOBLAST would be a class of its own: never flagged for the haematologist, LYMPHOCYTE not `other`
            names = ", ".join(dict.fromkeys(f"{f.name} -> {f.name.lower()}" for f in cased))
            raise DataError(
                f"edgecell's cell types are named in lower case, and a class folder named otherwise would be a class of its own "
                f"(a MYELOBLAST class is not flagged for review as a blast); rename {names}",
                cased[0],
            )
        odd = sorted({f.name for _, f in folders if f.name not in KNOWN_TYPES})
        if odd:
            notes.append(
                f"class folder(s) {', '.join(odd)} are not cell types edgecell knows ({', '.join(CELL_TYPES)}; "
                f"{', '.join(t for t in OTHER_TYPES if t != OTHER_CLASS)} and {OTHER_CLASS} teach {OTHER_CLASS}): each is a class of its own (rename a misspelt one)"
            )
    if classes is not None:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"no folder for class(es) {', '.join(missing)} (found: {', '.join(found) or 'none'})", root)
        class_names = list(classes)
    else:
        class_names = found
    if classes is None and len(class_names) < 2:
        taught = sorted({f.name for _, f in folders if class_of(f.name) != f.name})  # lymphocyte, eosinophil: all `other`
        raise DataError(
            f"needs at least two class folders (one sub-folder of images per class); found {len(class_names)}"
            + (f": {class_names[0]}" if class_names else "")
            + (f" ({', '.join(taught)} {'all teach' if len(taught) > 1 else 'teaches'} {OTHER_CLASS})" if taught else ""),
            root,
        )
    out = ImageFiles(root, sources, notes, class_names, [])
    for src in sources:  # images beside the class folders are in none: said, not lost in silence
        loose = sorted(p.name for p in _top_images(src.folder))
        if loose and list_class_folders(src.folder):
            out.notes.append(
                f"{src.folder}: {len(loose)} image(s) ({some_of(loose)}) lie beside its class folders, in none: left out (put each in the folder of its class)"
            )
    for src, folder in folders:
        label = class_of(folder.name)
        if label not in class_names:
            continue
        candidates = _candidate_files(folder)
        if not candidates:
            out.notes.append(f"{folder}: an empty class folder (no image of {folder.name})")
        nested: set[str] = set()
        for f in candidates:
            if f.is_dir() and f.is_symlink():
                out.skipped.append(
                    Skipped(str(f), "is a link to a folder, which is not followed: its images are not read (link or copy the images themselves)")
                )
                out.unusable[label] += 1
            elif f.is_dir():
                out.skipped.append(Skipped(str(f), "is a directory, not an image file"))
                out.unusable[label] += 1
            elif f.is_symlink() and not f.exists():  # whatever its name: not "not an image file"
                out.skipped.append(Skipped(str(f), "broken symbolic link"))
                out.unusable[label] += 1
            elif not f.name.lower().endswith(IMAGE_SUFFIXES):
                out.skipped.append(Skipped(str(f), f"not an image file (suffix {f.suffix or 'none'!r}; expected {', '.join(IMAGE_SUFFIXES)})"))
                out.unusable[label] += 1
            else:
                out.files.append((f, src, folder.name))
                if f.parent != folder:
                    nested.add(f.relative_to(folder).parts[0])
        if nested:
            names = sorted(nested)
            out.notes.append(
                f"{folder}: its sub-folders' images ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) are all class {label!r}"
                + (
                    ""
                    if folder.name in KNOWN_TYPES
                    else f"; if {folder.name} is a lab, name its class folders after cell types, so that it is read as a source"
                )
            )
    return out


def read_images(
    found: ImageFiles,
    read: Callable[[bytes, Path], T],
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> list[tuple[Sample, T]]:
    """Read and hash each of ``found.files`` once, in a thread pool: ``(sample, read(bytes, path))``
    in order. A file that cannot be read or that ``read`` refuses (:class:`ImageError`) is added to
    ``found.skipped`` instead. Ctrl-C drops the files not read yet."""

    def work(job: tuple[Path, Source, str]):
        path, src, typ = job
        try:
            data = read_bytes(path)
            value = read(data, path)
        except ImageError as exc:
            return None, Skipped(str(path), exc.reason), class_of(typ)
        sample = Sample(path.relative_to(src.folder).as_posix(), class_of(typ), hashlib.sha256(data).hexdigest(), src.name, typ)
        return (sample, value), None, None

    out = []
    for done, (ok, bad, label) in enumerate(map_in_threads(work, found.files, workers), 1):
        if bad is not None:
            found.skipped.append(bad)
            found.unusable[label] += 1
        else:
            out.append(ok)
        if on_progress:
            on_progress(done, len(found.files))
    return out


def drop_ambiguous(found: ImageFiles, pairs: list[tuple[Sample, T]]) -> list[tuple[Sample, T]]:
    """``pairs`` without the images whose bytes are filed under two classes (their label is
    ambiguous, so neither copy is used); those go to ``found.skipped``."""
    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for s, _ in pairs:
        labels_by_hash[s.sha256].add(s.label)
    folders = {src.name: src.folder for src in found.sources}
    keep = []
    for s, value in pairs:
        others = sorted(labels_by_hash[s.sha256] - {s.label})
        if others:
            found.skipped.append(Skipped(str(folders[s.source] / s.rel), f"identical image also filed under {', '.join(others)}: ambiguous label, left out"))
        else:
            keep.append((s, value))
    return keep


def scan(
    root: str | os.PathLike | Sequence[str | os.PathLike],
    size: int | None = None,
    classes: Sequence[str] | None = None,
    min_per_class: int = MIN_PER_CLASS,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    exclude: Sequence[str] = (),
    keep_short: bool = False,
) -> Dataset:
    """Read, hash and validate every image under ``root`` (one data folder or several).

    The folders are resolved into sources by :func:`discover_sources`. Each file is read once:
    its bytes are hashed and decoded with the shared preprocessing (to ``size`` pixels if given,
    else to a small size just to prove it decodes). Unreadable and non-image files are recorded in
    ``Dataset.skipped`` rather than raised. Raises :class:`DataError` for fewer than two classes or
    a class with fewer than ``min_per_class`` usable images. ``classes`` restricts and orders the
    classes (folders of other classes are ignored; a named class with no folder is an error); with
    ``classes`` given (evaluating a model), one class is enough and a class folder without a usable
    image is allowed, as long as some image is usable. ``exclude`` leaves out whole sources
    (``SOURCE``) or one class folder of a source (``SOURCE/TYPE``): a pattern that names nothing is
    an error. A :class:`DataError` about too few images carries ``.skipped``; with ``keep_short`` it is not raised but
    kept as ``Dataset.shortage``, so that a caller can show the data before refusing.
    """
    found = find_images(root, classes, exclude)
    root, class_names, unusable = found.root, found.classes, found.unusable

    def read(data: bytes, path: Path) -> tuple[np.ndarray, float] | None:
        cell = decode_cell(data, size or PROBE_SIZE, path)  # without a size, a small decode just proves it decodes
        return cell if size else None

    # one order whatever the order of --data: training's batches and each image's augmentation follow it (the same
    # data listed the other way round trained another model from the same seed; a review)
    pairs = sorted(drop_ambiguous(found, read_images(found, read, on_progress, workers)), key=lambda p: (p[0].source, p[0].rel))
    arrays = [a for _, (a, _) in pairs] if size else []
    ds = Dataset(
        root=root,
        classes=class_names,
        samples=[s for s, _ in pairs],
        skipped=sorted(found.skipped, key=lambda s: s.path),
        images=np.stack(arrays) if size and arrays else (np.zeros((0, size, size, 3), np.uint8) if size else None),
        size=size,
        sources={s.name: s.folder for s in found.sources},
        notes=found.notes,
        nucleus_offsets=np.array([o for _, (_, o) in pairs], dtype=np.float64) if size else None,
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
    # copies of one image (same SHA-256) stay in one split, so they count once: six copies and one other image
    # would otherwise pass as seven, and the split could leave the class without a training image
    distinct: dict[str, set] = defaultdict(set)
    for smp in ds.samples:
        distinct[smp.label].add(smp.sha256)
    small = {c: n for c, n in counts.items() if len(distinct[c]) < min_per_class}
    if small:

        def described(c: str, n: int) -> str:
            copies = f", {len(distinct[c])} different" if len(distinct[c]) < n else ""
            return f"{c} has {n}{copies}" + (f" ({unusable[c]} unusable file(s) skipped)" if unusable[c] else "")

        # named by the class folders they come from (the first --data folder may not hold them: another source's,
        # or what an --exclude left)
        folders_of: dict[str, set[Path]] = defaultdict(set)
        for _, src, name in found.files:
            folders_of[class_of(name)].add(src.folder / name)
        for c in small:  # a class folder with no image file at all (empty, or only other files) is named too
            if not folders_of[c]:  # by the folders' own names (an empty lymphocyte/ is the class other's)
                folders_of[c].update(f for src in found.sources for f in list_class_folders(src.folder) if class_of(f.name) == c)
        first = sorted(folders_of[next(iter(small))])
        where = first[0] if len(first) == 1 else root
        several = len(found.sources) > 1

        def located(c: str, n: int) -> str:
            folders = sorted(folders_of[c])
            return described(c, n) + (f" (in {', '.join(str(f) for f in folders)})" if several and folders and folders[0] != where else "")

        desc = ", ".join(located(c, n) for c, n in small.items())
        err = DataError(f"too few usable images: {desc} (each class needs at least {min_per_class} different images)", where)
        err.skipped = ds.skipped  # so a caller can list them before giving up
        if not keep_short:
            raise err
        ds.shortage = err
    return ds


def scan_for_model(given: Sequence[str | os.PathLike], classes: Sequence[str], size: int, on_progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Read labelled folders for a model that knows ``classes`` (to evaluate or adapt it): every class
    folder must name one of them (or a type taught as one, see :func:`class_of`); a class may have
    no folder, and one usable image per class is enough."""
    sources, _ = discover_sources(given)
    names = {p.name for s in sources for p in list_class_folders(s.folder)}
    refuse_empty_sources(sources)
    if not names:
        raise DataError(f"holds no class folder (one sub-folder of images per class, named after a model class: {', '.join(classes)})", given[0])
    unknown = sorted(n for n in names if class_of(n) not in classes)
    if unknown:
        accepted = [*classes, *(t for t in OTHER_TYPES if OTHER_CLASS in classes and t not in classes)]
        hints = [f"{n} -> {m[0]}?" for n in unknown if (m := close_name(n, accepted))]
        holding = [s.folder for s in sources if any(p.name in unknown for p in list_class_folders(s.folder))]
        raise DataError(
            f"class folder(s) the model does not know: {', '.join(unknown)} (folder names it takes, in lower case: {', '.join(accepted)}"
            + (f"; rename {', '.join(hints)}" if hints else "")
            + ")",
            holding[0] if len(holding) == 1 else given[0],  # the source that holds them, not the first folder given
        )
    present = {class_of(n) for n in names}
    return scan(given, size=size, classes=[c for c in classes if c in present], min_per_class=1, on_progress=on_progress)


def close_name(name: str, accepted: Sequence[str]) -> list[str]:
    """The accepted folder name ``name`` most likely means (``Lymphocytes`` -> ``lymphocyte``), as a list of one, or [].
    A name's last word stands for it too (``neutrofil`` -> ``seg_neutrophil``)."""
    import difflib

    lower = {a.lower().rpartition("_")[2]: a for a in accepted} | {a.lower(): a for a in accepted}
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return [lower[m] for m in difflib.get_close_matches(key, list(lower), n=1, cutoff=0.8)]


def recorded_folders(dataset_meta: dict) -> list[str]:
    """The data folders a run was trained on, each under its source's recorded name (:class:`edgecell.options.NamedFolder`,
    so sources named with ``--data NAME=FOLDER`` keep their names); ``dataset.path`` for a run recorded without sources."""
    from edgecell.options import NamedFolder

    sources = dataset_meta.get("sources") or {}
    if sources:
        return [NamedFolder(str(folder), name) for name, folder in sources.items()]
    return [dataset_meta["path"]] if dataset_meta.get("path") else []


def renamed_source(recorded: Collection[str], found: Collection[str]) -> tuple[str, str] | None:
    """``(recorded name, name found)`` when a run of one source is read from one folder of another name (the folder was
    moved or renamed): that folder stands for the run's one source. None otherwise."""
    if len(recorded) == 1 and len(found) == 1 and set(recorded) != set(found):
        return next(iter(recorded)), next(iter(found))
    return None


def run_sources(dataset_meta: dict, given: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
    """Source name -> folder, for reading a run's split manifest: from ``--data`` if given, else
    from the run's metadata (``dataset.sources``, or ``dataset.path`` for a run of one unnamed source).
    The key ``""`` names the folder of manifest rows without a source."""
    if given:
        sources, _ = discover_sources(given)
        out = {s.name: s.folder for s in sources}
        if renamed := renamed_source(list(dataset_meta.get("sources") or {}), out):
            out = {renamed[0]: out[renamed[1]]}
    else:
        recorded = dataset_meta.get("sources") or ({"": dataset_meta["path"]} if dataset_meta.get("path") else {})
        out = {k: Path(v) for k, v in recorded.items()}
        gone = [v for v in out.values() if not v.is_dir()]
        if not out or gone:
            raise DataError("the data folder the model was trained on is not there; pass --data DIR", gone[0] if gone else "--data")
    if len(out) == 1:
        out.setdefault("", next(iter(out.values())))
    return out


# --------------------------------------------------------------------------- split


def make_split(ds: Dataset, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[str]:
    """A stratified, seeded train/val/test assignment, one entry per sample.

    Strata are (class, source), so every source of a class is in every split and results can be
    reported per source. Duplicates (same SHA-256) form one group and go to one split. Within each
    stratum, groups are put in a fixed order (by hash), shuffled with ``seed``, and dealt to test,
    then val, until each reaches its share; the rest is train. A stratum of fewer than
    :data:`MIN_STRATUM` images goes to train whole, but every class gets at least one image in each
    split. The result depends only on the files' contents, names and the seed, not on listing order.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    assignment = ["train"] * len(ds.samples)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(ds.samples):
        groups[s.sha256].append(i)
    strata: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for h in sorted(groups):
        first = ds.samples[groups[h][0]]
        strata[(first.label, first.source)].append(groups[h])
    for key in sorted(strata):
        gs = strata[key]
        n = sum(len(g) for g in gs)
        if n < MIN_STRATUM and sum(1 for k in strata if k[0] == key[0]) > 1:
            continue  # too small to split; the class's other sources give it test and val images
        want = {"test": max(1, int(round(fractions[2] * n))), "val": max(1, int(round(fractions[1] * n)))}
        got = {"test": 0, "val": 0}
        for gi in rng.permutation(len(gs)):
            split = next((sp for sp in ("test", "val") if got[sp] < want[sp]), "train")
            if split != "train":
                got[split] += len(gs[gi])
            for i in gs[gi]:
                assignment[i] = split
    return assignment


def write_manifest(path: str | os.PathLike, ds: Dataset, splits: Sequence[str]) -> Path:
    """Write the split manifest of ``ds`` (one split name per sample)."""
    return write_rows(path, [ManifestRow(s.rel, s.label, sp, s.sha256, s.source, s.type) for s, sp in zip(ds.samples, splits)])


@dataclass
class ManifestRow:
    file: str
    label: str
    split: str
    sha256: str
    source: str = ""
    type: str = ""


def write_rows(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    """Write split manifest rows (atomically), sorted by source and file."""
    from firmware_host.atomic import csv_writer, write_text

    buf = io.StringIO()
    w = csv_writer(buf)  # quotes a CR or LF in a file name, so every name reads back exactly
    w.writerow(MANIFEST_FIELDS + SOURCE_FIELDS)
    for r in sorted(rows, key=lambda r: (r.source, r.file)):
        w.writerow([r.file, r.label, r.split, r.sha256, r.source, r.type])
    return write_text(path, buf.getvalue())


def fingerprint_of(entries: Iterable[tuple[str, str, str, str]]) -> str:
    """SHA-256 over (source, file, class, file hash) entries, in sorted order: names an exact data set."""
    h = hashlib.sha256()
    for source, file, label, sha in sorted(entries, key=lambda e: (e[0], e[1])):
        h.update(f"{source}/{file}\t{label}\t{sha}\n".encode("utf-8", "surrogateescape"))  # names as their bytes
    return h.hexdigest()


def rows_fingerprint(rows: Iterable[ManifestRow]) -> str:
    """:func:`fingerprint_of` the images a split manifest names (the same as the scanned data set's)."""
    return fingerprint_of((r.source, r.file, r.label, r.sha256) for r in rows)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    from firmware_host.atomic import read_csv_text

    p = Path(path)
    try:
        # surrogateescape: file names that are not valid UTF-8 were written as their raw bytes
        # line ends untouched: a CR inside a quoted file name stays a CR
        text = read_csv_text(p)
    except OSError as exc:
        raise DataError(f"cannot read split manifest ({os_reason(exc)})", p) from None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows or set(MANIFEST_FIELDS) - set(rows[0]):
        raise DataError(f"not a split manifest (needs columns {', '.join(MANIFEST_FIELDS)})", p)
    out = []
    for r in rows:
        if r["split"] not in SPLITS:
            raise DataError(f"unknown split {r['split']!r} for {r['file']}", p)
        out.append(ManifestRow(r["file"], r["class"], r["split"], r["sha256"], r.get("source") or "", r.get("type") or r["class"]))
    return out


def load_from_manifest(
    root: str | os.PathLike | dict[str, Path],
    rows: Iterable[ManifestRow],
    size: int,
    classes: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
    check_hash: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[ManifestRow]]:
    """Load the images a manifest names from ``root``, preprocessed to ``size``.

    ``root`` is one folder, or a mapping from source name to folder (rows name their source).
    Returns (images uint8 (N,S,S,3), labels int64 (N,), rows). A missing file or one whose bytes
    changed since the manifest was written is a :class:`DataError` naming it: evaluating on
    different images than the split promised would give a silently wrong answer.
    """
    x, y, rows, _ = load_cells_from_manifest(root, rows, size, classes, on_progress, check_hash)
    return x, y, rows


def load_cells_from_manifest(
    root: str | os.PathLike | dict[str, Path],
    rows: Iterable[ManifestRow],
    size: int,
    classes: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
    check_hash: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[ManifestRow], np.ndarray]:
    """:func:`load_from_manifest` (the same arguments and errors), with each image's nucleus offset
    (:func:`firmware_host.preprocess.prepare_cell`) as a fourth item, float64 (N,)."""
    folders = root if isinstance(root, dict) else None
    root = Path(next(iter(folders.values()))) if folders else Path(root)
    rows = list(rows)
    if folders is not None:
        lost = sorted({r.source for r in rows} - set(folders))
        if lost:
            held = ", ".join(k for k in folders if k) or "none"
            raise DataError(
                f"the split manifest names source(s) {', '.join(lost)} that the data folders do not hold (they hold: {held}); "
                "give each folder under its source's name at training (NAME=FOLDER; a source is named after its folder unless named so)",
                root,
            )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise DataError(f"manifest has class(es) the model does not know: {', '.join(unknown)}", root)

    def work(r: ManifestRow):
        path = (Path(folders[r.source]) if folders is not None else root) / r.file
        try:
            data = read_bytes(path)
        except ImageError as exc:
            raise DataError(f"{exc.reason} (listed in the split manifest; is --data the folder the model was trained on?)", path) from None
        if check_hash and hashlib.sha256(data).hexdigest() != r.sha256:
            raise DataError("file changed since the split manifest was written (SHA-256 differs; is --data the folder the model was trained on?)", path)
        return decode_cell(data, size, path)

    arrays, offsets = [], []
    for i, (a, o) in enumerate(map_in_threads(work, rows)):
        arrays.append(a)
        offsets.append(o)
        if on_progress:
            on_progress(i + 1, len(rows))
    x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    y = np.array([index[r.label] for r in rows], dtype=np.int64)
    return x, y, rows, np.array(offsets, dtype=np.float64)
