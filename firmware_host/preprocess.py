"""Image preprocessing, defined once for training, conversion, calibration and the Pi.

The training side (``edgecell.data``) and the runtime (``firmware_host.runtime``) both call
:func:`load_image`, so a model sees the same pixels on the Pi that it saw in training.
Only numpy and Pillow are imported here.

Steps (preprocessing version 1):

1. Read the file's bytes; refuse what is not a regular file, files over
   :data:`MAX_FILE_BYTES`, empty files, and images over :data:`MAX_PIXELS` pixels (checked from
   the header, before decoding, so a 20000x20000 image cannot freeze a Pi) or under
   :data:`MIN_SIDE` pixels wide or high.
2. For JPEG, ask the decoder for a DCT-scaled draft no smaller than the target size
   (``Image.draft``): a 2-4x faster decode with the same result on every machine.
3. Apply the EXIF orientation (``ImageOps.exif_transpose``).
4. Convert to 8-bit RGB: transparency is composited onto white; 16-bit and 32-bit integer
   images are scaled by 1/257; float images are clipped to 0-255; CMYK, palette, grey and
   other modes go through Pillow's ``convert("RGB")``.
5. Resize the whole image (no crop, aspect ratio not kept) to ``size`` x ``size`` with
   Pillow's bilinear filter (``Image.Resampling.BILINEAR``, antialiased when shrinking).
   Every image ends at one size, whatever the lab's camera, so image size tells the model
   nothing.

The result is a ``uint8`` array of shape ``(size, size, 3)`` with values 0-255; scaling to the
network's range happens inside the model.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from firmware_host.errors import ImageError, first_line

PREPROCESSING_VERSION = 1
MAX_PIXELS = 50_000_000
"""Largest image accepted (width x height); larger ones are refused before decoding."""
MAX_FILE_BYTES = 256 * 2**20
"""Largest file read as one image (256 MiB); larger ones are refused without being read."""
MIN_SIDE = 8
"""Smallest width or height accepted: a smaller image cannot hold a cell."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
RESAMPLE = Image.Resampling.BILINEAR

PREPROCESSING = {
    "version": PREPROCESSING_VERSION,
    "decode": "pillow; JPEG draft (DCT scaling) to >= size",
    "exif_transpose": True,
    "color": "RGB uint8; alpha composited on white; 16-bit scaled by 1/257",
    "resize": "whole image to size x size, PIL bilinear",
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
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def decode(data: bytes, size: int, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Preprocess encoded image bytes into a ``(size, size, 3)`` uint8 array.

    Raises :class:`ImageError` (naming ``path``) for anything that is not a usable image.
    """
    if not data:
        raise ImageError("empty file (0 bytes)", path)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageError(_too_large(f"{w}x{h} pixels"), path)
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"image is {w}x{h} pixels, too small to hold a cell (minimum {MIN_SIDE}x{MIN_SIDE})", path)
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
        img = ImageOps.exif_transpose(img)
        arr = prepare(np.asarray(_to_rgb(img), dtype=np.uint8), size)
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
        raise ImageError(f"cannot decode image ({reason})", path) from None
    if arr.shape != (size, size, 3):
        raise ImageError(f"decoded to shape {arr.shape}, expected {(size, size, 3)}", path)
    return arr


def prepare(rgb: np.ndarray, size: int) -> np.ndarray:
    """The step after decoding: an RGB uint8 array of any shape ``(H, W, 3)`` to the model's input.

    ``decode`` calls it for files; ``scan`` calls it for the region around each cell it finds in a
    field of view, so a cell cut from a field gets exactly the preprocessing of a single-cell image.
    """
    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    return np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), RESAMPLE), dtype=np.uint8)


def _too_large(what: str) -> str:
    return f"image is {what}, over the {MAX_PIXELS:,}-pixel limit (refused from its header, before decoding, to protect memory)"


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, turning every OS-level failure into an :class:`ImageError`.

    Only regular files are read (a named pipe or a device called ``x.jpg`` would block or never
    end), and none over :data:`MAX_FILE_BYTES` (a multi-gigabyte whole-slide scan would exhaust a
    Pi's memory before its header could be checked).
    """
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("is a directory, not an image file", path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("is not a regular file (a pipe, socket or device); not read", path)
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(f"file is {st.st_size / 2**20:,.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit for one image (not read)", path)
        with open(p, "rb") as fh:
            data = fh.read(st.st_size + 1)  # +1: notice a file that grew since stat()
        if len(data) > MAX_FILE_BYTES:  # grew while being read
            raise ImageError(f"file is over the {MAX_FILE_BYTES // 2**20} MiB limit for one image (not read)", path)
        return data
    except ImageError:
        raise
    except FileNotFoundError:
        if p.is_symlink():
            raise ImageError("broken symbolic link", path) from None
        raise ImageError("no such file", path) from None
    except PermissionError:
        raise ImageError("permission denied", path) from None
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})", path) from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read and preprocess one image file; see the module docstring for the exact steps."""
    return decode(read_bytes(path), size, path)
