"""Find the white cells in a photo of a stained blood smear, with numpy and Pillow only.

:func:`locate` takes an RGB ``uint8`` field of view of any size and returns one :class:`Cell` per
white cell: its box in the original pixel coordinates and whether the image border cuts it.

Algorithm (all on a reduced copy where a white cell is about :data:`WORK_CELL` pixels across):

1. **Reduce.** Box-filter the field down by an integer factor (Pillow's ``reduce``) chosen from
   the expected white-cell diameter (``cell_size``; default :data:`CELL_FRACTION` of the
   field's shorter side).
2. **White balance.** The green and blue channels are divided by their :data:`WHITE_PERCENTILE` th
   percentiles (the bright background between the cells), so the camera's white balance and
   exposure drop out.
3. **Stain map.** ``s = blue - green`` of the balanced image. Nuclei stained by a Romanowsky stain
   (Wright, Giemsa, May-Gruenwald-Giemsa, Leishman) are purple: they absorb green far more than
   blue, so ``s`` is high there, near zero on background and low on red cells (pink: they absorb
   green and blue about equally).
4. **Threshold by Otsu on this image's histogram** of ``s``: the split adapts to each
   image's stain intensity. A floor (:data:`MIN_CONTRAST` above the background's median)
   keeps a field with no white cell from calling red cells nuclei.
5. **Connected components** of the nucleus mask, closed by a small dilation
   (:data:`LOBE_GAP` of a cell) so the lobes of a segmented nucleus join into one cell, written
   in numpy (:func:`label`: run-length encoding, union-find over overlapping runs; its cost per
   field is in benchmarks/results/scan.md).
6. **Touching cells** are separated by their nuclei: each white cell has its own nucleus
   component, and cells whose cytoplasm touches stay apart because only nucleus pixels are
   joined. A component wider or higher than :data:`SPLIT_EXTENT` cells (two nuclei pressed
   together) is eroded until it falls apart into pieces, which are grown back within the
   component (a numpy watershed on the distance to the background; :func:`split_component`);
   the split is kept only when every piece is a nucleus by the rules of step 7 and the pieces'
   boxes overlap little (:data:`MAX_SPLIT_OVERLAP`; pieces of one granular cell interleave).
7. **Keep white cells only**: a component is kept when its nucleus area is at least
   :data:`MIN_NUCLEUS_AREA` of a cell's area (platelets are a few micrometres, a white cell's
   nucleus much larger) and its stain is strong relative to this image's threshold
   (:data:`MIN_STAIN_EXCESS`); red cells never pass the threshold.
8. **Box**: the nucleus's bounding box grown to a cell (:data:`GROW` of the nucleus's size on
   each side, at least a cell of :data:`MIN_BOX` of ``cell_size``), clipped to the image, mapped
   back to the original pixel grid. ``edge`` is true when the nucleus reaches the border:
   part of the cell is outside the field.

Assumptions (what changes with another lab or camera, and what that does):

* Romanowsky-type stain, bright-field, background brighter than the cells and occupying at least
  a few per cent of the field (its percentile sets the white point). Another white balance or
  exposure is normalised away; a weaker or stronger stain moves the Otsu threshold with it.
  A stain whose nuclei are not bluer than green (e.g. H&E-like pink-dominant) would need another
  stain map.
* Magnification: the size rules are relative to ``cell_size``. The default assumes the field's
  shorter side is about ``1 / CELL_FRACTION`` white-cell diameters (a 100x objective photographed
  as in BCCD: 640x480 with cells of 100-230 px); the image's resolution does not matter, its
  magnification does. Another magnification needs ``cell_size`` (``edgecell scan --cell-size``):
  benchmarks/scan.py shows the BCCD fields at half the magnification losing a quarter of their
  cells with the default (nuclei look like platelets), and at twice the magnification gaining
  false cells, while with ``cell_size`` set to match both score as at the original magnification.
  :func:`size_warning` tells the user of a run whose nuclei are far larger than ``cell_size`` allows (twice the
  magnification) which ``cell_size`` to give; half the magnification it cannot tell from a lab whose nuclei are
  small within their cells.
* Cells lie in one layer (a monolayer area of the smear): heavily overlapping white cells whose
  nuclei touch along a long border can be counted as one.
* Smudge cells and large stained debris look like nuclei and are reported as cells (the classifier
  and its ``other`` class, and a person reviewing flagged cells, are the next line).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from firmware_host.preprocess import has_no_colour, otsu_threshold

CELL_FRACTION = 0.3
"""Default expected white-cell diameter as a fraction of the field's shorter side."""
MIN_CELL_SIZE = 8.0
"""The smallest white-cell diameter, pixels, that ``cell_size`` may say (``scan --cell-size``'s range)."""
MAX_CELL_SIZE = 10000.0
"""The largest white-cell diameter, pixels, that ``cell_size`` may say (a field that holds one is over 50 megapixels)."""
WORK_CELL = 32
"""A white cell's diameter, in pixels, in the reduced image the search works on."""
MAX_WORK_PIXELS = 8_000_000
"""The most pixels the search works on: a field is reduced further than :data:`WORK_CELL` asks when it would be more
(an 8000x6000 field with cells of 30 px took 1.8 GB at full size; 8 megapixels take about 400 MB)."""
MIN_WORK_CELL = 8
"""The smallest white-cell diameter, in reduced pixels, that the search can still find: a field too large for its
cells (:data:`MAX_WORK_PIXELS`) is refused rather than searched blind."""
DEFAULT_SIZE_FIELD = 1000
"""A field whose shorter side is over this many pixels is larger than the one the default cell size was set on."""


class FieldTooFine(ValueError):
    """A field whose white cells are too small for its size to be searched within :data:`MAX_WORK_PIXELS`."""


def unsearchable(rgb: np.ndarray, cell_size: float | None) -> str | None:
    """Why no white cell can be searched for in this field, or None: a grey image (the search reads the stain's
    colour), or a ``cell_size`` larger than the field. Such a field has failed, not come out empty."""
    h, w = rgb.shape[:2]
    if has_no_colour(rgb):
        return "has no colour (a blank or unstained picture, or a monochrome camera?): white cells are found by their stain's colour, so none can be searched for here"
    if cell_size and cell_size > min(w, h):
        return f"--cell-size {cell_size:g} is larger than this {w}x{h} field: give the white cells' diameter in its pixels"
    return None


SMALL_RED_CELLS = 0.4
"""A field whose red cells (:func:`red_cell_size`) are under this share of their size at ``cell_size``'s
magnification was taken at a lower one (:func:`empty_reason` for a field without a white cell,
:func:`small_cells_reason` for one with). BCCD's fields one by one at the right magnification: 0.79 of it and more
(356 fields), 0.45 and more upscaled to a phone's 4032x3024; at half the magnification 0.50-0.78, at a quarter
0.25-0.30 (a review's variants), where the search found no white cell at all and the run-wide :func:`size_warning`
needs :data:`MIN_FIELDS_SIZED` fields."""


def red_cells_small(red_cells: float | None, size: float) -> bool:
    """Whether red cells measured at ``red_cells`` (:func:`red_cell_size`) say a much lower magnification than a
    white-cell diameter of ``size`` does (:data:`SMALL_RED_CELLS`)."""
    return red_cells is not None and red_cells < SMALL_RED_CELLS * TYPICAL_RED_CELL * size


LOW_CONTRAST = 35
"""An empty field whose brightness (the mean of R, G and B) spans fewer levels than this between its 1st and 99th
percentiles is washed out. BCCD's 364 fields span 37-96 (one at 37, the next 42). Made hazy (half the contrast, plus
110) or overexposed (x1.8) in a review, the search missed a third of their white cells and called 12 and 10 of 30
fields empty: those spanned 24-49 (9 of 12 under this) and 12-21 levels. Fields with no white cell cut from BCCD's:
50-70."""
CONTRAST_SAMPLE = 250_000
"""The brightness spread is read from about this many pixels of a larger field (every k-th row and column)."""


def brightness_spread(rgb: np.ndarray) -> int:
    """Levels of brightness (the mean of R, G and B, of 255) between a field's 1st and 99th percentiles, over a regular
    sample of at most about :data:`CONTRAST_SAMPLE` pixels; read from R+G+B in integers, so the same on every machine."""
    h, w = rgb.shape[:2]
    k = max(1, int(np.ceil(np.sqrt(h * w / CONTRAST_SAMPLE))))
    total = rgb[::k, ::k].astype(np.int32).sum(axis=2).ravel()
    lo_at, hi_at = int(0.01 * (len(total) - 1)), int(0.99 * (len(total) - 1))
    lo, hi = np.partition(total, (lo_at, hi_at))[[lo_at, hi_at]]
    return int(hi - lo) // 3


def empty_reason(rgb: np.ndarray, cell_size: float | None, red_cells: float | None = None) -> str | None:
    """Why a field where :func:`locate` found no white cell may have one after all, or None: the default size on a
    large field (its camera's cells may be smaller); red cells (``red_cells``, :func:`red_cell_size`) far smaller than
    at the magnification ``cell_size`` assumes (:data:`SMALL_RED_CELLS`); a washed-out field (:data:`LOW_CONTRAST`)."""
    h, w = rgb.shape[:2]
    if not cell_size and min(w, h) > DEFAULT_SIZE_FIELD:
        return (
            f"no white cell of about {default_cell_size(w, h):.0f} px across (the default, {CELL_FRACTION} of the shorter side, "
            "as in 640x480 fields at 100x): if this camera's cells are smaller, give --cell-size PX"
        )
    size = cell_size or default_cell_size(w, h)
    if red_cells_small(red_cells, size):
        return (
            f"no white cell of about {size:.0f} px across, but the red cells here are as at a lower magnification "
            f"(white cells about {red_cells / TYPICAL_RED_CELL:.0f} px across): give --cell-size auto, or the white cells' diameter"
        )
    spread = brightness_spread(rgb)
    if spread < LOW_CONTRAST:
        return (
            f"no white cell found, but the field has little contrast (its brightness spans {spread} of 255 levels: washed out, "
            "hazy, overexposed or blank): white cells may be missed; take it again with less light or more contrast"
        )
    return None


def small_cells_reason(w: int, h: int, cell_size: float | None, red_cells: float | None) -> str | None:
    """Why the white cells found in a field may be too few or merged, or None: its red cells (``red_cells``,
    :func:`red_cell_size`) are far smaller than at the magnification ``cell_size`` assumes (:data:`SMALL_RED_CELLS`,
    which no field at the right magnification came near). One photo at a lower magnification (a phone's, of a 40x
    field) found one "cell" where nine were; the run-wide :func:`size_warning` needs :data:`MIN_FIELDS_SIZED` fields."""
    size = cell_size or default_cell_size(w, h)
    if not red_cells_small(red_cells, size):
        return None
    return (
        f"the red cells here are as at a lower magnification (white cells about {red_cells / TYPICAL_RED_CELL:.0f} px across, "
        f"not the {size:.0f} px assumed): white cells may be missed, or two counted as one; give --cell-size auto, or the white cells' diameter"
    )


TYPICAL_NUCLEUS = 1.08
"""The median ratio of a found nucleus's longer side to ``cell_size`` when ``cell_size`` is right: BCCD's fields at
100x with the default (291 whole white cells; half the fields' medians within 0.72-1.52 of it)."""
NUCLEUS_RATIO_RANGE = (0.5, 1.5)
"""A run whose median nucleus ratio falls outside this range was taken at another magnification than ``cell_size``
says. Above: nuclei half as large again as the whole cell assumed. BCCD's fields as if at twice the magnification give
1.97, and runs of 10 fields at the right one 0.83-1.32 (1st-99th percentile), so the upper end is safe. The lower end
is wide because where a lab's nucleus stands out from its cytoplasm (BCCD's whole cell stains blue) the ratio is
lower at the right magnification (the synthetic fields of the tests: 0.64); so at half the magnification (BCCD: 0.58,
a quarter of its cells missed) the nuclei say nothing, and the red cells speak (:data:`RED_CELL_RANGE`)."""
MIN_CELLS_SIZED = 20
"""The fewest whole white cells over which :func:`size_warning` judges the magnification."""
TYPICAL_RED_CELL = 0.56
"""The median ratio of :func:`red_cell_size` to ``cell_size`` over a run when ``cell_size`` is right: BCCD's fields at
100x with the default (0.556 over the 356 of its 364 fields it measures; runs of 10 fields 0.556-0.639, 1st-99th
percentile of 500 seeded draws; the annotated red cells are 109 px across, so the ruler reads about three quarters of
a red cell's diameter)."""
RED_CELL_RANGE = (0.75, 1.4)
"""A run whose median red-cell ratio is outside this range of :data:`TYPICAL_RED_CELL` was taken at another
magnification than ``cell_size`` says. BCCD's fields, runs of 10 (1st-99th percentile of 500 seeded draws): at the
right magnification 0.99-1.14, as if at half 0.52-0.59, at a third 0.35-0.40, at twice 1.26-1.98
(`benchmarks/results/scan.md` counts the consecutive runs of 10 that warn)."""
MIN_FIELDS_SIZED = 10
"""The fewest fields with red cells over which :func:`size_warning` reads the red cells. The ruler reads in steps of
two reduced pixels, about a tenth of :data:`TYPICAL_RED_CELL`: over runs of 5 of BCCD's fields at the right
magnification the highest median was 1.39 of it, a step under the range's end (found by a review); over runs of 10,
1.14."""
MIN_RED_SHARE, MAX_RED_SHARE = 0.05, 0.9
"""The share of a field's pixels that must be red for :func:`red_cell_size` to measure it (the upper limit after its
pale centres and gaps are filled)."""
PALE_CENTRE = 1.0
"""Enclosed background up to this share of a white cell's area (pi/4 ``cell_size``^2) is filled as red: a red cell's
pale centre (a tenth of a white cell at the right magnification) and the gaps between touching red cells; not the
field inside a round eyepiece's dark frame."""
DARK = 0.5
"""A pixel whose red channel is under this share of the white's is not a red cell (red cells are pink): a dark frame."""
MAX_RULER_PIXELS = 1_000_000
"""The most pixels :func:`red_cell_size` measures (a field whose cells are small for its size is reduced further),
so it stays under about 0.3 s and 70 MB at any field size (3-4 ms for a 640x480 field)."""
RULER_DEPTH = 2 * WORK_CELL
"""Erosions per measure: red cells are about half a white cell across, :data:`WORK_CELL` reduced pixels at the cell
size given; deeper ones mean a ``cell_size`` several times too small (measured again, reduced more)."""
RULER_STEP = 4
"""How many times larger the cell size is taken when red cells are deeper than :data:`RULER_DEPTH`."""
MIN_WHOLE_RED = 4
"""The fewest red things (a red cell, or touching ones) wholly inside a field that :func:`red_cell_size` measures: at a
high magnification most red cells are cut by the field's edge or hidden under a white cell, and the pieces left are
no ruler."""
RULER_TRIES = 3
"""The most measures :func:`red_cell_size` takes of one field."""
RED_CELL_PERCENTILE = 90.0
"""The percentile of the distance maxima that :func:`red_cell_size` reads: the ridges between touching red cells
and the small bright specks within them give lower maxima than a red cell's centre."""


def nucleus_ratio(cell: Cell, cell_size: float) -> float:
    """A found nucleus's longer side over the expected white-cell diameter (about :data:`TYPICAL_NUCLEUS`)."""
    x0, y0, x1, y1 = cell.nucleus
    return max(x1 - x0, y1 - y0) / cell_size


def size_warning(ratios: Sequence[float], cell_sizes: Sequence[float], given: bool | str, red: Sequence[tuple[float, float]] = ()) -> str | None:
    """One line when a run's fields say they were taken at another magnification than the locator assumed, else None.

    ``ratios`` and ``cell_sizes``: each whole white cell's :func:`nucleus_ratio` and the ``cell_size`` of its field,
    judged over :data:`MIN_CELLS_SIZED` cells or more (:data:`NUCLEUS_RATIO_RANGE`). ``red``: each field's
    :func:`red_cell_size` over its ``cell_size``, and that ``cell_size``, judged over :data:`MIN_FIELDS_SIZED` fields
    or more (:data:`RED_CELL_RANGE`) when the nuclei have not spoken: too few of them (a few fields at a high
    magnification), or within their range (a lower magnification, where nuclei cannot tell:
    :data:`NUCLEUS_RATIO_RANGE`); not when the nuclei found are smaller than usual and the red cells larger, or the
    other way round. ``given``: the cell size came from ``--cell-size`` (not the default); :data:`AUTO`: from each
    field's red cells.
    """
    sized = [(r, c) for r, c in zip(ratios, cell_sizes) if _measure(r) and _measure(c)]
    red = [(r, c) for r, c in red if _measure(r) and _measure(c)]
    ratios, cell_sizes = [r for r, _ in sized], [c for _, c in sized]
    lo, hi = NUCLEUS_RATIO_RANGE
    nucleus = statistics.median(ratios) if ratios else None
    if len(ratios) >= MIN_CELLS_SIZED and not lo <= nucleus <= hi:
        times = nucleus / TYPICAL_NUCLEUS
        found = f"the {len(ratios)} white cells found look"
        suggest = statistics.median(r * c for r, c in zip(ratios, cell_sizes)) / TYPICAL_NUCLEUS
        expected = statistics.median(cell_sizes)
    elif len(red) >= MIN_FIELDS_SIZED:
        times = statistics.median(r for r, _ in red) / TYPICAL_RED_CELL
        lo, hi = RED_CELL_RANGE
        if lo <= times <= hi or (nucleus is not None and (nucleus > TYPICAL_NUCLEUS) != (times > 1)):
            return None  # the red cells are as expected, or the nuclei found say the other way
        found = f"the red cells of the {len(red)} fields look"
        suggest = statistics.median(r * c for r, c in red) / TYPICAL_RED_CELL
        expected = statistics.median(c for _, c in red)
    else:
        return None
    said = (
        "measured from each field's red cells, --cell-size auto"
        if given == AUTO
        else "--cell-size"
        if given
        else f"the default, {CELL_FRACTION} of the shorter side"
    )
    if times > 1:
        what = "larger than expected: at a higher magnification scan may split one cell into two or count pieces as cells"
    else:
        times = 1 / times
        what = "smaller than expected: at a lower magnification scan misses white cells whose nuclei look like platelets"
    return (
        f"{found} {times:.1f} times {what} "
        f"(cells of {expected:.0f} px assumed, {said}); check the boxes (--annotate or --report) and give --cell-size {suggest:.0f}"
    )


def _measure(v: float) -> bool:
    """A size or ratio :func:`size_warning` can read: finite and above zero."""
    return math.isfinite(v) and v > 0


WHITE_PERCENTILE = 99.0
"""Percentile of each channel taken as the white point (the background)."""
OTSU_BINS = 128
"""Histogram bins of the stain map's Otsu threshold."""
MIN_CONTRAST = 0.12
"""The nucleus threshold is at least this far above the median of the stain map (balanced units)."""
LOBE_GAP = 0.08
"""Gaps between nucleus lobes up to this fraction of a cell are bridged (dilation radius)."""
MIN_NUCLEUS_AREA = 0.15
"""Smallest nucleus kept, as a fraction of a cell's area (pi/4 cell_size^2); platelets are below."""
MIN_STAIN_EXCESS = 0.1
"""A kept nucleus's mean stain exceeds the threshold by at least this (balanced units)."""
SPLIT_EXTENT = 1.6
"""A nucleus component wider or higher than this many cell diameters is tried for splitting."""
MAX_SPLIT_OVERLAP = 0.2
"""A split is kept only if no two pieces' boxes overlap by more than this share of the smaller box.

Two round nuclei pressed together overlap their boxes by under 0.2 in any arrangement (two discs
at 0.8 of touching distance on a diagonal: 0.19); the interleaved pieces of one granular cell
(an eosinophil's granules, a smudged cell) overlap more."""
MAX_ERODE = 8
"""Most erosions tried when splitting a component in two or more nuclei."""
FRAME_DARK = 0.25
"""A pixel under this share of the white in every channel is dark: the frame around a photo taken through an eyepiece
(nuclei and red cells keep far more of one channel)."""
MIN_FRAME_SHARE = 0.02
"""The least share of a field that dark pixels joined to its border must cover to be a frame."""
GROW = 0.12
"""The box is the nucleus's box grown by this fraction of the nucleus's size on each side."""
MIN_BOX = 0.55
"""A box is at least this fraction of ``cell_size`` wide and high (centred on the nucleus)."""


@dataclass(frozen=True)
class Cell:
    """One white cell found in a field.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in the original image's pixels (x1, y1 exclusive).
        edge: the image border cuts the cell (its nucleus reaches the border).
        nucleus: the nucleus's ``(x0, y0, x1, y1)`` in the original image's pixels.
        stain: the nucleus's mean stain value minus the image's threshold (balanced units).
    """

    box: tuple[int, int, int, int]
    edge: bool
    nucleus: tuple[int, int, int, int]
    stain: float

    def to_dict(self) -> dict:
        return {"box": list(self.box), "edge": self.edge}


# ----------------------------------------------------------------------------------------------
# Connected components in numpy


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in a 2-D bool array: ``(row, start, stop)`` arrays (stop exclusive)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rs, cs = np.nonzero(d == 1)
    _, ce = np.nonzero(d == -1)
    return rs, cs, ce  # np.nonzero is row-major, so starts and stops pair up


def _find_roots(parent: np.ndarray) -> np.ndarray:
    while True:  # pointer jumping: log(depth) passes
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def label(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Connected components of a 2-D bool mask by run-length labelling.

    Runs of each row are linked to the overlapping runs of the row above (8- or 4-connected),
    the links are merged by vectorised union-find (minimum label propagation with pointer
    jumping), and labels are renumbered 0..n-1 in raster order of their first run.

    Returns ``(row, start, stop, run_label, n)``: every run and its component.
    """
    rs, cs, ce = _runs(mask)
    n_runs = rs.size
    if n_runs == 0:
        return rs, cs, ce, np.zeros(0, dtype=np.int64), 0
    reach = 1 if connectivity == 8 else 0
    # Runs are in raster order, so the runs of the row above are a contiguous block sorted by
    # start (and by stop): the ones touching a run are the slice [left, right) of that block.
    row_first = np.searchsorted(rs, np.arange(mask.shape[0] + 1))
    prev = rs - 1
    has_prev = prev >= 0
    left = _rowlocal_search(ce, row_first, prev, has_prev, cs - reach, side="right")  # first with stop > start - reach
    right = _rowlocal_search(cs, row_first, prev, has_prev, ce + reach, side="left")  # first with start >= stop + reach
    counts = np.maximum(right - left, 0)
    a = np.repeat(np.arange(n_runs), counts)
    b = np.repeat(left, counts) + (np.arange(a.size) - np.repeat(np.cumsum(counts) - counts, counts))
    parent = np.arange(n_runs)
    if a.size:
        while True:
            ra, rb = parent[a], parent[b]
            if np.array_equal(ra, rb):
                break
            lo_ = np.minimum(ra, rb)
            np.minimum.at(parent, ra, lo_)
            np.minimum.at(parent, rb, lo_)
            parent = _find_roots(parent)
    roots = _find_roots(parent)
    uniq, lab = np.unique(roots, return_inverse=True)
    return rs, cs, ce, lab.reshape(-1), int(uniq.size)


def _rowlocal_search(values: np.ndarray, row_first: np.ndarray, prev: np.ndarray, valid: np.ndarray, keys: np.ndarray, side: str) -> np.ndarray:
    """``searchsorted`` of each key within the runs of row ``prev`` (values sorted within a row)."""
    # Offset each row's values by a large multiple of the row index so one global search works.
    big = np.int64(1 << 20)
    rows = np.repeat(np.arange(row_first.size - 1), np.diff(row_first))
    keyed = values.astype(np.int64) + rows * big
    k = keys.astype(np.int64) + np.clip(prev, 0, None) * big
    out = np.searchsorted(keyed, k, side=side)
    return np.where(valid, out, 0)


def label_image(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """A label image (``-1`` background, components ``0..n-1``) from :func:`label`."""
    rs, cs, ce, lab, n = label(mask, connectivity)
    out = np.full(mask.shape, -1, dtype=np.int32)
    _paint(out, rs, cs, ce, lab)
    return out, n


def _paint(img: np.ndarray, rs, cs, ce, lab) -> None:
    """Write each run's label into a 2-D label image."""
    lengths = ce - cs
    total = int(lengths.sum())
    if not total:
        return
    first = rs * img.shape[1] + cs
    flat = np.repeat(first - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
    img.reshape(-1)[flat] = np.repeat(lab, lengths)


# ----------------------------------------------------------------------------------------------
# Pieces


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square, separable (shifted ORs)."""
    if r <= 0:
        return mask
    out = mask.copy()
    for k in range(1, r + 1):
        out[:, k:] |= mask[:, :-k]
        out[:, :-k] |= mask[:, k:]
    tmp = out.copy()
    for k in range(1, r + 1):
        out[k:, :] |= tmp[:-k, :]
        out[:-k, :] |= tmp[k:, :]
    return out


def _reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return np.asarray(rgb, dtype=np.float32)
    return np.asarray(Image.fromarray(rgb, "RGB").reduce(factor), dtype=np.float32)


def stain_map(small: np.ndarray, white: np.ndarray | None = None) -> np.ndarray:
    """The nucleus-stain map: white-balanced blue minus white-balanced green (``white``: the image's
    :func:`white_point`, if known)."""
    white = white_point(small) if white is None else white
    return small[..., 2] / white[2] - small[..., 1] / white[1]


def white_point(small: np.ndarray) -> np.ndarray:
    """Each channel's :data:`WHITE_PERCENTILE` th percentile (the bright background between the cells), at least 1."""
    return np.maximum(np.percentile(small.reshape(-1, 3), WHITE_PERCENTILE, axis=0), 1.0)


def default_cell_size(width: int, height: int) -> float:
    """The expected white-cell diameter in pixels when not given: :data:`CELL_FRACTION` of the shorter side."""
    return CELL_FRACTION * min(width, height)


# ----------------------------------------------------------------------------------------------
# The locator


def _work_image(rgb: np.ndarray, cell_size: float | None, reduce: bool = True) -> tuple[np.ndarray | None, int, float]:
    """The reduced copy the search works on (float32; None unless ``reduce``), the reduction factor and the cell size
    in the field's pixels; :class:`FieldTooFine` when the field cannot be reduced to what its cells need."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    cell = float(cell_size) if cell_size else default_cell_size(w, h)
    factor = max(1, int(round(min(cell, MAX_CELL_SIZE) / WORK_CELL)), int(np.ceil(np.sqrt(h * w / MAX_WORK_PIXELS))))
    if cell / factor < MIN_WORK_CELL:
        if factor > 1:  # the field had to be reduced below what its cells need
            raise FieldTooFine(
                f"white cells of {cell:g} px are too small to search for in a {w}x{h} field (it would take over "
                f"{MAX_WORK_PIXELS // 1_000_000} megapixels): crop the photo, or take it at a lower resolution"
            )
        if not cell_size:  # a tiny image: at the default size, its cells would be a few pixels across
            raise FieldTooFine(
                f"a {w}x{h} image is too small to be a field of view: its white cells would be {cell:g} px across "
                f"({CELL_FRACTION:g} of the shorter side), and the search needs {MIN_WORK_CELL}; for a single-cell image use edgecell classify"
            )
        raise FieldTooFine(f"white cells of {cell:g} px are too small to find (the search needs {MIN_WORK_CELL} px or more across); check --cell-size")
    return (_reduce(np.ascontiguousarray(rgb), factor) if reduce else None), factor, cell


def locate(rgb: np.ndarray, cell_size: float | None = None) -> list[Cell]:
    """The white cells of one field of view (``(H, W, 3)`` uint8 RGB), in raster order of their nuclei.

    Args:
        cell_size: expected white-cell diameter in this image's pixels (default
            :func:`default_cell_size`). The size rules are relative to it.

    A field with no white cell gives ``[]``.
    """
    return locate_with_frame(rgb, cell_size)[0]


def locate_with_frame(rgb: np.ndarray, cell_size: float | None) -> tuple[list[Cell], np.ndarray | None, int]:
    """:func:`locate`'s cells, the field's dark frame on the reduced copy (:func:`_frame`; None: none, or no cell
    found) and that copy's reduction factor."""
    rgb = np.asarray(rgb)
    small, factor, cell = _work_image(rgb, cell_size)
    h, w = rgb.shape[:2]
    sh, sw = small.shape[:2]
    if min(sh, sw) < 2:
        return [], None, factor
    cw = cell / factor  # cell diameter in reduced pixels
    white = white_point(small)
    s = stain_map(small, white)
    t = max(otsu_threshold(s, OTSU_BINS), float(np.median(s)) + MIN_CONTRAST)
    mask = s > t
    if not mask.any():
        return [], None, factor
    r = max(1, int(round(LOBE_GAP * cw / 2)))
    joined = _dilate(mask, r)
    rs, cs, ce, lab, n = label(joined)
    if n == 0:
        return [], None, factor
    cell_area = np.pi / 4 * cw * cw
    # Per-component statistics over the *undilated* nucleus pixels, computed on the mask's runs:
    # each run of the mask lies inside one run of the dilated mask, whose component it takes.
    mr, mc0, mc1 = _runs(mask)
    big = np.int64(1 << 20)
    joined_key = rs.astype(np.int64) * big + cs
    ids = lab[np.searchsorted(joined_key, mr.astype(np.int64) * big + mc0, side="right") - 1]
    lengths = mc1 - mc0
    area = np.bincount(ids, weights=lengths, minlength=n)
    row_sums = np.zeros((sh, sw + 1), dtype=np.float64)
    np.cumsum(s, axis=1, out=row_sums[:, 1:])
    ssum = np.bincount(ids, weights=row_sums[mr, mc1] - row_sums[mr, mc0], minlength=n)
    x0 = np.full(n, sw)
    y0 = np.full(n, sh)
    x1 = np.zeros(n, dtype=np.int64)
    y1 = np.zeros(n, dtype=np.int64)
    np.minimum.at(x0, ids, mc0)
    np.minimum.at(y0, ids, mr)
    np.maximum.at(x1, ids, mc1)
    np.maximum.at(y1, ids, mr + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_s = ssum / np.maximum(area, 1)
    min_area = MIN_NUCLEUS_AREA * cell_area
    keep = (area >= min_area) & (mean_s - t >= MIN_STAIN_EXCESS)
    cells: list[Cell] = []
    comp = None
    frame = _frame(small, white) if keep.any() else None
    near = None if frame is None else _dilate(frame, 1) & mask  # nucleus pixels next to an eyepiece's dark frame
    for k in np.nonzero(keep)[0].tolist():
        bx0, by0, bx1, by1 = int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])
        if comp is None and (near is not None or max(bx1 - bx0, by1 - by0) > SPLIT_EXTENT * cw):
            comp = np.full((sh, sw), -1, dtype=np.int32)
            _paint(comp, rs, cs, ce, lab)
        own = None if comp is None else (comp[by0:by1, bx0:bx1] == k) & mask[by0:by1, bx0:bx1]
        framed = near is not None and bool((near[by0:by1, bx0:bx1] & own).any())
        boxes = [((bx0, by0, bx1, by1), float(mean_s[k] - t), framed)]
        if max(bx1 - bx0, by1 - by0) > SPLIT_EXTENT * cw:
            pieces = split_component(own, min_area)
            if pieces:
                sub_s = s[by0:by1, bx0:bx1]
                boxes = []
                for ys_, xs_ in pieces:
                    box = (bx0 + int(xs_.min()), by0 + int(ys_.min()), bx0 + int(xs_.max()) + 1, by0 + int(ys_.max()) + 1)
                    boxes.append((box, float(sub_s[ys_, xs_].mean() - t), near is not None and bool(near[by0 + ys_, bx0 + xs_].any())))
        for nuc, excess, framed in boxes:
            cells.append(_make_cell(nuc, excess, factor, cw, sw, sh, w, h, framed))
    return cells, frame, factor


def _frame(small: np.ndarray, white: np.ndarray) -> np.ndarray | None:
    """The dark frame around a photo taken through an eyepiece (pixels under :data:`FRAME_DARK` of the ``white`` in
    every channel, joined to the image's border, at least :data:`MIN_FRAME_SHARE` of it) on a reduced copy, or None."""
    dark = (small < FRAME_DARK * white).all(axis=2)
    if dark.mean() < MIN_FRAME_SHARE:
        return None
    parts, _ = label_image(dark)
    border = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
    frame = np.isin(parts, border[border >= 0])
    return frame if frame.mean() >= MIN_FRAME_SHARE else None


def dark_frame(rgb: np.ndarray, cell_size: float | None = None) -> np.ndarray | None:
    """The field's dark eyepiece frame (:func:`_frame`) at its own size (``(H, W)`` bool), with one reduced pixel
    around it (its blurred rim), or None when the field has no dark frame."""
    rgb = np.asarray(rgb)
    small, factor, _ = _work_image(rgb, cell_size)
    return frame_at(_frame(small, white_point(small)), factor, rgb.shape[:2])


def frame_at(frame: np.ndarray | None, factor: int, shape: tuple[int, int]) -> np.ndarray | None:
    """A frame found on a copy reduced ``factor`` times, with one reduced pixel of rim, at the field's ``shape``."""
    if frame is None:
        return None
    h, w = shape[:2]
    return np.repeat(np.repeat(_dilate(frame, 1), factor, axis=0), factor, axis=1)[:h, :w]


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 cross (pixels outside the array count as background)."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def _pieces(lab: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[np.nonzero(lab == i) for i in range(k)]`` (the same arrays, in the same order) in one sort, not k passes
    over the image: a noise-like field can hold thousands of pieces."""
    flat = lab.ravel()
    idx = np.nonzero(flat >= 0)[0]
    idx = idx[np.argsort(flat[idx], kind="stable")]  # by piece, and within a piece in row-major order
    bounds = np.cumsum(np.bincount(flat[idx], minlength=k))[:-1]
    return [tuple(np.divmod(chunk, lab.shape[1])) for chunk in np.split(idx, bounds)]


def split_component(mask: np.ndarray, min_area: float) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Split one component (a 2-D bool mask) into touching nuclei, or None when it is one.

    Erodes up to :data:`MAX_ERODE` times; at the first erosion that leaves two or more pieces of
    at least 1/8 of ``min_area`` pixels, those pieces are seeds, grown back one pixel per step
    inside ``mask`` (each pixel goes to the seed that reaches it first: a watershed on the
    distance to the background). Returns ``(ys, xs)`` per piece when every piece has at least
    ``min_area`` pixels, else None.
    """
    m = mask
    for _ in range(MAX_ERODE):
        m = _erode(m)
        if not m.any():
            return None
        seeds, n = label_image(m)
        if n < 2:
            continue
        sizes = np.bincount(seeds[seeds >= 0], minlength=n)
        big = np.nonzero(sizes >= min_area / 8)[0]
        if big.size < 2:
            continue
        remap = np.full(n, -1, dtype=np.int32)
        remap[big] = np.arange(big.size, dtype=np.int32)
        lab = np.where(seeds >= 0, remap[np.maximum(seeds, 0)], -1).astype(np.int32)  # one pass, however many pieces
        while True:  # grow the seeds inside the mask, 4-connected, one pixel per step
            free = mask & (lab < 0)
            if not free.any():
                break
            grown = lab.copy()
            for src, dst in (
                ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
            ):
                take = free[dst] & (grown[dst] < 0) & (lab[src] >= 0)
                grown[dst][take] = lab[src][take]
            if np.array_equal(grown, lab):
                break  # pixels no seed can reach (cut off by the erosion's order): left out
            lab = grown
        pieces = _pieces(lab, big.size)
        if all(p[0].size >= min_area for p in pieces) and _apart(pieces):
            return pieces
        return None
    return None


def _apart(pieces) -> bool:
    """No two pieces' bounding boxes overlap by more than :data:`MAX_SPLIT_OVERLAP` of the smaller."""
    boxes = [(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) for ys, xs in pieces]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if inter > MAX_SPLIT_OVERLAP * smaller:
                return False
    return True


# ----------------------------------------------------------------------------------------------
# The red-cell ruler


def red_cell_size(rgb: np.ndarray, cell_size: float | None = None) -> float | None:
    """How large the field's red cells are, in its pixels, or None when it has none to measure.

    Red cells are about the same size in every lab's smear (7-8 micrometres), so they show the magnification where
    the nuclei cannot (:func:`size_warning`). On a reduced copy of the field (as :func:`locate`'s, at most
    :data:`MAX_RULER_PIXELS`): the pixels that absorb green but not red (red cells; not a black frame) by Otsu's
    threshold of the white-balanced green channel, their pale centres and the gaps between touching ones filled
    (enclosed background up to :data:`PALE_CENTRE` of a cell's area); each pixel's distance to the background
    (erosions by a cross and a square in turn, so an octagon); and twice :data:`RED_CELL_PERCENTILE` of that
    distance's local maxima (the centres of round things, and points along the ridges of touching ones), leaving out
    those the field's edge cuts, in the field's pixels. A ruler, not a count: compared with ``cell_size`` through
    :data:`TYPICAL_RED_CELL`.

    A measure is repeated (at most :data:`RULER_TRIES` times in all) on another copy when the first cannot be read
    well: red cells far smaller than ``cell_size`` implies are a few reduced pixels across, where the distance is
    coarse (measured again for the size they imply); red cells deeper than :data:`RULER_DEPTH` erosions (a
    ``cell_size`` far too small) on a copy reduced :data:`RULER_STEP` times more. None when under
    :data:`MIN_RED_SHARE` of the field is red, or over :data:`MAX_RED_SHARE` once filled (no red cells, or a field
    packed with them, where nothing is round).
    """
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    cell = _work_image(rgb, cell_size, reduce=False)[2]
    refined = False
    for _ in range(RULER_TRIES):
        factor = max(1, int(round(min(cell, MAX_CELL_SIZE) / WORK_CELL)), int(np.ceil(np.sqrt(h * w / MAX_RULER_PIXELS))))
        size, deeper = _red_cell_size(_reduce(np.ascontiguousarray(rgb), factor), factor, cell / factor)
        if deeper:
            cell *= RULER_STEP
        elif size is not None and not refined and factor > 1 and size < RED_CELL_RANGE[0] * TYPICAL_RED_CELL * cell:
            cell, refined = max(size / TYPICAL_RED_CELL, MIN_CELL_SIZE), True
        else:
            return size
    return None


AUTO = "auto"
"""``cell_size`` (``scan --cell-size auto``) that asks :func:`measured_cell_size` for each field's."""


def measured_cell_size(rgb: np.ndarray) -> float | None:
    """The white-cell diameter a field's red cells imply (:func:`red_cell_size` over :data:`TYPICAL_RED_CELL`, within
    :data:`MIN_CELL_SIZE`-:data:`MAX_CELL_SIZE`), or None when they cannot be measured (use the default)."""
    red = red_cell_size(rgb)
    return None if red is None else min(max(red / TYPICAL_RED_CELL, MIN_CELL_SIZE), MAX_CELL_SIZE)


def _red_cell_size(small: np.ndarray, factor: int, cw: float) -> tuple[float | None, bool]:
    """:func:`red_cell_size` on one reduced copy (``factor``: its reduction; ``cw``: the cell size in its pixels), and
    whether the red cells are deeper than :data:`RULER_DEPTH` erosions (not measured)."""
    if min(small.shape[:2]) < 3:
        return None, False
    white = white_point(small)
    g = small[..., 1] / white[1]
    lit = small[..., 0] > DARK * white[0]
    if not lit.any():
        return None, False
    red = (g < otsu_threshold(g[lit], OTSU_BINS)) & lit
    if red.mean() < MIN_RED_SHARE:
        return None, False
    background, n = label_image(~red, connectivity=4)
    if n:
        area = np.bincount(background[background >= 0], minlength=n)
        fill = area <= PALE_CENTRE * np.pi / 4 * cw * cw
        edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        fill[edges[edges >= 0]] = False  # background the border reaches (-1: red pixels)
        red |= (background >= 0) & fill[np.maximum(background, 0)]
    if red.mean() > MAX_RED_SHARE:
        return None, False
    blobs, n = label_image(red)
    cut = np.unique(np.concatenate([blobs[0], blobs[-1], blobs[:, 0], blobs[:, -1]]))
    if n - np.count_nonzero(cut >= 0) < MIN_WHOLE_RED:
        return None, False
    depth = np.zeros(red.shape, dtype=np.int32)
    inside = red
    for k in range(RULER_DEPTH):
        if not inside.any():
            break
        depth += inside
        inside = _erode(inside) if k % 2 == 0 else _erode_square(inside)
    if inside.any():
        return None, True
    hh, ww = depth.shape
    frame = np.minimum.outer(np.minimum(np.arange(1, hh + 1), np.arange(hh, 0, -1)), np.minimum(np.arange(1, ww + 1), np.arange(ww, 0, -1)))
    padded = np.pad(depth, 1)
    around = depth.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            np.maximum(around, padded[dy : dy + hh, dx : dx + ww], out=around)
    peaks = depth[(depth == around) & (depth >= 2) & (depth < frame)]  # at the frame: a red cell the edge cuts
    if peaks.size == 0:
        return None, False
    return float(2 * np.percentile(peaks, RED_CELL_PERCENTILE) * factor), False


def _erode_square(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 square (pixels outside the array count as background)."""
    out = _erode(mask)
    out[1:, 1:] &= mask[:-1, :-1]
    out[1:, :-1] &= mask[:-1, 1:]
    out[:-1, 1:] &= mask[1:, :-1]
    out[:-1, :-1] &= mask[1:, 1:]
    return out


def _make_cell(nuc, stain, factor, cw, sw, sh, w, h, framed: bool = False) -> Cell:
    x0, y0, x1, y1 = nuc
    edge = framed or x0 <= 0 or y0 <= 0 or x1 >= sw or y1 >= sh
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w = max((x1 - x0) * (0.5 + GROW), MIN_BOX * cw / 2)
    half_h = max((y1 - y0) * (0.5 + GROW), MIN_BOX * cw / 2)

    def clip(v, hi):
        return int(min(max(round(v), 0), hi))

    box = (clip((cx - half_w) * factor, w), clip((cy - half_h) * factor, h), clip((cx + half_w) * factor, w), clip((cy + half_h) * factor, h))
    nbox = (clip(x0 * factor, w), clip(y0 * factor, h), clip(x1 * factor, w), clip(y1 * factor, h))
    return Cell(box=box, edge=bool(edge), nucleus=nbox, stain=stain)
