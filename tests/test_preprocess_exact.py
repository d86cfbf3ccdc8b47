"""Preprocessing gives the same bytes on every machine (issue #17): the pieces that make it so.

`make pi-arm64` proves it end to end (x86 against emulated arm64, pixel hashes compared). These tests check,
on any one machine, the properties that proof rests on: results that do not depend on the order of the pixels
(a partition's order differs between numpy's x86 and ARM code), an exp made of exactly rounded operations, the
hue turn without trigonometry on the colour, and constants that a last-bit libm difference cannot change.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import firmware_host.preprocess as pp

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` and inside the arm64 root by `make pi-arm64`


def tied_pixels(n: int = 4096, seed: int = 0, violet: float = 0.0) -> np.ndarray:
    """Pixels with many equal R+G+B sums but different colours (as a flat background has); the darkest
    ``violet`` share of them stained violet like a nucleus."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (n, 1))
    shift = rng.integers(-8, 9, (n, 2))
    px = np.concatenate([base + shift[:, :1], base + shift[:, 1:], base - shift.sum(axis=1, keepdims=True)], axis=1)
    dark = base[:, 0] < np.quantile(base, violet)
    px[dark] += np.array([10, -40, 30])
    return np.clip(px, 0, 255).astype(np.uint8)


def test_exp_exact_is_exp_within_two_ulp():
    x = np.concatenate([np.linspace(-700, 5, 20001), -np.random.default_rng(1).uniform(0, 60, 5000), [0.0, -0.0]])
    got, want = pp.exp_exact(x), np.exp(x)
    assert np.all(np.abs(got - want) <= 2 * np.spacing(want))
    assert pp.exp_exact(np.array([0.0]))[0] == 1.0


@pytest.mark.parametrize("brightest", [True, False])
def test_extreme_mean_shares_ties_whatever_the_order(brightest):
    px = tied_pixels()
    keys = px.astype(int).sum(axis=1)
    v = int(np.percentile(keys, 90 if brightest else 10))
    k = int(((keys > v) if brightest else (keys < v)).sum()) + int((keys == v).sum()) // 2  # half of a tie group is taken
    got = pp.extreme_mean(px, k, brightest)
    # the same pixels in other orders: the same bits (argpartition would pick other tied pixels)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(px))
        assert pp.extreme_mean(px[perm], k, brightest).tobytes() == got.tobytes()
    # against the definition, in exact fractions: those beyond the k-th in full, those tied with it sharing the rest
    order = np.sort(keys)
    cut = order[-k] if brightest else order[k - 1]
    beyond = keys > cut if brightest else keys < cut
    tied = keys == cut
    share = Fraction(k - int(beyond.sum()), int(tied.sum()))
    want = [(int(px[beyond, c].astype(int).sum()) + share * int(px[tied, c].astype(int).sum())) / k for c in range(3)]
    assert np.allclose(got, [float(w) for w in want], rtol=0, atol=1e-12)
    assert tied.sum() > 1 and share < 1  # the case that matters: ties at the cut, not all of them taken


def test_colour_steps_depend_on_the_pixels_not_their_order():
    img = tied_pixels(64 * 64, seed=3, violet=0.15).reshape(64, 64, 3)
    perm = np.random.default_rng(4).permutation(64 * 64)
    shuffled = img.reshape(-1, 3)[perm].reshape(img.shape)
    gains = pp.white_gains(img)
    assert pp.white_gains(shuffled).tobytes() == gains.tobytes()
    wb = pp.white_balance(img, gains)
    assert pp.white_balance(shuffled, gains).reshape(-1, 3).tobytes() == wb.reshape(-1, 3)[perm].tobytes()
    out = pp.normalise_stain(wb)
    assert not np.array_equal(out, wb)  # the stain step did turn the colours
    wb_shuffled = wb.reshape(-1, 3)[perm].reshape(wb.shape)
    assert pp.normalise_stain(wb_shuffled).reshape(-1, 3).tobytes() == out.reshape(-1, 3)[perm].tobytes()


def test_midtone_chroma_is_the_median_chroma_of_the_coloured_mid_tones_whatever_the_order():
    img = tied_pixels(64 * 64, seed=5, violet=0.15).reshape(64, 64, 3)
    got = pp.midtone_chroma(img)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(64 * 64)
        assert pp.midtone_chroma(img.reshape(-1, 3)[perm].reshape(img.shape)) == got
    # against the definition in floats: the chroma in the opponent plane (U, V), mid-tones by rank of R+G+B
    px = img.reshape(-1, 3).astype(np.float64)
    off = px - px.mean(axis=1, keepdims=True)
    chroma = np.hypot(off @ np.array(pp._U), off @ np.array(pp._V))
    keys = img.reshape(-1, 3).astype(int).sum(axis=1)
    order = np.sort(keys)
    lo, hi = (order[int(len(keys) * s)] for s in pp.MIDTONE_SHARES)
    sel = np.sort(chroma[(keys >= lo) & (keys <= hi) & (chroma > pp.MIDTONE_MIN_CHROMA)])
    assert got == pytest.approx(sel[len(sel) // 2], rel=1e-12)


def test_a_grey_image_keeps_its_chroma_and_the_gain_is_bounded():
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1).reshape(16, 16, 3)
    assert pp.midtone_chroma(grey) is None and pp.chroma_gain(None) == 1.0
    assert pp.chroma_gain(pp.MIDTONE_CHROMA) == 1.0
    assert pp.chroma_gain(1e-3) == pp.CHROMA_GAIN[1] and pp.chroma_gain(1e6) == pp.CHROMA_GAIN[0]


def test_stain_turn_is_the_clipped_hue_angle():
    """The dot/cross-product turn equals version 2's definition: NUCLEUS_HUE - atan2(b, a) in degrees,
    clipped to MAX_HUE_TURN (including hues beyond NUCLEUS_HUE + 180, which turn the negative way)."""
    for theta in np.linspace(-179.9, 180.0, 3601):
        chroma = 37.0
        a, b = chroma * math.cos(math.radians(theta)), chroma * math.sin(math.radians(theta))
        turn = math.radians(min(max(pp.NUCLEUS_HUE - math.degrees(math.atan2(b, a)), -pp.MAX_HUE_TURN), pp.MAX_HUE_TURN))
        cos_t, sin_t = pp.stain_turn(a, b, math.hypot(a, b))
        assert abs(cos_t - math.cos(turn)) < 1e-11 and abs(sin_t - math.sin(turn)) < 1e-11, theta


def test_direction_constants_are_far_from_a_rounding_boundary():
    """cos and sin of the constant angles are rounded to 12 decimals: a libm that differs in the last bit
    (about 1e-16) gives the same constant only if the exact value is not within that of a rounding boundary."""
    for degrees in (pp.NUCLEUS_HUE, pp.MAX_HUE_TURN):
        t = math.radians(degrees)
        for v in (math.cos(t), math.sin(t)):
            scaled = Fraction(v) * 10**12
            assert abs(scaled - math.floor(scaled) - Fraction(1, 2)) > Fraction(1, 1000), (degrees, v)
    hue = math.radians(pp.NUCLEUS_HUE)
    assert abs(pp._HUE[0] - math.cos(hue)) <= 5e-13 and abs(pp._HUE[1] - math.sin(hue)) <= 5e-13


@pytest.mark.parametrize("mode", ["RGB", "P", "I;16"])
def test_a_large_image_copied_in_strips_has_the_same_pixels(monkeypatch, mode):
    """Over STRIP_BYTES the pixels are copied strip by strip (a lower memory peak on a Pi): the same array."""
    import io

    from PIL import Image

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    img = Image.fromarray(x).convert(mode) if mode != "I;16" else Image.fromarray(x[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    whole = pp.decode_rgb(buf.getvalue())
    monkeypatch.setattr(pp, "STRIP_BYTES", 61 * 3 * 10)  # strips of 10 rows, the last one shorter
    np.testing.assert_array_equal(pp.decode_rgb(buf.getvalue()), whole)
