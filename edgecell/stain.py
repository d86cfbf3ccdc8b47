"""Stain and colour shifts for testing a model on "another lab's slides" (numpy only).

Every function takes preprocessed ``uint8`` images, one ``(S, S, 3)`` or a batch ``(N, S, S, 3)``
(see :mod:`firmware_host.preprocess`), and returns a new ``uint8`` array of the same shape; the
input is never modified. :func:`family` is the fixed set that ``edgecell evaluate --stain-shift``
runs: hue shifts, saturation and brightness changes, grayscale, a swap of background tint between
the two labs of the blood-cell data set, and one seeded per-image random mix. The same seed gives
the same arrays on every machine.

Why: in the Kaggle blood-cell set, three classes come from one lab (peach background) and two
from another (lavender background). A model that learnt "peach means basophil, erythroblast or
monocyte" fails when the same cells are stained or scanned elsewhere; these shifts show it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PEACH = (248.0, 221.0, 196.0)
"""Typical background of the PBC images (basophil, erythroblast, monocyte) after preprocessing.

Median of :func:`background_colour` over the 2400 PBC images at 96 px. SOURCE.md gives about
235,206,189 for the 16x16 corners of the originals; the border ring of the resized image is lighter
but has the same tint (blue/red about 0.79).
"""
LAVENDER = (232.0, 224.0, 226.0)
"""Typical background of the AML-Cytomorphology_LMU images (myeloblast, seg_neutrophil) after preprocessing.

Median of :func:`background_colour` over the 1600 LMU images at 96 px (SOURCE.md: about 225,210,218
for the original corners; blue/red about 0.97).
"""
BACKGROUNDS = (PEACH, LAVENDER)

_EPS = 1e-8
_CHUNK = 32


# ----------------------------------------------------------------------------------------------
# Colour-space helpers (float32, values 0-1)


def _as_float(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images of shape (S, S, 3) or (N, S, S, 3), got {a.dtype} {a.shape}")
    return a.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn), the same convention as ``colorsys``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(axis=-1)
    minc = rgb.min(axis=-1)
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, _EPS), 0.0)
    d = np.maximum(delta, _EPS)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, maxc], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (the closed form ``v - v*s*clip(min(k, 4-k), 0, 1)``, ``k = (n + 6h) mod 6``)."""
    h6 = (hsv[..., 0] % 1.0) * np.float32(6.0)
    s, v = np.clip(hsv[..., 1], 0, 1), np.clip(hsv[..., 2], 0, 1)
    vs = v * s
    out = np.empty(hsv.shape, dtype=np.float32)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = (h6 + np.float32(n)) % np.float32(6.0)
        out[..., c] = v - vs * np.clip(np.minimum(k, np.float32(4.0) - k), 0, 1)
    return out


def _per_image(values, images: np.ndarray) -> np.ndarray:
    """A scalar or one value per image, shaped to broadcast over (N, S, S) or (S, S)."""
    v = np.asarray(values, dtype=np.float32)
    if v.ndim == 0:
        return v
    if images.ndim != 4 or v.shape != (images.shape[0],):
        raise ValueError(f"need one value per image ({images.shape[0] if images.ndim == 4 else 1}), got shape {v.shape}")
    return v[:, None, None]


# ----------------------------------------------------------------------------------------------
# The perturbations


def hsv_adjust(images: np.ndarray, hue_degrees=0.0, saturation=1.0, value=1.0) -> np.ndarray:
    """Rotate hue by ``hue_degrees``, multiply saturation and value (brightness); scalars or one per image."""
    a = np.asarray(images)
    if a.ndim == 4 and len(a) > _CHUNK:  # in chunks: the float temporaries stay in cache and memory stays small
        hv, sv, vv = (np.broadcast_to(np.asarray(v, dtype=np.float32), (len(a),)) for v in (hue_degrees, saturation, value))
        return np.concatenate([hsv_adjust(a[i : i + _CHUNK], hv[i : i + _CHUNK], sv[i : i + _CHUNK], vv[i : i + _CHUNK]) for i in range(0, len(a), _CHUNK)])
    x = _as_float(a)
    hsv = rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + _per_image(hue_degrees, a) / np.float32(360.0)) % np.float32(1.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * _per_image(saturation, a), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * _per_image(value, a), 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def hue_shift(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every pixel's hue by ``degrees`` (a different stain batch or staining time)."""
    return hsv_adjust(images, hue_degrees=degrees)


def saturation(images: np.ndarray, factor: float) -> np.ndarray:
    """Multiply saturation by ``factor`` (weaker or stronger staining)."""
    return hsv_adjust(images, saturation=factor)


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    """Multiply every channel by ``factor`` (lamp intensity, exposure), clipped at 255."""
    return _to_uint8(_as_float(images) * np.float32(factor))


def grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in all three channels (no colour information left)."""
    x = _as_float(images)
    y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return _to_uint8(np.repeat(y[..., None], 3, axis=-1))


def border_width(size: int) -> int:
    """Width in pixels of the border ring used to estimate the background: 4% of the side, at least 1."""
    return max(1, int(round(size * 0.04)))


def background_colour(images: np.ndarray) -> np.ndarray:
    """Per-image background RGB (0-255): the per-channel median of the border ring.

    Blood-cell images are centred on one cell, so the border is mostly background; the median
    ignores the parts of neighbouring cells that touch it. Returns shape (3,) or (N, 3).
    """
    a = np.asarray(images)
    single = a.ndim == 3
    if single:
        a = a[None]
    b = border_width(min(a.shape[1], a.shape[2]))
    ring = np.concatenate(
        [
            a[:, :b, :, :].reshape(len(a), -1, 3),
            a[:, -b:, :, :].reshape(len(a), -1, 3),
            a[:, b:-b, :b, :].reshape(len(a), -1, 3),
            a[:, b:-b, -b:, :].reshape(len(a), -1, 3),
        ],
        axis=1,
    )
    bg = np.median(ring.astype(np.float32), axis=1)
    return bg[0] if single else bg


def nearest_background(bg: np.ndarray, references: Sequence[Sequence[float]] = BACKGROUNDS) -> np.ndarray:
    """Index of the reference whose tint (chromaticity ``rgb / sum(rgb)``) is nearest each background.

    Comparing tint rather than raw RGB ignores brightness: a darker peach image is still peach.
    On the blood-cell set this assigns 97.8% of the images to their own lab.
    """
    refs = np.asarray(references, dtype=np.float32)
    bg = np.atleast_2d(np.asarray(bg, dtype=np.float32))

    def chroma(v):
        return v / np.maximum(v.sum(axis=-1, keepdims=True), 1.0)

    return np.argmin(((chroma(bg)[:, None, :] - chroma(refs)[None]) ** 2).sum(-1), axis=1)


def swap_background(images: np.ndarray, references: Sequence[Sequence[float]] = BACKGROUNDS, target=None) -> np.ndarray:
    """Move each image's background tint to the other lab's by a per-channel gain.

    Each image's background is estimated from its border (:func:`background_colour`) and
    matched to the nearest of the two ``references``; the gain ``other / estimated`` per channel is
    applied to the whole image (a white-balance change, as a different scanner or lamp would make).
    ``target`` (an RGB triple) sends every image to that background instead.
    """
    a = np.asarray(images)
    single = a.ndim == 3
    batch = a[None] if single else a
    x = _as_float(batch)
    bg = np.atleast_2d(background_colour(batch))
    refs = np.asarray(references, dtype=np.float32)
    if target is not None:
        goal = np.broadcast_to(np.asarray(target, dtype=np.float32), bg.shape)
    else:
        if len(refs) != 2:
            raise ValueError("swapping needs exactly two reference backgrounds")
        goal = refs[1 - nearest_background(bg, refs)]
    gain = goal / np.maximum(bg, 1.0)
    out = _to_uint8(x * gain[:, None, None, :])
    return out[0] if single else out


def random_mix(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: hue shift in [-20, 20] degrees, saturation x[0.6, 1.4], brightness x[0.85, 1.15]."""
    a = np.asarray(images)
    n = a.shape[0] if a.ndim == 4 else 1
    hue = rng.uniform(-20.0, 20.0, n)
    sat = rng.uniform(0.6, 1.4, n)
    val = rng.uniform(0.85, 1.15, n)
    if a.ndim == 3:
        return hsv_adjust(a, hue[0], sat[0], val[0])
    return hsv_adjust(a, hue, sat, val)


# ----------------------------------------------------------------------------------------------
# The family


@dataclass(frozen=True)
class Perturbation:
    """One member of the stain-shift family: a stable ``name``, a one-line ``description`` and the function."""

    name: str
    description: str
    fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]

    def __call__(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        # each member has its own generator, so adding or skipping members changes no other's output
        key = [int(seed) & 0xFFFFFFFF] + [ord(c) for c in self.name]
        return self.fn(images, np.random.default_rng(key))


def family() -> list[Perturbation]:
    """The fixed stain-shift family, in report order."""
    out = []
    for d in (10, -10, 20, -20):
        out.append(Perturbation(f"hue {d:+d} deg", f"hue rotated by {d:+d} degrees", lambda x, r, d=d: hue_shift(x, d)))
    for f in (0.6, 1.4):
        out.append(Perturbation(f"saturation x{f}", f"saturation multiplied by {f}", lambda x, r, f=f: saturation(x, f)))
    for p in (15, -15):
        out.append(Perturbation(f"brightness {p:+d}%", f"all channels multiplied by {1 + p / 100:.2f}", lambda x, r, p=p: brightness(x, 1 + p / 100)))
    out.append(Perturbation("grayscale", "colour removed (BT.601 luma in all channels)", lambda x, r: grayscale(x)))
    out.append(
        Perturbation(
            "background swap",
            "background tint moved to the other lab's (peach 248,221,196 <-> lavender 232,224,226) by a per-channel gain",
            lambda x, r: swap_background(x),
        )
    )
    out.append(Perturbation("random mix", "per image: hue ±20°, saturation x0.6-1.4, brightness ±15% (seeded)", random_mix))
    return out


def names() -> list[str]:
    return [p.name for p in family()]


def apply(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply the family member called ``name``."""
    for p in family():
        if p.name == name:
            return p(images, seed)
    raise KeyError(f"unknown stain perturbation {name!r} (known: {', '.join(names())})")
