"""Turn the PATH arguments of ``edgecell classify`` into a list of image files.

Each argument may be

* a file - used as given, whatever its suffix (the user asked for it);
* a folder - searched recursively for names ending in one of
  :data:`firmware_host.preprocess.IMAGE_SUFFIXES` (case-insensitive), in sorted order;
* a glob pattern such as ``'data/*/BA_*.jpg'`` or ``'data/**/*.png'`` - expanded here (quoted
  patterns reach us unexpanded), each match treated as above.

Inside a folder, an entry named like an image that is not a readable file (a directory called
``x.jpg``, a broken symbolic link) is kept in the list, so that classification reports it as a
bad image instead of silently skipping it. Arguments that match nothing are returned as
:class:`ImageError` items, one per argument.

Labels: an image whose parent folder is named after one of the model's classes is labelled with
that class (the data-set layout ``<root>/<class>/<image>``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware_host.errors import ImageError, os_reason, read_regular
from firmware_host.preprocess import IMAGE_MAGIC, IMAGE_SUFFIXES, MAX_FILE_BYTES

_MAGIC = re.compile(r"[*?[]")


@dataclass
class Expanded:
    """The result of :func:`expand_paths`: image paths in order, and arguments that matched nothing."""

    paths: list[Path] = field(default_factory=list)
    errors: list[ImageError] = field(default_factory=list)
    links: list[tuple[Path, Path]] = field(default_factory=list)
    """Symbolic links to folders that were read already, as ``(link, folder)``: their images count once."""
    unread: list[Path] = field(default_factory=list)
    """Pictures in the folders given whose type is not read from folders (:data:`UNREAD_PICTURES`), for a note."""
    same_files: list[tuple[Path, Path]] = field(default_factory=list)
    """Paths left out as ``(path, kept)``: a link (symbolic or hard) to a file listed already under another name, or a
    copy with the same bytes (:func:`drop_copies`), which would count one cell twice in the differential."""


UNREAD_PICTURES = (".gif", ".webp", ".heic", ".heif", ".avif", ".jp2", ".dng")
"""Suffixes of pictures that a folder search does not read (not :data:`IMAGE_SUFFIXES`, the types edgecell is trained
on), and says so, rather than leaving them out of the count without a word."""


def is_image_name(name: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> bool:
    return name.lower().endswith(tuple(s.lower() for s in suffixes))


def _regular(entry: os.DirEntry) -> bool:
    """A regular file (following a link): never open a pipe or a device to look at its first bytes."""
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def starts_as_image(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` begins as a JPEG, PNG or TIFF does (:data:`~firmware_host.preprocess.IMAGE_MAGIC`;
    False when it cannot be read): a file without a suffix that does is a picture (a camera's, or a copy that lost its
    ``.jpg``), noted as not read rather than left out without a word."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(IMAGE_MAGIC)


def walk_folder(
    folder: str | os.PathLike,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    links: list | None = None,
    problems: list | None = None,
    unread: list | None = None,
) -> list[Path]:
    """All image-named entries under ``folder``, recursively, sorted by path; hidden ones (``.name``, such as the
    ``._x.jpg`` files macOS leaves on a USB stick) left out.

    A folder that cannot be listed (no permission) is appended to ``problems`` as an :class:`ImageError`, and a
    picture of a type not read (:data:`UNREAD_PICTURES`) to ``unread``, so neither is left out without a word.

    Real folders are searched first and symbolic links to folders after them, each folder once:
    a link to a folder that is also reached directly (``basophil/alias -> ../monocyte``) adds
    nothing, so every image keeps the path under its own class folder (its label), and the pair
    ``(link, target)`` is appended to ``links`` for the caller to report. A loop is not followed
    twice. A folder whose own name looks like an image is returned as an entry, not searched.
    Iterative, so a folder nested thousands of levels deep is searched like any other.
    """
    found: list[Path] = []
    seen: dict[tuple[int, int], str] = {}
    deferred: list[str] = []  # symbolic links to folders, searched once every real folder has been

    def search(top: str) -> None:
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                if links is not None and os.path.islink(d):
                    links.append((Path(d), Path(seen[key])))
                continue
            seen[key] = d
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if problems is not None:
                    problems.append(ImageError(f"cannot list this folder ({os_reason(exc)}); its images are not read", d))
                continue
            subfolders = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    is_dir = e.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_image_name(e.name, suffixes):
                    found.append(Path(e.path))
                elif is_dir:
                    (deferred if e.is_symlink() else subfolders).append(e.path)
                elif unread is not None and (is_image_name(e.name, UNREAD_PICTURES) or ("." not in e.name and _regular(e) and starts_as_image(e.path))):
                    unread.append(Path(e.path))
            stack.extend(reversed(subfolders))

    search(os.fspath(folder))
    while deferred:
        search(deferred.pop(0))
    return sorted(found, key=lambda p: p.as_posix())


def walk(top: str | os.PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, followlinks=False)`` (top-down; prune by editing the yielded folder names), without recursion.

    Python 3.11's ``os.walk`` recurses once per level, so a folder nested about 1,000 levels deep
    raised RecursionError; this walks any depth.
    """
    stack = [os.fspath(top)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        dirs, files, links = [], [], set()
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e.name)
                if e.is_symlink():
                    links.add(e.name)
            else:
                files.append(e.name)
        yield d, dirs, files
        stack.extend(os.path.join(d, name) for name in reversed(dirs) if name not in links)


def list_files(folder: str | os.PathLike, image_named_dirs: bool = False) -> list[Path]:
    """Every non-hidden file under ``folder``, whatever its suffix, sorted; symbolic links to folders not followed.

    For data and calibration folders, where a file that is not an image is reported rather than
    skipped silently. With ``image_named_dirs``, a folder named like an image (``x.jpg/``) is
    listed too, as the user error it is, and so is a link to a folder, which is not followed: the caller says that
    its images are not read. (Classify's :func:`walk_folder` lists image names only and follows links.)
    """
    out = []
    for dirpath, dirnames, filenames in walk(folder):  # any depth (os.walk recurses)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        out.extend(d / name for name in sorted(filenames) if not name.startswith("."))
        if image_named_dirs:
            out.extend(d / name for name in dirnames if is_image_name(name) or os.path.islink(d / name))
    return out


def path_list(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[str, ...]:
    """``paths`` as a tuple of path strings: one path (``"slides/today/"``, a :class:`~pathlib.Path`) is a list of one,
    not a string of characters each read as a path (``"/"``, the whole disk)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    return tuple(os.fsdecode(p) for p in paths)


def _is_dir(p: Path) -> bool:
    """``p.is_dir()``, False where it cannot be told (a folder above it without permission raises in Python 3.11)."""
    try:
        return p.is_dir()
    except OSError:
        return False


def _exists(p: Path) -> bool:
    """A file, a link (broken or not) or anything that cannot be looked at: reading it reports what is wrong."""
    try:
        return p.exists() or p.is_symlink()
    except OSError:
        return True


EMPTY_PATH = "an empty path; give a file, a folder or a pattern (an empty path is not the current folder)"
"""What an empty string among the paths to read is told (a list of files with an empty last line gives one)."""


def expand_paths(args: Iterable[str | os.PathLike], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Expanded:
    """Expand files, folders and glob patterns into image paths (duplicates dropped, order kept)."""
    out = Expanded()
    seen: set[str] = set()
    files: dict[tuple[int, int], Path] = {}  # (device, inode) of each file listed
    sizes: dict[Path, int] = {}  # the size of each regular file listed, for drop_copies

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key in seen:
            return
        seen.add(key)
        try:
            st = os.stat(p)
        except (OSError, ValueError):  # a broken link, a name the system refuses: reported when read
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in files:
                out.same_files.append((p, files[ident]))
                return
            files[ident] = p
            sizes[p] = st.st_size
        out.paths.append(p)

    def add_match(p: Path, arg: str) -> int:
        if _is_dir(p):
            problems: list[ImageError] = []
            files = walk_folder(p, suffixes, out.links, problems, out.unread)
            for f in files:
                add(f)
            out.errors.extend(problems)
            return len(files) or -len(problems)  # a folder that could not be listed is not "no images"
        add(p)
        return 1

    for raw in args:
        arg = os.fspath(raw)
        p = Path(arg)
        if not arg:  # Path("") is "." (a line left empty in a list of files would read the current folder)
            out.errors.append(ImageError(EMPTY_PATH, "<empty path>"))
        elif _is_dir(p):
            if add_match(p, arg) == 0:
                out.errors.append(ImageError(f"folder holds no images (looked for {', '.join(suffixes)})", arg))
        elif _exists(p):
            add(p)  # a file (or a broken link, reported when read)
        elif _MAGIC.search(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            n = 0
            for m in matches:
                mp = Path(m)
                if _is_dir(mp) or is_image_name(m, suffixes) or mp.is_symlink():
                    n += abs(add_match(mp, arg))
            if n == 0:
                out.errors.append(ImageError("pattern matches no images", arg))
        else:
            out.errors.append(ImageError("no such file or folder", arg))
    drop_copies(out, sizes)
    return out


def left_out(same_files: Sequence[tuple[Path, Path]]) -> list[dict]:
    """``Expanded.same_files`` as the JSON reports give it: ``{"path", "same_as"}`` for each path left out."""
    return [{"path": os.fspath(p), "same_as": os.fspath(k)} for p, k in same_files]


def drop_copies(out: Expanded, sizes: dict[Path, int]) -> None:
    """Leave out of ``out.paths`` each file with the same bytes as one listed before it, recording ``(copy, kept)`` in
    ``out.same_files``: a folder copied twice onto a stick would otherwise count every cell in it twice.

    ``sizes`` gives each regular file's size; only files that share a size with another are read and hashed
    (SHA-256), the way duplicate finders do, so a list of distinct JPEGs costs a ``stat`` per file (done already).
    Empty files, files over :data:`~firmware_host.preprocess.MAX_FILE_BYTES` and files that cannot be read are left
    in the list, for classification to report them.
    """
    by_size: dict[int, list[Path]] = {}
    for p, n in sizes.items():
        if 0 < n <= MAX_FILE_BYTES:
            by_size.setdefault(n, []).append(p)
    copies: dict[Path, Path] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        first: dict[bytes, Path] = {}
        for p in group:  # in the order listed, so the first of a set of copies is the one kept
            try:
                digest = hashlib.sha256(read_regular(p, MAX_FILE_BYTES, ImageError, "image file")).digest()
            except (ImageError, OSError, ValueError):
                continue
            if digest in first:
                copies[p] = first[digest]
            else:
                first[digest] = p
    if copies:
        out.same_files.extend((p, copies[p]) for p in out.paths if p in copies)
        out.paths = [p for p in out.paths if p not in copies]


OTHER_CLASS = "other"
"""The class of every cell that is none of the types a model names."""
OTHER_TYPES = ("other", "lymphocyte", "eosinophil", "platelet", "ig", "smudge")
"""Folder names of cell types that are taught and scored as :data:`OTHER_CLASS` (ig: immature granulocytes)."""


def class_of(folder_name: str) -> str:
    """The class a class folder stands for: :data:`OTHER_CLASS` for the :data:`OTHER_TYPES`."""
    return OTHER_CLASS if folder_name in OTHER_TYPES else folder_name


def label_for(path: str | os.PathLike, classes: Sequence[str]) -> str | None:
    """The class named by the image's parent folder (a lymphocyte folder names ``other``), or None."""
    parent = class_of(Path(path).parent.name)
    return parent if parent in set(classes) else None


def path_reads(args: Iterable[str | os.PathLike], expanded: Expanded) -> list[tuple[str, str]]:
    """What ``expand_paths(args)`` reads, as :func:`firmware_host.atomic.check_outputs` takes it: each folder given and each image."""
    folders = [(os.fspath(a), "an input folder being read") for a in args if os.path.isdir(a)]
    return folders + [(os.fspath(p), "an input image") for p in expanded.paths]
