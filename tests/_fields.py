"""Synthetic fields of view for the scan tests and ``make pi-check`` (numpy and Pillow only).

A field is a light background with pink red cells (pale centres), small purple platelets and
white cells (a pale cytoplasm disc with a dark purple, optionally three-lobed, nucleus) at known
places. Run as a script, it writes a few fields into a folder::

    python tests/_fields.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

W, H = 640, 480
CELL = 140  # white-cell diameter drawn, about the locator's default for 640x480 (0.3 x 480)
BACKGROUND = (226, 222, 232)
RBC = (214, 150, 160)
CYTOPLASM = (214, 196, 222)
NUCLEUS = (112, 62, 168)
PLATELET = (150, 100, 180)


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour, alpha: float = 1.0) -> None:
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[m] = (1 - alpha) * img[m] + alpha * np.asarray(colour, dtype=np.float64)


def draw_field(wbcs=(), rbcs=(), platelets=(), seed: int = 0, lobes: bool = False, size=(W, H)) -> np.ndarray:
    """A synthetic field: ``wbcs`` are (cx, cy[, diameter]), ``rbcs`` and ``platelets`` (cx, cy)."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = BACKGROUND
    for cx, cy in rbcs:
        _disc(img, cx, cy, 0.36 * CELL, RBC)
        _disc(img, cx, cy, 0.14 * CELL, BACKGROUND, alpha=0.5)  # the pale centre
    for cx, cy in platelets:
        _disc(img, cx, cy, 0.06 * CELL, PLATELET)
    for wbc in wbcs:
        cx, cy = wbc[:2]
        d = wbc[2] if len(wbc) > 2 else CELL
        _disc(img, cx, cy, d / 2, CYTOPLASM)
        if lobes:  # three overlapping lobes, as a segmented neutrophil
            for dx, dy in ((-0.18, -0.08), (0.0, 0.12), (0.18, -0.06)):
                _disc(img, cx + dx * d, cy + dy * d, 0.15 * d, NUCLEUS)
        else:
            _disc(img, cx, cy, 0.33 * d, NUCLEUS)
    img += rng.normal(0, 4, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
    return np.asarray(out)


RBC_GRID = [(x, y) for x in range(60, W, 120) for y in range(50, H, 110)]


def at_half(fields) -> np.ndarray:
    """Four fields as one photographed at half the magnification: a 2x2 mosaic reduced to one field's size."""
    mosaic = np.concatenate([np.concatenate(fields[:2], axis=1), np.concatenate(fields[2:4], axis=1)], axis=0)
    return np.asarray(Image.fromarray(mosaic).reduce(2))


def _away(points, wbcs, gap=CELL * 0.9):
    return [p for p in points if all((p[0] - w[0]) ** 2 + (p[1] - w[1]) ** 2 > gap * gap for w in wbcs)]


def write_examples(out: Path) -> list[Path]:
    """Four fields: two white cells, a lobed one beside platelets, one cut by the border, none."""
    out.mkdir(parents=True, exist_ok=True)
    specs = {
        "two.jpg": dict(wbcs=[(150, 140), (470, 330)], platelets=[(330, 60)]),
        "lobed.jpg": dict(wbcs=[(320, 240)], platelets=[(100, 60), (520, 420)], lobes=True),
        "edge.png": dict(wbcs=[(15, 200)]),
        "none.jpg": dict(wbcs=[], platelets=[(300, 200)]),
    }
    paths = []
    for k, (name, spec) in enumerate(specs.items()):
        wbcs = spec.pop("wbcs")
        img = Image.fromarray(draw_field(wbcs, _away(RBC_GRID, wbcs), seed=k, **spec))
        paths.append(out / name)
        img.save(paths[-1], quality=92) if name.endswith(".jpg") else img.save(paths[-1])
    return paths


if __name__ == "__main__":
    for p in write_examples(Path(sys.argv[1])):
        print(p)
