"""Scan fields of view: find every white cell, classify each, count them. numpy, Pillow, LiteRT only.

:func:`scan_field` does one field: read the file at full resolution (the checks of
:func:`firmware_host.preprocess.read_bytes`, the EXIF orientation, 8-bit RGB), find the white
cells with :func:`firmware_host.locate.locate`, cut a square around each (:func:`cell_region`:
the box's longer side plus :data:`CROP_MARGIN` of it on every side, clipped to the image) and
classify it through :meth:`firmware_host.runtime.Classifier.classify_rgb`, which gives it exactly
the preprocessing of a single-cell file (:func:`firmware_host.preprocess.prepare`) and the same
int8 runtime, temperature and triage (:func:`firmware_host.runtime.triage`) as ``classify``.

:func:`scan_many` does many fields in input order with flat memory: in this process for a short
list, in worker processes for a long one (the machinery of :mod:`firmware_host.decode`, each
worker with its own single-threaded copy of the verified model, as ``classify`` does). A field that
cannot be read comes back as a :class:`FieldResult` with ``error`` set; a field with no white cell
has ``cells == []``.

:class:`ScanSummary` is the run's tally (the differential count, flagged and edge cells), kept
as counts so a run of thousands of fields holds no per-field results. Cells cut by the field's
border (``edge``) are classified and listed but left out of the differential count: part of the
cell is missing, and the next field of the smear may show it whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import stat
import statistics
import time
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageDraw

from firmware_host.atomic import csv_dict_writer, staged_dir, write_bytes
from firmware_host.classify import FlagTally, differential_counts, flagged_counts, other_csv, tally_flag, write_lab_warnings
from firmware_host.decode import _process_pool, default_workers, ordered_chunks, use_processes
from firmware_host.errors import ImageError, ImageWarning
from firmware_host.locate import (
    AUTO,
    TYPICAL_RED_CELL,
    Cell,
    FieldTooFine,
    default_cell_size,
    empty_reason,
    frame_at,
    locate_with_frame,
    measured_cell_size,
    nucleus_ratio,
    red_cell_size,
    size_warning,
    small_cells_reason,
    unsearchable,
    white_point,
)
from firmware_host.metadata import report_head
from firmware_host.paths import OTHER_CLASS, label_for, left_out, path_list
from firmware_host.preprocess import MAX_PIXELS, decode_rgb, read_bytes, rgb_array, warnings_about
from firmware_host.report import class_rgb
from firmware_host.runtime import DEFAULT_THRESHOLD, LabChecks, has_no_nucleus, is_possible_blast, label_text

FIELD_WORKER_MB = (73.0, 6.75)
"""Memory a worker process scanning fields takes at its peak, in MB: the first number and the second per megapixel of
the largest field (154 MB for a 12-megapixel JPEG, 397 MB for a 48-megapixel one, measured by a review)."""
NOTES_SHOWN = 5
"""scan says the notes of this many fields as they come (cells may have been missed there), then how many more: a
clinic's 200 photos at a low magnification gave 200 lines (a review). Every note is in the JSON and CSV."""
FIELDS_SIZED = 64
""":func:`field_worker_mb` reads the headers of this many fields (a clinic's camera makes fields of one size)."""


def field_worker_mb(paths: Sequence[str]) -> float:
    """The memory a worker process scanning ``paths`` may take (:data:`FIELD_WORKER_MB`), from the largest of the first
    :data:`FIELDS_SIZED` fields' sizes, read from their headers (regular files only: a pipe would block); the largest
    field allowed (:data:`~firmware_host.preprocess.MAX_PIXELS`) when none can be read."""
    most = 0
    for p in list(paths)[:FIELDS_SIZED]:
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a decompression bomb's header is not opened further
                with Image.open(p) as im:
                    most = max(most, im.size[0] * im.size[1])
        except Exception:  # unreadable here: scanning it says why
            continue
    base, per_megapixel = FIELD_WORKER_MB
    return base + per_megapixel * (most or MAX_PIXELS) / 1e6


JSON_FORMAT = "edgecell-scan/2"
"""The first member of ``scan --json``'s report: what it is and the version of its layout, for a script to check."""

WHITE_SAMPLE = 250_000
"""About this many pixels of a field set the white its eyepiece frame is painted (:func:`classify_cells`)."""
CROP_MARGIN = 0.25
"""The region passed to the classifier: the box's longer side plus this fraction of it on each side."""
ANNOTATE_WIDTH = 3
"""Line width of the boxes drawn by :func:`annotate`, in pixels of a 640-pixel-wide field."""
EDGE_DASH = 8
"""Dash length of the box of a cell cut by the border."""
FIRST_FIELDS = 50
""":class:`ScanSummary` keeps this many first fields' cells, for a table (every field is in --json / --csv)."""


# ----------------------------------------------------------------------------------------------
# One field


def decode_field(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Encoded bytes of a field of view to a full-resolution ``(H, W, 3)`` uint8 RGB array:
    :func:`firmware_host.preprocess.decode_rgb` (its checks and conversions), with no draft."""
    return decode_rgb(data, None, path)


def cell_region(box: Sequence[int], width: int, height: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """The square around ``box`` that is cut for the classifier, clipped to the image.

    Its side is the box's longer side times ``1 + 2 * margin``, centred on the box; where the
    image ends the square is cut short (a cell at the border gets a rectangle).
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx0, ry0 = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    rx1, ry1 = min(width, int(round(cx + side / 2))), min(height, int(round(cy + side / 2)))
    return rx0, ry0, max(rx1, rx0 + 1), max(ry1, ry0 + 1)


FROM_RED_CELLS, FROM_DEFAULT = "red cells", "default"
"""A field's ``cell_size_from`` under ``--cell-size auto``: measured from its red cells, or the default (too few)."""


@dataclass
class FieldResult:
    """One field's result: its size and cells, or the reason it could not be read.

    ``cells`` are dicts ``{"box", "label", "confidence", "flag", "edge", "other_score", "nucleus_offset", "other_reason", "top3"}`` with ``box``
    ``[x0, y0, x1, y1]`` in the original image's pixels (x1, y1 exclusive).
    """

    file: str
    width: int = 0
    height: int = 0
    cell_size: float = 0.0
    """The white-cell diameter, in the field's pixels, its cells were found with."""
    cells: list[dict] = field(default_factory=list)
    error: str | None = None
    locate_ms: float = 0.0
    classify_ms: float = 0.0
    decode_ms: float = 0.0
    sizes: list[tuple[float, float]] = field(default_factory=list)
    """Each whole cell's :func:`~firmware_host.locate.nucleus_ratio` and the cell size it was found with, for the
    run's :func:`~firmware_host.locate.size_warning` (not in the JSON record)."""
    red_cell: tuple[float, float] | None = None
    """The field's :func:`~firmware_host.locate.red_cell_size` over its cell size, and that cell size (None: no red
    cells to measure), for the same warning (not in the JSON record)."""
    note: str | None = None
    """Why a field without a white cell may have one after all (:func:`~firmware_host.locate.empty_reason`), or why one
    with cells may have more (:func:`~firmware_host.locate.small_cells_reason`)."""
    cell_size_from: str | None = None
    """Under ``--cell-size auto``: where the field's cell size came from, :data:`FROM_RED_CELLS` or :data:`FROM_DEFAULT`
    (too few red cells to measure); None otherwise."""

    def to_dict(self) -> dict:
        """The field's JSON record (``file``, ``width``, ``height``, ``cell_size``, ``cell_size_from`` under ``--cell-size
        auto``, ``cells``, and ``note`` when cells may have been missed; ``error`` instead for a failure)."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        record = {"file": self.file, "width": self.width, "height": self.height, "cell_size": round(self.cell_size, 1)}
        record |= {"cell_size_from": self.cell_size_from} if self.cell_size_from else {}
        return record | {"cells": self.cells} | ({"note": self.note} if self.note else {})


def classify_cells(clf, rgb: np.ndarray, cells: Sequence[Cell], threshold: float, path: str = "", frame: np.ndarray | None = None) -> list[dict]:
    """Classify each located cell of a field through ``clf`` (a :class:`~firmware_host.runtime.Classifier`).

    ``frame``: the field's dark eyepiece frame (:func:`~firmware_host.locate.dark_frame`), painted in the field's white
    where a cell's region reaches it, as the classifier fills a region that runs past the image's edge."""
    from firmware_host.runtime import triage

    h, w = rgb.shape[:2]
    step = max(1, int(np.sqrt(h * w / WHITE_SAMPLE)))  # the white of a sample of the field: no copy of a large one
    outside = None if frame is None else rgb[::step, ::step][~frame[::step, ::step]]
    white = None if outside is None or not outside.size else white_point(outside).astype(np.uint8)
    out = []
    for c in cells:
        x0, y0, x1, y1 = cell_region(c.box, w, h)
        region = rgb[y0:y1, x0:x1]
        if white is not None and frame[y0:y1, x0:x1].any():
            region = region.copy()
            region[frame[y0:y1, x0:x1]] = white
        pred = clf.classify_rgb(path, region)
        out.append(
            {
                "box": list(c.box),
                "label": pred.label,
                "confidence": float(pred.confidence),
                "flag": triage(pred, threshold),
                "possible_blast": is_possible_blast(pred.label, pred.top3),
                "edge": bool(c.edge),
                **pred.other_fields(),
                "top3": [{"label": lab, "prob": float(p)} for lab, p in pred.top3],
            }
        )
    return out


def scan_array(clf, rgb: np.ndarray, threshold: float, path: str = "", cell_size: float | str | None = None) -> FieldResult:
    """Locate and classify the white cells of a field given as an RGB uint8 array. ``cell_size``: the white-cell
    diameter in pixels; None: the default (:func:`~firmware_host.locate.default_cell_size`); ``"auto"``: measured from
    the field's red cells (:func:`~firmware_host.locate.measured_cell_size`; the default where they cannot be)."""
    rgb = rgb_array(rgb, path or "<field>", "scan_field reads a field's file of any mode and depth")
    h, w = rgb.shape[:2]
    t0 = time.perf_counter()
    auto = isinstance(cell_size, str) and cell_size == AUTO
    if why := unsearchable(rgb, None if auto else cell_size):
        raise ImageError(why, path or "<field>")  # a field that cannot be searched has failed; it is not empty
    try:
        if auto:
            cell_size = measured_cell_size(rgb)
        cells, frame, factor = locate_with_frame(rgb, cell_size)
    except FieldTooFine as exc:
        raise ImageError(str(exc), path or "<field>") from None
    size = cell_size or default_cell_size(w, h)
    if auto:  # measured already: the size is the red cells' over their typical ratio
        red = None if cell_size is None else cell_size * TYPICAL_RED_CELL
    else:
        red = red_cell_size(rgb, cell_size)
    note = empty_reason(rgb, cell_size, None if auto else red) if not cells else None if auto else small_cells_reason(w, h, cell_size, red)
    t1 = time.perf_counter()
    rows = classify_cells(clf, rgb, cells, threshold, path, frame_at(frame, factor, rgb.shape))
    t2 = time.perf_counter()
    sizes = [(nucleus_ratio(c, size), size) for c in cells if not c.edge]
    return FieldResult(
        file=path,
        width=w,
        height=h,
        cell_size=size,
        cells=rows,
        locate_ms=(t1 - t0) * 1e3,
        classify_ms=(t2 - t1) * 1e3,
        sizes=sizes,
        red_cell=None if red is None else (red / size, size),
        note=note,
        cell_size_from=(FROM_DEFAULT if cell_size is None else FROM_RED_CELLS) if auto else None,
    )


def scan_field(clf, path: str | os.PathLike, threshold: float, cell_size: float | str | None = None) -> FieldResult:
    """Read one field file and scan it; a file that cannot be read gives a result with ``error`` set."""
    p = os.fspath(path)
    t0 = time.perf_counter()
    try:
        rgb = decode_field(read_bytes(p), p)
    except ImageError as exc:
        return FieldResult(file=p, error=exc.reason)
    decode_ms = (time.perf_counter() - t0) * 1e3
    try:
        with warnings_about(p):
            res = scan_array(clf, rgb, threshold, p, cell_size)
    except ImageError as exc:
        return FieldResult(file=p, error=exc.reason)
    res.decode_ms = decode_ms
    return res


# ----------------------------------------------------------------------------------------------
# Many fields


def _scan_paths(clf, paths: list[str], threshold: float, cell_size: float | str | None) -> list[FieldResult]:
    return [scan_field(clf, p, threshold, cell_size) for p in paths]


def _scan_in_worker(paths: list[str], threshold: float, cell_size: float | str | None) -> list[FieldResult]:
    from firmware_host import runtime

    return _scan_paths(runtime._WORKER_CLASSIFIER, paths, threshold, cell_size)


def scan_many(
    clf,
    paths: Iterable[str | os.PathLike],
    threshold: float,
    cell_size: float | str | None = None,
    workers: int | None = None,
    processes: bool | None = None,
) -> Iterator[FieldResult]:
    """Scan many fields, yielding one :class:`FieldResult` per path in input order.

    Args:
        processes: True: ``workers`` processes, each reading, locating and classifying its share
            of the fields with its own single-threaded copy of ``clf``'s verified model; False:
            everything in this process; None (default): processes for a list of at least
            :data:`firmware_host.decode.PROCESS_MIN_FILES` fields and more than one worker, called
            where workers may import the main module (:func:`firmware_host.decode.main_is_guarded`).
            Where processes cannot start, this process does the work.

    Only a few chunks of fields are in flight at once, so memory stays flat however many fields.
    Ctrl-C stops the workers (they ignore it; the pool is shut down) and propagates here.
    """
    from firmware_host.runtime import _init_worker_classifier

    workers = workers or default_workers(field_worker_mb(paths))
    pool = None
    data = getattr(clf, "_model_bytes", None)
    if data is not None and use_processes(paths, workers, processes):
        pool = _process_pool(workers, _init_worker_classifier, (clf.path, clf.meta, data, clf.backend.name))
    if pool is None:
        for p in paths:
            yield scan_field(clf, p, threshold, cell_size)
        return
    remote = functools.partial(_scan_in_worker, threshold=threshold, cell_size=cell_size)
    local = functools.partial(_scan_paths, clf, threshold=threshold, cell_size=cell_size)
    for _chunk, results in ordered_chunks(paths, pool, remote, local, workers):
        yield from results


# ----------------------------------------------------------------------------------------------
# The run's tally


@dataclass
class ScanSummary(FlagTally):
    """Counts over a scan run (no per-field results are kept).

    Attributes:
        classes: the model's classes (the order of ``predicted``).
        threshold: confidence below which a cell is flagged as uncertain.
        n_fields: fields scanned (read and searched).
        n_failed: fields that could not be read.
        n_empty: fields with no white cell; ``n_empty_noted`` of them with a note that cells may have been missed
            (:func:`~firmware_host.locate.empty_reason`).
        n_cells: cells found, edge cells included.
        n_edge: cells cut by a field's border (not in the differential count); ``n_flagged_edge`` of them flagged (in the
            flagged counts: a possible blast at a field's edge is still for review).
        predicted: non-edge cells predicted as each class (the differential count); the flags and possible blasts
            (:class:`~firmware_host.classify.FlagTally`) count edge cells too, but for ``n_blasts_in_other`` and
            ``n_no_nucleus``; ``n_blasts_edge``: possible blasts cut by a border.
        failed: ``{"file", "error"}`` per field that could not be read, in order.
        locate_ms: total time spent locating cells; ``classify_ms`` classifying them.
        first_fields: ``(file, cells)`` of the first :data:`FIRST_FIELDS` fields scanned.
        lab_check: the model's slide-level lab check (:func:`firmware_host.runtime.lab_warning`), read over the
            counted cells' top probabilities and never-seen scores, per folder of fields (``labs``).
        sizes: each whole cell's nucleus ratio and cell size (:attr:`FieldResult.sizes`), and ``red_cells`` each
            field's red-cell ratio and cell size (:attr:`FieldResult.red_cell`), for :attr:`size_warning`;
            ``cell_size_given``: they came from ``--cell-size`` (``"auto"``: from each field's red cells).
    """

    classes: list[str]
    threshold: float
    n_fields: int = 0
    n_failed: int = 0
    n_empty: int = 0
    n_empty_noted: int = 0
    n_cells: int = 0
    n_edge: int = 0
    n_flagged_edge: int = 0
    predicted: dict[str, int] = field(default_factory=dict)
    n_blasts_edge: int = 0
    failed: list[dict] = field(default_factory=list)
    locate_ms: float = 0.0
    classify_ms: float = 0.0
    wall_s: float = 0.0
    first_fields: list[tuple[str, list[dict]]] = field(default_factory=list)
    lab_check: dict = field(default_factory=dict)
    labs: LabChecks = field(default_factory=LabChecks)
    sizes: list[tuple[float, float]] = field(default_factory=list)
    red_cells: list[tuple[float, float]] = field(default_factory=list)
    cell_size_given: bool | str = False
    cell_sizes: array = field(default_factory=lambda: array("d"))
    """Each field's cell size (:attr:`FieldResult.cell_size`): with ``--cell-size auto``, what its red cells said."""

    def __post_init__(self) -> None:
        self.predicted = self.predicted or {c: 0 for c in self.classes}

    def add(self, res: FieldResult) -> None:
        if res.error is not None:
            self.n_failed += 1
            self.failed.append({"file": res.file, "error": res.error})
            return
        self.n_fields += 1
        self.n_empty += not res.cells
        self.n_empty_noted += not res.cells and bool(res.note)
        if len(self.first_fields) < FIRST_FIELDS:
            self.first_fields.append((res.file, res.cells))
        self.locate_ms += res.locate_ms
        self.classify_ms += res.classify_ms
        self.sizes.extend(res.sizes)
        self.cell_sizes.append(res.cell_size)
        if res.red_cell is not None:
            self.red_cells.append(res.red_cell)
        for c in res.cells:
            self.n_cells += 1
            tally_flag(self, c, res.file)
            if c["edge"]:
                self.n_edge += 1
                self.n_blasts_edge += is_possible_blast(c["label"], c["top3"])
                self.n_flagged_edge += bool(c["flag"])
            else:
                self.predicted[c["label"]] = self.predicted.get(c["label"], 0) + 1
                self.n_no_nucleus += c["label"] == OTHER_CLASS and has_no_nucleus(c.get("other_reason", ""))
                self.n_blasts_in_other += c["label"] == OTHER_CLASS and is_possible_blast(c["label"], c["top3"])
                top = c["top3"][0]["prob"]  # the top probability, as classify's lab check reads it
                self.labs.add(res.file, label_for(res.file, self.classes) is not None, top, c.get("other_score"), has_no_nucleus(c.get("other_reason", "")))

    @property
    def lab_warning(self) -> str | None:
        """One line when the counted cells look unlike the model's training labs (``runtime.lab_warning``)."""
        return self.labs.run.warning(self.lab_check, what="cells")

    @property
    def folder_lab_warnings(self) -> list[dict]:
        """``{"folder", "n", "lab_warning"}`` for each folder of fields of several whose counted cells look unlike the
        model's training labs (:meth:`firmware_host.runtime.LabChecks.warnings`)."""
        return self.labs.warnings(self.lab_check, what="cells")

    @property
    def size_warning(self) -> str | None:
        """One line when the cells found say the fields were taken at another magnification than the cell size
        assumed (:func:`firmware_host.locate.size_warning`)."""
        return size_warning([r for r, _ in self.sizes], [c for _, c in self.sizes], self.cell_size_given, self.red_cells)

    @property
    def cell_size_spread(self) -> dict | None:
        """The fields' cell sizes in pixels: ``{"median", "min", "max"}`` (None before any field)."""
        if not self.cell_sizes:
            return None
        return {"median": round(statistics.median(self.cell_sizes), 1), "min": round(min(self.cell_sizes), 1), "max": round(max(self.cell_sizes), 1)}

    @property
    def n_counted(self) -> int:
        return sum(self.predicted.values())

    def to_dict(self) -> dict:
        n = self.n_counted
        return {
            "fields": self.n_fields,
            "fields_failed": self.n_failed,
            "fields_without_cells": self.n_empty,
            "fields_without_cells_noted": self.n_empty_noted,
            "cells": self.n_cells,
            "edge_cells": self.n_edge,
            "counted_cells": n,
            "threshold": self.threshold,
            **differential_counts(self.predicted, self.n_no_nucleus, self.n_blasts_in_other),
            "flagged": flagged_counts(self),
            "flagged_edge_cells": self.n_flagged_edge,  # of the flagged, those cut by a border (not in the differential)
            "locate_ms_per_field": self.locate_ms / self.n_fields if self.n_fields else None,
            "classify_ms_per_cell": self.classify_ms / self.n_cells if self.n_cells else None,
            "wall_s": self.wall_s,
            "lab_warning": self.lab_warning,
            "folder_lab_warnings": self.folder_lab_warnings,
            "size_warning": self.size_warning,
            "cell_size": self.cell_size_spread,
        }


# ----------------------------------------------------------------------------------------------
# Pictures


def annotate(rgb: np.ndarray, cells: Sequence[dict], classes: Sequence[str]) -> Image.Image:
    """The field with each cell's box in its class's colour (the review page's, :func:`firmware_host.report.class_rgb`)
    and labelled: its number in the field (from 1, as the CSV and the review page number it), class, confidence
    (:func:`~firmware_host.runtime.label_text`) and "!" when flagged.

    Edge cells get a dashed box.
    """
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    lw = max(1, int(round(ANNOTATE_WIDTH * img.width / 640)))
    for number, c in enumerate(cells, start=1):
        x0, y0, x1, y1 = c["box"]
        colour = class_rgb(c["label"], classes)
        if c["edge"]:
            _dashed_rect(draw, (x0, y0, x1 - 1, y1 - 1), colour, lw)
        else:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=lw)
        text = f"{number} " + label_text(c["label"], c["confidence"], c.get("other_reason", ""), reason=False) + (" !" if c["flag"] else "")
        text += " (possible blast)" if c.get("possible_blast") and c["label"] == OTHER_CLASS else ""  # a blast's label says it
        tx, ty = x0 + lw, max(0, y0 - 12) if y0 >= 12 else y0 + lw
        tb = draw.textbbox((tx, ty), text)
        draw.rectangle(tb, fill=colour)
        light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140  # the label's text: black on light colours
        draw.text((tx, ty), text, fill=(0, 0, 0) if light else (255, 255, 255))
    return img


def _dashed_rect(draw: ImageDraw.ImageDraw, box, colour, width: int) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        for s in range(a, b, 2 * EDGE_DASH):
            e = min(s + EDGE_DASH, b)
            draw.line(((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e)), fill=colour, width=width)


# ----------------------------------------------------------------------------------------------
# A whole run: options, outputs, the loop


@dataclass
class ScanOptions:
    """What ``edgecell scan`` was asked to do.

    Attributes:
        model_path: a ``model_<precision>.tflite`` (with its ``.json``) or an export folder.
        paths: field-of-view images: files, folders, glob patterns.
        json_out: JSON report destination ('-' = stdout) or None.
        csv_out: one CSV row per cell ('-' = stdout) or None.
        annotate_dir: folder for PNGs of the fields with their boxes, or None.
        report_out: the HTML review page, or None.
        threshold: cells classified less confidently than this are flagged as uncertain.
        cell_size: expected white-cell diameter in pixels (None: a fraction of each field's shorter side; ``"auto"``:
            measured from each field's red cells).
        threads: interpreter threads (None: all cores; long lists use worker processes instead).
        precision: which model of an export folder to use.
        other_threshold: the never-seen score above which a cell is labelled ``other`` (None: the sidecar's).
    """

    model_path: str
    paths: tuple[str, ...]
    json_out: str | None = None
    csv_out: str | None = None
    annotate_dir: str | None = None
    report_out: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    cell_size: float | str | None = None
    threads: int | None = None
    precision: str | None = None
    other_threshold: float | None = None


class ScanJob:
    """One scan run: the model loaded, the paths expanded, the outputs open; iterate to scan.

    ::

        with ScanJob(opts) as job:              # checks the outputs, loads and verifies the model
            for res in job:                     # a FieldResult per field (``error`` set when unreadable)
                ...
            job.summary                         # counts, the differential
        # leaving the block writes the JSON tail and the review page and renames the files into place

    Attributes:
        classifier: the loaded :class:`~firmware_host.runtime.Classifier`.
        paths: the field files found, in order; ``path_errors``: arguments that matched nothing.
        processes: whether worker processes scan (256+ fields and no ``threads`` asked for).
        summary: the :class:`ScanSummary` being tallied.
    """

    def __init__(self, opts: ScanOptions):
        from firmware_host.classify import expand_and_check_outputs
        from firmware_host.locate import MAX_CELL_SIZE, MIN_CELL_SIZE
        from firmware_host.runtime import Classifier, check_number

        cell_size = opts.cell_size
        if isinstance(cell_size, str) and cell_size.strip().lower() == AUTO:
            cell_size = AUTO  # "AUTO", " auto": what --cell-size takes in any case
        elif cell_size not in (None, AUTO):
            try:
                cell_size = check_number("cell_size", cell_size, MIN_CELL_SIZE, MAX_CELL_SIZE)
            except ValueError as exc:
                raise ValueError(f"{exc}, or {AUTO!r} (measured from each field's red cells)") from None
        opts = dataclasses.replace(opts, threshold=check_number("threshold", opts.threshold, 0.0, 1.0), cell_size=cell_size)
        expanded = expand_and_check_outputs(opts)
        refuse_annotated(expanded.paths)
        self.opts = opts
        self.report = report_hook(opts.report_out) if opts.report_out else None
        self.classifier = Classifier.load(opts.model_path, threads=opts.threads, precision=opts.precision, other_threshold=opts.other_threshold)
        self.paths, self.path_errors = expanded.paths, expanded.errors
        self.links = expanded.links  # links to folders read already: their fields scanned once
        self.unread = expanded.unread  # pictures of a type a folder search does not read
        self.same_files = expanded.same_files  # links to, or copies of, fields listed already: each scanned once
        self.summary = ScanSummary(
            classes=list(self.classifier.classes),
            threshold=opts.threshold,
            lab_check=dict(self.classifier.meta.lab_check),
            cell_size_given=AUTO if opts.cell_size == AUTO else opts.cell_size is not None,
        )
        for exc in self.path_errors:
            self.summary.add(FieldResult(file=exc.path, error=exc.reason))
        self._processes = None if opts.threads is None else False
        self.workers = default_workers(field_worker_mb(self.paths))
        self.processes = use_processes(self.paths, self.workers, self._processes)
        self.annotator: Annotator | None = None
        self._stack = contextlib.ExitStack()
        self._csv: CellCsv | None = None
        self._json = None
        self._notes = 0  # fields with a note so far (the first NOTES_SHOWN are said as they come)

    def __enter__(self) -> ScanJob:
        from firmware_host.classify import JSON_INDENT_MAX_RESULTS, JsonStream, text_output

        opts = self.opts
        with self._stack:
            if opts.csv_out:
                self._csv = CellCsv(self._stack.enter_context(text_output(opts.csv_out)))
            if opts.json_out:
                head = report_head(JSON_FORMAT) | {"model": self.classifier.info(), "threshold": opts.threshold, "cell_size": opts.cell_size}
                indent = 2 if len(self.paths) <= JSON_INDENT_MAX_RESULTS else None
                self._json = JsonStream(self._stack.enter_context(text_output(opts.json_out)), head, indent=indent)
            if self.report is not None:
                self.report.start(self.classifier, len(self.paths), opts.threshold)
                self._stack.callback(self.report.close)
            self._stack = self._stack.pop_all()
        if opts.annotate_dir:  # built beside its place, swapped in when the scan ends (removed if it does not)
            staged = functools.partial(staged_dir, opts.annotate_dir, ANNOTATE_MARKER, owned=annotated_files)
            self.annotator = Annotator(lambda: self._stack.enter_context(staged()), self.classifier.classes)
        return self

    def __iter__(self) -> Iterator[FieldResult]:
        """Scan every path in order, tallying and streaming each field; yields its :class:`FieldResult`."""
        s, t0 = self.summary, time.perf_counter()
        try:
            # the workers counted once (the fields' headers read once), as self.processes was decided with them
            for res in scan_many(self.classifier, self.paths, self.opts.threshold, self.opts.cell_size, self.workers, self._processes):
                s.add(res)
                if res.note:
                    self._say_note(res)
                if res.error is None:
                    if self._json:
                        self._json.add(res.to_dict())
                    if self.annotator or self.report is not None:
                        self._pictures(res)
                if self._csv:
                    self._csv.add(res)
                yield res
            if self._notes > NOTES_SHOWN:
                more = self._notes - NOTES_SHOWN
                warnings.warn(ImageWarning(f"and {more} more field(s) with a note like those above (every one is in --json and --csv)"), stacklevel=2)
        finally:
            s.wall_s = time.perf_counter() - t0

    def _say_note(self, res: FieldResult) -> None:
        """A warning line naming a field with a note, for the first :data:`NOTES_SHOWN` of them."""
        self._notes += 1
        if self._notes <= NOTES_SHOWN:
            with warnings_about(res.file):
                warnings.warn(ImageWarning(res.note), stacklevel=3)

    def _pictures(self, res: FieldResult) -> None:
        """The field's pixels again, in this process (worker processes return only results)."""
        try:
            data = read_bytes(res.file)
            rgb = decode_field(data, res.file)
        except ImageError:  # changed or removed since it was scanned: no picture
            return
        if self.annotator:
            self.annotator.write(res, rgb)
        if self.report is not None:
            self.report.add(res, rgb, data)

    def __exit__(self, *exc_info) -> bool | None:
        if exc_info[0] is not None:  # the temporary files are removed; nothing half-written is kept
            return self._stack.__exit__(*exc_info)
        with self._stack:
            if self._csv:
                self._csv.close(self.path_errors, self.summary.lab_warning, self.summary.folder_lab_warnings)
            if self._json:
                self._json.close(
                    {
                        "failed": self.summary.failed,
                        "left_out": left_out(self.same_files),
                        "unread": [os.fspath(p) for p in self.unread],
                        "summary": self.summary.to_dict(),
                    }
                )
            if self.report is not None:
                self.report.finish(self.summary)
            if self.annotator:
                self.annotator.finish()
        return None


def scan_paths(model: str | os.PathLike, paths: str | os.PathLike | Sequence[str | os.PathLike], **options) -> ScanSummary:
    """Scan field-of-view files, folders and glob patterns (one path or a list) with ``model``; return the :class:`ScanSummary`.

    ``options`` are the fields of :class:`ScanOptions` (``json_out``, ``csv_out``, ``annotate_dir``,
    ``report_out``, ``threshold``, ``cell_size``, ``threads``, ``precision``, ``other_threshold``).
    """
    opts = ScanOptions(os.fspath(model), path_list(paths), **options)
    with ScanJob(opts) as job:
        for _ in job:
            pass
    return job.summary


ANNOTATE_MARKER = "annotated.json"
"""The file that makes a folder scan's ``--annotate`` folder: which PNG shows which field."""


def annotated_files(folder: Path) -> frozenset[str]:
    """What ``scan --annotate`` wrote in ``folder``: its :data:`ANNOTATE_MARKER` and the PNGs that lists (the marker
    alone when it cannot be read), so that a folder holding anything else is not replaced."""
    import json

    try:
        listed = json.loads((Path(folder) / ANNOTATE_MARKER).read_text(encoding="utf-8"))["fields"]
        return frozenset({ANNOTATE_MARKER, *(f["png"] for f in listed if isinstance(f, dict) and isinstance(f.get("png"), str))})
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset({ANNOTATE_MARKER})


def refuse_annotated(paths: Sequence[str]) -> None:
    """One line (:class:`~firmware_host.errors.EdgecellError`, exit 1) when a field to scan is one of scan's own
    ``--annotate`` pictures (listed in its folder's :data:`ANNOTATE_MARKER`): their drawn boxes and labels change what
    is found and what it is called (a review scanned them: other and monocyte for neutrophils), so they are not
    fields."""
    from firmware_host.errors import EdgecellError

    listed: dict[str, frozenset[str]] = {}
    for p in paths:
        folder = os.path.dirname(os.path.abspath(p))
        if folder not in listed:
            listed[folder] = annotated_files(Path(folder)) if os.path.isfile(os.path.join(folder, ANNOTATE_MARKER)) else frozenset()
        if os.path.basename(p) in listed[folder]:
            raise EdgecellError("is a picture scan --annotate drew (boxes and labels on the field), not a field; scan the original fields", p)


class Annotator:
    """Writes ``<stem>.png`` per field, a distinct name for fields that share a stem, and :data:`ANNOTATE_MARKER` at
    the end, into the folder ``open_folder()`` gives (scan's staging folder for ``--annotate``, swapped into place
    when the scan ends). It is asked for at the first field, so a scan that pictures none leaves the old folder."""

    def __init__(self, open_folder: Callable[[], Path], classes):
        self.open_folder = open_folder
        self.folder: Path | None = None
        self.classes = list(classes)
        self.written: list[dict] = []
        self.used: set[str] = set()

    def target(self, file: str) -> Path:
        if self.folder is None:
            self.folder = Path(self.open_folder())
        stem = Path(file).stem or "field"
        name, k = f"{stem}.png", 1
        while name in self.used:
            name, k = f"{stem}-{k}.png", k + 1
        self.used.add(name)
        return self.folder / name

    def write(self, res: FieldResult, rgb: np.ndarray) -> None:
        buf = io.BytesIO()
        annotate(rgb, res.cells, self.classes).save(buf, format="PNG")
        dest = write_bytes(self.target(res.file), buf.getvalue())
        self.written.append({"field": os.path.abspath(res.file), "png": dest.name, "cells": len(res.cells)})

    def finish(self) -> None:
        from firmware_host.atomic import write_json

        if self.folder is not None:
            write_json(self.folder / ANNOTATE_MARKER, {"format": "edgecell-annotations/1", "fields": self.written})


class ReportHook:
    """``--report``: the review page of :mod:`firmware_host.report` in scan mode (fields with their boxes, cells)."""

    def __init__(self, dest: str, module):
        self.dest, self.mod, self.writer = dest, module, None

    def start(self, clf, n: int, threshold: float) -> None:
        self.writer = self.mod.report_for(clf, threshold, n, mode="scan")

    def add(self, res: FieldResult, rgb: np.ndarray, data: bytes = b"") -> None:
        """The field and each of its cells (named ``FIELD#x0,y0,x1,y1``, the thumbnail cut as the classifier's region, an
        eyepiece frame left as photographed; ``data``: the field's file, whose short SHA-256 each cell carries)."""
        k = self.writer.add_field(res.file, rgb, res.note)
        digest = self.mod.short_sha(data) if data else ""
        for c in res.cells:
            box = self.mod.Box(*c["box"])
            x0, y0, x1, y1 = cell_region(c["box"], res.width, res.height)
            thumb = self.mod.thumbnail_jpeg(rgb[y0:y1, x0:x1])
            self.writer.add_cell(
                self.mod.cell_name(res.file, box),
                c["label"],
                c["confidence"],
                c["flag"],
                None,
                thumb,
                field=k,
                box=box,
                why=c.get("other_reason", ""),
                edge=bool(c["edge"]),
                nearest=self.mod.nearest_class(c),
                sha256=digest,
                top3=c["top3"],
            )

    def finish(self, summary: ScanSummary) -> None:
        self.writer.header.n_failed = summary.n_failed
        self.writer.header.failed = [(f["file"], f["error"]) for f in summary.failed]
        self.writer.header.lab_warning = summary.lab_warning
        self.writer.header.folder_lab_warnings = summary.folder_lab_warnings
        self.writer.header.size_warning = summary.size_warning
        self.writer.write(self.dest)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def report_hook(dest: str) -> ReportHook:
    """The ``--report`` writer."""
    from firmware_host import report

    return ReportHook(dest, report)


CSV_COLUMNS = [
    "file",
    "width",
    "height",
    "cell",
    "x0",
    "y0",
    "x1",
    "y1",
    "label",
    "confidence",
    "flag",
    "possible_blast",
    "edge",
    "other_score",
    "nucleus_offset",
    "other_reason",
    "error",
    "note",
    "lab_warning",
]


class CellCsv:
    """One CSV row per cell; a field with no cell gets one row with an empty ``cell`` (and its ``note``, if any); a
    failed field its error; then
    (:meth:`close`) the arguments that matched no file, and the lab warnings' rows as classify's CSV
    (:func:`firmware_host.classify.write_lab_warnings`)."""

    def __init__(self, fh: IO[str]):
        self.w = csv_dict_writer(fh, CSV_COLUMNS)  # every field quoted as it needs (a CR or LF in a file name)
        self.w.writeheader()

    def close(self, path_errors, lab_warning: str | None, folder_warnings: Sequence[dict] = ()) -> None:
        for exc in path_errors:
            self.w.writerow({"file": exc.path, "error": exc.reason})
        write_lab_warnings(self.w, lab_warning, folder_warnings)

    def add(self, res) -> None:
        if res.error is not None:
            self.w.writerow({"file": res.file, "error": res.error})
            return
        if not res.cells:
            self.w.writerow({"file": res.file, "width": res.width, "height": res.height, "note": res.note or ""})
        for i, c in enumerate(res.cells):
            x0, y0, x1, y1 = c["box"]
            self.w.writerow(
                {
                    "file": res.file,
                    "width": res.width,
                    "height": res.height,
                    "cell": i + 1,  # from 1, as the review page numbers a field's boxes
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                    "label": c["label"],
                    "confidence": f"{c['confidence']:.6f}",
                    "flag": c["flag"],
                    "possible_blast": int(c["possible_blast"]),
                    "edge": int(c["edge"]),
                    **other_csv(c),
                    "error": "",
                    "note": res.note or "",
                }
            )
