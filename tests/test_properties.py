"""Property tests of image loading: whatever the bytes, a usable array or edgecell's own ImageError.

``firmware_host.preprocess.decode`` / ``load_image`` are fed random bytes, random bytes behind real
magic numbers, random small images of every Pillow mode a lab is likely to meet (1, L, P, RGB,
RGBA, LA, I, I;16, F, CMYK) in every format that can hold them (PNG, JPEG, BMP, TIFF), and
truncated or corrupted copies of those. The result is either a ``uint8`` array of shape
``(size, size, 3)`` or an :class:`~firmware_host.errors.ImageError`; nothing else ever escapes.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from firmware_host.errors import ImageError, ImageWarning
from firmware_host.preprocess import DIM_LEVEL, MIN_SIDE, _to_rgb, decode, load_image, prepare

MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a", b"RIFF")
EXAMPLES = int(os.environ.get("EDGECELL_HYPOTHESIS_EXAMPLES", "200"))  # raise it for a deeper search
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _image(mode: str, w: int, h: int, seed: int, flat: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    if flat:
        rgb = np.broadcast_to(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), (h, w, 3)).copy()
    else:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (h, w), dtype=np.int64).astype(np.int32))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.int64).astype(np.uint16))
    if mode == "F":
        a = (rng.random((h, w)) * 600 - 150).astype(np.float32)
        a.flat[rng.integers(0, a.size)] = rng.choice([np.nan, np.inf, -np.inf])  # cameras do write these
        return Image.fromarray(a)
    if mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(1, 257)))
        if rng.random() < 0.5:
            img.info["transparency"] = int(rng.integers(0, 256))
        return img
    if mode == "RGBA":
        img = base.convert("RGBA")
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        return img
    return base.convert(mode)


def _writable(mode: str, fmt: str) -> bool:
    try:
        _image(mode, 8, 8, 0, False).save(io.BytesIO(), fmt)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


COMBOS = [(m, f) for m in MODES for f in FORMATS if _writable(m, f)]
LOSSLESS_RGB = [(m, f) for m, f in COMBOS if m == "RGB" and f != "JPEG"]


@st.composite
def encoded_images(draw, min_side: int = 1):
    mode, fmt = draw(st.sampled_from(COMBOS))
    w, h = draw(st.integers(min_side, 48)), draw(st.integers(min_side, 48))
    img = _image(mode, w, h, draw(st.integers(0, 2**32 - 1)), draw(st.booleans()))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": draw(st.integers(1, 100))} if fmt == "JPEG" else {}))
    return mode, fmt, (w, h), buf.getvalue()


def _damaged(draw_data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(draw_data[: max(0, min(cut, len(draw_data)))] if cut >= 0 else draw_data)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


def check(result_or_error, size: int) -> None:
    """The one contract: a uint8 (size, size, 3) array, or ImageError (and nothing else)."""
    kind, value = result_or_error
    if kind == "ok":
        assert isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.shape == (size, size, 3)
    else:
        assert kind == "ImageError", value


def attempt(fn, *args) -> tuple[str, object]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "possibly corrupt EXIF" etc. are fine; exceptions are not
            return "ok", fn(*args)
    except ImageError as exc:
        assert str(exc).strip() and "\n" not in str(exc), repr(exc)  # one line, naming something
        return "ImageError", exc
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} escaped: {exc}") from exc


sizes = st.integers(8, 96)


@SETTINGS
@given(data=st.binary(max_size=4096), size=sizes)
def test_random_bytes(data, size):
    check(attempt(decode, data, size, "random.bin"), size)


@SETTINGS
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=4096), size=sizes)
def test_random_bytes_behind_a_real_magic_number(magic, tail, size):
    check(attempt(decode, magic + tail, size, "magic.bin"), size)


@SETTINGS
@given(img=encoded_images(), size=sizes)
def test_any_mode_any_format_decodes_or_is_refused(img, size):
    mode, fmt, (w, h), data = img
    result = attempt(decode, data, size, f"img.{fmt.lower()}")
    check(result, size)
    if min(w, h) >= MIN_SIDE:  # a valid image of a usable size is never refused, unless it is nearly black
        assert result[0] == "ok" or "nearly black" in str(result[1]), (mode, fmt, (w, h), result[1])
        if result[0] != "ok":  # and then it is: its brightest 1 % (in any channel) under the limit (JPEG: give or take)
            with Image.open(io.BytesIO(data)) as opened:
                rgb = np.asarray(_to_rgb(opened))  # the mode conversion of decoding, without the refusal
            assert np.percentile(rgb.max(axis=2), 99) < DIM_LEVEL + 8, (mode, fmt, (w, h))
    else:
        assert result[0] == "ImageError" and "too small" in str(result[1])


@SETTINGS
@given(img=encoded_images(), cut=st.integers(-1, 4096), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8), size=sizes)
def test_truncated_or_corrupted_images(img, cut, flips, size):
    check(attempt(decode, _damaged(img[3], cut, flips), size, "damaged.bin"), size)


@SETTINGS
@given(combo=st.sampled_from(LOSSLESS_RGB), w=st.integers(MIN_SIDE, 48), h=st.integers(MIN_SIDE, 48), seed=st.integers(0, 2**32 - 1), size=sizes)
def test_lossless_rgb_is_exactly_the_documented_resize(combo, w, h, seed, size):
    """Not only 'some array': for lossless RGB files it is exactly the documented step after decoding
    (``prepare``: cell-centred crop, resize, white balance) applied to the file's own pixels."""
    _, fmt = combo
    img = _image("RGB", w, h, seed, False)
    buf = io.BytesIO()
    img.save(buf, fmt)
    expected = prepare(np.asarray(img), size)
    assert np.array_equal(decode(buf.getvalue(), size), expected)


@settings(max_examples=max(60, EXAMPLES // 4), deadline=None)
@given(
    content=st.one_of(st.binary(max_size=2048), encoded_images().map(lambda t: t[3])),
    size=sizes,
    name=st.sampled_from(["a.jpg", "b c.png", "é 漢字.tif", "x.bmp", "noext"]),
)
def test_load_image_from_files(content, size, name):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, name)
        with open(p, "wb") as fh:
            fh.write(content)
        result = attempt(load_image, p, size)
        check(result, size)
        if result[0] == "ImageError":
            assert str(result[1]).startswith(f"{p}: ")  # names the file


@pytest.mark.parametrize("mode, fmt", COMBOS)
def test_every_mode_and_format_combination_is_covered(mode, fmt):
    """The strategy really draws every (mode, format) pair Pillow can write; each decodes."""
    buf = io.BytesIO()
    _image(mode, 20, 12, 1, False).save(buf, fmt)
    if mode == "F":  # the one NaN or infinity _image writes survives in a float image, and is said
        with pytest.warns(ImageWarning, match="1 of 240 pixels are not numbers"):
            out = decode(buf.getvalue(), 32)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ImageWarning)  # nothing else to say about a plain image
            out = decode(buf.getvalue(), 32)
    assert out.shape == (32, 32, 3)
    assert len(COMBOS) >= 20


def _whole_image_rgb(img: Image.Image) -> np.ndarray:
    """The mode conversion as it was written before it went strip by strip (the whole image at once): the oracle."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grey, "L").convert("RGB"))
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.where(np.isfinite(a), a, 0.0)
        return np.asarray(Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB"))
    return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I", "I;16", "F"])
@pytest.mark.parametrize("seed", range(4))
def test_large_images_are_converted_in_strips_exactly(mode, seed, monkeypatch):
    """16-bit, float and transparent images are converted strip by strip (a 49-megapixel 16-bit PNG took 1.3 GB
    whole): the same pixels as the whole image at once, strips of one row to many, and the edges of the strips."""
    from firmware_host import preprocess

    img = _image(mode, 37, 23, seed, False)
    if mode == "P":
        img.info["transparency"] = 3
    expected = _whole_image_rgb(img)
    for strip in (1, 37 * 4, 37 * 8 * 5, 10**9):  # rows of one pixel, several, one strip
        monkeypatch.setattr(preprocess, "STRIP_BYTES", strip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageWarning)  # F holds a NaN, said by decoding
            got = np.asarray(_to_rgb(img))
        assert np.array_equal(got, expected), (mode, seed, strip)
