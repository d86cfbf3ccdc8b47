"""Corrections from the review page, turned into a labelled folder that ``train --data`` reads.

The review page (:mod:`firmware_host.report`) downloads a CSV with the columns ``file,predicted,corrected,sha256``
(:data:`firmware_host.report.CSV_COLUMNS`; a file whose SHA-256 is not the page's is refused: replaced since it was
reviewed). :func:`apply_corrections` reads it, checks every row, and
builds ``OUT/<class>/<image>`` with one sub-folder per corrected class: copies by default, or hard or
symbolic links. The folder is built in a hidden staging folder beside ``OUT`` and renamed into place
only when complete (:func:`firmware_host.atomic.staged_dir`), so a failure leaves nothing half-written;
an existing ``OUT`` is replaced only if an earlier ``corrections apply`` made it (it holds
:data:`MARKER`), it holds no image a person added or changed since (the marker records each copy's SHA-256), and
the CSVs given list every cell it holds (a week's folder, applied Tuesday's CSV alone, lost Monday's cells with a
note): else ``replace=True`` (``--replace``) drops them.
The user's images are only read, never moved or written.

A cell found by ``edgecell scan`` is named ``FIELD#x0,y0,x1,y1`` in the CSV
(:func:`firmware_host.report.cell_name`): the region scan classified (its box and a margin,
:func:`firmware_host.scan.cell_region`) is cut out of the field (after the EXIF orientation, as the
runtime reads it) and written as a PNG, whatever ``--link`` says.

Every problem is found before anything is written, and each is one line naming the CSV row and
the file: a malformed CSV, a file that does not exist or is not a regular file, a class not in the
allowed list, a file listed twice (the same class: duplicate; different classes: conflicting), a
source image inside ``OUT`` (which would be replaced).
"""

from __future__ import annotations

import csv
import enum
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware_host.errors import DataError, os_reason
from firmware_host.metadata import is_hex_digest
from firmware_host.paths import OTHER_TYPES, is_image_name
from firmware_host.preprocess import IMAGE_SUFFIXES
from firmware_host.report import CSV_COLUMNS, CSV_COLUMNS_WITHOUT_SHA, OTHER, SHA_SHOWN, Box, page_text, parse_cell_name, short_sha

MARKER = "corrections.json"
"""File at the top of an output folder that ``corrections apply`` wrote (lists every image and where it came from)."""


class LinkMode(str, enum.Enum):
    """How an image gets into the output folder."""

    copy = "copy"
    hard = "hard"
    sym = "sym"


class CorrectionsError(DataError):
    """The CSV cannot be applied; ``problems`` holds one line per problem found."""

    def __init__(self, problems: Sequence[str], path: str | os.PathLike, hint: str | None = None):
        self.problems = list(problems)
        self.hint = hint
        """One line on what to do about several of the problems at once, or None."""
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        super().__init__(self.problems[0] + more, None)
        self.path = os.fspath(path)


@dataclass
class Correction:
    """One row of the CSV: its line number, the file as written, the file found, and the classes."""

    line: int
    file: str
    source: Path
    predicted: str
    corrected: str
    box: Box | None = None
    """For a cell of a scan field: its box in ``source`` (the field), cut out into the folder."""
    csv: str = ""
    """The CSV the row is in (several days' CSVs may be applied together)."""

    @property
    def key(self) -> str:
        """The cell, whatever the spelling of its path: the real file, and the box for a scan cell."""
        return os.path.realpath(self.source) + ("" if self.box is None else f"#{self.box.x0},{self.box.y0},{self.box.x1},{self.box.y1}")


@dataclass
class Applied:
    """What :func:`apply_corrections` wrote: ``counts`` per class, and every ``(source, written)`` pair."""

    out: Path
    mode: LinkMode
    counts: dict[str, int] = field(default_factory=dict)
    files: list[tuple[str, str]] = field(default_factory=list)
    replaced: int | None = None
    """How many images the folder held before, when it replaced an earlier one (None: a new folder)."""
    gone: int = 0
    """How many of those are not in this CSV, so no longer in the folder."""
    cut: int = 0
    """How many of ``files`` are cells cut out of a scan field (new PNGs, whatever the ``mode``)."""
    again: int = 0
    """Rows that named a cell an earlier CSV gave the same class (kept once)."""

    @property
    def n(self) -> int:
        return len(self.files)


def default_classes() -> list[str]:
    """The classes a correction may name when no model is given: edgecell's cell types and ``other``."""
    from edgecell import CLASSES

    return list(CLASSES) + ([] if OTHER in CLASSES else [OTHER])


def model_classes(model: str | os.PathLike) -> list[str]:
    """The classes of a converted model (file or export folder), and ``other``."""
    from firmware_host.metadata import read_metadata
    from firmware_host.runtime import resolve_model

    classes = list(read_metadata(resolve_model(model)).classes)
    return classes + ([] if OTHER in classes else [OTHER])


def read_corrections(csv_path: str | os.PathLike, classes: Sequence[str], base: str | os.PathLike | None = None) -> list[Correction]:
    """Read and check the CSV; relative file names are taken from ``base`` (default: the current folder).

    Raises :class:`CorrectionsError` listing every problem (one line each), or returns the rows.
    """
    csv_path = Path(csv_path)
    base = Path(base) if base is not None else Path.cwd()
    # a class by its name in any case; with `other`, a type taught as other by its own name (the folder train and adapt
    # read as other, keeping the type: lymphocyte, eosinophil, ...)
    allowed = {c.lower(): c for c in (*classes, *(OTHER_TYPES if OTHER in classes else ()))}
    problems: list[str] = []
    where = os.fspath(csv_path)
    rows: list[tuple[int, list[str]]] = []  # (the line a record starts on, its fields): a quoted field may hold line breaks
    start = 1
    if (wrong := _not_the_csv(csv_path)) is not None:
        raise CorrectionsError([f"{where}: {wrong}"], csv_path)
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
    except FileNotFoundError:
        raise CorrectionsError([f"{where}: no such file"], csv_path) from None
    except UnicodeDecodeError:
        raise CorrectionsError([f"{where}: not a UTF-8 text file (expected the CSV the review page downloads)"], csv_path) from None
    except csv.Error as exc:
        raise CorrectionsError([f"{where}: line {start}: malformed CSV ({exc})"], csv_path) from None  # where the bad record starts
    except OSError as exc:
        raise CorrectionsError([f"{where}: cannot read ({os_reason(exc)})"], csv_path) from None
    from firmware_host.classify import CSV_BASE_COLUMNS
    from firmware_host.scan import CSV_COLUMNS as SCAN_CSV_COLUMNS

    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    if header not in (list(CSV_COLUMNS), list(CSV_COLUMNS_WITHOUT_SHA)):  # a page made before the sha256 column: unchecked
        got = ",".join(rows[0][1]) if rows else "an empty file"
        line = f"{where}: line 1: expected the header {','.join(CSV_COLUMNS)}, found {got!r}"
        if len(header) == 1 and [c.strip() for c in header[0].split(";")] in (list(CSV_COLUMNS), list(CSV_COLUMNS_WITHOUT_SHA)):
            line += f"; its fields are separated by semicolons (as a spreadsheet saves CSV in some languages): {RESAVE}"
        elif extra := next((rows[0][1][len(cols) :] for cols in (CSV_COLUMNS, CSV_COLUMNS_WITHOUT_SHA) if header[: len(cols)] == list(cols)), None):
            line += f"; remove the column(s) added after them ({', '.join(extra)}), then save it as CSV again"
        elif header[:2] in (CSV_BASE_COLUMNS[:2], SCAN_CSV_COLUMNS[:2]):
            line += "; this is classify's or scan's results CSV, not the corrections the review page downloads (press Download corrections there)"
        raise CorrectionsError([line], csv_path)

    out: list[Correction] = []
    seen: dict[str, Correction] = {}
    relative_missing = 0
    for line, row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            problems.append(f"{where}: line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
            continue
        file, predicted, corrected = row[0], row[1].strip(), row[2].strip()
        sha = row[3].strip().lower() if len(row) > 3 else ""
        if sha and not is_hex_digest(sha, SHA_SHOWN):
            # not one the page writes: a spreadsheet turns 1234e567... into a number (1.23E+570)
            problems.append(f"{where}: line {line}: {file}: sha256 {row[3].strip()!r} is not the {SHA_SHOWN} hex digits the page writes: {RESAVE}")
            continue
        if not file:
            problems.append(f"{where}: line {line}: no file name")
            continue
        if "\0" in file:  # no file can be named so (os.stat raised ValueError: 'embedded null byte')
            problems.append(f"{where}: line {line}: {file!r}: a file name holding a NUL byte")
            continue
        if not corrected:
            problems.append(f"{where}: line {line}: {file}: no corrected class")
            continue
        if corrected.lower() not in allowed:
            problems.append(f"{where}: line {line}: {file}: unknown class {corrected!r} (known: {', '.join(allowed.values())})")
            continue
        corrected = allowed[corrected.lower()]
        source = _resolve(file, base)
        box = None
        if not source.exists() and (cell := parse_cell_name(file)) is not None and _resolve(cell[0], base).exists():
            source, box = _resolve(cell[0], base), cell[1]
        elif not source.exists() and "#" in file and _resolve(file.rpartition("#")[0], base).is_file():
            # FIELD#... where FIELD is a file: a box that is not four whole numbers (a hand edit), not a missing file
            problems.append(f"{where}: line {line}: {file}: box {file.rpartition('#')[2]!r} is not x0,y0,x1,y1 in whole pixels of the field")
            continue
        try:
            st = source.stat()
        except OSError:
            problems.append(f"{where}: line {line}: {file}: no such file" + ("" if os.path.isabs(file) else f" (relative to {base})"))
            relative_missing += not os.path.isabs(file)
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{where}: line {line}: {file}: not a regular file")
            continue
        if box is None and not is_image_name(source.name):  # train would skip it: a labelled cell lost without a word
            problems.append(f"{where}: line {line}: {file}: not a type train reads ({' '.join(IMAGE_SUFFIXES)}); convert it to PNG first")
            continue
        if bad := _contents_problem(source, sha, whole=box is None):  # replaced since reviewed, or train would skip it
            problems.append(f"{where}: line {line}: {file}: {bad}")
            continue
        if box is not None and (bad := _box_problem(source, box)):
            problems.append(f"{where}: line {line}: {file}: {bad}")
            continue
        c = Correction(line, file, source, predicted, corrected, box, where)
        before = seen.get(c.key)
        if before is not None:
            if before.corrected == corrected:
                problems.append(f"{where}: line {line}: {file}: duplicate row (line {before.line} already gives it class {corrected!r})")
            else:
                problems.append(f"{where}: line {line}: {file}: conflicting rows (line {before.line} says {before.corrected!r}, this one {corrected!r})")
            continue
        seen[c.key] = c
        out.append(c)
    if problems:
        hint = None
        if relative_missing:
            hint = "run this in the folder classify was run in, or give --base (or the image was renamed or moved since the review)"
            hint = hint if relative_missing == 1 else f"{relative_missing} files are not found relative to {base}: {hint}"
        raise CorrectionsError(problems, csv_path, hint)
    return out


def read_all(csv_paths: Sequence[str | os.PathLike], classes: Sequence[str], base: str | os.PathLike | None = None) -> tuple[list[Correction], int]:
    """The rows of every CSV (:func:`read_corrections`), one per cell: a cell in several CSVs with the same class is
    kept once (the count of such rows is returned), with different classes it is a problem naming both. Raises
    :class:`CorrectionsError` with the problems of every CSV."""
    problems: list[str] = []
    hints: list[str] = []
    rows: list[Correction] = []
    seen: dict[str, Correction] = {}
    again = 0
    for csv_path in csv_paths:
        try:
            got = read_corrections(csv_path, classes, base)
        except CorrectionsError as exc:
            problems += exc.problems
            hints += [exc.hint] if exc.hint and exc.hint not in hints else []
            continue
        if not got:
            problems.append(f"{os.fspath(csv_path)}: holds no corrections (only the header)")
        for c in got:
            before = seen.get(c.key)
            if before is None:
                seen[c.key] = c
                rows.append(c)
            elif before.corrected == c.corrected:
                again += 1
            else:
                problems.append(
                    f"{c.csv}: line {c.line}: {c.file}: conflicts with {before.csv} line {before.line} "
                    f"({before.corrected!r} there, {c.corrected!r} here); correct one of them"
                )
    if problems:
        raise CorrectionsError(problems, csv_paths[0], "; ".join(hints) or None)
    return rows, again


def apply_corrections(
    csv_path: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    classes: Sequence[str] | None = None,
    base: str | os.PathLike | None = None,
    mode: LinkMode | str = LinkMode.copy,
    replace: bool = False,
) -> Applied:
    """Build ``out/<corrected class>/<image>`` from the corrections CSV, or several (a week of reviews; see the module
    docstring).

    Args:
        classes: the classes a correction may name (default: :func:`default_classes`).
        base: folder that relative file names in the CSV are relative to (default: the current folder).
        mode: copy the images (default), or hard-link or symlink them.
        replace: replace an earlier ``out`` even when it holds cells the CSVs do not list (they are dropped); without
            it such a folder is refused, naming the CSVs it was built from (give them too, to keep those cells).
    """
    from firmware_host.atomic import check_stageable, some_of, staged_dir, write_json
    from firmware_host.metadata import sha256_file

    mode = LinkMode(mode)
    classes = list(classes) if classes is not None else default_classes()
    csv_paths = [csv_path] if isinstance(csv_path, (str, os.PathLike)) else list(csv_path)
    if not csv_paths:
        raise CorrectionsError(["no corrections CSV given"], "")
    rows, again = read_all(csv_paths, classes, base)
    out = Path(out)
    real_out = os.path.realpath(out)
    for csv_path in csv_paths:
        if os.path.realpath(csv_path).startswith(real_out + os.sep):
            raise CorrectionsError([f"{os.fspath(csv_path)}: is inside the output folder {out}, which would be replaced; choose another --out"], csv_path)
    inside = [r for r in rows if os.path.realpath(r.source).startswith(real_out + os.sep)]
    if inside:
        more = f" (and {len(inside) - 1} more rows)" if len(inside) > 1 else ""
        raise CorrectionsError(
            [
                f"{inside[0].csv}: line {inside[0].line}: {inside[0].file}{more}: is inside the output folder {out}, which would be replaced; choose another --out"
            ],
            inside[0].csv,
        )
    # what it wrote and is still as it wrote it (every copy's SHA-256 read once): anything else, a person's added or
    # changed image, keeps the folder from being replaced
    changed = changed_files(out)
    owned = frozenset({MARKER, *(f["file"] for f in _listed(out))}) - set(changed)
    if changed:
        what, them = ("an image", "it") if len(changed) == 1 else (f"{len(changed)} images", "them")
        raise DataError(
            f"holds {what} changed since corrections apply wrote {them} ({some_of(changed)}), which replacing the folder "
            f"would lose; move {them} out first, or choose another --out",
            out,
        )
    check_stageable(out, MARKER, owned=owned)
    if not replace and (dropped := _dropped(out, rows)):
        cells, csvs = dropped
        raise DataError(
            f"holds {len(cells)} cell(s) an earlier corrections apply put there ({some_of(cells)}) that "
            f"{'this CSV does' if len(csv_paths) == 1 else 'these CSVs do'} not list; give the CSV(s) it was built from as well "
            f"({some_of(csvs)}) to keep them in one folder, or --replace to build it from these alone",
            out,
        )
    before = owned - {MARKER} if (out / MARKER).is_file() else None
    result = Applied(out=out, mode=mode, again=again)
    with staged_dir(out, MARKER, owned=owned) as tmp:
        used: set[str] = set()
        digests: list[str | None] = []
        for r in rows:
            name = _unique_name(r.source, r.corrected, used, r.box)
            dest = tmp / r.corrected / name
            dest.parent.mkdir(exist_ok=True)
            if r.box is None:
                _place(r.source, dest, mode)
            else:
                _cut(r.source, r.box, dest, out / r.corrected / name)
                result.cut += 1
            result.counts[r.corrected] = result.counts.get(r.corrected, 0) + 1
            result.files.append((os.fspath(r.source), f"{r.corrected}/{name}"))
            # a copy's contents are recorded, so that the next apply does not overwrite a person's edit of it (a link's
            # contents are the source image, which replacing the folder leaves where it is)
            digests.append(sha256_file(dest) if mode is LinkMode.copy or r.box is not None else None)
        manifest = {
            "format": "edgecell-corrections/2",  # 2: "csv" lists every CSV applied, each file its own
            "csv": [os.path.abspath(p) for p in csv_paths],
            "mode": mode.value,
            "counts": dict(sorted(result.counts.items())),
            "files": [
                {
                    "csv": os.path.abspath(r.csv),
                    "line": r.line,
                    "key": r.key,  # the cell (the real file, and a scan cell's box): what the next apply must list
                    "source": os.path.abspath(r.source),
                    "predicted": r.predicted,
                    "corrected": r.corrected,
                    "file": f,
                }
                | ({"sha256": d} if d else {})
                for r, (_, f), d in zip(rows, result.files, digests)
            ],
        }
        write_json(tmp / MARKER, manifest)
    if before is not None:
        result.replaced, result.gone = len(before), len(before - {f for _, f in result.files})
    return result


def _dropped(out: Path, rows: Sequence[Correction]) -> tuple[list[str], list[str]] | None:
    """The cells an earlier apply put in ``out`` (its :data:`MARKER`) that ``rows`` do not list, as the files written
    for them, and the paths of the CSVs that earlier apply read (as it was given them); None when there are none. A cell is its
    :attr:`Correction.key`; an entry written before the key was recorded is its source file (any cell of that field)."""
    listed = _listed(out)
    keys = {r.key for r in rows} | {os.path.realpath(r.source) for r in rows}
    gone = [f for f in listed if (f.get("key") or os.path.realpath(str(f.get("source", "")))) not in keys]
    if not gone:
        return None
    csvs = dict.fromkeys(str(f["csv"]) for f in gone if f.get("csv"))  # whole paths: the page always downloads corrections.csv
    return [f["file"] for f in gone], list(csvs) or ["unknown"]


def _listed(folder: Path) -> list[dict]:
    """The ``files`` entries of ``folder``'s :data:`MARKER` (none when it cannot be read)."""
    try:
        files = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
        return [f for f in files if isinstance(f, dict) and isinstance(f.get("file"), str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def changed_files(folder: Path) -> list[str]:
    """The copies that ``corrections apply`` wrote in ``folder`` whose contents are no longer what it wrote (a person
    replaced or edited the image under the same name), sorted. A file that is gone, or an earlier version's entry
    without a recorded SHA-256, is not changed."""
    from firmware_host.metadata import sha256_file

    changed = []
    for f in _listed(folder):
        path = folder / f["file"]
        if f.get("sha256") and path.is_file():
            try:
                same = sha256_file(path) == f["sha256"]
            except OSError:
                same = False  # what cannot be read cannot be shown to be the copy it wrote
            if not same:
                changed.append(f["file"])
    return sorted(changed)


def _resolve(file: str, base: Path) -> Path:
    """``file`` (relative to ``base``); a name the review page could only show with U+FFFD for bytes that are not
    UTF-8 (a Latin-1 name from an old scanner) is found again as the one entry of its folder that shows so."""
    path = Path(file) if os.path.isabs(file) else base / file
    if "\ufffd" not in file or os.path.lexists(path):
        return path
    found = Path(path.anchor)
    for part in path.parts[len(Path(path.anchor).parts) :]:
        if "\ufffd" in part and not os.path.lexists(found / part):
            try:
                same = [name for name in os.listdir(found) if page_text(name) == part]
            except OSError:
                return path
            if len(same) != 1:
                return path
            part = same[0]
        found = found / part
    return found


RESAVE = "download it again from the review page, and apply it without opening it in a spreadsheet (or save it there as CSV UTF-8, comma-separated)"
"""What to do with a corrections CSV a spreadsheet has changed."""
SNIFF_BYTES = 512
"""How much of a corrections file :func:`_not_the_csv` reads to tell what else it is."""


def _not_the_csv(path: str | os.PathLike) -> str | None:
    """What a file given as corrections is instead of the page's CSV, from its first bytes, or None: the review page
    itself (HTML), or text in UTF-16 (a spreadsheet's "Unicode text"). Unreadable files are left to the reader."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"text in UTF-16, not the UTF-8 CSV the review page downloads: {RESAVE}"
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return 'the review page itself (HTML), not its corrections: open it in a browser, correct the cells and press "Download corrections"'
    return None


def _contents_problem(image: Path, sha: str, whole: bool) -> str | None:
    """Why the file ``image`` cannot be labelled, from one read of it, or None: it is not the file the review page
    showed (its :func:`~firmware_host.report.short_sha` is not ``sha``; no check when ``sha`` is empty), or, for a
    ``whole`` image (not a field a cell is cut from), ``train`` and ``adapt`` would not read it as a cell (decoded as
    they decode it, small)."""
    from firmware_host.errors import ImageError
    from firmware_host.preprocess import PROBE_SIZE, decode_cell, read_bytes

    if not sha and not whole:
        return None
    try:
        data = read_bytes(image)
    except ImageError as exc:
        return f"cannot be read ({exc.reason})"
    if sha and (now := short_sha(data)) != sha:
        return (
            f"is not the image that was reviewed (SHA-256 {now}..., the page's {sha}...): replaced since under the same name "
            "(a camera that numbers its pictures again?); review it again"
        )
    if whole:
        try:
            decode_cell(data, PROBE_SIZE, image)
        except ImageError as exc:
            return f"cannot be read as an image ({exc.reason}), so train would skip it"
    return None


def _box_problem(field: Path, box: Box) -> str | None:
    """Why ``box`` cannot be cut from the image ``field`` (read from its header), or None."""
    from PIL import Image

    try:
        with Image.open(field) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees when read
                w, h = h, w
    except Exception as exc:
        return f"the field image cannot be read ({type(exc).__name__})"
    if not (0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h):
        return f"box {box.x0},{box.y0},{box.x1},{box.y1} is not inside the {w}x{h} field"
    return None


def _cut(field: Path, box: Box, dest: Path, shown: Path) -> None:
    """The cell in ``box`` as a PNG: the region around it that ``scan`` classified (:func:`firmware_host.scan.cell_region`,
    the box and a margin), from the field decoded as ``scan`` decoded it (EXIF orientation, alpha on white, 16-bit
    scaled: :func:`firmware_host.scan.decode_field`), so a cell trained on is the cell that was classified. (The bare
    box, cut until a review found it, was framed more tightly: 9 of 107 BCCD cells changed class when classified again.)
    A field that cannot be read is named; a cell that cannot be written, by ``shown`` (its place in the output folder)."""
    from PIL import Image

    from firmware_host.errors import ImageError
    from firmware_host.scan import cell_region, decode_field

    try:
        rgb = decode_field(field.read_bytes(), field)
    except ImageError as exc:
        raise DataError(f"cannot cut the cell out of this field ({exc.reason})", field) from None
    except OSError as exc:
        raise DataError(f"cannot cut the cell out of this field ({os_reason(exc)})", field) from None
    x0, y0, x1, y1 = cell_region((box.x0, box.y0, box.x1, box.y1), rgb.shape[1], rgb.shape[0])
    try:
        Image.fromarray(rgb[y0:y1, x0:x1], "RGB").save(dest, "PNG")
    except OSError as exc:
        raise DataError(f"cannot write the cell cut out of {field} ({os_reason(exc)})", shown) from None


def _unique_name(source: Path, cls: str, used: set[str], box: Box | None = None) -> str:
    """The image's own name in its class folder; a short hash of its path is added when two share a name.

    A cell cut from a field is named after the field and its box, as a PNG.
    """
    name = source.name if box is None else f"{source.stem}_{box.x0}_{box.y0}_{box.x1}_{box.y1}.png"
    if f"{cls}/{name}" in used:
        digest = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:8]
        name = f"{Path(name).stem}__{digest}{Path(name).suffix}"
    used.add(f"{cls}/{name}")
    return name


def _place(source: Path, dest: Path, mode: LinkMode) -> None:
    try:
        if mode is LinkMode.copy:
            shutil.copy2(source, dest)
        elif mode is LinkMode.hard:
            os.link(source, dest)
        else:
            os.symlink(os.path.abspath(source), dest)
    except OSError as exc:
        hint = " (hard links cannot cross file systems: use copies or --link sym)" if mode is LinkMode.hard else ""
        raise DataError(f"cannot {'copy' if mode is LinkMode.copy else 'link'} it into the output folder ({os_reason(exc)}){hint}", source) from None
