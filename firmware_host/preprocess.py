"""Image preprocessing, defined once for training, conversion, calibration and the Pi.

The training side (``edgecell.data``) and the runtime (``firmware_host.runtime``) both call
:func:`load_image`, so a model sees the same pixels on the Pi that it saw in training.
Only numpy and Pillow are imported here.

Steps (preprocessing version 3):

1. Read the file's bytes; refuse what is not a regular file, files over
   :data:`MAX_FILE_BYTES`, empty files, and images over :data:`MAX_PIXELS` pixels (checked from
   the header, before decoding, so a 20000x20000 image cannot freeze a Pi) or under
   :data:`MIN_SIDE` pixels wide or high.
2. For JPEG, ask the decoder for a DCT-scaled draft no smaller than :data:`DRAFT_FACTOR` times the
   target size (``Image.draft``): a faster decode with the same result on every machine.
3. Apply the EXIF orientation (``ImageOps.exif_transpose``).
4. Convert to 8-bit RGB: transparency is composited onto white; 16-bit and 32-bit integer
   images are scaled by 1/257; float images are clipped to 0-255; CMYK, palette, grey and
   other modes go through Pillow's ``convert("RGB")``. An image too dark to read (:data:`DIM_LEVEL`) is refused.
5. :func:`prepare`, the cell-centred crop. Each lab's camera frames its cells differently (one
   lab's cells fill the frame, another's a third of it; a phone on an eyepiece anything in
   between), and a model that sees whole frames learns the lab from that. So the white cell is
   located by its nucleus (:func:`locate_cell`: nuclei stain far more blue than green, far more
   than red cells, plasma or background; the threshold is Otsu's on each image's own stain
   histogram), and a square of :data:`CELL_SCALE` nucleus radii around it is cut out (outside the
   image: the image's background colour) and resized to ``size`` x ``size`` (bilinear,
   antialiased). The cell then has about the same size in the input whatever the camera or
   magnification.
6. White balance and levels (:func:`white_balance`): each channel is scaled so that the crop's
   brightest pixels (the background or the palest cytoplasm) become neutral grey, then the levels
   are stretched so its darkest pixels (the nucleus) reach a fixed depth: the lab's background
   tint and the strength of its stain are gone too.
7. Stain normalisation (:func:`normalise_stain`): every colour turned about the grey axis so that the
   nucleus has one hue, and scaled so that the image's coloured mid-tones (its red cells and cytoplasm:
   :func:`midtone_chroma`) have one chroma, whatever the lab's stain and camera. Version 2 scaled by the
   nucleus's own chroma, which also took away what tells one white cell from another (design.md).

Beside the pixels, :func:`prepare_cell` gives the crop's nucleus offset (the hue of its darkest pixels,
before step 7, against the nucleus hue; 180 when there is no whole nucleus: none found, a blank crop, or one cut by
the frame): the runtime labels a crop with no whole stained nucleus ``other``.

The result is a ``uint8`` array of shape ``(size, size, 3)`` with values 0-255; scaling to the
network's range happens inside the model. It is the same, byte for byte, on x86 and ARM (steps 5-7 use only
exactly rounded arithmetic in a fixed order; see "Platform-exact arithmetic" below; ``make pi-arm64`` compares).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from firmware_host.errors import ImageError, ImageWarning, first_line, os_reason, read_regular

PREPROCESSING_VERSION = 3
MAX_PIXELS = 50_000_000
"""Largest image accepted (width x height); larger ones are refused before decoding."""
MAX_FILE_BYTES = 256 * 2**20
"""Largest file read as one image (256 MiB); larger ones are refused without being read."""
MIN_SIDE = 8
"""Smallest width or height accepted: a smaller image cannot hold a cell."""
DIM_LEVEL = 64
"""An image whose brightest 1 % of pixels (their brightest channel) are darker than this, of 255, is refused as too
dark to read: the stain is lost in the noise, and a model would name it anyway. A 10-, 12- or 14-bit camera's values
saved in a 16-bit file unscaled read as 3, 15 or 63 at most. Measured: 3,000 images of ``../shared``, 169 or more."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".tif", ".tiff", ".bmp")
RESAMPLE = Image.Resampling.BILINEAR
DRAFT_FACTOR = 2
"""JPEGs are decoded at a DCT-scaled draft of at least this many times the target size: the cell
fills about half of a single-cell image, so this keeps the cell at or above the target's resolution."""
JPEG_FORMATS = ("JPEG", "MPO")
"""Pillow's names of a JPEG: MPO is a phone's or stereo camera's JPEG with further images (a preview, a depth map)
appended; its first image is an ordinary JPEG, decoded (at the draft size) like any other."""
LOCATE_SIDE = 48
"""The nucleus is located on a copy reduced to about this many pixels on its longer side."""
CELL_SCALE = 2.6
"""Side of the cell-centred crop, in nucleus radii (the RMS-based radius of the stained pixels)."""
WHITE_SHARE = 0.1
"""White balance takes the brightest share of the crop's pixels as the white reference."""
WHITE_LEVEL = 235.0
"""...and maps their mean to this grey level in every channel."""
MAX_GAIN = 1.6
"""Largest white-balance gain per channel (a crop that is all cell has no white to balance by)."""
DARK_SHARE = 0.02
"""Levels take the darkest share of the crop's pixels (the nucleus) as the black reference..."""
DARK_LEVEL = 60.0
"""...and bring their mean grey down (or up) to this level."""
MAX_STRETCH = 3.0
"""Largest levels stretch (an empty crop has no nucleus to stretch to)."""
NUCLEUS_SHARE = 0.1
"""Stain normalisation reads the nucleus colour from the darkest share of the crop's pixels..."""
NUCLEUS_HUE = -72.0
"""...turns every colour about the grey axis so that the nucleus has this hue angle (degrees in the
opponent plane of :func:`normalise_stain`; the median of the training labs' nuclei)..."""
MAX_HUE_TURN = 60.0
"""Largest hue turn, degrees (a crop without a nucleus has no stain to normalise by)."""
MIDTONE_SHARES = (0.15, 0.9)
"""The camera's saturation is read from the image's mid-tones: the pixels whose R+G+B lies between these shares of
the way through its pixels sorted by it (neither the nucleus nor the background)..."""
MIDTONE_MIN_CHROMA = 5.0
"""...that have a colour (chroma above this: red cells and cytoplasm, not grey plasma)..."""
MIDTONE_CHROMA = 19.0
"""...and every colour's distance from grey is scaled so that their median chroma is this. Measured (after white
balance, on the reduced image): 17.8-20.4 in both Kaggle labs and Barcelona's neutrophils, 44 in BCCD, whose camera
makes its red cells 2.2 times as vivid (design.md, "The camera's saturation read from the red cells")."""
CHROMA_GAIN = (0.3, 3.0)
"""Smallest and largest chroma gain; 1 when the image has no coloured mid-tones (a grey camera)."""
NO_NUCLEUS_HUE = 45.0
"""The nucleus check (:func:`prepare_cell`): a crop whose darkest pixels are further than this many degrees
of hue from :data:`NUCLEUS_HUE` holds no stained nucleus (red cells, background, debris). Every cell of the five
types from the three labs in ``../shared`` (4,867 images) is within 36 degrees; of the 1,484 cells of other types,
2 platelets are above 45. The least a model's check is set to (``edgecell.metrics.fit_nucleus_check`` raises it
to clear its training images)."""
NUCLEUS_MIN_CHROMA = 10.0
"""Below this chroma the crop's darkest pixels are grey (a monochrome camera): no hue to judge, no verdict."""
GREY_LEVELS = 2
"""An image whose channels differ by at most this many levels anywhere has no colour (:func:`has_no_colour`)."""
NO_COLOUR = -1.0
"""The nucleus offset of a cell image with no colour at all (a monochrome camera): no verdict on its nucleus (there is
no hue to read), and the runtime flags the cell ``uncertain - refer`` whatever its confidence, since edgecell reads
the stain's colours (25 grey monocytes were named basophil, monocyte and neutrophil, confidently and unflagged; a
review)."""
NO_NUCLEUS_FOUND = 180.0
"""The nucleus offset of a crop with no whole nucleus: nothing stained like a nucleus at all (:attr:`CellLocation.found`
False, in a coloured or a blank crop: :data:`FLAT_LEVELS`), or a nucleus cut by the frame (:data:`CUT_RADII`)."""
FLAT_LEVELS = 20.0
"""A crop in which no nucleus was found and whose brightest and darkest tenths of pixels differ by fewer grey levels
than this holds nothing (a blank background, an empty field): no whole nucleus, whether or not it has colour.
Measured: drawn blank backgrounds 4-7 levels; every real cell of ``../shared``, in colour or made grey, 43 or more."""
CUT_RADII = 0.6
"""A nucleus whose centre is nearer the image's edge than this many of its radii is cut by the frame: what is left
of the cell is not enough to name it. Measured on ``../shared`` (design.md, "Cut cells"): 76 % of cells cut through
their centre, 0.15 % of the Kaggle set's cells, none of Barcelona's, 0.9 % of the third lab's tight crops."""
_U = (1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0), 0.0)  # the opponent plane, orthogonal to grey (1, 1, 1)
_V = (1.0 / math.sqrt(6.0), 1.0 / math.sqrt(6.0), -2.0 / math.sqrt(6.0))


def _direction(degrees: float) -> tuple[float, float]:
    """(cos, sin) of a constant angle, rounded to 12 decimals: a platform's libm may differ in the last bit
    (about 1e-16), and rounding makes the constant the same everywhere (tests/test_preprocess_exact.py checks
    that no constant used lies within 1e-15 of a rounding boundary)."""
    t = math.radians(degrees)
    return round(math.cos(t), 12), round(math.sin(t), 12)


_HUE = _direction(NUCLEUS_HUE)
_MAX_TURN = _direction(MAX_HUE_TURN)
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm's constants): k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_TERMS = tuple(1.0 / math.factorial(i) for i in range(13))
"""Taylor coefficients of e**r to degree 12: below 2e-16 relative error for |r| <= ln(2)/2."""

PREPROCESSING = {
    "version": PREPROCESSING_VERSION,
    "decode": "pillow; JPEG draft (DCT scaling) to >= size",
    "exif_transpose": True,
    "color": "RGB uint8; alpha composited on white; 16-bit scaled by 1/257",
    "crop": f"cell-centred: nucleus by Otsu on blue-green at {LOCATE_SIDE} px, square of {CELL_SCALE} nucleus radii, background fill",
    "resize": "crop to size x size, PIL bilinear",
    "white_balance": f"brightest {WHITE_SHARE:.0%} of the crop to grey {WHITE_LEVEL:g}, gain <= {MAX_GAIN:g}",
    "levels": f"darkest {DARK_SHARE:.0%} to grey {DARK_LEVEL:g}, stretch <= {MAX_STRETCH:g}",
    "stain": (
        f"nucleus (darkest {NUCLEUS_SHARE:.0%}) to hue {NUCLEUS_HUE:g} deg, turn <= {MAX_HUE_TURN:g} deg; "
        f"median chroma of the white-balanced {LOCATE_SIDE} px image's mid-tones ({MIDTONE_SHARES[0]:.0%}-{MIDTONE_SHARES[1]:.0%} by R+G+B, "
        f"chroma > {MIDTONE_MIN_CHROMA:g}) to {MIDTONE_CHROMA:g}, gain {CHROMA_GAIN}"
    ),
    "range": "0-255 (scaling is inside the model)",
    "max_pixels": MAX_PIXELS,
}
"""What the metadata files record about preprocessing."""

# Pillow warns (then errors) about decompression bombs while opening a file. Turn the warning
# into an error once, here, rather than per call with ``warnings.catch_warnings()``, which is not
# thread-safe (images are decoded in thread pools) and could scramble other warning filters.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def describe() -> dict:
    """The preprocessing description stored in every metadata file."""
    return dict(PREPROCESSING)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # on white, strip by strip: the whole image as RGBA, a white one and their composite took 1 GB at 49 megapixels
        w, h = img.size
        out = Image.new("RGB", (w, h))
        rows = max(1, STRIP_BYTES // (w * 4))
        for y in range(0, h, rows):
            rgba = img.crop((0, y, w, min(h, y + rows))).convert("RGBA")
            out.paste(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB"), (0, y))
        return out
    if mode.startswith("I;16") or mode == "I":
        # rint(v / 257) in integers ((v + 128) // 257 is the same for every integer v), strip by strip
        return _grey_strips(img, lambda v: np.clip((v.astype(np.int64) + 128) // 257, 0, 255)).convert("RGB")
    if mode == "F":
        bad = [0]

        def levels(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float64)
            nan = ~np.isfinite(v)
            if nan.any():  # NaN would be cast to an arbitrary grey (and numpy warns without a file name)
                bad[0] += int(nan.sum())
                v = np.where(nan, 0.0, v)
            return np.clip(np.rint(v), 0, 255)

        grey = _grey_strips(img, levels)
        if bad[0]:
            w, h = img.size
            warnings.warn(ImageWarning(f"{bad[0]:,} of {w * h:,} pixels are not numbers (NaN or infinite); used as 0"), stacklevel=2)
        return grey.convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def _grey_strips(img: Image.Image, levels: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """A one-channel image of integers or floats (modes I;16, I, F) to an 8-bit grey one, ``levels`` giving each
    strip's values in 0-255: strip by strip (:data:`STRIP_BYTES`), since the whole image in float64 and its copies
    took 1.3 GB for a 49-megapixel 16-bit PNG of 110 KB (a review), where an 8-bit one of that size takes 400 MB."""
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    rows = max(1, STRIP_BYTES // (w * 8))
    for y in range(0, h, rows):
        out[y : y + rows] = levels(np.asarray(img.crop((0, y, w, min(h, y + rows)))))
    return Image.fromarray(out, "L")


_decoding = threading.local()


@contextlib.contextmanager
def warnings_about(path: str | os.PathLike) -> Iterator[None]:
    """Python warnings raised in the block are about ``path`` (:func:`decoding_path`), as those raised while decoding it."""
    prior = getattr(_decoding, "path", None)
    _decoding.path = os.fspath(path)
    try:
        yield
    finally:
        _decoding.path = prior


def decoding_path() -> str | None:
    """The file this thread is decoding now, or None: a warning raised meanwhile is about it."""
    return getattr(_decoding, "path", None)


def decode_rgb(data: bytes, draft: int | None = None, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Steps 1-4: encoded image bytes to an 8-bit RGB array ``(H, W, 3)`` of the upright image.

    ``draft``: for JPEG, let the decoder scale down (DCT scaling) to no less than ``draft`` pixels
    on each side. Raises :class:`ImageError` (naming ``path``) for anything that is not a usable image.
    Python warnings raised while decoding (corrupt EXIF, a multi-page TIFF) are about ``path``
    (:func:`decoding_path`; :func:`firmware_host.quiet.warning_lines` prints them naming it). A
    PNG whose colour profile cannot be read is decoded without it, with a warning.
    """
    with warnings_about(path):
        try:
            return _decode_rgb(data, draft, path)
        except ImageError as exc:
            stripped = _png_without(data, b"iCCP")
            if stripped is None:
                raise
            arr = _decode_rgb(stripped, draft, path)  # any other fault of the file still stands
            warnings.warn(ImageWarning(f"its colour profile (PNG iCCP chunk) cannot be read ({exc.reason}); decoded without it"), stacklevel=2)
            return arr


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE_MAGIC = (b"\xff\xd8\xff", _PNG_MAGIC, b"II*\x00", b"MM\x00*")
"""How JPEG, PNG and TIFF files begin (:func:`firmware_host.paths.starts_as_image` knows a picture without a suffix by them)."""


def _png_without(data: bytes, kind: bytes) -> bytes | None:
    """``data`` (a PNG) without its ``kind`` chunks, or None if it is not a PNG or has none."""
    if not data.startswith(_PNG_MAGIC):
        return None
    out, i, dropped = [data[:8]], 8, False
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 12 + length
        if data[i + 4 : i + 8] == kind:
            dropped = True
        else:
            out.append(data[i:end])
        i = end
    out.append(data[i:])
    return b"".join(out) if dropped else None


STRIP_BYTES = 1 << 22
"""An RGB image over this many bytes is copied into its array in strips of about this size (:func:`_pixels`)."""


def _pixels(img: Image.Image) -> np.ndarray:
    """An RGB Pillow image's pixels as a ``(H, W, 3)`` uint8 array. ``np.asarray`` of a large image holds two more
    copies of it while it converts (Pillow's bytes, joined from chunks): 280 MB at the peak for 49 megapixels, which
    a 512 MB Pi cannot spare. Strip by strip, the peak is the array and one strip."""
    w, h = img.size
    if w * h * 3 <= STRIP_BYTES:
        return np.asarray(img, dtype=np.uint8)
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, STRIP_BYTES // (w * 3))
    for y in range(0, h, rows):
        out[y : y + rows] = np.asarray(img.crop((0, y, w, min(h, y + rows))), dtype=np.uint8)
    return out


def rgb_array(rgb: np.ndarray, path: str | os.PathLike, hint: str = "") -> np.ndarray:
    """``rgb`` as a C-contiguous ``(H, W, 3)`` uint8 array, or an :class:`ImageError` naming ``path`` and saying what
    it is instead (``hint``: where to turn, in brackets). Never converted: a 12- or 16-bit frame cast to uint8 wraps
    round, and a float one in 0-1 turns black, each then read as a plausible, wrong picture."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ImageError(f"array shape {rgb.shape} dtype {rgb.dtype}, expected (H, W, 3) uint8 RGB" + (f" ({hint})" if hint else ""), path)
    return np.ascontiguousarray(rgb)


DARK_CAUSES = {
    "8-bit": "underexposed (take it again with more light)",
    "float": "a float image's values are read as levels of 0-255, so values of 0-1 are black (save it at 8 bits, 0-255)",
    "": "underexposed, or a 10- to 14-bit camera's values saved in a 16-bit file unscaled (save it at 8 bits, or scaled to 16)",
}
"""Why an image may be nearly black, for :func:`check_exposure`: by what it was (``"8-bit"``: a JPEG or a uint8 array,
``"float"``: Pillow's mode F; ``""``: any other file, which may have been 16-bit: Pillow reads a 48-bit TIFF as RGB)."""


def dark_kind(img: Image.Image) -> str:
    """The key of :data:`DARK_CAUSES` for an image opened by Pillow."""
    return "float" if img.mode == "F" else "8-bit" if img.format in JPEG_FORMATS else ""


def check_exposure(rgb: np.ndarray, path: str | os.PathLike, what: str = "image", kind: str = "8-bit") -> np.ndarray:
    """``rgb`` (uint8, ``(H, W, 3)``) unchanged, or an :class:`ImageError` when it is too dark to read (:data:`DIM_LEVEL`),
    with the likely cause for an image of its ``kind`` (:data:`DARK_CAUSES`). Read on a grid of about 4,096 pixels,
    so it costs microseconds even for a whole field of view."""
    h, w = rgb.shape[:2]
    step = max(1, math.isqrt(h * w // 4096))
    brightest = rgb[::step, ::step].max(axis=2).ravel()
    k = brightest.size - 1 - brightest.size // 100  # the brightest 1 % begins here
    top = int(np.partition(brightest, k)[k])
    if top < DIM_LEVEL:
        raise ImageError(
            f"{what} is nearly black (its brightest pixels at {top} of 255, a smear's background {DIM_LEVEL} or more): " + DARK_CAUSES[kind],
            path,
        )
    return rgb


def _check_size(w: int, h: int, path: str | os.PathLike) -> None:
    if w * h > MAX_PIXELS:
        raise ImageError(_too_large(f"{w}x{h} pixels"), path)
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image is {w}x{h} pixels, too small to hold a cell (minimum {MIN_SIDE}x{MIN_SIDE})", path)


def image_rgb(img: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    """An image already open in Pillow (any mode) as the 8-bit RGB array ``(H, W, 3)`` that decoding its file would
    give: upright by its EXIF orientation, transparency on white, 16-bit scaled, the same size limits. ``path`` only
    names it in an :class:`ImageError`."""
    _check_size(*img.size, path)
    kind = dark_kind(img)
    try:
        rgb = _pixels(_to_rgb(ImageOps.exif_transpose(img)))
    except MemoryError:
        raise ImageError("not enough memory to convert this image", path) from None
    except Exception as exc:
        raise ImageError(f"cannot convert image to RGB ({first_line(exc)})", path) from None
    return check_exposure(rgb, path, kind=kind)


def unread_jpeg(img: Image.Image) -> bytes | str | None:
    """Where the bytes of a JPEG that Pillow has opened but not yet decoded are (``Image.open`` is lazy): the data of an
    in-memory file, or the file's path; None for any other image. Such an image can be decoded as its file is, at a
    reduced size (DCT scaling, :data:`DRAFT_FACTOR`) as in training; decoded at full size first, 2.8 % of 400 cells of
    ``../shared`` got another label from a model trained at 40 px."""
    if img.format not in JPEG_FORMATS or not getattr(img, "tile", None):  # decoded already (``tile`` empties on load), or not a JPEG
        return None
    fp = getattr(img, "fp", None)
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()
    name = getattr(img, "filename", "")
    return name if name and os.path.isfile(name) else None


def _decode_rgb(data: bytes, draft: int | None, path: str | os.PathLike) -> np.ndarray:
    if not data:
        raise ImageError("empty file (0 bytes)", path)
    try:
        img = Image.open(io.BytesIO(data))
        _check_size(*img.size, path)
        # ``is_animated`` looks at the second page only; ``n_frames`` walks every page (50,000 1-pixel pages: 28 s).
        # A phone's JPEG with a preview or depth map appended (MPO) is a JPEG photo: no warning, and decoded as one.
        if img.format not in JPEG_FORMATS and getattr(img, "is_animated", False):
            warnings.warn(ImageWarning("has more than one page (frame); only the first is used"), stacklevel=2)
        if img.format in JPEG_FORMATS and draft:
            img.draft("RGB", (draft, draft))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # not a copy: a 50-megapixel image is 150 MB more at the peak
        kind = dark_kind(img)
        rgb = _pixels(_to_rgb(img))
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read", path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refused it while reading the header: "Image size (N pixels) exceeds limit ..."
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(_too_large(f"{int(m.group(1)):,} pixels" if m else "too many pixels"), path) from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image", path) from None
    except Exception as exc:  # truncated data, broken headers, codec errors: all one kind for the user
        reason = first_line(exc)
        if reason.startswith("image file is truncated") or "Truncated File Read" in reason:  # Pillow's words say nothing to a user
            # (the second: a JPEG cut off inside its header)
            raise ImageError("the file ends early (truncated: a copy or a camera's write cut short?); copy it again", path) from None
        raise ImageError(f"cannot decode image ({reason})", path) from None
    return check_exposure(rgb, path, kind=kind)


def decode(data: bytes, size: int, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Preprocess encoded image bytes into a ``(size, size, 3)`` uint8 array (every step).

    Raises :class:`ImageError` (naming ``path``) for anything that is not a usable image.
    """
    return decode_cell(data, size, path)[0]


PROBE_SIZE = 16
"""The size to decode a cell at only to prove that it decodes (the data check, ``corrections apply``): small is fast."""


def decode_cell(data: bytes, size: int, path: str | os.PathLike = "<bytes>") -> tuple[np.ndarray, float]:
    """:func:`decode`, and the nucleus offset of :func:`prepare_cell`."""
    rgb = decode_rgb(data, DRAFT_FACTOR * size, path)
    try:
        arr, offset = prepare_cell(rgb, size)
    except MemoryError:
        raise ImageError("not enough memory to preprocess this image", path) from None
    if arr.shape != (size, size, 3):
        raise ImageError(f"decoded to shape {arr.shape}, expected {(size, size, 3)}", path)
    return arr, offset


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of ``values``: the cut that best separates them into two classes
    (the centre of the histogram bin that maximises the between-class variance)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or v.max() <= v.min():
        return float(v.max()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    p = hist / max(1, hist.sum())
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(mids[int(np.argmax(np.nan_to_num(between, nan=0.0, posinf=0.0)))])


def stain_map(rgb: np.ndarray) -> np.ndarray:
    """How strongly each pixel is stained like a nucleus: blue minus green, as float64.

    Romanowsky stains (May-Grunwald-Giemsa, Wright, Leishman) colour nuclei blue-violet; red cells,
    plasma and background are pink, peach or white, with blue no higher than green.
    """
    rgb = np.asarray(rgb)
    return rgb[..., 2].astype(np.float64) - rgb[..., 1].astype(np.float64)


@dataclass(frozen=True)
class CellLocation:
    """Where the cell is in an image: centre (``cy``, ``cx``) and nucleus radius, in pixels.

    ``found`` is False when the image holds nothing stained like a nucleus (then the location is
    the image centre with a quarter of its shorter side as radius: the whole image, as version 1).
    """

    cy: float
    cx: float
    radius: float
    found: bool


def reduced(rgb: np.ndarray, work_side: int = LOCATE_SIDE) -> tuple[np.ndarray, int]:
    """A copy of ``rgb`` box-reduced by a whole factor to about ``work_side`` pixels, and the factor."""
    h, w = rgb.shape[:2]
    factor = max(1, max(h, w) // work_side)
    return (np.asarray(Image.fromarray(rgb, "RGB").reduce(factor)) if factor > 1 else rgb), factor


def locate_cell(rgb: np.ndarray, work_side: int = LOCATE_SIDE, small: tuple[np.ndarray, int] | None = None) -> CellLocation:
    """Locate the nucleus nearest the centre of a single-cell image.

    On a copy reduced to about ``work_side`` pixels, pixels above Otsu's threshold of
    :func:`stain_map` are nucleus candidates, weighted by how far above it they are. A weighted
    mean shift, starting at the image centre with a Gaussian window, moves to the nucleus that
    dominates the middle of the image (cells from other lab's crops, and platelets near the edge,
    weigh little); the radius is the RMS distance of the candidates near it, times sqrt(2) (the
    radius of a uniform disc with that RMS distance). Lobed nuclei count as one.
    """
    h, w = rgb.shape[:2]
    small, factor = small or reduced(rgb, work_side)
    sh, sw = small.shape[:2]
    stain = stain_map(small)
    fallback = CellLocation(h / 2, w / 2, min(h, w) / 4, False)
    t = otsu_threshold(stain)
    if not np.isfinite(t) or stain.max() - stain.min() < 16:  # flat: no nucleus against a background
        return fallback
    iy, ix = np.nonzero(stain > t)
    if len(iy) < 4:
        return fallback
    wts = stain[iy, ix] - t
    rows, cols = np.arange(sh) + 0.5, np.arange(sw) + 0.5  # pixel centres
    ys, xs = rows[iy], cols[ix]
    span = float(max(sh, sw))
    cy, cx, sigma = sh / 2, sw / 2, 0.3 * span
    for _ in range(5):
        dy2, dx2 = (rows - cy) ** 2, (cols - cx) ** 2
        d2 = dy2[iy] + dx2[ix]
        # the Gaussian window is separable: exp of one value per row and per column, not per pixel
        window = exp_exact(np.concatenate([dy2, dx2]) / (-2 * sigma * sigma))
        g = wts * window[iy] * window[sh + ix]
        total = float(g.sum())
        if total <= 0:
            return fallback
        cy, cx = float((g * ys).sum() / total), float((g * xs).sum() / total)
        sigma = float(np.clip(2.0 * np.sqrt((g * d2).sum() / total), 0.15 * span, 0.3 * span))
    d2 = (ys - cy) ** 2 + (xs - cx) ** 2
    near = d2 < (2.5 * sigma) ** 2
    radius = float(np.sqrt(2 * np.average(d2[near], weights=wts[near])))
    return CellLocation(cy * factor, cx * factor, max(radius, 1.0) * factor, True)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float64 pixel values to uint8: rounded to the nearest (half to even) and clipped to 0-255."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# Platform-exact arithmetic. x86 and ARM must give the model the same input bytes (make pi-arm64 checks it), so
# every number that reaches a pixel comes from operations IEEE 754 rounds the same everywhere (+ - * / sqrt, rint,
# comparisons) applied in a fixed order: no np.exp/np.sin/np.hypot (numpy's x86 build has its own AVX-512 code for
# them, ARM uses libm: the last bit differs), no BLAS product (its kernels sum in a CPU-dependent order), no float
# reduction over values whose order a partition leaves undefined, and no choice among ties left to argpartition.


def exp_exact(x: np.ndarray) -> np.ndarray:
    """``e**x`` of a float64 array (``x`` above -700) with the same bits on every machine.

    ``x = k ln 2 + r`` with ``|r| <= ln(2)/2``; ``e**r`` by its Taylor polynomial (:data:`_EXP_TERMS`),
    scaled by ``2**k`` exactly (``np.ldexp``). Within 2 ulp of ``np.exp``, whose x86 SIMD code differs from
    ARM's by an ulp.
    """
    x = np.asarray(x, dtype=np.float64)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = r * _EXP_TERMS[-1]
    p += _EXP_TERMS[-2]
    for c in _EXP_TERMS[-3::-1]:
        p *= r
        p += c
    return np.ldexp(p, k.astype(np.int64))


def extreme_mean(pixels: np.ndarray, k: int, brightest: bool) -> np.ndarray:
    """Mean colour (float64, 3 values) of the ``k`` brightest (or darkest) of ``pixels`` (uint8, ``(n, 3)``)
    by R+G+B.

    The pixels tied with the k-th share the places left equally, so the result does not depend on which
    of them a partition picks (numpy's argpartition picks different ones on x86 and ARM: with version 2's
    first code, most images then differed by one or more levels in hundreds of values). The sums are of
    integers, exact in any order; only the last two divisions round.
    """
    keys = pixels[:, 0].astype(np.int32) + pixels[:, 1] + pixels[:, 2]
    n = len(keys)
    kth = n - k if brightest else k - 1
    cut = np.partition(keys, kth)[kth]
    beyond = keys > cut if brightest else keys < cut
    tied = keys == cut
    need = k - int(np.count_nonzero(beyond))
    tied_sum = pixels[tied].sum(axis=0, dtype=np.int64)
    return (pixels[beyond].sum(axis=0, dtype=np.int64) + need * tied_sum / int(np.count_nonzero(tied))) / k


def white_gains(rgb: np.ndarray) -> np.ndarray:
    """Per-channel gains that bring the brightest :data:`WHITE_SHARE` of pixels to :data:`WHITE_LEVEL`.

    Taken over the whole image (mostly background in a single-cell image), not the crop, whose
    brightest pixels may be a pale cytoplasm. Limited to :data:`MAX_GAIN` either way.
    """
    flat = rgb.reshape(-1, 3)
    k = max(1, int(len(flat) * WHITE_SHARE))
    bright = extreme_mean(flat, k, brightest=True)
    return np.clip(WHITE_LEVEL / np.maximum(bright, 1.0), 1.0 / MAX_GAIN, MAX_GAIN)


def white_balance(rgb: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Neutral white and a fixed black: the lab's tint and stain strength taken out.

    Each channel is scaled by ``gains`` (:func:`white_gains`); then the levels are stretched, the
    same for every channel (hue kept), so that the darkest :data:`DARK_SHARE` of pixels sit at
    :data:`DARK_LEVEL` (stretch limited to :data:`MAX_STRETCH`): a pale, thinly stained nucleus
    from one lab and a dark one from another end at the same depth.
    """
    flat = rgb.reshape(-1, 3) * np.asarray(gains, dtype=np.float64)
    n = len(flat)
    kd = max(1, int(n * DARK_SHARE))
    grey = (flat[:, 0] + flat[:, 1] + flat[:, 2]) / 3.0  # column additions: far faster than mean(axis=1) over rows of 3
    dark = math.fsum(np.partition(grey, kd)[:kd].tolist()) / kd  # fsum: exactly rounded, whatever the partition's order
    stretch = min(MAX_STRETCH, (WHITE_LEVEL - DARK_LEVEL) / max(WHITE_LEVEL - dark, 1.0))
    flat = WHITE_LEVEL - (WHITE_LEVEL - flat) * stretch
    return np.clip(flat + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape)


def stain_turn(a: float, b: float, chroma: float) -> tuple[float, float]:
    """(cos, sin) of the turn that brings the colour ``(a, b)`` (opponent plane; ``chroma`` its length) to
    :data:`NUCLEUS_HUE`, at most :data:`MAX_HUE_TURN` either way.

    Without trigonometry on the colour: the cosine and sine are the dot and cross products of the two unit
    directions. A turn beyond the limit is the limit, on the side ``NUCLEUS_HUE - atan2(b, a)`` falls on
    (degrees in -180..180, as version 2 defined it); that comparison is never within a last-bit of its
    boundary, since the colour is then more than :data:`MAX_HUE_TURN` away from the target hue.
    """
    (ch, sh), (cm, sm) = _HUE, _MAX_TURN
    cos_t, sin_t = (a * ch + b * sh) / chroma, (a * sh - b * ch) / chroma
    if cos_t < cm:
        return cm, (sm if math.atan2(b, a) < math.radians(NUCLEUS_HUE) else -sm)
    return cos_t, sin_t


def nucleus_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """The colour of the darkest :data:`NUCLEUS_SHARE` of ``rgb``'s pixels in the opponent plane: ``(a, b, chroma)``."""
    pixels = rgb.reshape(-1, 3)
    k = max(1, int(len(pixels) * NUCLEUS_SHARE))
    nucleus = [float(v) for v in extreme_mean(pixels, k, brightest=False)]
    grey = (nucleus[0] + nucleus[1] + nucleus[2]) / 3.0
    off = [v - grey for v in nucleus]
    a = off[0] * _U[0] + off[1] * _U[1] + off[2] * _U[2]
    b = off[0] * _V[0] + off[1] * _V[1] + off[2] * _V[2]
    return a, b, math.sqrt(a * a + b * b)


def hue_offset(a: float, b: float, chroma: float) -> float:
    """Degrees (0-180) between the hue of the colour ``(a, b)`` and :data:`NUCLEUS_HUE`; NaN below :data:`NUCLEUS_MIN_CHROMA`.

    Used only for the nucleus check's verdict, never for pixels, so ``atan2`` is fine here: a last-bit
    difference between platforms moves the angle by about 1e-14 degrees.
    """
    if chroma < NUCLEUS_MIN_CHROMA:
        return math.nan
    return abs((math.degrees(math.atan2(b, a)) - NUCLEUS_HUE + 180.0) % 360.0 - 180.0)


def no_nucleus(offset, limit: float = NO_NUCLEUS_HUE):
    """Whether a crop with this nucleus offset (:func:`prepare_cell`; a float or an array) holds no stained
    nucleus: the offset is above ``limit``. NaN: no verdict (False)."""
    with np.errstate(invalid="ignore"):
        out = np.asarray(offset, dtype=np.float64) > limit
    return bool(out) if out.ndim == 0 else out


def midtone_chroma(rgb: np.ndarray) -> float | None:
    """The median chroma of ``rgb``'s coloured mid-tones (:data:`MIDTONE_SHARES`, :data:`MIDTONE_MIN_CHROMA`), or
    None when it has none: how vivid the camera and stain make everything in the image.

    In integers until the last step, so every machine gives the same value: a pixel's squared chroma (its squared
    distance from the grey axis) is ``((r-g)**2 + (g-b)**2 + (b-r)**2) / 3``; the order statistics are picked by
    index (no interpolation), and one square root is taken.
    """
    px = rgb.reshape(-1, 3).astype(np.int64)
    keys = px[:, 0] + px[:, 1] + px[:, 2]
    n = len(keys)
    lo_at, hi_at = (min(n - 1, int(n * share)) for share in MIDTONE_SHARES)
    lo, hi = np.partition(keys, (lo_at, hi_at))[[lo_at, hi_at]]
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    chroma2x3 = (r - g) ** 2 + (g - b) ** 2 + (b - r) ** 2  # 3 x squared chroma
    coloured = chroma2x3[(keys >= lo) & (keys <= hi) & (chroma2x3 > 3 * MIDTONE_MIN_CHROMA**2)]
    if len(coloured) == 0:
        return None
    mid = len(coloured) // 2
    return math.sqrt(float(np.partition(coloured, mid)[mid]) / 3.0)


def chroma_gain(midtones: float | None) -> float:
    """The stain step's chroma gain for an image whose coloured mid-tones have chroma ``midtones``
    (:func:`midtone_chroma`): to :data:`MIDTONE_CHROMA`, within :data:`CHROMA_GAIN`; 1 without any."""
    if midtones is None:
        return 1.0
    return min(max(MIDTONE_CHROMA / midtones, CHROMA_GAIN[0]), CHROMA_GAIN[1])


def normalise_stain(rgb: np.ndarray, colour: tuple[float, float, float] | None = None, gain: float | None = None) -> np.ndarray:
    """One stain for every lab: the nucleus turned to one hue, the camera's saturation taken out, greys kept.

    Each lab's stain gives its nuclei their own hue (violet, purple, blue), and its stain and camera make
    everything more or less vivid; a model that sees either learns the lab. The nucleus colour is the mean of the
    darkest :data:`NUCLEUS_SHARE` of pixels; every pixel's colour, split into its grey level and its offset from
    grey, has that offset turned about the grey axis by the angle that brings the nucleus to :data:`NUCLEUS_HUE`
    and scaled by ``gain`` (:func:`chroma_gain`; by default that of ``rgb`` itself), a single 3x3 matrix. The gain
    is read from the red cells and cytoplasm, not from the nucleus, so a vivid lab is toned down while a cell that is
    more vivid than its neighbours (an eosinophil's granules, a lymphocyte's blue) stays so. Grey and white stay as
    they are; colours keep their differences of hue within the cell. ``colour``: :func:`nucleus_colour` of ``rgb``,
    when the caller has it already.
    """
    pixels = rgb.reshape(-1, 3)
    a, b, chroma = colour or nucleus_colour(rgb)
    if chroma < 1.0:
        return rgb
    cos_t, sin_t = stain_turn(a, b, chroma)
    if gain is None:
        gain = chroma_gain(midtone_chroma(rgb))
    # m = gain * B^T R B + 1/3 with B = (U; V), R the turn: written out, in Python floats (no BLAS product)
    m = [[gain * (_U[c] * (cos_t * _U[j] - sin_t * _V[j]) + _V[c] * (sin_t * _U[j] + cos_t * _V[j])) + 1.0 / 3.0 for j in range(3)] for c in range(3)]
    flat = pixels.astype(np.float64)
    out = np.empty_like(flat)
    for c in range(3):  # three multiply-adds per channel, element-wise
        out[:, c] = flat[:, 0] * m[c][0] + flat[:, 1] * m[c][1] + flat[:, 2] * m[c][2]
    return to_uint8(out).reshape(rgb.shape)


def has_no_colour(rgb: np.ndarray) -> bool:
    """Whether an RGB uint8 image's channels differ by at most :data:`GREY_LEVELS` anywhere (a monochrome camera's
    picture saved as RGB, or a grey one). A large image is read from a sample of about a quarter of a million pixels."""
    h, w = rgb.shape[:2]
    step = max(1, int(np.sqrt(h * w / 250_000)))
    sample = rgb[::step, ::step].astype(np.int16)
    return int(np.abs(sample - sample[..., 1:2]).max()) <= GREY_LEVELS


def is_flat(rgb: np.ndarray, levels: float = FLAT_LEVELS) -> bool:
    """Whether ``rgb`` holds nothing: the mean of its brightest :data:`NUCLEUS_SHARE` of pixels is within ``levels``
    grey levels of the mean of its darkest (a blank background, whatever its tint)."""
    pixels = rgb.reshape(-1, 3)
    k = max(1, int(len(pixels) * NUCLEUS_SHARE))
    spread = extreme_mean(pixels, k, brightest=True) - extreme_mean(pixels, k, brightest=False)
    return float(spread.sum()) / 3.0 < levels


def is_cut(loc: CellLocation, height: int, width: int, radii: float = CUT_RADII) -> bool:
    """Whether the located nucleus is cut by the frame of a ``height`` x ``width`` image: its centre is nearer an
    edge than ``radii`` of its radii (a cell at the edge of a photo, or cropped through)."""
    return min(loc.cx, loc.cy, width - loc.cx, height - loc.cy) < radii * loc.radius


def cell_box(loc: CellLocation, scale: float = CELL_SCALE) -> tuple[float, float, float, float]:
    """The square (x0, y0, x1, y1) of ``scale`` nucleus radii centred on the cell."""
    half = scale * loc.radius / 2
    return (loc.cx - half, loc.cy - half, loc.cx + half, loc.cy + half)


def prepare(rgb: np.ndarray, size: int) -> np.ndarray:
    """The step after decoding: an RGB uint8 array of any shape ``(H, W, 3)`` to the model's input.

    Cell-centred crop, resize, white balance and stain (steps 5 to 7 of the module docstring).
    ``decode`` calls it for files; ``scan`` calls it for the region around each cell it finds in
    a field of view, so a cell cut from a field gets exactly the preprocessing of a single-cell image.
    """
    return prepare_cell(rgb, size)[0]


def prepare_cell(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """:func:`prepare`, and the crop's nucleus offset: the degrees of hue between its darkest pixels (before the
    stain is normalised) and :data:`NUCLEUS_HUE`.

    A white cell's nucleus is the darkest, most violet thing in a stained smear, in every lab; a crop whose
    darkest pixels are red (red cells) or of another hue holds no white cell, and :func:`no_nucleus`
    says so (offset above :data:`NO_NUCLEUS_HUE`). :data:`NO_NUCLEUS_FOUND` when there is no whole nucleus:
    nothing stained like one was found at all (in colour, or in a blank crop: :func:`is_flat`), or the one found
    is cut by the frame (:func:`is_cut`); :data:`NO_COLOUR` when the whole image has no colour (no verdict; the runtime
    flags the cell); NaN when the darkest pixels are grey in a coloured image (no verdict: the cell stays the model's).
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    small = reduced(rgb)
    loc = locate_cell(rgb, small=small)
    cut = loc.found and is_cut(loc, rgb.shape[0], rgb.shape[1])
    x0, y0, x1, y1 = cell_box(loc)
    img = Image.fromarray(rgb, "RGB")
    if x0 < 0 or y0 < 0 or x1 > rgb.shape[1] or y1 > rgb.shape[0]:
        fill = tuple(int(v) for v in rgb[:: max(1, rgb.shape[0] // 16), :: max(1, rgb.shape[1] // 16)].reshape(-1, 3).max(axis=0))
        side = int(np.ceil(x1 - x0))
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        canvas = Image.new("RGB", (side + 1, side + 1), fill)
        canvas.paste(img, (-ix0, -iy0))
        img, x0, y0, x1, y1 = canvas, x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0
    out = img.resize((size, size), RESAMPLE, box=(x0, y0, x1, y1))
    gains = white_gains(small[0])
    balanced = white_balance(np.asarray(out, dtype=np.uint8), gains)
    colour = nucleus_colour(balanced)
    offset = hue_offset(*colour)
    if cut or (not loc.found and (not math.isnan(offset) or is_flat(small[0]))):
        offset = NO_NUCLEUS_FOUND
    elif has_no_colour(small[0]):
        offset = NO_COLOUR
    return normalise_stain(balanced, colour, chroma_gain(midtone_chroma(white_balance(small[0], gains)))), offset


def _too_large(what: str) -> str:
    return f"image is {what}, over the {MAX_PIXELS:,}-pixel limit (refused from its header, before decoding, to protect memory)"


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, turning every OS-level failure into an :class:`ImageError`.

    Only regular files are read (a named pipe or a device called ``x.jpg`` would block or never
    end), and none over :data:`MAX_FILE_BYTES` (a multi-gigabyte whole-slide scan would exhaust a
    Pi's memory before its header could be checked): :func:`firmware_host.errors.read_regular`.
    """
    try:
        return read_regular(path, MAX_FILE_BYTES, ImageError, "image file")
    except FileNotFoundError:
        if Path(path).is_symlink():
            raise ImageError("broken symbolic link", path) from None
        raise ImageError("no such file", path) from None
    except PermissionError:
        raise ImageError("permission denied", path) from None
    except OSError as exc:
        raise ImageError(f"cannot read ({os_reason(exc)})", path) from None
    except ValueError as exc:  # a name holding a NUL byte
        raise ImageError(f"cannot read ({first_line(exc)})", path) from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read and preprocess one image file; see the module docstring for the exact steps."""
    return decode(read_bytes(path), size, path)


def load_cell(path: str | os.PathLike, size: int) -> tuple[np.ndarray, float]:
    """:func:`load_image`, and the nucleus offset of :func:`prepare_cell`."""
    return decode_cell(read_bytes(path), size, path)
