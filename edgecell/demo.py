"""A synthetic blood-cell data set, so the pipeline can be tried on a machine with no real images.

``edgecell demo-data OUT`` calls :func:`generate`, which writes the Kaggle layout::

    OUT/DEMO.md
    OUT/basophil/basophil_00000.jpg
    OUT/basophil/basophil_00001.jpg
    ...
    OUT/seg_neutrophil/seg_neutrophil_00149.jpg
    OUT/lymphocyte/lymphocyte_00000.jpg      (and eosinophil/: taught as ``other``)

Each image is one white cell in the middle of a field of red cells, drawn with numpy and Pillow
(no TensorFlow, no scipy). The classes differ by **morphology**:

* ``seg_neutrophil``: medium cell, pale lilac cytoplasm with fine granules, nucleus of 3-5 dark
  lobes joined by thin strands;
* ``myeloblast``: large cell, round/oval nucleus filling most of it, fine smooth chromatin,
  1-3 paler nucleoli, thin blue rim of cytoplasm;
* ``monocyte``: large cell, kidney- or horseshoe-shaped nucleus (a disc with an off-centre
  bite), grey-blue cytoplasm, sometimes a few vacuoles;
* ``basophil``: medium cell covered with coarse dark granules that hide the nucleus;
* ``erythroblast``: small cell, small, very dense round nucleus, blue-grey to pinkish cytoplasm.

Two more cell types, which are not one of the five (:data:`OTHER_CELL_TYPES`), get class folders
of their own that ``edgecell train`` teaches as ``other`` (``--no-others`` leaves them out):

* ``lymphocyte``: small round cell (about a red cell's size), a round, dense, dark nucleus
  filling most of it, a thin rim of pale blue cytoplasm;
* ``eosinophil``: medium cell, nucleus of two lobes, cytoplasm packed with coarse orange-red
  granules.

With ``--objects DIR``, non-cell images (:data:`OBJECT_KINDS`: a blank background crop, a field
of red cells only, a random pattern that is not blood) go to DIR, outside OUT, for the
never-seen check: training never reads them.

Every class then gets the same nuisance variation, drawn from the same distributions: stain hue
rotation and saturation, stain strength, background tint and exposure, magnification (+-15%),
rotation, position jitter, Gaussian blur (0-1.2 px), pixel noise and JPEG (quality 90). So colour
alone says little about the class; shape and texture say it all.

Images are reproducible: image ``i`` of class ``c`` is drawn from its own
``np.random.default_rng([seed, c, i])`` (``c`` is 0-4 for the five, 100+ for the other cell
types, 200+ for the non-cell kinds), so the same seed gives byte-identical files whatever
order (or subset) they are drawn in. This is a toy: accuracy on it says nothing about real cells.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgecell import CLASSES
from firmware_host.atomic import write_bytes, write_text
from firmware_host.errors import EdgecellError, os_reason, read_regular

JPEG_QUALITY = 90
MARKER = "DEMO.md"
DATA_TITLE = "# Synthetic demo data (not real blood cells)"
OBJECTS_TITLE = "# Synthetic non-cell images (the never-seen check)"
"""The first line of the :data:`MARKER` of a demo set and of a folder of non-cell images: a folder is taken for an
earlier one (and written over) only when its marker says it is that kind (a person's own DEMO.md, or a demo set
given as ``--objects``, was written over)."""
"""The file that marks a folder as a demo set (which :func:`generate` may overwrite)."""
MIN_SIZE = 32

# Optical densities (R, G, B) of the stains: a pixel is background * exp(-sum(density * colour)).
_OD_RBC = np.array([0.05, 0.50, 0.36], np.float32)  # pink
_OD_NUCLEUS = np.array([0.95, 1.45, 0.55], np.float32)  # dark purple
_OD_PLATELET = np.array([0.70, 1.00, 0.40], np.float32)
_OD_CYTO = {
    "seg_neutrophil": np.array([0.08, 0.22, 0.09], np.float32),  # pale pink/lilac
    "myeloblast": np.array([0.55, 0.38, 0.12], np.float32),  # blue
    "monocyte": np.array([0.36, 0.34, 0.17], np.float32),  # grey-blue
    "basophil": np.array([0.14, 0.24, 0.09], np.float32),  # lilac, mostly hidden by granules
    "lymphocyte": np.array([0.40, 0.24, 0.07], np.float32),  # pale sky blue
    "eosinophil": np.array([0.10, 0.26, 0.16], np.float32),  # pale pink, mostly hidden by granules
}
_OD_ERY_BLUE = np.array([0.42, 0.38, 0.20], np.float32)  # blue-grey ...
_OD_ERY_PINK = np.array([0.10, 0.42, 0.28], np.float32)  # ... to pinkish
_OD_NEUTRO_GRANULE = np.array([0.22, 0.38, 0.14], np.float32)
_OD_BASO_GRANULE = np.array([1.45, 1.85, 0.95], np.float32)  # purple-black
_OD_EOSIN_GRANULE = np.array([0.06, 0.62, 0.95], np.float32)  # orange-red (eosin)

# Cell radius as a fraction of the image side, before the +-15% magnification.
_RADIUS = {
    "erythroblast": 0.155,
    "seg_neutrophil": 0.235,
    "basophil": 0.225,
    "monocyte": 0.295,
    "myeloblast": 0.285,
    "lymphocyte": 0.13,
    "eosinophil": 0.25,
}
_RBC_RADIUS = 0.105

OTHER_CELL_TYPES = ("eosinophil", "lymphocyte")
"""Cell types that are not one of the five, drawn into class folders of the same name, which
``edgecell train`` teaches as the class ``other`` (see ``edgecell.data.OTHER_TYPES``)."""
OBJECT_KINDS = ("background", "red_cells", "pattern")
"""Non-cell images for the never-seen check: a blank background crop, a field of red cells
only (one in the middle), a random pattern that is not blood at all."""
_RNG_OTHER = 100  # image_rng class index of OTHER_CELL_TYPES[0]; the five use 0-4
_RNG_OBJECT = 200  # ... and of OBJECT_KINDS[0]


@dataclass
class DemoSummary:
    """What :func:`generate` wrote.

    Attributes:
        out_dir: the data folder (one sub-folder per class, plus ``DEMO.md``).
        per_class: images drawn per class (and per kind of non-cell image).
        seed: the seed; the same seed gives byte-identical images.
        size: image side in pixels (images are square, RGB JPEG).
        counts: images per class folder: :data:`edgecell.CLASSES`, then :data:`OTHER_CELL_TYPES`
            (taught as ``other``) unless they were left out.
        objects_dir: the folder of non-cell images, or None when none were asked for.
        objects: non-cell images per kind (:data:`OBJECT_KINDS`).
    """

    out_dir: Path
    per_class: int
    seed: int
    size: int
    counts: dict[str, int] = field(default_factory=dict)
    objects_dir: Path | None = None
    objects: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Images written, all class folders and non-cell images together."""
        return sum(self.counts.values()) + sum(self.objects.values())

    def to_dict(self) -> dict:
        """A JSON-ready dict (paths as strings)."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["objects_dir"] = None if self.objects_dir is None else str(self.objects_dir)
        d["other_types"] = [c for c in OTHER_CELL_TYPES if c in self.counts]
        d["total"] = self.total
        d["synthetic"] = True
        return d


# --------------------------------------------------------------------------------------------
# drawing helpers (numpy, vectorised over the whole image or the cell's window)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :], c[:, None]  # x (1, W), y (H, 1)


def _edge(signed: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (positive inside)."""
    return np.clip(signed + 0.5, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, angle=0.0) -> np.ndarray:
    """Soft mask of an ellipse with semi-axes a, b (pixels) rotated by ``angle``."""
    cx, cy, a, b = float(cx), float(cy), float(a), float(b)  # python floats keep arrays float32
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u = (dx * ca + dy * sa) / a
    v = (-dx * sa + dy * ca) / b
    r = np.sqrt(u * u + v * v)
    return _edge((1.0 - r) * min(a, b))


def _capsule(x, y, p, q, half_width) -> np.ndarray:
    """Soft mask of a thick line segment from p to q."""
    px, py = float(p[0]), float(p[1])
    qx, qy = float(q[0]), float(q[1])
    half_width = float(half_width)
    vx, vy = qx - px, qy - py
    length2 = vx * vx + vy * vy + 1e-6
    t = np.clip(((x - px) * vx + (y - py) * vy) / length2, 0.0, 1.0)
    dx = x - (px + t * vx)
    dy = y - (py + t * vy)
    return _edge(half_width - np.sqrt(dx * dx + dy * dy))


def _noise(rng: np.random.Generator, shape: tuple[int, int], feature: float) -> np.ndarray:
    """Smooth random field of about unit spread, with blobs about ``feature`` pixels wide."""
    h, w = shape
    gh, gw = (max(2, int(math.ceil(n / max(feature, 1.0))) + 1) for n in (h, w))
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Fine per-pixel noise, blurred by ``radius`` pixels and scaled to about unit spread."""
    out = _blur(rng.standard_normal(shape).astype(np.float32), max(0.5, radius))
    return out / (out.std() + 1e-6)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array (edges reflected); for small sigmas."""
    k = max(1, int(math.ceil(2.5 * sigma)))
    w = np.exp(-0.5 * (np.arange(-k, k + 1, dtype=np.float32) / sigma) ** 2)
    w /= w.sum()
    p = np.pad(a, k, mode="reflect")
    h, wd = a.shape
    rows = sum(w[i] * p[:, i : i + wd] for i in range(2 * k + 1))
    return sum(w[i] * rows[i : i + h, :] for i in range(2 * k + 1))


def _in_disc(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """``n`` points uniform in a disc of ``radius`` around the origin, shape (n, 2)."""
    r = radius * np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * math.pi
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _hue_saturation_matrix(angle: float, saturation: float) -> np.ndarray:
    """3x3 RGB matrix: rotate hue by ``angle`` (radians) about the grey axis, scale chroma."""
    c, s = math.cos(angle), math.sin(angle)
    k = (1.0 - c) / 3.0
    r3 = math.sqrt(1.0 / 3.0) * s
    hue = np.array([[c + k, k - r3, k + r3], [k + r3, c + k, k - r3], [k - r3, k + r3, c + k]], np.float32)
    grey = np.full((3, 3), 1.0 / 3.0, np.float32)
    sat = saturation * np.eye(3, dtype=np.float32) + (1.0 - saturation) * grey
    return sat @ hue


class _Cell:
    """The white cell's frame (centre, radius, rotation; pixels) and the window it is drawn in.

    All maps of the white cell cover only its window (its bounding box, clipped to the image),
    which keeps drawing cheap; positions given to :meth:`at` and :meth:`ellipse` are in cell
    radii, in the cell's rotated frame.
    """

    def __init__(self, size: int, cx: float, cy: float, radius: float, angle: float):
        self.cx, self.cy, self.r, self.angle = float(cx), float(cy), float(radius), float(angle)
        self._c, self._s = math.cos(self.angle), math.sin(self.angle)
        reach = 1.2 * self.r + 3
        self.x0, self.x1 = max(0, int(self.cx - reach)), min(size, int(math.ceil(self.cx + reach)))
        self.y0, self.y1 = max(0, int(self.cy - reach)), min(size, int(math.ceil(self.cy + reach)))
        x, y = _grid(size)
        self.x, self.y = x[:, self.x0 : self.x1], y[self.y0 : self.y1, :]
        self.shape = (self.y1 - self.y0, self.x1 - self.x0)
        self.window = (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def at(self, u: float, v: float) -> tuple[float, float]:
        """Image position of the cell-frame point (u, v), given in cell radii."""
        u, v = float(u) * self.r, float(v) * self.r
        return self.cx + u * self._c - v * self._s, self.cy + u * self._s + v * self._c

    def ellipse(self, u, v, a, b, angle=0.0) -> np.ndarray:
        """Soft ellipse at cell-frame (u, v) with semi-axes a, b in cell radii."""
        cx, cy = self.at(u, v)
        return _ellipse(self.x, self.y, cx, cy, a * self.r, b * self.r, self.angle + angle)

    def blob(self, u, v, radius) -> np.ndarray:
        """Gaussian spot (peak 1) at cell-frame (u, v), ``radius`` in cell radii."""
        cx, cy = self.at(u, v)
        rr = float(radius) * self.r
        return np.exp(-((self.x - cx) ** 2 + (self.y - cy) ** 2) / (rr * rr))

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, np.float32)

    def noise(self, rng, feature: float) -> np.ndarray:
        """Smooth noise with blobs ``feature`` cell radii wide."""
        return _noise(rng, self.shape, feature * self.r)

    def speckle(self, rng, radius: float) -> np.ndarray:
        """Fine noise blurred by ``radius`` cell radii (at least half a pixel)."""
        return _speckle(rng, self.shape, radius * self.r)

    def dots(self, centres, radii, values) -> np.ndarray:
        """Round granules (cell-frame centres and radii, in cell radii) drawn with ImageDraw,
        supersampled 2x, as a 0-1 density; ``values`` are 0-255 darknesses."""
        s = 2
        h, w = self.shape
        canvas = Image.new("L", (w * s, h * s), 0)
        draw = ImageDraw.Draw(canvas)
        for (u, v), r, val in zip(centres, radii, values):
            cx, cy = self.at(u, v)
            cx, cy, r = (cx - self.x0) * s, (cy - self.y0) * s, float(r) * self.r * s
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(val))
        canvas = canvas.resize((w, h), Image.Resampling.BOX)
        return np.asarray(canvas, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# the five nuclei / cell bodies; each returns a list of (density map, OD colour) layers


def _outline(rng, cell: _Cell) -> np.ndarray:
    """The cell body: a slightly oval, slightly wobbly disc."""
    dx, dy = cell.x - cell.cx, cell.y - cell.cy
    d = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    wobble = 1.0 + rng.uniform(0.0, 0.07) * np.cos(2 * (theta - rng.uniform(0, math.pi)))
    for k in (3, 4, 5):
        wobble = wobble + rng.uniform(0.0, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    return _edge(cell.r * wobble - d)


def _neutrophil(rng, cell: _Cell, body):
    cyto = body * (0.8 + 0.1 * cell.noise(rng, 0.9))
    granules = np.clip(cell.speckle(rng, 0.02) - 0.5, 0.0, None) * body * 0.35
    layers = [(cyto, _OD_CYTO["seg_neutrophil"]), (granules, _OD_NEUTRO_GRANULE)]
    n = int(rng.integers(3, 6))
    # lobe centres along a curved path (an arc around a point near the centre)
    rho = rng.uniform(0.40, 0.50)
    span = rng.uniform(3.2, 4.6) if n >= 4 else rng.uniform(2.4, 3.6)
    start = rng.uniform(0, 2 * math.pi)
    ou, ov = rng.uniform(-0.08, 0.08, 2)
    centres, lobes = [], cell.zeros()
    for i in range(n):
        t = start + span * (i / (n - 1)) + rng.uniform(-0.15, 0.15)
        r = rho + rng.uniform(-0.06, 0.06)
        u, v = ou + r * math.cos(t), ov + r * math.sin(t)
        centres.append(cell.at(u, v))
        a = rng.uniform(0.17, 0.23) * (1.1 if n == 3 else 1.0)
        lobes = np.maximum(lobes, cell.ellipse(u, v, a, a * rng.uniform(0.7, 0.95), rng.uniform(0, math.pi)))
    for p, q in zip(centres[:-1], centres[1:]):
        lobes = np.maximum(lobes, _capsule(cell.x, cell.y, p, q, max(0.75, cell.r * rng.uniform(0.035, 0.05))))
    chromatin = 0.85 + 0.12 * cell.noise(rng, 0.2) + 0.05 * cell.speckle(rng, 0.027)
    layers.append((lobes * body * chromatin, _OD_NUCLEUS))
    return layers


def _myeloblast(rng, cell: _Cell, body):
    cyto = body * (0.85 + 0.08 * cell.noise(rng, 0.9))
    a = rng.uniform(0.76, 0.86)
    b = a * rng.uniform(0.85, 1.0)
    nu, nv = rng.uniform(-0.06, 0.06, 2)
    nucleus = cell.ellipse(nu, nv, a, b, rng.uniform(0, math.pi)) * body
    chromatin = 0.72 + 0.07 * cell.speckle(rng, 0.02) + 0.03 * cell.noise(rng, 0.6)
    for _ in range(int(rng.integers(1, 4))):  # nucleoli: paler spots
        pu, pv = _in_disc(rng, 1, 0.5 * b)[0]
        chromatin = chromatin - 0.4 * cell.blob(nu + pu, nv + pv, rng.uniform(0.12, 0.2) * a)
    return [(cyto, _OD_CYTO["myeloblast"]), (nucleus * chromatin, _OD_NUCLEUS)]


def _monocyte(rng, cell: _Cell, body):
    cyto = body * (0.8 + 0.1 * cell.noise(rng, 0.7))
    phi = rng.uniform(0, 2 * math.pi)
    rn = rng.uniform(0.58, 0.68)
    shift = rng.uniform(0.08, 0.16)
    nu, nv = shift * math.cos(phi), shift * math.sin(phi)
    disc = cell.ellipse(nu, nv, rn, rn * rng.uniform(0.85, 1.0), phi)
    # the bite: a disc centred near the nucleus rim, on the side away from the cell centre
    horseshoe = rng.random() < 0.4
    k = rng.uniform(0.55, 0.75) if horseshoe else rng.uniform(0.8, 1.0)
    rb = rn * (rng.uniform(0.55, 0.72) if horseshoe else rng.uniform(0.5, 0.65))
    bite_dir = phi + math.pi + rng.uniform(-0.5, 0.5)
    bite = cell.ellipse(nu + k * rn * math.cos(bite_dir), nv + k * rn * math.sin(bite_dir), rb, rb, 0.0)
    nucleus = disc * (1.0 - bite) * body
    chromatin = 0.72 + 0.12 * cell.noise(rng, 0.22) + 0.05 * cell.speckle(rng, 0.022)
    layers = [(cyto, _OD_CYTO["monocyte"]), (nucleus * chromatin, _OD_NUCLEUS)]
    if rng.random() < 0.6:  # vacuoles: clear holes in the cytoplasm
        holes = cell.zeros()
        for _ in range(int(rng.integers(2, 7))):
            pu, pv = _in_disc(rng, 1, 0.85)[0]
            rr = rng.uniform(0.04, 0.08)
            holes = np.maximum(holes, cell.ellipse(pu, pv, rr, rr, 0.0))
        layers[0] = (cyto * (1.0 - 0.75 * holes * (1.0 - nucleus)), _OD_CYTO["monocyte"])
    return layers


def _basophil(rng, cell: _Cell, body):
    cyto = body * (0.8 + 0.1 * cell.noise(rng, 0.9))
    # a faint, irregular nucleus underneath the granules
    nucleus = cell.zeros()
    for _ in range(int(rng.integers(2, 4))):
        pu, pv = _in_disc(rng, 1, 0.3)[0]
        a = rng.uniform(0.3, 0.42)
        nucleus = np.maximum(nucleus, cell.ellipse(pu, pv, a, a * rng.uniform(0.6, 0.9), rng.uniform(0, math.pi)))
    n = int(rng.integers(70, 130))
    granules = cell.dots(_in_disc(rng, n, 0.97), rng.uniform(0.05, 0.095, n), rng.uniform(170, 255, n))
    return [(cyto, _OD_CYTO["basophil"]), (nucleus * body * 0.45, _OD_NUCLEUS), (granules, _OD_BASO_GRANULE)]


def _erythroblast(rng, cell: _Cell, body):
    t = rng.random()
    colour = (1 - t) * _OD_ERY_BLUE + t * _OD_ERY_PINK
    cyto = body * (0.85 + 0.06 * cell.noise(rng, 1.2))
    nu, nv = _in_disc(rng, 1, 0.15)[0]
    a = rng.uniform(0.44, 0.56)
    nucleus = cell.ellipse(nu, nv, a, a * rng.uniform(0.88, 1.0), rng.uniform(0, math.pi)) * body
    chromatin = 1.25 + 0.05 * cell.speckle(rng, 0.05)
    return [(cyto, colour), (nucleus * chromatin, _OD_NUCLEUS)]


def _lymphocyte(rng, cell: _Cell, body):
    cyto = body * (0.85 + 0.08 * cell.noise(rng, 0.9))
    a = rng.uniform(0.76, 0.88)  # a round nucleus filling most of the cell ...
    b = a * rng.uniform(0.88, 1.0)
    nu, nv = _in_disc(rng, 1, 0.1)[0]  # ... a little off-centre, leaving a thin rim of cytoplasm
    nucleus = cell.ellipse(nu, nv, a, b, rng.uniform(0, math.pi))
    if rng.random() < 0.3:  # sometimes a shallow notch
        phi = rng.uniform(0, 2 * math.pi)
        rr = rng.uniform(0.2, 0.3)
        nucleus = nucleus * (1.0 - cell.ellipse(nu + (a + 0.6 * rr) * math.cos(phi), nv + (a + 0.6 * rr) * math.sin(phi), rr, rr))
    chromatin = 1.15 + 0.12 * cell.noise(rng, 0.25) + 0.06 * cell.speckle(rng, 0.04)  # dense, clumped
    return [(cyto, _OD_CYTO["lymphocyte"]), (nucleus * body * chromatin, _OD_NUCLEUS)]


def _eosinophil(rng, cell: _Cell, body):
    cyto = body * (0.8 + 0.1 * cell.noise(rng, 0.9))
    # two lobes ("spectacles") joined by a strand
    t = rng.uniform(0, 2 * math.pi)
    d = rng.uniform(0.28, 0.38)
    lobes, centres = cell.zeros(), []
    for side in (1.0, -1.0):
        u = side * d * math.cos(t) + rng.uniform(-0.05, 0.05)
        v = side * d * math.sin(t) + rng.uniform(-0.05, 0.05)
        a = rng.uniform(0.22, 0.3)
        lobes = np.maximum(lobes, cell.ellipse(u, v, a, a * rng.uniform(0.7, 0.95), rng.uniform(0, math.pi)))
        centres.append(cell.at(u, v))
    lobes = np.maximum(lobes, _capsule(cell.x, cell.y, centres[0], centres[1], max(0.75, cell.r * rng.uniform(0.04, 0.06))))
    chromatin = 0.8 + 0.1 * cell.noise(rng, 0.2) + 0.05 * cell.speckle(rng, 0.027)
    # cytoplasm packed with coarse, even, orange-red granules
    n = int(rng.integers(140, 190))
    granules = cell.dots(_in_disc(rng, n, 0.95), rng.uniform(0.06, 0.08, n), rng.uniform(150, 220, n))
    return [(cyto, _OD_CYTO["eosinophil"]), (granules * body, _OD_EOSIN_GRANULE), (lobes * body * chromatin, _OD_NUCLEUS)]


_DRAW = {
    "basophil": _basophil,
    "eosinophil": _eosinophil,
    "lymphocyte": _lymphocyte,
    "erythroblast": _erythroblast,
    "monocyte": _monocyte,
    "myeloblast": _myeloblast,
    "seg_neutrophil": _neutrophil,
}


def _red_cells(rng, x, y, size: int, scale: float, count: tuple[int, int] = (3, 13), centred: bool = False) -> np.ndarray:
    """Optical density of red cells (pink discs, paler centres), some cut by the frame.

    ``count``: the range (low inclusive, high exclusive) of their number; ``centred`` puts the
    first one near the middle of the image.
    """
    density = np.zeros((size, size), np.float32)
    for k in range(int(rng.integers(*count))):
        cx, cy = (float(c) for c in rng.uniform(-0.12, 1.12, 2) * size)
        if centred and k == 0:
            cx, cy = (float(c) for c in size * (0.5 + rng.uniform(-0.07, 0.07, 2)))
        r = _RBC_RADIUS * size * scale * rng.uniform(0.85, 1.15)
        e = rng.uniform(0.85, 1.0)
        ang = rng.uniform(0, math.pi)
        pallor_depth, pallor_width, base = rng.uniform(0.5, 0.75), rng.uniform(0.45, 0.6), rng.uniform(0.8, 1.0)
        # work only in the disc's bounding box
        x0, x1 = max(0, int(cx - r - 2)), min(size, int(cx + r + 3))
        y0, y1 = max(0, int(cy - r - 2)), min(size, int(cy + r + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        ca, sa = math.cos(ang), math.sin(ang)
        dx, dy = x[:, x0:x1] - cx, y[y0:y1, :] - cy
        u = (dx * ca + dy * sa) / r
        v = (-dx * sa + dy * ca) / (r * e)
        d2 = u * u + v * v
        disc = _edge((1.0 - np.sqrt(d2)) * r)
        pallor = pallor_depth * np.exp(-((d2 / (pallor_width * pallor_width)) ** 2))
        density[y0:y1, x0:x1] += disc * (base + 0.15 * d2 - pallor)
    return density


def _platelets(rng, x, y, size: int, scale: float) -> np.ndarray:
    """Optical density (H, W, 3) of a few platelets, in about a third of the fields."""
    od = np.zeros((size, size, 3), np.float32)
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 4))):
            px, py = (float(c) for c in rng.uniform(0, size, 2))
            pr = size * scale * rng.uniform(0.012, 0.022)
            od += _ellipse(x, y, px, py, pr, pr * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))[..., None] * _OD_PLATELET
    return od


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")


def draw_cell(cls: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one synthetic smear image of a white cell of type ``cls``.

    ``cls`` is one of :data:`edgecell.CLASSES` or :data:`OTHER_CELL_TYPES`. ``rng`` supplies
    every random choice, so the same generator state gives the same image. Returns an RGB image
    of ``size`` x ``size`` pixels (before JPEG compression).
    """
    if cls not in _DRAW:
        raise ValueError(f"unknown class {cls!r}; expected one of {', '.join((*CLASSES, *OTHER_CELL_TYPES))}")
    _check_size(size)
    x, y = _grid(size)
    scale = rng.uniform(0.85, 1.15)  # magnification: applies to every cell in the field
    cx, cy = (float(c) for c in size * (0.5 + rng.uniform(-0.07, 0.07, 2)))
    cell = _Cell(size, cx, cy, _RADIUS[cls] * size * scale, rng.uniform(0, 2 * math.pi))

    od = _red_cells(rng, x, y, size, scale)[..., None] * _OD_RBC
    od += _platelets(rng, x, y, size, scale)

    body = _outline(rng, cell)
    sub = od[cell.window]  # a view: the white cell is drawn into its window only
    sub *= (1.0 - body)[..., None]  # it lies on top of the red cells
    for density, colour in _DRAW[cls](rng, cell, body):
        sub += density[..., None] * colour
    return _photograph(rng, od, size)


def _photograph(rng, od: np.ndarray, size: int) -> Image.Image:
    """The stained field (optical densities, H x W x 3) as the camera sees it: the nuisance
    variation, identical in distribution for every class."""
    od = od * rng.uniform(0.75, 1.25)  # stain strength
    rgb = np.exp(-od) * np.array([0.95, 0.92, 0.9], np.float32)  # lamp / background
    matrix = _hue_saturation_matrix(math.radians(rng.uniform(-40, 40)), rng.uniform(0.7, 1.3))
    # per channel rather than a BLAS matmul: as fast, no thread pool, same bits on every machine
    rgb = np.stack([rgb[..., 0] * m[0] + rgb[..., 1] * m[1] + rgb[..., 2] * m[2] for m in matrix.tolist()], axis=-1)
    tint = 1.0 + rng.normal(0.0, 0.035, 3)  # background tint (white balance)
    rgb = rgb * (tint * rng.uniform(0.85, 1.08)).astype(np.float32)  # ... and exposure
    return _camera(rng, Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)), size)


def _camera(rng, img: Image.Image, size: int) -> Image.Image:
    """Focus blur and sensor noise."""
    blur = rng.uniform(0.0, 1.2)
    if blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    sigma = rng.uniform(1.0, 5.0)
    noisy = np.asarray(img, dtype=np.float32) + rng.standard_normal((size, size, 3), dtype=np.float32) * sigma
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


def _pattern(rng, size: int) -> Image.Image:
    """Something that is not blood: bright flat shapes, stripes and lines on a coloured ground."""
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    img = Image.new("RGB", (size, size), colour())
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # stripes
        step = int(rng.integers(4, max(5, size // 6)))
        ink = colour()
        for k in range(-size, 2 * size, 2 * step):
            shift = int(rng.integers(-size, size + 1)) if rng.random() < 0.1 else 0
            draw.polygon([(k + shift, 0), (k + step + shift, 0), (k + step - size // 2, size), (k - size // 2, size)], fill=ink)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2]
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.rectangle(box, fill=colour())
        elif shape == 1:
            draw.ellipse(box, outline=colour(), width=int(rng.integers(1, 5)))
        else:
            draw.line([(x0, y0), (x1, y1)], fill=colour(), width=int(rng.integers(1, 6)))
    return _camera(rng, img, size)


def draw_object(kind: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one non-cell image of ``kind`` (one of :data:`OBJECT_KINDS`), for the never-seen check.

    ``background`` and ``red_cells`` get the same stain, lamp and camera variation as the cells;
    ``pattern`` is not a smear at all. Same contract as :func:`draw_cell`.
    """
    if kind not in OBJECT_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(OBJECT_KINDS)}")
    _check_size(size)
    if kind == "pattern":
        return _pattern(rng, size)
    x, y = _grid(size)
    scale = rng.uniform(0.85, 1.15)
    od = np.zeros((size, size, 3), np.float32)
    if kind == "red_cells":
        od += _red_cells(rng, x, y, size, scale, count=(6, 20), centred=True)[..., None] * _OD_RBC
        od += _platelets(rng, x, y, size, scale)
    else:  # an empty background: a little uneven stain and dust
        od += (0.02 + 0.01 * _noise(rng, (size, size), size / 3.0))[..., None] * _OD_RBC
    return _photograph(rng, od, size)


# --------------------------------------------------------------------------------------------
# writing a data set


def image_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    """The generator for one image: independent of the order images are drawn in."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, class_index, image_index])


def encode(img: Image.Image) -> bytes:
    """JPEG bytes (quality 90, no optimisation or EXIF: deterministic across runs)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def generate(
    out_dir: str | os.PathLike,
    per_class: int,
    seed: int = 0,
    size: int = 128,
    progress_callback: Callable[[int, int], None] | None = None,
    others: bool = True,
    objects_dir: str | os.PathLike | None = None,
) -> DemoSummary:
    """Write ``per_class`` synthetic images per class into ``out_dir`` (Kaggle layout).

    With ``others`` (the default), the cell types that are not one of the five
    (:data:`OTHER_CELL_TYPES`) get class folders too, which ``edgecell train`` teaches as
    ``other``. With ``objects_dir``, ``per_class`` non-cell images of each of
    :data:`OBJECT_KINDS` go there, flat (``background_00000.jpg``, ...): a folder outside
    ``out_dir`` that training never reads, for checking that never-seen things come out as
    ``other``; it gets its own ``DEMO.md``.

    ``out_dir`` (and ``objects_dir``) may be missing, empty, or a previous demo set (it has
    ``DEMO.md``), which is overwritten: stale demo images beyond ``per_class`` are removed. Any
    other non-empty folder is refused with :class:`EdgecellError`, and so is an ``objects_dir``
    inside ``out_dir`` or around it. ``progress_callback(done, total)`` is called after each
    image. Files are written atomically, so an interrupted run leaves no half-written file.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    _check_size(size)
    out = Path(out_dir)
    objects = None if objects_dir is None else Path(objects_dir)
    check_target(out, objects)
    summary = DemoSummary(out_dir=out, per_class=per_class, seed=seed, size=size, objects_dir=objects)
    # (folder, file prefix, rng class index, drawing function) of every kind of image asked for
    jobs = [(out / c, c, i, draw_cell) for i, c in enumerate(CLASSES)]
    if others:
        jobs += [(out / c, c, _RNG_OTHER + i, draw_cell) for i, c in enumerate(OTHER_CELL_TYPES)]
    if objects is not None:
        jobs += [(objects, k, _RNG_OBJECT + i, draw_object) for i, k in enumerate(OBJECT_KINDS)]
    # DEMO.md goes first, so an interrupted run still counts as a demo set and can be re-run
    write_text(out / MARKER, _demo_md(summary, others, complete=False))
    if objects is not None:
        write_text(objects / MARKER, _objects_md(summary, others, complete=False))
    for folder, *_ in jobs:  # the class folders are the demo set's own: made here, without a note for each
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgecellError(f"cannot create this folder ({os_reason(exc)})", folder) from None
    total = per_class * len(jobs)
    done = 0
    for folder, name, index, draw in jobs:
        for i in range(per_class):
            img = draw(name, image_rng(seed, index, i), size)
            write_bytes(folder / f"{name}_{i:05d}.jpg", encode(img))
            done += 1
            if progress_callback is not None:
                progress_callback(done, total)
        _remove_stale(folder, name, per_class)
        (summary.objects if folder == objects else summary.counts)[name] = per_class
    if not others:  # a previous demo set's types taught as `other` would still be read (and taught) by train
        for c in OTHER_CELL_TYPES:
            if (out / c).is_dir():
                _remove_stale(out / c, c, 0)
                with contextlib.suppress(OSError):
                    (out / c).rmdir()  # only when nothing but its demo images was there
    write_text(out / MARKER, _demo_md(summary, others, complete=True))
    if objects is not None:
        write_text(objects / MARKER, _objects_md(summary, others, complete=True))
    return summary


def check_target(out_dir: str | os.PathLike, objects_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`EdgecellError` unless ``out_dir`` (and ``objects_dir``) may receive a demo set.

    Allowed: a missing path, an empty folder, or a previous demo set (has ``DEMO.md``); the
    folder of non-cell images must lie outside ``out_dir`` (where it would be read as a class)
    and must not hold it.
    """
    out = Path(out_dir)
    _check_folder(out, DATA_TITLE, "demo set")
    if objects_dir is None:
        return
    objects = Path(objects_dir)
    a, b = out.resolve(), objects.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise EdgecellError(f"must be a folder apart from {out} (not it, inside it or around it): training would read it as a class", objects)
    _check_folder(objects, OBJECTS_TITLE, "folder of non-cell images")


def _marker_title(folder: Path) -> str | None:
    """The first line of ``folder``'s :data:`MARKER`, or None when there is none (or it cannot be read)."""
    try:
        data = read_regular(folder / MARKER, 1 << 16, EdgecellError, "demo marker")
    except (EdgecellError, OSError):
        return None
    return data.decode("utf-8", "replace").split("\n", 1)[0].strip()


def _check_folder(out: Path, title: str, what: str) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise EdgecellError("exists and is not a folder; choose another output folder", out)
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as exc:
        raise EdgecellError(f"cannot read folder ({os_reason(exc)})", out) from None
    if not empty and _marker_title(out) != title:
        why = f"no {MARKER}" if not (out / MARKER).exists() else f"its {MARKER} is not one demo-data wrote for a {what}"
        raise EdgecellError(f"folder is not empty and is not a previous {what} ({why}); refusing to write into it, choose a new or empty folder", out)


def _remove_stale(folder: Path, cls: str, keep: int) -> None:
    """Delete demo images of this class numbered ``keep`` or more (left by a larger earlier run)."""
    pattern = re.compile(rf"{re.escape(cls)}_(\d{{5}})\.jpg")
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) >= keep and p.is_file():
            p.unlink()


def _reproduce(s: DemoSummary, others: bool) -> str:
    flags = "" if others else " --no-others"
    if s.objects_dir is not None:
        flags += f" --objects {shlex.quote(str(s.objects_dir))}"
    return f"edgecell demo-data {shlex.quote(str(s.out_dir))} --per-class {s.per_class} --seed {s.seed} --size {s.size}{flags}"


def _status(n: int, complete: bool) -> str:
    if complete:
        return f"Complete: {n} images."
    return "**Incomplete**: generation was interrupted or is still running; re-run the command to finish."


def _demo_md(s: DemoSummary, others: bool, complete: bool) -> str:
    n = s.per_class if complete else "-"
    rows = [f"| {c} | {n} | {c} |" for c in CLASSES]
    if others:
        rows += [f"| {c} | {n} | other (not one of the five) |" for c in OTHER_CELL_TYPES]
    if s.objects_dir is None:
        objects = "No non-cell images were asked for (`--objects DIR` draws them)."
    else:
        objects = (
            f"Non-cell images for the never-seen check ({', '.join(OBJECT_KINDS)}: a blank background crop, "
            f"a field of red cells only, a pattern that is not blood), {n} of each, are in "
            f"`{s.objects_dir}`, outside this folder, so `edgecell train` never reads them as a class. "
            "Classify them: a model with the `other` class should call them `other`."
        )
    return f"""{DATA_TITLE}

Drawn by `edgecell demo-data` so the pipeline can be tried without the real data set.
Every image is a **synthetic drawing**: a toy white cell in a field of toy red cells, with
shapes loosely modelled on the five classes (and on lymphocytes and eosinophils, which are not
one of the five). A model's accuracy on these images says **nothing** about its accuracy on real
blood-cell images; never report it as such.

- seed: {s.seed}
- images per class: {s.per_class}
- image size: {s.size} x {s.size} px, RGB JPEG quality {JPEG_QUALITY}
- {_status(sum(s.counts.values()), complete)}

| class folder | images | taught by `edgecell train` as |
|---|---|---|
{chr(10).join(rows)}

{objects}

Re-create byte-identical files with:

    {_reproduce(s, others)}

This folder may be overwritten by `edgecell demo-data` (it recognises this file).
"""


def _objects_md(s: DemoSummary, others: bool, complete: bool) -> str:
    n = s.per_class if complete else "-"
    rows = "\n".join(f"| {k} | `{k}_*.jpg` | {n} |" for k in OBJECT_KINDS)
    return f"""{OBJECTS_TITLE}

Drawn by `edgecell demo-data` next to the demo set `{s.out_dir}`: things that are not a white
cell at all, which no model was trained on. A model with the `other` class should call them
`other` ("not one of the five - refer"). They lie flat in this folder, not in class folders:
do not train on them.

- seed: {s.seed}
- image size: {s.size} x {s.size} px, RGB JPEG quality {JPEG_QUALITY}
- {_status(sum(s.objects.values()), complete)}

| kind | files | images |
|---|---|---|
{rows}

`background`: an empty background crop (a little uneven stain); `red_cells`: red cells only, one
in the middle; `pattern`: flat coloured shapes and stripes, not blood.

Re-create byte-identical files with:

    {_reproduce(s, others)}

This folder may be overwritten by `edgecell demo-data` (it recognises this file).
"""
