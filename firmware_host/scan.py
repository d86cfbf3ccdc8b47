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

import functools
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from firmware_host.decode import _process_pool, default_workers, ordered_chunks, use_processes
from firmware_host.errors import ImageError
from firmware_host.locate import Cell, locate
from firmware_host.preprocess import MAX_PIXELS, MIN_SIDE, _to_rgb, read_bytes

CROP_MARGIN = 0.25
"""The region passed to the classifier: the box's longer side plus this fraction of it on each side."""
ANNOTATE_WIDTH = 3
"""Line width of the boxes drawn by :func:`annotate`, in pixels of a 640-pixel-wide field."""
EDGE_DASH = 8
"""Dash length of the box of a cell cut by the border."""


# ----------------------------------------------------------------------------------------------
# One field


def decode_field(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Encoded bytes of a field of view to a full-resolution ``(H, W, 3)`` uint8 RGB array.

    The same checks and conversions as :func:`firmware_host.preprocess.decode` (pixel limit from
    the header, EXIF orientation, 8-bit RGB), without the resize; :class:`ImageError` otherwise.
    """
    if not data:
        raise ImageError("empty file (0 bytes)", path)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"image is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit (refused from its header)", path)
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"image is {w}x{h} pixels, too small to hold a cell (minimum {MIN_SIDE}x{MIN_SIDE})", path)
        img.load()
        return np.asarray(_to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read", path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image is over the {MAX_PIXELS:,}-pixel limit (refused from its header)", path) from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image", path) from None
    except Exception as exc:  # truncated data, broken headers, codec errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"cannot decode image ({reason})", path) from None


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


@dataclass
class FieldResult:
    """One field's result: its size and cells, or the reason it could not be read.

    ``cells`` are dicts ``{"box", "label", "confidence", "flag", "edge", "top3"}`` with ``box``
    ``[x0, y0, x1, y1]`` in the original image's pixels (x1, y1 exclusive).
    """

    file: str
    width: int = 0
    height: int = 0
    cells: list[dict] = field(default_factory=list)
    error: str | None = None
    locate_ms: float = 0.0
    classify_ms: float = 0.0
    decode_ms: float = 0.0

    def to_dict(self) -> dict:
        """The field's JSON record (``file``, ``width``, ``height``, ``cells``; ``error`` instead for a failure)."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "width": self.width, "height": self.height, "cells": self.cells}


def classify_cells(clf, rgb: np.ndarray, cells: Sequence[Cell], threshold: float, path: str = "") -> list[dict]:
    """Classify each located cell of a field through ``clf`` (a :class:`~firmware_host.runtime.Classifier`)."""
    from firmware_host.runtime import triage

    h, w = rgb.shape[:2]
    out = []
    for c in cells:
        x0, y0, x1, y1 = cell_region(c.box, w, h)
        pred = clf.classify_rgb(path, rgb[y0:y1, x0:x1])
        out.append(
            {
                "box": list(c.box),
                "label": pred.label,
                "confidence": float(pred.confidence),
                "flag": triage(pred, threshold),
                "edge": bool(c.edge),
                "top3": [{"label": lab, "prob": float(p)} for lab, p in pred.top3],
            }
        )
    return out


def scan_array(clf, rgb: np.ndarray, threshold: float, path: str = "", cell_size: float | None = None) -> FieldResult:
    """Locate and classify the white cells of a field given as an RGB uint8 array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    t0 = time.perf_counter()
    cells = locate(rgb, cell_size=cell_size)
    t1 = time.perf_counter()
    rows = classify_cells(clf, rgb, cells, threshold, path)
    t2 = time.perf_counter()
    return FieldResult(file=path, width=w, height=h, cells=rows, locate_ms=(t1 - t0) * 1e3, classify_ms=(t2 - t1) * 1e3)


def scan_field(clf, path: str | os.PathLike, threshold: float, cell_size: float | None = None) -> FieldResult:
    """Read one field file and scan it; a file that cannot be read gives a result with ``error`` set."""
    p = os.fspath(path)
    t0 = time.perf_counter()
    try:
        rgb = decode_field(read_bytes(p), p)
    except ImageError as exc:
        return FieldResult(file=p, error=exc.reason)
    decode_ms = (time.perf_counter() - t0) * 1e3
    res = scan_array(clf, rgb, threshold, p, cell_size)
    res.decode_ms = decode_ms
    return res


# ----------------------------------------------------------------------------------------------
# Many fields


def _scan_paths(clf, paths: list[str], threshold: float, cell_size: float | None) -> list[FieldResult]:
    return [scan_field(clf, p, threshold, cell_size) for p in paths]


def _scan_in_worker(paths: list[str], threshold: float, cell_size: float | None) -> list[FieldResult]:
    from firmware_host import runtime

    return _scan_paths(runtime._WORKER_CLASSIFIER, paths, threshold, cell_size)


def scan_many(
    clf,
    paths: Iterable[str | os.PathLike],
    threshold: float,
    cell_size: float | None = None,
    workers: int | None = None,
    processes: bool | None = None,
) -> Iterator[FieldResult]:
    """Scan many fields, yielding one :class:`FieldResult` per path in input order.

    Args:
        processes: True: ``workers`` processes, each reading, locating and classifying its share
            of the fields with its own single-threaded copy of ``clf``'s verified model; False:
            everything in this process; None (default): processes for a list of at least
            :data:`firmware_host.decode.PROCESS_MIN_FILES` fields and more than one worker.
            Where processes cannot start, this process does the work.

    Only a few chunks of fields are in flight at once, so memory stays flat however many fields.
    Ctrl-C stops the workers (they ignore it; the pool is shut down) and propagates here.
    """
    from firmware_host.runtime import _init_worker_classifier

    workers = workers or default_workers()
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
class ScanSummary:
    """Counts over a scan run (no per-field results are kept).

    Attributes:
        classes: the model's classes (the order of ``differential``).
        threshold: confidence below which a cell is flagged as uncertain.
        n_fields: fields scanned (read and searched).
        n_failed: fields that could not be read.
        n_empty: fields with no white cell.
        n_cells: cells found, edge cells included.
        n_edge: cells cut by a field's border (not in the differential count).
        predicted: non-edge cells predicted as each class (the differential count).
        n_review: cells flagged for a haematologist (review classes).
        n_uncertain: cells flagged as uncertain.
        failed: ``{"file", "error"}`` per field that could not be read, in order.
        locate_ms: total time spent locating cells; ``classify_ms`` classifying them.
    """

    classes: list[str]
    threshold: float
    n_fields: int = 0
    n_failed: int = 0
    n_empty: int = 0
    n_cells: int = 0
    n_edge: int = 0
    predicted: dict[str, int] = field(default_factory=dict)
    n_review: int = 0
    n_uncertain: int = 0
    failed: list[dict] = field(default_factory=list)
    locate_ms: float = 0.0
    classify_ms: float = 0.0
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        self.predicted = self.predicted or {c: 0 for c in self.classes}

    def add(self, res: FieldResult) -> None:
        from firmware_host.runtime import FLAG_REVIEW, FLAG_UNCERTAIN

        if res.error is not None:
            self.n_failed += 1
            self.failed.append({"file": res.file, "error": res.error})
            return
        self.n_fields += 1
        self.n_empty += not res.cells
        self.locate_ms += res.locate_ms
        self.classify_ms += res.classify_ms
        for c in res.cells:
            self.n_cells += 1
            self.n_review += c["flag"] == FLAG_REVIEW
            self.n_uncertain += c["flag"] == FLAG_UNCERTAIN
            if c["edge"]:
                self.n_edge += 1
            else:
                self.predicted[c["label"]] = self.predicted.get(c["label"], 0) + 1

    @property
    def n_counted(self) -> int:
        return sum(self.predicted.values())

    def to_dict(self) -> dict:
        n = self.n_counted
        return {
            "fields": self.n_fields,
            "fields_failed": self.n_failed,
            "fields_without_cells": self.n_empty,
            "cells": self.n_cells,
            "edge_cells": self.n_edge,
            "counted_cells": n,
            "threshold": self.threshold,
            "differential": dict(self.predicted),
            "differential_pct": {c: (100.0 * v / n if n else 0.0) for c, v in self.predicted.items()},
            "flagged": {"review": self.n_review, "uncertain": self.n_uncertain, "total": self.n_review + self.n_uncertain},
            "locate_ms_per_field": self.locate_ms / self.n_fields if self.n_fields else None,
            "classify_ms_per_cell": self.classify_ms / self.n_cells if self.n_cells else None,
            "wall_s": self.wall_s,
        }


# ----------------------------------------------------------------------------------------------
# Pictures


def class_colour(label: str, classes: Sequence[str]) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (by its position in ``classes``)."""
    import colorsys

    k = list(classes).index(label) if label in classes else len(classes)
    r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def annotate(rgb: np.ndarray, cells: Sequence[dict], classes: Sequence[str]) -> Image.Image:
    """The field with each cell's box in its class's colour and labelled (class, confidence, flag).

    Edge cells get a dashed box.
    """
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    lw = max(1, int(round(ANNOTATE_WIDTH * img.width / 640)))
    for c in cells:
        x0, y0, x1, y1 = c["box"]
        colour = class_colour(c["label"], classes)
        if c["edge"]:
            _dashed_rect(draw, (x0, y0, x1 - 1, y1 - 1), colour, lw)
        else:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=lw)
        text = f"{c['label']} {c['confidence']:.2f}" + (" !" if c["flag"] else "")
        tx, ty = x0 + lw, max(0, y0 - 12) if y0 >= 12 else y0 + lw
        tb = draw.textbbox((tx, ty), text)
        draw.rectangle(tb, fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0))
    return img


def _dashed_rect(draw: ImageDraw.ImageDraw, box, colour, width: int) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        for s in range(a, b, 2 * EDGE_DASH):
            e = min(s + EDGE_DASH, b)
            draw.line(((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e)), fill=colour, width=width)
