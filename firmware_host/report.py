"""The review page: one self-contained HTML file a haematologist or technician checks and corrects.

``edgecell classify --report FILE.html`` and ``edgecell scan --report FILE.html`` write it through
:class:`ReportWriter`; only the standard library, numpy and Pillow are used, so it runs on the Pi.

What the page holds:

* a header: when, the model (name, SHA-256 prefix, precision), the edgecell version, how many
  images, the threshold, the folder relative names are relative to, and the lab warning when the run raised one;
  then each input that could not be classified, with the reason;
* the differential count over the model's classes and ``other`` (a table, with columns that follow the reviewer's
  corrections, and an inline SVG bar chart that follows them too);
* for folder-labelled input, the confusion matrix (rows: folder, columns: predicted);
* in scan mode, each field of view with a box around every cell found;
* a banner at the top when the run holds a possible blast;
* the cells as thumbnails grouped by predicted class, the review classes' groups first (and ``other``'s when it holds a
  cell for review); in each group the possible blasts, the other cells for review, the rest of the flagged ones, then
  by confidence, lowest first; each with its confidence (an ``other`` cell: the
  class the model found it nearest to), file name and a class selector. Cells whose folder label differs from the
  prediction are marked.

Thumbnails are embedded as small base64 JPEGs (the image as given, not the model's recoloured crop, at most
:data:`THUMB_MAX_PX` pixels: :func:`file_thumbnail`; in scan mode the cell's region of the field), so the page is one file: it needs no network, no server and
no folder beside it. Corrections stay in the open page and leave it only as the CSV the reviewer
downloads (``file,predicted,corrected,sha256``; :data:`CSV_COLUMNS`), which
``edgecell corrections apply`` turns into a labelled folder.

Safety: every file name is written through ``html.escape``; the data the script reads sits in a
``<script type="application/json">`` block whose ``<``, ``>`` and ``&`` are JSON escapes, so no name
can close it. A Content-Security-Policy meta tag allows only this file's own script and style
(by SHA-256) and ``data:``/``blob:`` images: nothing is fetched from anywhere.

Scan mode (``edgecell scan --report``): add each field with :meth:`ReportWriter.add_field`, then
its cells with ``add_cell(cell_name(field_file, box), ..., field=index, box=box)``. A cell's name
``FIELD#x0,y0,x1,y1`` (:func:`cell_name`) is what the corrections CSV holds, and
``edgecell corrections apply`` cuts that box out of the field into the labelled folder.

Memory: thumbnails are spooled to a temporary file as they come; only a small record per cell is
kept until the page is written.
"""

from __future__ import annotations

import base64
import colorsys
import contextlib
import datetime as _dt
import hashlib
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from firmware_host.metadata import edgecell_version
from firmware_host.paths import OTHER_TYPES
from firmware_host.preprocess import JPEG_FORMATS
from firmware_host.runtime import (
    BLAST_CLASSES,
    FLAG_REVIEW,
    NOT_WHITE_CELLS,
    NOT_WHITE_TYPES,
    TRIAGE_NOTE,
    differential_notes,
    differential_shares,
    has_no_nucleus,
    is_possible_blast,
    label_text,
    prob_text,
)

OTHER = "other"
"""The class a reviewer can always choose: not one of the model's cell types (debris, a smudge, two cells...)."""
THUMB_PX = 112
"""Side at which a cell thumbnail is shown in the page, in CSS pixels."""
THUMB_MAX_PX = 128
"""Largest side of an embedded thumbnail: the image as it was given (not the model's recoloured 40-pixel crop, in
which a person cannot tell a lymphocyte from a blast), shrunk to this; sharp on high-density screens."""
NEAREST_SHOWN = 0.1
"""An ``other`` cell shows the class the model gave most probability when that probability is at least this (below
it, "nearest: basophil 0.00" would say nothing)."""
FAILED_SHOWN = 200
"""Inputs that could not be classified are each named on the page, up to this many (all of them are in JSON and CSV)."""
THUMB_QUALITY = 80
"""JPEG quality of thumbnails: about 2-3 KB each, so 1,000 cells make a page of a few MB."""
FIELD_PX = 800
"""Longest side of an embedded field of view (scan mode); boxes are drawn over it in the field's own pixels."""
FIELD_QUALITY = 82
CSV_COLUMNS = ("file", "predicted", "corrected", "sha256")
"""Columns of the corrections CSV the page downloads (and ``edgecell corrections apply`` reads): ``sha256`` is the first
:data:`SHA_SHOWN` hex digits of the file's SHA-256 when the page was made (a scan cell's: its field's), so that a file
replaced under its name since (a camera that numbers its pictures from 1 again each day) is not labelled unseen."""
CSV_COLUMNS_WITHOUT_SHA = CSV_COLUMNS[:3]
"""The columns of pages made before the ``sha256`` column, which ``corrections apply`` still reads (unchecked)."""
SHA_SHOWN = 16
"""Hex digits of a file's SHA-256 the page keeps (64 bits: enough to tell one image from another)."""
CSV_NAME = "corrections.csv"
"""File name the page suggests for the download."""


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class ReportHeader:
    """The facts at the top of the page.

    Attributes:
        classes: the model's classes, in output order (``other`` is added to the choices if absent).
        model: the model's name (file name, and its folder when that says more).
        sha256: the model's SHA-256 (the page shows a prefix).
        precision: int8, float32 or float16.
        edgecell_version: the version that wrote the page (and the model's, if different, in ``model``).
        threshold: confidence below which a prediction was flagged as uncertain.
        n_images: images given (the page also counts the cells it shows and the failures).
        when: the run's start, timezone-aware (default: now, UTC).
        lab_warning: the run's warning about images from another lab, if it raised one.
        folder_lab_warnings: the same for each slide folder of several that raised one (``{"folder", "n", "lab_warning"}``).
        size_warning: scan's warning that the fields' magnification is not the one assumed, if it raised one.
        n_failed: inputs that could not be classified.
        failed: each of them, as ``(name, reason)`` (the page names the first :data:`FAILED_SHOWN`).
        mode: ``"classify"`` or ``"scan"``.
        review_classes: classes always flagged for a haematologist.
        notes: what a person must know about the model before its results (:func:`firmware_host.classify.model_notes`).
    """

    classes: Sequence[str]
    model: str
    sha256: str
    precision: str
    edgecell_version: str
    threshold: float
    n_images: int
    when: _dt.datetime | None = None
    lab_warning: str | None = None
    folder_lab_warnings: Sequence[dict] = ()
    size_warning: str | None = None
    n_failed: int = 0
    mode: str = "classify"
    review_classes: Sequence[str] = ()
    failed: Sequence[tuple[str, str]] = ()
    notes: Sequence[str] = ()

    @property
    def choices(self) -> list[str]:
        """The classes a reviewer can pick: the model's, then ``other`` if the model has none."""
        return review_choices(self.classes)


@dataclass
class Box:
    """A cell found in a field of view: its box in the field's pixels (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int


CELL_IN_FIELD = re.compile(r"^(?P<field>.+)#(?P<x0>\d+),(?P<y0>\d+),(?P<x1>\d+),(?P<y1>\d+)$", re.S)
"""A scan cell's name: the field's file, ``#``, and its box ``x0,y0,x1,y1`` in the field's pixels."""


def cell_name(field_file: str | os.PathLike, box: Box) -> str:
    """The name of a cell found in a field of view (scan mode): ``FIELD#x0,y0,x1,y1``."""
    return f"{os.fspath(field_file)}#{box.x0},{box.y0},{box.x1},{box.y1}"


def parse_cell_name(name: str) -> tuple[str, Box] | None:
    """``(field file, box)`` for a name made by :func:`cell_name`, else None."""
    m = CELL_IN_FIELD.match(name)
    if not m:
        return None
    return m["field"], Box(int(m["x0"]), int(m["y0"]), int(m["x1"]), int(m["y1"]))


@dataclass
class _Cell:
    index: int
    file: str
    label: str
    confidence: float
    flag: str
    true_label: str | None
    thumb: tuple[int, int] | None  # (offset, length) of its base64 in the spool
    field: int | None = None
    box: Box | None = None
    why: str = ""  # why it is ``other`` (runtime.Prediction.other_reason)
    nearest: tuple[str, float] | None = None  # an ``other`` cell: the class the model gave it most probability
    edge: bool = False  # scan: cut by its field's border, so not counted in the differential (as scan's summary)
    sha256: str = ""  # the first SHA_SHOWN hex digits of the file's (a scan cell's: its field's) SHA-256; "" unknown
    possible_blast: bool = False  # runtime.is_possible_blast, from the model's top3


def _no_nucleus(c: _Cell) -> bool:
    """Whether a cell is ``other`` for want of a whole stained nucleus (not a white cell: the differential leaves it out)."""
    return c.label == OTHER and has_no_nucleus(c.why)


@dataclass
class _Field:
    file: str
    width: int
    height: int
    thumb: tuple[int, int]
    cells: list[int] = field(default_factory=list)
    note: str | None = None


# ----------------------------------------------------------------------------------------------
# Thumbnails


def thumbnail_jpeg(image: np.ndarray, px: int = THUMB_MAX_PX, quality: int = THUMB_QUALITY) -> bytes:
    """A small JPEG of an RGB uint8 array (e.g. the model's preprocessed input); longest side at most ``px``.

    Cheap: one small JPEG encode of the already-decoded pixels (about 0.1 ms for a 112-pixel input;
    a resize, only for inputs over ``px``, costs as much again).
    """
    a = np.ascontiguousarray(image, dtype=np.uint8)
    img = Image.frombuffer("RGB", (a.shape[1], a.shape[0]), a, "raw", "RGB", 0, 1)
    if max(img.size) > px:
        img.thumbnail((px, px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def short_sha(data: bytes) -> str:
    """The first :data:`SHA_SHOWN` hex digits of the SHA-256 of ``data``: how the page names a file's contents."""
    return hashlib.sha256(data).hexdigest()[:SHA_SHOWN]


def file_picture(path: str | os.PathLike, px: int = THUMB_MAX_PX, quality: int = THUMB_QUALITY) -> tuple[bytes | None, str]:
    """:func:`file_thumbnail` and the file's :func:`short_sha` from one read (``(None, "")`` if it cannot be read)."""
    from firmware_host.preprocess import read_bytes

    try:
        data = read_bytes(path)
    except Exception:  # a thumbnail is a convenience: a file that cannot be shown is shown without one
        return None, ""
    return _thumbnail_of(data, px, quality), short_sha(data)


def file_thumbnail(path: str | os.PathLike, px: int = THUMB_MAX_PX, quality: int = THUMB_QUALITY) -> bytes | None:
    """A thumbnail of an image file as a person would see it (upright, transparency on white, 16-bit scaled; a fast
    JPEG draft decode), or None if it cannot be read. About 1 ms for a 400x400 JPEG.

    Read as classifying reads it (a regular file, within the size limit), so a file swapped for a pipe since cannot hang it.
    """
    return file_picture(path, px, quality)[0]


def _thumbnail_of(data: bytes, px: int, quality: int) -> bytes | None:
    from PIL import ImageOps

    from firmware_host.preprocess import _to_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format in JPEG_FORMATS:
                img.draft("RGB", (px, px))
            rgb = _to_rgb(ImageOps.exif_transpose(img))
            rgb.thumbnail((px, px), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=quality)
            return buf.getvalue()
    except Exception:  # a thumbnail is a convenience: a file that cannot be shown is shown without one
        return None


# ----------------------------------------------------------------------------------------------
# The writer


class ReportWriter:
    """Collects cells (and, in scan mode, fields) as they are classified, then writes the page.

    Example::

        rep = ReportWriter(header)
        for row, thumb in results:
            rep.add_cell(row["path"], row["label"], row["confidence"], row["flag"], row["true_label"], thumb)
        rep.write("review.html")

    Use it as a context manager (or call :meth:`close`) to remove the thumbnail spool early.
    """

    def __init__(self, header: ReportHeader):
        self.header = header
        self.thumb_px = THUMB_MAX_PX
        """Thumbnail size to ask the classifier for (``Classifier.classify_many(thumbnails=...)``)."""
        self.cells: list[_Cell] = []
        self.fields: list[_Field] = []
        self._spool = tempfile.TemporaryFile(prefix="edgecell-report-")  # noqa: SIM115 - lives as long as the writer; close() ends it
        self._end = 0

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def _store(self, jpeg: bytes) -> tuple[int, int]:
        b64 = base64.b64encode(jpeg)
        self._spool.seek(self._end)
        self._spool.write(b64)
        start, self._end = self._end, self._end + len(b64)
        return start, len(b64)

    def _load(self, ref: tuple[int, int]) -> str:
        self._spool.seek(ref[0])
        return self._spool.read(ref[1]).decode("ascii")

    def add_cell(
        self,
        file: str | os.PathLike,
        label: str,
        confidence: float,
        flag: str = "",
        true_label: str | None = None,
        thumbnail: bytes | None = None,
        *,
        field: int | None = None,
        box: Box | None = None,
        why: str = "",
        edge: bool = False,
        nearest: tuple[str, float] | None = None,
        sha256: str = "",
        top3: Sequence = (),
    ) -> int:
        """Add one classified cell; ``thumbnail`` is JPEG bytes (:func:`thumbnail_jpeg`) or None; ``sha256``: the file's
        :func:`short_sha` (a scan cell's: its field's), which the corrections CSV carries; ``top3``: the model's three
        most probable classes, from which it is a possible blast or not (:func:`firmware_host.runtime.is_possible_blast`).

        In scan mode ``field`` is the index :meth:`add_field` returned and ``box`` the cell's box in
        that field. ``why``: why the cell is ``other`` (shown beside its flag). ``edge``: the cell is cut by its
        field's border (shown, not counted in the differential). ``nearest``: for an ``other`` cell, the class the
        model gave most probability and that probability (:func:`nearest_class`). Returns the cell's index.
        """
        i = len(self.cells)
        ref = self._store(thumbnail) if thumbnail else None
        self.cells.append(
            _Cell(
                i,
                page_text(os.fspath(file)),
                str(label),
                float(confidence),
                flag or "",
                true_label,
                ref,
                field,
                box,
                why or "",
                nearest,
                bool(edge),
                sha256,
                is_possible_blast(str(label), top3),
            )
        )
        if field is not None:
            self.fields[field].cells.append(i)
        return i

    def add_row(self, row: dict, thumbnail: bytes | None = None, sha256: str = "") -> int:
        """Add one result row of classify (``path``, ``label``, ``confidence``, ``flag``, ``true_label``, ``other_reason``, ``top3``)."""
        return self.add_cell(
            row["path"],
            row["label"],
            row["confidence"],
            row.get("flag", ""),
            row.get("true_label"),
            thumbnail,
            why=row.get("other_reason", ""),
            nearest=nearest_class(row),
            sha256=sha256,
            top3=row.get("top3", ()),
        )

    def add_field(self, file: str | os.PathLike, image: np.ndarray, note: str | None = None) -> int:
        """Add a field of view (RGB uint8, full resolution; ``note``: why cells may have been missed in it, shown under
        it); returns its index for :meth:`add_cell`."""
        h, w = image.shape[:2]
        jpeg = thumbnail_jpeg(image, FIELD_PX, FIELD_QUALITY)
        self.fields.append(_Field(page_text(os.fspath(file)), int(w), int(h), self._store(jpeg), note=None if note is None else page_text(note)))
        return len(self.fields) - 1

    # -- writing -------------------------------------------------------------------------------

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically (a temporary file beside it, then rename)."""
        from firmware_host import atomic

        with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for chunk in self.render():
                fh.write(chunk)
            fh.flush()
            atomic.fsync(fh)  # a pipe or a device (/dev/null, written as a stream) cannot be synced
        return Path(path)

    def render(self) -> Iterable[str]:
        """The page, in chunks (so a page of thousands of thumbnails is never one string)."""
        h = self.header
        choices = h.choices
        style = _STYLE + _class_colours(choices)
        script = _SCRIPT
        csp = f"default-src 'none'; img-src data: blob:; style-src '{_csp_hash(style)}'; script-src '{_csp_hash(script)}'; base-uri 'none'; form-action 'none'"
        root = _common_root([c.file for c in self.cells] + [f.file for f in self.fields])
        n = len(self.cells)
        title = f"edgecell review: {n} cell{'s' if n != 1 else ''}"
        yield (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            '<meta name="referrer" content="no-referrer">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        )
        yield self._header_html(title, root)
        yield self._differential_html(choices)
        if any(c.true_label is not None for c in self.cells):
            yield self._confusion_html(choices)
        if self.fields:
            yield from self._fields_html(choices, root)
        yield from self._cells_html(choices, root)
        data = {
            "classes": choices,
            "notWhite": [c for c in choices if c in NOT_WHITE_CELLS],  # counted per 100 white cells, not among them
            "notWhiteTypes": sorted(NOT_WHITE_TYPES),  # named within other, not white cells: counted with those without a nucleus
            # the types a reviewer may name within `other` (counted as `other`; `corrections apply` keeps the type,
            # so that `adapt` learns each apart)
            "otherTypes": [t for t in OTHER_TYPES if t != OTHER],
            "csvColumns": list(CSV_COLUMNS),
            "csvName": CSV_NAME,
            # file, label, cut by the border, SHA-256 prefix, other for want of a nucleus (not a white cell unless corrected)
            "cells": [[c.file, c.label, int(c.edge), c.sha256, int(_no_nucleus(c))] for c in self.cells],
        }
        yield f'<script type="application/json" id="edgecell-data">{_json_for_script(data)}</script>\n'
        yield f"<script>{script}</script>\n</body>\n</html>\n"

    def _header_html(self, title: str, root: str) -> str:
        h = self.header
        when = h.when or _dt.datetime.now(_dt.UTC)
        facts = [
            ("when", when.isoformat(timespec="seconds")),
            ("model", h.model),
            ("SHA-256", (h.sha256[:12] + "...") if h.sha256 else "-"),
            ("precision", h.precision),
            ("edgecell", h.edgecell_version),
            ("images", f"{h.n_images}" + (f" ({h.n_failed} could not be classified)" if h.n_failed else "")),
            ("cells shown", str(len(self.cells)) + (f" in {len(self.fields)} fields" if self.fields else "")),
            ("threshold", f"{h.threshold:.2f} (confidence below it: flagged uncertain)"),
        ]
        if h.review_classes:
            facts.append(("always reviewed", ", ".join(sorted(h.review_classes))))
        if root:
            facts.append(("files under", root))
        if any(not os.path.isabs(f) for f in [c.file for c in self.cells] + [f.file for f in self.fields]):
            # the corrections CSV keeps the names as given: relative ones are found again from the folder this ran in
            facts.append(("names relative to", f"{os.getcwd()} (run corrections apply there, or give it --base)"))
        out = [f'<header>\n<h1>{_e(title)}</h1>\n<p class="note" id="triage">{_e(TRIAGE_NOTE)}</p>\n<dl class="facts">']
        out += [f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts]
        out.append("</dl>")
        blasts = [c for c in self.cells if c.possible_blast]
        if blasts:
            n = len(blasts)
            kinds = " or ".join(sorted(BLAST_CLASSES))
            sent = sum(c.label == OTHER for c in blasts)
            among = f" ({sent} of them sent to other with {_e(kinds)} as the model's first choice, first in the other group)" if sent else ""
            out.append(
                f'<p class="alert" role="alert" id="possible-blasts"><strong>Possible blast: {n} cell{"s" if n != 1 else ""}</strong> '
                f'the model took for a {_e(kinds)}{among}, shown first under <a href="#cells">Cells</a>: have a haematologist check '
                f"{'them' if n != 1 else 'it'} before any count is reported.</p>"
            )
        for note in h.notes:
            out.append(f'<p class="warning model-note"><strong>Model:</strong> {_e(note)}</p>')
        if h.lab_warning:
            out.append(f'<p class="warning" role="alert" id="lab-warning"><strong>Lab warning:</strong> {_e(h.lab_warning)}</p>')
        for w in h.folder_lab_warnings:
            out.append(f'<p class="warning folder-lab-warning" role="alert"><strong>Lab warning, {_e(w["folder"])}:</strong> {_e(w["lab_warning"])}</p>')
        if h.size_warning:
            out.append(f'<p class="warning" role="alert" id="size-warning"><strong>Cell size:</strong> {_e(h.size_warning)}</p>')
        out.append(
            '<p class="note" id="privacy">Thumbnails are embedded in this file as small JPEG images '
            f"(at most {THUMB_MAX_PX} pixels), so it needs no network and no other file. "
            "Corrections stay on this device: they are kept in this page while it is open and leave it only as the CSV "
            "you download (nothing is sent anywhere). Closing or reloading the page without downloading loses them.</p>"
        )
        out.append("</header>\n")
        return "\n".join(out) + self._failed_html(root)

    def _failed_html(self, root: str) -> str:
        failed = list(self.header.failed)
        if not failed:
            return ""
        one = len(failed) == 1
        what = (
            ("field that could not be read" if one else "fields that could not be read")
            if self.header.mode == "scan"
            else ("image that could not be classified" if one else "images that could not be classified")
        )
        items = [f'<li><span class="name" title="{_e(f)}">{_e(_rel(f, root))}</span>: {_e(why)}</li>' for f, why in failed[:FAILED_SHOWN]]
        more = f"<p>and {len(failed) - FAILED_SHOWN:,} more (all of them are in the JSON and CSV).</p>\n" if len(failed) > FAILED_SHOWN else ""
        return f'<section id="failed">\n<h2>{len(failed):,} {what}</h2>\n<ul class="failed">\n' + "\n".join(items) + f"\n</ul>\n{more}</section>\n"

    def _differential_html(self, choices: list[str]) -> str:
        counts = {c: 0 for c in choices}
        counted = [c for c in self.cells if not c.edge]
        for c in counted:
            counts[c.label] = counts.get(c.label, 0) + 1
        n_edge = len(self.cells) - len(counted)
        shares = differential_shares(counts, sum(_no_nucleus(c) for c in counted))
        n, white = shares["white_cells"], shares["white"]
        review = set(self.header.review_classes)

        in_other = sum(c.possible_blast and c.label == OTHER for c in counted)
        first_blast = next((c for c in choices if c in BLAST_CLASSES), None)

        def row(k: int, c: str, count: int, what: str = "") -> str:
            mark = ' <span class="tag review">review</span>' if c in review else ""
            if c == first_blast and in_other:  # without it, a slide whose one blast was sent to other read "myeloblast 0"
                mark += f' <span class="tag blast">+{in_other} possible in {OTHER}</span>'
            pct = _pct(count, n)
            return (
                f'<tr data-class="{_e(c)}"><th scope="row"><span class="swatch k{k}"></span>{_e(c)}{mark}{_e(what)}</th>'
                f'<td class="num">{count}</td><td class="num">{pct}</td><td class="num after">{count}</td><td class="num pct-after">{pct}</td></tr>'
            )

        rows = [row(k, c, white[c]) for k, c in enumerate(choices) if c in white]
        per_100 = [row(k, c, counts[c], ", per 100 white cells") for k, c in enumerate(choices) if c not in white]
        total = _pct(n, n)
        k_other = choices.index(OTHER)
        bare = shares["no_nucleus"]
        table = (
            '<table class="diff" id="differential">\n'
            '<thead><tr><th scope="col">class</th><th scope="col">predicted</th><th scope="col">%</th>'
            '<th scope="col">after corrections</th><th scope="col">%</th></tr></thead>\n<tbody>\n'
            + "\n".join(rows)
            + f'\n</tbody>\n<tbody class="total"><tr id="white-cells"><th scope="row">white cells</th><td class="num">{n}</td><td class="num">{total}</td>'
            f'<td class="num after">{n}</td><td class="num pct-after">{total}</td></tr></tbody>\n'
            + (f'<tbody class="per100">\n{"".join(per_100)}\n</tbody>\n' if per_100 else "")
            # the cells the nucleus check sent to other: not white cells (a correction moves one into its class)
            + f'<tbody class="bare"><tr id="no-nucleus"><th scope="row"><span class="swatch k{k_other}"></span>{OTHER}, not a white cell (no stained nucleus found, or named platelet): not counted</th>'
            f'<td class="num">{bare}</td><td class="num">-</td><td class="num after">{bare}</td><td class="num">-</td></tr></tbody>\n'
            "</table>"
        )
        notes = differential_notes(counts, bare)
        left_out = f"<p>{n_edge} cell{'s' if n_edge != 1 else ''} cut by a field's border shown below, not counted.</p>\n" if n_edge else ""
        left_out = self._flags_html() + left_out
        bars = '<p class="hint">' + " ".join(_e(t) for t in notes) + (" " if notes else "") + "The table and the bars follow the corrections.</p>\n"
        return f'<section id="count">\n<h2>Differential count</h2>\n{left_out}<div class="diffwrap"><div class="scroll">{table}</div>\n{_bar_chart(choices, counts, shares)}</div>\n{bars}</section>\n'

    def _flags_html(self) -> str:
        """What a person must look at, counted from the flags as classify's and scan's summary lines count them (every cell
        shown, those cut by a field's border too: a blast there is flagged all the same)."""
        from firmware_host.classify import review_note
        from firmware_host.runtime import FLAG_OTHER, FLAG_UNCERTAIN

        review = set(self.header.review_classes)
        n = {flag: sum(c.flag == flag for c in self.cells) for flag in (FLAG_REVIEW, FLAG_UNCERTAIN, FLAG_OTHER)}
        n_review_other = sum(c.flag == FLAG_REVIEW and c.label == OTHER for c in self.cells)
        n_edge = sum(c.edge for c in self.cells)
        cells = f"{len(self.cells)} cells found ({n_edge} cut by a border, not counted)" if n_edge else str(len(self.cells))
        return (
            f'<p id="flags"><strong>Flagged by the model: {sum(n.values())} of {_e(cells)}</strong>: {n[FLAG_REVIEW]} for the haematologist'
            f"{_e(review_note(n_review_other, review))}, {n[FLAG_UNCERTAIN]} uncertain (a person checks the class), {n[FLAG_OTHER]} not one of the five "
            "(a person names the type if they can: the model does not know it; lymphocytes, eosinophils and platelets are among them).</p>\n"
        )

    def _confusion_html(self, choices: list[str]) -> str:
        index = {c: k for k, c in enumerate(choices)}
        k = len(choices)
        cm = [[0] * k for _ in range(k)]
        for c in self.cells:
            if c.true_label is not None and c.true_label in index and c.label in index:
                cm[index[c.true_label]][index[c.label]] += 1
        n = sum(map(sum, cm))
        right = sum(cm[i][i] for i in range(k))
        head = "".join(f'<th scope="col">{_e(c)}</th>' for c in choices)
        body = []
        for i, c in enumerate(choices):
            if not sum(cm[i]):
                continue
            cells = "".join(f'<td class="num{" diag" if i == j else (" off" if v else "")}">{v}</td>' for j, v in enumerate(cm[i]))
            body.append(f'<tr><th scope="row">{_e(c)}</th>{cells}</tr>')
        return (
            '<section id="confusion">\n<h2>Against folder labels</h2>\n'
            f"<p>{n} cells sit in folders named after a class: {right} predicted as their folder ({100.0 * right / n:.1f} %), "
            f'{n - right} not (marked <span class="tag wrong">wrong</span> below).</p>\n'
            '<div class="scroll"><table class="cm"><caption>Confusion matrix (rows: folder label, columns: predicted)</caption>\n'
            f"<thead><tr><th></th>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>\n</section>\n"
        )

    def _fields_html(self, choices: list[str], root: str) -> Iterable[str]:
        index = {c: k for k, c in enumerate(choices)}
        yield f'<section id="fields">\n<h2>Fields of view ({len(self.fields)})</h2>\n<div class="fieldlist">\n'
        for fi, f in enumerate(self.fields):
            shapes = []
            for k_in_field, ci in enumerate(f.cells, start=1):
                c = self.cells[ci]
                if c.box is None:
                    continue
                b = c.box
                k = index.get(c.label, len(choices) - 1)
                label = label_text(c.label, c.confidence, c.why)
                shapes.append(
                    # as scan --annotate draws it: dashed when cut by the border, "!" when flagged
                    f'<g class="k{k}{" edge" if c.edge else ""}"><title>{_e(label)}</title>'
                    f'<rect x="{b.x0}" y="{b.y0}" width="{b.x1 - b.x0}" height="{b.y1 - b.y0}"/>'
                    f'<text x="{b.x0 + 2}" y="{max(b.y0 - 3, 10)}">{k_in_field}{" !" if _flagged(c) else ""}</text></g>'
                )
            yield (
                f'<figure class="field" id="field-{fi}"><div class="fieldimg">'
                f'<img alt="field of view {_e(_rel(f.file, root))}" src="data:image/jpeg;base64,{self._load(f.thumb)}">'
                f'<svg viewBox="0 0 {f.width} {f.height}" preserveAspectRatio="none" aria-hidden="true">{"".join(shapes)}</svg></div>'
                f'<figcaption>field {fi + 1}: <span class="name" title="{_e(f.file)}">{_e(_rel(f.file, root))}</span> '
                f"({f.width}x{f.height}, {len(f.cells)} cell{'s' if len(f.cells) != 1 else ''})"
                + (f'<br><span class="note">{_e(f.note)}</span>' if f.note else "")
                + "</figcaption></figure>\n"
            )
        yield "</div>\n</section>\n"

    def _cells_html(self, choices: list[str], root: str) -> Iterable[str]:
        groups: dict[str, list[_Cell]] = {c: [] for c in choices}
        for c in self.cells:
            groups.setdefault(c.label, []).append(c)
        yield (
            '<section id="cells">\n<h2>Cells by predicted class</h2>\n'
            '<div class="toolbar"><button type="button" id="download" disabled title="nothing corrected yet">Download corrections</button> '
            '<span id="ncorrected">0 corrected</span> '
            '<label><input type="checkbox" id="include-confirmed"> also list the cells left as predicted, as confirmed (only when you have checked them all: <code>adapt</code> learns them as right; cells cut by the border only when corrected)</label></div>\n'
            '<p class="hint">The classes holding a possible blast come first, then the other classes for the haematologist (and '
            "other, when it holds a cell for them); in each class the possible blasts, then the other cells for the haematologist, "
            "the rest of the flagged cells, then the least confident. "
            "Click the class under a cell to pick another; under <code>other</code> you can name the type (lymphocyte, "
            "eosinophil, ...), which counts as <code>other</code> and teaches <code>edgecell adapt</code> that type. "
            "An <code>other</code> cell shows the class the model found it nearest to.</p>\n"
        )
        review = set(self.header.review_classes)
        colour = {c: k for k, c in enumerate(choices)}
        # what a haematologist must see first: the blast classes, the other review classes, other when it holds a cell
        # for the haematologist (sent there with a review class as the model's first choice), then the rest
        for_review = {cls for cls, members in groups.items() if any(c.flag == FLAG_REVIEW for c in members)}
        with_blast = {cls for cls, members in groups.items() if any(c.possible_blast for c in members)}
        order = sorted(groups, key=lambda c: (c not in with_blast, c not in BLAST_CLASSES, c not in review, c not in for_review))
        for cls in order:
            k = colour.get(cls, len(choices))
            members = sorted(groups[cls], key=lambda c: (not c.possible_blast, c.flag != FLAG_REVIEW, not _flagged(c), c.confidence, c.index))
            n_flag = sum(_flagged(c) for c in members)
            flagged_note = f", {n_flag} flagged" if n_flag else ""
            yield (
                f'<section class="group" data-class="{_e(cls)}"><h3><span class="swatch k{k}"></span>{_e(cls)} '
                f'<span class="count">{len(members)} cell{"s" if len(members) != 1 else ""}{flagged_note}</span></h3>\n'
            )
            if not members:
                yield '<p class="empty">none</p></section>\n'
                continue
            yield '<ul class="cells">\n'
            for c in members:
                yield self._cell_html(c, root)
            yield "</ul></section>\n"
        yield "</section>\n"

    def _cell_html(self, c: _Cell, root: str) -> str:
        name = _rel(c.file, root)
        classes = ["cell"]
        tags = []
        if c.possible_blast:
            classes.append("blast")
            tags.append('<span class="tag blast">possible blast</span>')
        if _flagged(c):
            urgent = c.flag == FLAG_REVIEW
            classes.append("flagged review" if urgent else "flagged")
            tags.append(f'<span class="tag flag{" urgent" if urgent else ""}">{_e(c.flag or OTHER)}</span>')
            if c.why:
                tags.append(f'<span class="tag why">{_e(c.why)}</span>')
        if c.true_label is not None and c.true_label != c.label:
            classes.append("wrong")
            tags.append(f'<span class="tag wrong">folder: {_e(c.true_label)}</span>')
        if c.field is not None:
            # numbered as the field's boxes and scan's CSV number them: cell k of its field, from 1
            tags.append(f'<span class="tag">field {c.field + 1}, cell {self.fields[c.field].cells.index(c.index) + 1}</span>')
        if c.edge:
            tags.append('<span class="tag">cut by the border: not counted</span>')
        conf = f'<span class="conf" title="probability of {_e(c.label)}">{_e(prob_text(c.confidence))}</span>'
        if c.nearest is not None and c.nearest[1] >= NEAREST_SHOWN:
            near, p = c.nearest
            tags.append(
                f'<span class="tag nearest" title="the class the model gave most probability, before it was sent to other">nearest: {_e(near)} {_e(prob_text(p))}</span>'
            )
            if p > c.confidence:  # sent to other by its never-seen score or the nucleus check: p(other) says nothing
                conf = ""
        img = (
            f'<img alt="" width="{THUMB_PX}" height="{THUMB_PX}" decoding="async" src="data:image/jpeg;base64,{self._load(c.thumb)}">'
            if c.thumb
            else '<span class="nothumb">no thumbnail</span>'
        )
        return (
            f'<li class="{" ".join(classes)}" data-i="{c.index}">{img}'
            f'<div class="meta">{conf}{"".join(tags)}</div>'
            f'<div class="name" title="{_e(c.file)}">{_e(name)}</div>'
            f'<button type="button" class="cls" data-i="{c.index}" aria-haspopup="menu" aria-expanded="false" '
            f'title="change the class of {_e(name)}">{_e(c.label)}</button></li>\n'
        )


# ----------------------------------------------------------------------------------------------
# Helpers


def nearest_class(row: dict) -> tuple[str, float] | None:
    """For a result labelled ``other`` (a classify row or a scan cell, with ``top3``): the class the model gave most
    probability besides ``other``, and that probability (a cell sent to ``other`` by its never-seen score may have
    been a confident monocyte to the network); None for any other label."""
    from firmware_host.classify import alternatives

    if row.get("label") != OTHER or not row.get("top3"):
        return None
    best = alternatives(row)[:1]
    return (best[0]["label"], float(best[0]["prob"])) if best else None


def _flagged(c: _Cell) -> bool:
    return bool(c.flag) or c.label == OTHER


def _pct(k: int, n: int) -> str:
    """A share for the differential table: one decimal, or "-" when there is nothing to share."""
    return f"{100.0 * k / n:.1f}" if n else "-"


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def page_text(s: str) -> str:
    """A file name as text the page can hold: bytes that are not UTF-8 (lone surrogates) become U+FFFD
    (``corrections apply`` finds such a name's file again by the same function)."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_for_script(obj) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>`` or ``<!--``)."""
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _common_root(files: Sequence[str]) -> str:
    """The folder every file is in (shown once in the header), or ""."""
    folders = {os.path.dirname(os.path.abspath(f)) for f in files}
    if not folders:
        return ""
    with contextlib.suppress(ValueError):
        root = os.path.commonpath(sorted(folders))
        return "" if root in ("", os.sep) else root
    return ""


def _rel(file: str, root: str) -> str:
    if not root:
        return file
    with contextlib.suppress(ValueError):
        return os.path.relpath(os.path.abspath(file), root)
    return file


def review_choices(classes: Sequence[str]) -> list[str]:
    """The classes a reviewer can pick: the model's, then ``other`` if the model has none."""
    return list(classes) + ([] if OTHER in classes else [OTHER])


def class_rgb(label: str, classes: Sequence[str]) -> tuple[int, int, int]:
    """A class's colour, on the review page and in ``scan --annotate``'s pictures alike: evenly spaced hues by its place
    in ``classes``; ``other`` (and a label not among them) grey."""
    choices = review_choices(classes)
    if label == OTHER or label not in choices:
        rgb = (0.55, 0.55, 0.55)
    else:
        rgb = colorsys.hls_to_rgb(choices.index(label) / len(choices), 0.45, 0.6)
    return tuple(round(v * 255) for v in rgb)


def _class_colours(choices: Sequence[str]) -> str:
    """One colour per class (``.k0``, ``.k1`` ...): :func:`class_rgb`'s."""
    rules = [f".k{k}{{--c:#{''.join(f'{v:02x}' for v in class_rgb(c, choices))}}}" for k, c in enumerate(choices)]
    return "\n" + "\n".join(rules) + "\n"


def _bar_chart(choices: Sequence[str], counts: dict[str, int], shares: dict) -> str:
    """A horizontal bar per class as inline SVG (attributes only: the page's CSP allows no inline style attributes)."""
    row, label_w, bar_w, count_w = 22, 120, 260, 190
    counts = {c: shares["white"].get(c, counts[c]) for c in choices}  # other: its cells with a nucleus
    top = max(counts.values()) if counts and max(counts.values()) else 1
    n = shares["white_cells"]  # shares of the white cells; a nucleated red cell per 100 of them
    parts = [
        f'<svg class="bars" role="img" aria-labelledby="bars-title" data-label-w="{label_w}" data-bar-w="{bar_w}" width="{label_w + bar_w + count_w}" height="{row * len(choices) + 4}" '
        f'viewBox="0 0 {label_w + bar_w + count_w} {row * len(choices) + 4}"><title id="bars-title">Differential count, bar chart</title>'
    ]
    for k, c in enumerate(choices):
        y = k * row + 2
        w = round(bar_w * counts[c] / top, 1)
        share = f"{_pct(counts[c], n)}{' per 100 white cells' if c in NOT_WHITE_CELLS else ' %'}" if n else "-"
        parts.append(
            f'<g class="k{k}" data-class="{_e(c)}"><text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(c)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row - 6}"/>'
            f'<text class="n" x="{label_w + w + 4}" y="{y + 15}">{counts[c]} ({share})</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;background:#fafafa}
body{margin:0 auto;padding:12px 20px 40px;max-width:1400px}
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.15rem;margin:1.4rem 0 .5rem}h3{font-size:1rem;margin:1rem 0 .4rem}
.facts{display:flex;flex-wrap:wrap;gap:4px 18px;margin:0}.facts div{display:flex;gap:6px}.facts dt{color:#555}.facts dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.warning{background:#fff1d6;border:1px solid #e0a400;padding:8px 10px;border-radius:4px}
.note,.hint{color:#444;font-size:.9rem}
table{border-collapse:collapse;font-size:.9rem}caption{text-align:left;font-weight:600;padding-bottom:4px}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.after.changed{font-weight:700;color:#0b5cad}td.diag{font-weight:700}td.off{background:#fde4e4}
.diffwrap{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.scroll{overflow-x:auto;max-width:100%}
svg.bars{max-width:100%;height:auto}section.group,section#count{scroll-margin-top:52px}
.bars text{font-size:12px;fill:#222}.bars rect{fill:var(--c)}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:var(--c)}
.tag{display:inline-block;font-size:.72rem;padding:0 4px;border-radius:3px;background:#e8e8e8;margin-left:3px}
.tag.flag,.tag.review{background:#ffe0b3}.tag.urgent{background:#b71c1c;color:#fff;font-weight:700}.tag.blast{background:#1b1b1b;color:#fff;font-weight:700}
li.cell.blast{border:3px solid #1b1b1b}
.alert{background:#fde4e4;border:2px solid #b71c1c;border-radius:4px;padding:6px 10px}
li.cell.review{border-left:6px solid #b71c1c}tbody.total th,tbody.total td{font-weight:700;border-top:1px solid #999}
@media print{li.cell{content-visibility:visible}}.tag.nearest{background:#dde8f5}
ul.failed{font-size:.85rem;columns:2 30em;margin:0;padding-left:1.2em}button:disabled{cursor:default}.tag.wrong{background:#f8caca}
.toolbar{position:sticky;top:0;background:#fafafa;padding:6px 0;z-index:2;display:flex;gap:12px;align-items:center;flex-wrap:wrap;border-bottom:1px solid #ddd}
button{font:inherit;padding:4px 12px;cursor:pointer}
button.cls{font-size:.8rem;padding:1px 4px;text-align:left}button.cls::after{content:" \\25BE";color:#666}
.menu{position:absolute;z-index:3;min-width:150px;display:flex;flex-direction:column;background:#fff;border:1px solid #888;border-radius:4px;box-shadow:0 2px 8px rgba(0,0,0,.25)}
.menu button{font-size:.8rem;padding:3px 6px;text-align:left;border:0;background:none}.menu button:hover,.menu button:focus{background:#e3f0ff}
.menu button[aria-checked="true"]{font-weight:700}.menu button.type{padding-left:18px;color:#444}
ul.cells{list-style:none;margin:0;padding:0;display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
li.cell{content-visibility:auto;contain-intrinsic-size:auto 190px;background:#fff;border:1px solid #d6d6d6;border-radius:4px;padding:5px;display:flex;flex-direction:column;gap:3px;font-size:.8rem}
li.cell img{width:112px;height:112px;object-fit:contain;image-rendering:auto;align-self:center;background:#eee}
li.cell.flagged{border-color:#e0a400;box-shadow:inset 0 0 0 1px #e0a400}
li.cell.wrong{border-color:#c62828;box-shadow:inset 0 0 0 2px #c62828}
li.cell.corrected{background:#e3f0ff;border-color:#0b5cad}
li.cell .name{overflow-wrap:anywhere;color:#333}li.cell .conf{font-weight:700;font-variant-numeric:tabular-nums}
.nothumb{width:112px;height:112px;align-self:center;background:#eee;color:#777;display:flex;align-items:center;justify-content:center;text-align:center}
.empty{color:#777}
.fieldlist{display:flex;flex-wrap:wrap;gap:14px}.field{margin:0;max-width:100%}
.fieldimg{position:relative;display:inline-block;max-width:100%}.fieldimg img{display:block;max-width:100%;height:auto}
.fieldimg svg{position:absolute;left:0;top:0;width:100%;height:100%}
.fieldimg rect{fill:none;stroke:var(--c);stroke-width:3;vector-effect:non-scaling-stroke}
.fieldimg .edge rect{stroke-dasharray:6 3}.fieldimg text{fill:var(--c);font-size:14px;font-weight:700}
figcaption{font-size:.85rem;color:#333}
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("edgecell-data").textContent);
  var corrected = {};
  var n = 0;
  var unsaved = false;  // corrections changed since the last download
  var download = document.getElementById("download");
  var confirmed = document.getElementById("include-confirmed");
  function has(i) { return Object.prototype.hasOwnProperty.call(corrected, i); }
  function counted(c) { return data.otherTypes.indexOf(c) >= 0 ? "other" : c; }  // a type named within other counts as other
  function csvField(s) { return '"' + String(s).replace(/"/g, '""') + '"'; }
  function pct(k, total) { return total ? (100 * k / total).toFixed(1) : "-"; }
  function refresh() {
    var counts = {};
    var total = 0;
    data.classes.forEach(function (c) { counts[c] = 0; });
    var bare = 0;
    data.cells.forEach(function (cell, i) {
      if (cell[2]) { return; }  // cut by its field's border: not counted
      if (!has(i) && cell[4]) { bare += 1; return; }  // other for want of a nucleus: not a white cell, unless corrected
      if (has(i) && data.notWhiteTypes.indexOf(corrected[i]) >= 0) { bare += 1; return; }  // named platelet: not a white cell
      var c = counted(has(i) ? corrected[i] : cell[1]);
      counts[c] = (counts[c] || 0) + 1;
      if (data.notWhite.indexOf(c) < 0) { total += 1; }  // shares are of the white cells (a nucleated red cell: per 100 of them)
    });
    var bareCell = document.querySelector("#no-nucleus td.after");
    bareCell.textContent = String(bare);
    bareCell.classList.toggle("changed", bareCell.textContent !== document.querySelector("#no-nucleus").children[1].textContent);
    var whiteRow = document.getElementById("white-cells");
    whiteRow.querySelector("td.after").textContent = String(total);
    whiteRow.querySelector("td.after").classList.toggle("changed", String(total) !== whiteRow.children[1].textContent);
    whiteRow.querySelector("td.pct-after").textContent = pct(total, total);
    document.querySelectorAll("#differential tbody tr[data-class]").forEach(function (tr) {
      var td = tr.querySelector("td.after");
      var c = tr.getAttribute("data-class");
      td.textContent = String(counts[c] || 0);
      td.classList.toggle("changed", td.textContent !== tr.children[1].textContent);
      tr.querySelector("td.pct-after").textContent = pct(counts[c] || 0, total);
    });
    var svg = document.querySelector("svg.bars");
    if (svg) {
      var labelW = Number(svg.getAttribute("data-label-w"));
      var barW = Number(svg.getAttribute("data-bar-w"));
      var top = Math.max.apply(null, data.classes.map(function (c) { return counts[c] || 0; }).concat([1]));
      svg.querySelectorAll("g[data-class]").forEach(function (g) {
        var k = counts[g.getAttribute("data-class")] || 0;
        var w = Math.round(10 * barW * k / top) / 10;
        g.querySelector("rect").setAttribute("width", String(w));
        var t = g.querySelector("text.n");
        t.setAttribute("x", String(labelW + w + 4));
        var share = total ? pct(k, total) + (data.notWhite.indexOf(g.getAttribute("data-class")) >= 0 ? " per 100 white cells" : " %") : "-";
        t.textContent = k + " (" + share + ")";
      });
    }
    document.getElementById("ncorrected").textContent = n + " corrected";
    download.disabled = !(n > 0 || confirmed.checked);
    download.title = download.disabled ? "nothing corrected yet" : "";
  }
  // A click on a cell's class opens a small menu of the classes (made then: 1,000 cells, 1,000 light buttons). Only a
  // click (or Enter) on a class changes it; Escape, a click elsewhere or Tab away closes the menu unchanged, and the
  // arrow keys move within it. (A native selector took the arrow keys a person pressed to scroll as a change of class.)
  var open = null;
  function closeMenu(focusButton) {
    if (!open) { return; }
    var was = open;
    open = null;
    was.menu.remove();
    was.button.setAttribute("aria-expanded", "false");
    if (focusButton) { was.button.focus(); }
  }
  function openMenu(button) {
    closeMenu(false);
    var i = Number(button.getAttribute("data-i"));
    var current = has(i) ? corrected[i] : data.cells[i][1];
    var menu = document.createElement("div");
    menu.className = "menu";
    menu.setAttribute("role", "menu");
    menu.setAttribute("aria-label", button.getAttribute("title"));
    var choices = [];
    data.classes.forEach(function (c) {
      choices.push(c);
      if (c === "other") { choices = choices.concat(data.otherTypes); }
    });
    choices.forEach(function (c) {
      var o = document.createElement("button");
      o.type = "button";
      o.className = data.otherTypes.indexOf(c) >= 0 ? "pick type" : "pick";
      o.setAttribute("role", "menuitemradio");
      o.setAttribute("aria-checked", String(c === current));
      o.setAttribute("data-class", c);
      o.textContent = c;
      menu.appendChild(o);
    });
    // on the page itself, not in the cell's card: a card paints only inside itself (content-visibility), so a menu
    // taller than the card lost its first classes; below the button, or above it when the window has no room below
    document.body.appendChild(menu);
    var r = button.getBoundingClientRect();
    var below = window.innerHeight - r.bottom >= menu.offsetHeight || r.top < menu.offsetHeight;
    menu.style.left = (window.scrollX + r.left) + "px";
    menu.style.top = (window.scrollY + (below ? r.bottom + 2 : r.top - menu.offsetHeight - 2)) + "px";
    button.setAttribute("aria-expanded", "true");
    open = { menu: menu, button: button, i: i };
    menu.querySelector('[aria-checked="true"]').focus();
  }
  function choose(i, c) {
    var had = has(i);
    if (c === data.cells[i][1]) { if (had) { delete corrected[i]; n -= 1; } }
    else { if (!had) { n += 1; } corrected[i] = c; }
    unsaved = true;
    open.button.textContent = c;
    open.button.closest("li.cell").classList.toggle("corrected", has(i));
    closeMenu(true);
    refresh();
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target.closest ? ev.target : null;
    if (!t) { return; }
    var pick = t.closest("button.pick");
    if (pick && open) { choose(open.i, pick.getAttribute("data-class")); return; }
    var b = t.closest("button.cls");
    if (b) { if (open && open.button === b) { closeMenu(true); } else { openMenu(b); } return; }
    if (open && !t.closest(".menu")) { closeMenu(false); }
  });
  document.addEventListener("keydown", function (ev) {
    if (!open) { return; }
    if (ev.key === "Escape") { ev.preventDefault(); closeMenu(true); return; }
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      var picks = Array.prototype.slice.call(open.menu.querySelectorAll("button.pick"));
      var k = picks.indexOf(document.activeElement) + (ev.key === "ArrowDown" ? 1 : -1);
      picks[(k + picks.length) % picks.length].focus();
    }
  });
  document.addEventListener("focusin", function (ev) {
    if (open && !open.menu.contains(ev.target) && ev.target !== open.button) { closeMenu(false); }
  });
  confirmed.addEventListener("change", refresh);
  download.addEventListener("click", function () {
    var lines = [data.csvColumns.join(",")];
    data.cells.forEach(function (cell, i) {
      // confirmed: the cells left as predicted, but not those cut by a field's border (a sliver adapt would learn from)
      if (has(i) || (confirmed.checked && !cell[2])) { lines.push([cell[0], cell[1], has(i) ? corrected[i] : cell[1], cell[3]].map(csvField).join(",")); }
    });
    var blob = new Blob([lines.join("\\n") + "\\n"], { type: "text/csv;charset=utf-8" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = data.csvName;
    document.body.appendChild(a);
    a.click();
    unsaved = false;
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });
  window.addEventListener("beforeunload", function (ev) {
    if (unsaved && n > 0) { ev.preventDefault(); ev.returnValue = ""; }
  });
  refresh();
})();
"""


def header_for(
    info: dict,
    *,
    classes: Sequence[str],
    threshold: float,
    n_images: int,
    edgecell_version: str,
    model_version: str = "",
    when: _dt.datetime | None = None,
    lab_warning: str | None = None,
    n_failed: int = 0,
    mode: str = "classify",
    review_classes: Sequence[str] = (),
) -> ReportHeader:
    """A :class:`ReportHeader` from a classifier's ``info()`` (path, sha256, precision) and the run's facts."""
    p = Path(info.get("path", ""))
    # the file and the two folders above it: a run's export/ shows its run (cells/export/model_int8.tflite against
    # clinic/export/model_int8.tflite), which a page of an adapted model must tell apart from the original's
    shown = [part for part in p.resolve().parts[-3:] if part != p.resolve().anchor] if str(p) else []
    model = "/".join(shown)
    if model_version and model_version != edgecell_version:
        model += f" (exported by edgecell {model_version})"
    return ReportHeader(
        classes=list(classes),
        model=model,
        sha256=str(info.get("sha256", "")),
        precision=str(info.get("precision", "")),
        edgecell_version=edgecell_version,
        threshold=float(threshold),
        n_images=int(n_images),
        when=when,
        lab_warning=lab_warning,
        n_failed=int(n_failed),
        mode=mode,
        review_classes=tuple(review_classes),
    )


def report_for(classifier, threshold: float, n_images: int, *, lab_warning: str | None = None, mode: str = "classify") -> ReportWriter:
    """A :class:`ReportWriter` whose header describes ``classifier`` (a loaded
    :class:`firmware_host.runtime.Classifier`) and this run; the run starts now.

    ``classify --report`` and ``scan --report`` both start here.
    """
    from firmware_host.runtime import REVIEW_CLASSES

    header = header_for(
        classifier.info(),
        classes=classifier.classes,
        threshold=threshold,
        n_images=n_images,
        edgecell_version=edgecell_version(),
        model_version=classifier.meta.edgecell_version,
        when=_dt.datetime.now(_dt.UTC),
        lab_warning=lab_warning,
        mode=mode,
        review_classes=sorted(REVIEW_CLASSES),
    )
    from firmware_host.classify import model_notes

    header.notes = model_notes(classifier)
    return ReportWriter(header)
