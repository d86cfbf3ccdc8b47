"""Reliability: every bad input gets a clear error, nothing is lost, interrupted work leaves no damage.

Each case goes through the command line (``CliRunner`` on :data:`edgecell.cli.cli`, or a
subprocess where a signal is needed) and checks what a user sees:

* a one-line ``Error: PATH: what is wrong`` and a non-zero exit when the whole job cannot go on;
* one ``error:``/``warning:`` line per bad input, naming it, while the other inputs are still used;
* never a traceback (except with ``--debug``), never a half-written file, earlier results intact.

docs/reliability.md lists every case and what edgecell does with it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecell.cli import cli
from firmware_host import atomic
from firmware_host.errors import EdgecellError, ImageError, LeftOver
from firmware_host.preprocess import MAX_PIXELS, decode, decode_rgb, load_image
from tests._realdata import make_slice
from tests._tflite_fixtures import CLASSES, copy_model, labelled_folder, reseal, save_jpeg

ROOT = Path(__file__).resolve().parents[1]
LATIN1_NAME = os.fsdecode(b"caf\xe9 cell.png")  # not valid UTF-8: reaches Python as a lone surrogate
UNICODE_NAME = "cell with spaces é ü 漢字.png"


# ------------------------------------------------------------------------------------- helpers


def cli_run(*args, **kwargs):
    """Invoke the CLI in-process; no exception may escape it and no traceback may be printed."""
    res = CliRunner().invoke(cli, [os.fspath(a) if isinstance(a, Path) else str(a) for a in args], **kwargs)
    assert "Traceback" not in res.output, res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"an exception escaped the CLI: {res.exception!r}\n{res.output}") from res.exception
    return res


def warning_lines(text: str) -> list[str]:
    """The ``warning:`` lines of ``text``, but the one about the test model itself (the small fixtures have no `other`
    class, and classify and scan say so before every run)."""
    return [ln for ln in text.splitlines() if ln.startswith("warning:") and "this model has no `other` class" not in ln]


def nonblank(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_line_error(res, path, *words, code: int = 1) -> str:
    """Exit ``code``; exactly one ``Error:`` line, the last thing on stderr, naming ``path`` and ``words``."""
    assert res.exit_code == code, res.output
    errors = [ln for ln in nonblank(res.stderr) if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    line = errors[0]
    assert nonblank(res.stderr)[-1] == line, res.stderr
    assert os.fspath(path) in line, (path, line)
    for w in words:
        assert w in line, (w, line)
    return line


def lines_naming(text: str, name: str, marker: str) -> list[str]:
    return [ln for ln in text.splitlines() if name in ln and marker in ln]


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> digest): "byte-for-byte intact"."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Hidden staging/temporary entries edgecell might have left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` pixels, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\x00" * 16


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 marker is patched to announce ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_rgb48(arr: np.ndarray) -> bytes:
    """An uncompressed 16-bit-per-channel RGB TIFF (Pillow cannot write one itself)."""
    h, w, _ = arr.shape
    body = arr.astype("<u2").tobytes()
    tags = [
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, 3, None),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, None),
        (277, 3, 1, 3),
        (278, 3, 1, h),
        (279, 4, 1, len(body)),
        (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    bps_at, data_at = 8 + ifd_size, 8 + ifd_size + 6
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        value = {258: bps_at, 273: data_at}.get(tag, value)
        out += struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 and count == 1 else struct.pack("<HHII", tag, typ, count, value)
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + body


def cell_like(seed: int = 0, size: tuple[int, int] = (72, 64)) -> np.ndarray:
    """An asymmetric RGB test picture (so a wrong rotation or flip changes it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 128 + 60 * np.sin(x / 5.0)], axis=-1)
    img[: h // 4, : w // 3] = (250, 30, 30)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


BAD_IMAGES = {
    # name -> what the one-line message must say
    "truncated.jpg": "the file ends early (truncated",
    "zero-bytes.jpg": "empty file (0 bytes)",
    "text.jpg": "not an image Pillow can read",
    "folder.jpg": "is a directory",
    "broken-link.jpg": "broken symbolic link",
    "one-pixel.png": "too small",
    "huge-20000.png": "pixel limit",
    "huge-20000.bmp": "pixel limit",
    "huge-20000.jpg": "pixel limit",
    "rgb48-12-bit.tif": "nearly black",
    "underexposed.jpg": "nearly black",
}


def write_bad_images(folder: Path, good_jpeg: bytes) -> dict[str, str]:
    """Write every unusable input of :data:`BAD_IMAGES` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (folder / "zero-bytes.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("Patient notes, not a picture.\n")
    (folder / "folder.jpg").mkdir()
    os.symlink(folder / "was-deleted.jpg", folder / "broken-link.jpg")
    Image.new("RGB", (1, 1), (120, 40, 200)).save(folder / "one-pixel.png")
    (folder / "huge-20000.png").write_bytes(png_header_only(20000, 20000))
    (folder / "huge-20000.bmp").write_bytes(bmp_header_only(20000, 20000))
    (folder / "huge-20000.jpg").write_bytes(jpeg_claiming(20000, 20000))
    cell = cell_like(7)
    (folder / "rgb48-12-bit.tif").write_bytes(tiff_rgb48(cell.astype(np.uint16) * 16))  # a 12-bit camera's values, unscaled
    Image.fromarray(cell // 5).save(folder / "underexposed.jpg", quality=90)
    return dict(BAD_IMAGES)


def write_odd_images(folder: Path, rgb: np.ndarray) -> list[str]:
    """Usable images in every awkward encoding a lab produces; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(rgb)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.linspace(0, 255, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]).astype(np.uint8)))
    rgba.save(folder / "alpha.png")
    base.convert("L").save(folder / "grayscale.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(folder / "palette.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "gray16.tif")
    (folder / "rgb48.tif").write_bytes(tiff_rgb48(rgb.astype(np.uint16) * 257))
    base.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the pixels are stored turned the other way
    base.transpose(Image.Transpose.ROTATE_90).save(folder / "exif-rotated.jpg", exif=exif.tobytes(), quality=95)
    base.save(folder / UNICODE_NAME)
    base.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(os.path.join(folder, LATIN1_NAME))  # other bytes: a copy is left out
    return ["alpha.png", "grayscale.png", "palette.png", "gray16.tif", "rgb48.tif", "cmyk.jpg", "exif-rotated.jpg", UNICODE_NAME, LATIN1_NAME]


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("labelled") / "data", per_class=3)


# ============================================================== images: decode semantics


def test_oversized_images_are_refused_from_the_header_quickly(tmp_path, monkeypatch):
    """20000x20000 (400 MP, 1.2 GB decoded) is refused from its header, without decoding (Pillow's load refused)."""
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("decoded: the size must be refused from the header")

    files = {
        "h.png": png_header_only(20000, 20000),
        "h.bmp": bmp_header_only(20000, 20000),
        "h.jpg": jpeg_claiming(20000, 20000),
        "h2.png": png_header_only(8000, 8000),  # 64 MP: under Pillow's own limit, over ours
    }
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        assert len(data) < 2000
        with pytest.raises(ImageError, match="pixel limit") as exc:
            load_image(p, 32)
        assert str(exc.value).startswith(f"{p}: image is ") and "refused from its header" in str(exc.value)
    assert MAX_PIXELS < 20000 * 20000


def test_file_too_big_to_read_is_refused_unread(tmp_path, monkeypatch):
    """A multi-GB whole-slide scan named .tif is refused from its size, not read into memory (no read at all)."""
    big = tmp_path / "whole-slide.tif"
    with open(big, "wb") as fh:
        fh.truncate(300 * 2**20)  # sparse: costs no disk

    def no_read(*args, **kwargs):
        raise AssertionError("read: the size must be refused from the file's metadata")

    monkeypatch.setattr(os, "read", no_read)
    monkeypatch.setattr(os, "fdopen", no_read)
    with pytest.raises(ImageError, match="MiB limit"):
        load_image(big, 32)


def test_named_pipe_named_jpg_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo, 32)  # open() on a FIFO would block forever


def test_a_phone_jpeg_with_an_appended_image_is_a_jpeg(tmp_path):
    """A phone or stereo camera appends a preview or a depth map to its JPEG (Pillow: format MPO). It used to be
    decoded at full size (not at the reduced size of training) with a 'has 2 pages' warning, and 12 of 400 real cells
    changed class (found by a fuzzing review). Now it gives exactly what the plain JPEG of the same photo gives."""
    import warnings

    from firmware_host.preprocess import decode_cell

    rng = np.random.default_rng(3)
    photo = Image.fromarray(np.clip(rng.normal(150, 40, (300, 300, 3)), 0, 255).astype(np.uint8))
    plain, mpo = io.BytesIO(), io.BytesIO()
    photo.save(plain, "JPEG", quality=90)
    photo.save(mpo, "MPO", quality=90, save_all=True, append_images=[photo.resize((60, 60))])
    with Image.open(io.BytesIO(mpo.getvalue())) as img:
        assert img.format == "MPO" and getattr(img, "n_frames", 1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "has more than one page" warning
        a, offset_a = decode_cell(mpo.getvalue(), 40)
    b, offset_b = decode_cell(plain.getvalue(), 40)
    np.testing.assert_array_equal(a, b)
    assert offset_a == pytest.approx(offset_b, nan_ok=True)


def test_a_tiff_of_many_pages_is_read_from_its_first(tmp_path):
    """Only the second page is looked at to say there are more (counting 50,000 pages took 28 s)."""
    import warnings

    first = Image.fromarray(cell_like(1, (40, 40)))
    buf = io.BytesIO()
    first.save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", (1, 1))] * 2000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb = decode_rgb(buf.getvalue())
    np.testing.assert_array_equal(rgb, np.asarray(first))
    assert [str(w.message) for w in caught] == ["has more than one page (frame); only the first is used"]


def test_odd_modes_give_the_expected_pixels():
    """Not just 'no crash': alpha on white, grey as R=G=B, 16-bit scaled, CMYK and palette as RGB.

    (Steps 1-4 of the preprocessing, ``decode_rgb``; the crop that follows is the same for every mode.)"""
    rgb = cell_like(1, (40, 40))
    s = 40

    def decode(data, size):
        return decode_rgb(data, size)

    def enc(img, fmt="PNG", **kw):
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    clear = Image.fromarray(rgb).convert("RGBA")
    clear.putalpha(0)
    assert (decode(enc(clear), s) == 255).all()  # fully transparent -> white, not the hidden colours
    grey = decode(enc(Image.fromarray(rgb).convert("L")), s)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    g16 = decode(enc(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "TIFF"), s)
    assert np.array_equal(g16[..., 0], rgb[..., 0])
    assert np.array_equal(decode(tiff_rgb48(rgb.astype(np.uint16) * 257), s), rgb)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert np.array_equal(decode(enc(pal), s), np.asarray(pal.convert("RGB")))
    cmyk = decode(enc(Image.fromarray(rgb).convert("CMYK"), "TIFF"), s)
    assert np.abs(cmyk.astype(int) - rgb).max() <= 2


def test_an_image_too_dark_to_read_is_refused_with_the_likely_cause(tmp_path):
    """A 12-bit camera's values in a 16-bit file read 16 times too dark: every cell was `other`, with no reason given."""
    from firmware_host.preprocess import DIM_LEVEL, check_exposure

    cell = cell_like(3, (60, 60))
    for data, cause in ((tiff_rgb48(cell.astype(np.uint16) * 16), "16-bit file unscaled"), (jpeg_bytes(cell // 5), r"underexposed \(take it again")):
        with pytest.raises(ImageError, match=r"nearly black \(its brightest pixels at \d+ of 255.*" + cause) as err:
            decode_rgb(data, 40, tmp_path / "dark.tif")
        assert str(tmp_path / "dark.tif") in str(err.value)
    grey12 = io.BytesIO()
    Image.fromarray(cell[..., 1].astype(np.uint16) * 16).save(grey12, "PNG")
    with pytest.raises(ImageError, match="nearly black"):
        decode_rgb(grey12.getvalue(), 40)
    # the limit is the brightest 1 %: a few hot pixels do not make a black image readable, a dim but real one passes
    dark = np.full((100, 100, 3), DIM_LEVEL - 1, np.uint8)
    dark[:3, :3] = 255  # 9 pixels of 10,000
    with pytest.raises(ImageError):
        check_exposure(dark, "x")
    dim = np.full((100, 100, 3), 10, np.uint8)
    dim[:10, :20] = DIM_LEVEL  # 2 % at the limit
    assert check_exposure(dim, "x") is dim
    big = np.zeros((3000, 4000, 3), np.uint8)  # a whole field: read on a grid
    big[:, :200] = 200
    assert check_exposure(big, "x") is big


INVERSE = {  # EXIF orientation -> how the pixels are stored so that applying the tag gives upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
def test_exif_rotated_image_preprocesses_upright(fmt):
    """An image saved rotated with an EXIF orientation tag gives the upright original's array.

    PNG and TIFF are lossless, so the arrays are identical; JPEG re-encodes rotated pixels (and
    decodes with DCT scaling), so it must be within a few levels of upright - and far from the
    array that ignoring the tag would give.
    """
    upright = Image.fromarray(cell_like(2, (200, 120)))
    kw = {"quality": 95} if fmt == "JPEG" else {}

    def encoded(img, orientation=None):
        b = io.BytesIO()
        extra = dict(kw)
        if orientation:
            ex = Image.Exif()
            ex[0x0112] = orientation
            extra["exif"] = ex.tobytes()
        img.save(b, fmt, **extra)
        return b.getvalue()

    ref = decode(encoded(upright), 32).astype(int)
    for orientation, stored in INVERSE.items():
        pixels = upright.transpose(stored)
        got = decode(encoded(pixels, orientation), 32).astype(int)
        ignored = decode(encoded(pixels), 32).astype(int)  # what a reader ignoring EXIF would see
        if fmt == "JPEG":
            assert np.abs(got - ref).mean() < 2.0, orientation
            assert np.abs(ignored - ref).mean() > 10 * max(np.abs(got - ref).mean(), 0.5), orientation
        else:
            assert np.array_equal(got, ref), orientation


def test_exif_rotated_jpeg_is_classified_like_the_upright_one(models, tmp_path):
    upright = cell_like(3, (96, 64))
    save_jpeg(tmp_path / "upright.jpg", upright, quality=95)
    ex = Image.Exif()
    ex[0x0112] = 8
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.jpg", exif=ex.tobytes(), quality=95)
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.float32, tmp_path / "upright.jpg", tmp_path / "rotated.jpg", "--json", out)
    assert res.exit_code == 0, res.output
    a, b = json.loads(out.read_text())["results"]
    assert a["label"] == b["label"]
    assert max(abs(a["probs"][c] - b["probs"][c]) for c in CLASSES) < 0.02


# ============================================================== images through classify


def test_classify_reports_each_bad_image_and_classifies_the_rest(models, tmp_path):
    d = tmp_path / "slide 1"
    bad = write_bad_images(d, jpeg_bytes(cell_like(4)))
    odd = write_odd_images(d, cell_like(5))
    save_jpeg(d / "plain.jpg", cell_like(6))
    out, csv_out = tmp_path / "r.json", tmp_path / "r.csv"
    res = cli_run("classify", "--model", models.export, d, "--json", out, "--csv", csv_out)
    assert res.exit_code == 1, res.output  # some inputs failed: the job as a whole is not clean
    rep = json.loads(out.read_text())
    failed = {Path(f["path"]).name: f["error"] for f in rep["failed"]}
    assert set(failed) == set(bad)
    for name, reason in bad.items():
        assert reason in failed[name], (name, failed[name])
        lines = lines_naming(res.stderr, name, "error:")
        assert len(lines) == 1 and reason in lines[0], (name, res.stderr)
    done = {Path(r["path"]).name for r in rep["results"]}
    assert done == set(odd) | {"plain.jpg"}
    assert f"{len(bad)} of {len(bad) + len(odd) + 1} inputs could not be classified" in res.stderr
    # names with spaces, non-ASCII and non-UTF-8 bytes survive into JSON and CSV exactly
    assert os.path.join(d, LATIN1_NAME) in {r["path"] for r in rep["results"]}
    raw = csv_out.read_bytes()
    assert os.fsencode(os.path.join(d, LATIN1_NAME)) in raw and os.fsencode(os.path.join(d, UNICODE_NAME)) in raw


def test_classify_all_inputs_bad_exits_1(models, tmp_path):
    write_bad_images(tmp_path / "d", b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    res = cli_run("classify", "--model", models.export, tmp_path / "d")
    assert res.exit_code == 1
    assert f"{len(BAD_IMAGES)} of {len(BAD_IMAGES)} inputs could not be classified" in res.stderr


def test_classify_empty_folder(models, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli_run("classify", "--model", models.export, tmp_path / "empty")
    assert res.exit_code == 1
    assert len(lines_naming(res.stderr, str(tmp_path / "empty"), "folder holds no images")) == 1


def test_classify_unknown_class_folder_is_unlabelled(models, labelled, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(labelled / "basophil", d / "basophil")
    for k in range(2):
        save_jpeg(d / "lymphocyte" / f"ly_{k}.jpg", cell_like(10 + k))
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.export, d, "--json", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    truth = {Path(r["path"]).name: r["true_label"] for r in rep["results"]}
    assert truth["ly_0.jpg"] is None and truth["ly_1.jpg"] is None
    assert rep["metrics"]["n"] == 3 and rep["metrics"]["n_unlabelled"] == 2
    assert rep["summary"]["n_classified"] == 5


def test_classify_names_that_are_not_utf8_under_a_strict_terminal(models, tmp_path):
    """The usual en_GB.UTF-8 locale refuses to print a Latin-1 file name; edgecell must not crash."""
    d = tmp_path / "names"
    write_odd_images(d, cell_like(7))
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run(
        [sys.executable, "-m", "edgecell", "classify", "--model", str(models.export), str(d)], capture_output=True, env=env, cwd=ROOT, timeout=120
    )
    _out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, err
    assert "Traceback" not in err and "unexpected error" not in err
    assert os.fsencode(LATIN1_NAME) in p.stdout  # shown as the bytes it has on disk, like ls does


def test_duplicate_paths_and_duplicate_images_are_each_classified_once(models, labelled, tmp_path):
    """A path given twice (as a folder, a file and a glob) and a copy with the same bytes are one cell, counted once."""
    d = tmp_path / "d"
    shutil.copytree(labelled / "monocyte", d)
    first = sorted(d.glob("*.jpg"))[0]
    shutil.copy(first, d / "copy-of-first.jpg")
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.export, d, first, str(d) + "/*.jpg", "--json", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    names = [Path(r["path"]).name for r in rep["results"]]
    assert len(names) == len(set(names)) == 3 and names[0] == "copy-of-first.jpg" and first.name not in names  # the first listed kept
    assert rep["summary"]["n_images"] == 3
    said = " ".join(res.stderr.split())
    assert "warning: 1 path(s) are links to, or copies of, a file listed already (" in said
    assert f"{first} = {d / 'copy-of-first.jpg'}" in said
    assert rep["left_out"] == [{"path": str(first), "same_as": str(d / "copy-of-first.jpg")}]
    # the Python API's summary says so too (a script saw 3 images classified of 4 files, and no reason)
    from firmware_host.classify import classify_paths

    assert classify_paths(models.export, [d, first]).left_out == rep["left_out"]


def test_copies_in_other_folders_are_left_out_and_files_of_one_size_kept(models, labelled, tmp_path):
    """Copies are found by their bytes wherever they are (a folder copied twice onto a stick); files that only share a
    size, empty files and unreadable ones stay in the list."""
    a, b = tmp_path / "slide" / "a", tmp_path / "slide" / "b"
    shutil.copytree(labelled / "monocyte", a)
    shutil.copytree(labelled / "monocyte", b)
    first = sorted(a.glob("*.jpg"))[0]
    data = first.read_bytes()
    (a / "same-size.jpg").write_bytes(data[:-3] + bytes(255 - x for x in data[-3:-2]) + data[-2:])  # one byte differs
    (a / "empty1.jpg").write_bytes(b"")
    (a / "empty2.jpg").write_bytes(b"")
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.export, tmp_path / "slide", "--json", out)
    assert res.exit_code == 1, res.output  # the two empty files could not be classified
    rep = json.loads(out.read_text())
    listed = {Path(r["path"]).relative_to(tmp_path / "slide").as_posix() for r in rep["results"]}
    listed |= {Path(f["path"]).relative_to(tmp_path / "slide").as_posix() for f in rep["failed"]}
    n = len(list(b.glob("*.jpg")))
    assert not any(x.startswith("b/") for x in listed)  # every image of b is a copy of one in a, listed first
    assert {"a/same-size.jpg", "a/empty1.jpg", "a/empty2.jpg"} <= listed
    assert len(listed) == n + 3
    assert f"warning: {n} path(s) are links to, or copies of, a file listed already (" in " ".join(res.stderr.split())


def test_links_to_one_file_are_classified_once_and_said(models, labelled, tmp_path):
    """A hard link and a symbolic link to a cell counted it three times in the differential, without a word."""
    d = tmp_path / "d"
    shutil.copytree(labelled / "monocyte", d)
    first = sorted(d.glob("*.jpg"))[0]
    os.link(first, d / "hard.jpg")
    (d / "soft.jpg").symlink_to(first.name)
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.export, d, "--json", out)
    assert res.exit_code == 0, res.output
    paths = [r["path"] for r in json.loads(out.read_text())["results"]]
    files = {os.stat(p).st_ino for p in paths}
    assert len(paths) == len(files) == len(list(d.glob("*.jpg"))) - 2  # each file once, under the first name listed
    assert "warning: 2 path(s) are links to, or copies of, a file listed already (" in " ".join(res.stderr.split())


# ============================================================== models


def _bad_model(kind: str, models, folder: Path) -> tuple[Path, Path, str]:
    """A broken copy of the float32 model: (model path, path the error must name, words it must say)."""
    m = copy_model(models.float32, folder)
    side = m.with_suffix(".json")
    meta = json.loads(side.read_text())
    data = m.read_bytes()

    def replace_bytes(b: bytes) -> None:  # the sidecar agrees, so the interpreter itself must refuse
        m.write_bytes(b)
        meta["sha256"] = hashlib.sha256(b).hexdigest()

    named, words = m, ""
    if kind == "truncated":
        replace_bytes(data[: len(data) // 2])
        words = "not a usable TFLite model"
    elif kind == "not-tflite":
        replace_bytes(b"GIF89a, or a Word document, or anything else\n" * 40)
        words = "not a usable TFLite model"
    elif kind == "empty":
        replace_bytes(b"")
        words = "model file is empty (0 bytes)"
    elif kind == "sha-mismatch":
        m.write_bytes(data[:-64] + bytes(64))
        words = "SHA-256 does not match its metadata"
    elif kind == "wrong-input-shape":
        meta["input_size"] = 48
        words = "model input shape is [1, 32, 32, 3], but its metadata says [1, 48, 48, 3]"
    elif kind == "fewer-labels":
        meta["classes"] = CLASSES[:4]
        words = "model output shape is [1, 5], but its metadata lists 4 classes"
    elif kind == "more-labels":
        meta["classes"] = CLASSES + ["lymphocyte"]
        words = "model output shape is [1, 5], but its metadata lists 6 classes"
    elif kind == "no-sidecar":
        side.unlink()
        return m, m, "metadata file model_float32.json is missing"
    elif kind == "broken-sidecar":
        side.write_text('{"format": "edgecell-model/1", "classes": [')
        return m, side, "metadata file is unreadable"
    elif kind == "zero-temperature":
        meta["temperature"] = 0
        named, words = side, "temperature is 0"
    else:  # pragma: no cover
        raise ValueError(kind)
    side.write_text(json.dumps(meta))
    reseal(m)  # the sidecar is convert's as far as its digest goes: what is wrong is the model, or a field it states
    return m, named, words


MODEL_KINDS = [
    "truncated",
    "not-tflite",
    "empty",
    "sha-mismatch",
    "wrong-input-shape",
    "fewer-labels",
    "more-labels",
    "no-sidecar",
    "broken-sidecar",
    "zero-temperature",
]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_bad_model_classify(models, labelled, tmp_path, kind):
    m, named, words = _bad_model(kind, models, tmp_path / "export")
    res = cli_run("classify", "--model", m, labelled / "basophil")
    assert_one_line_error(res, named, words)
    assert "Differential count" not in res.output


@pytest.mark.parametrize("kind", ["truncated", "not-tflite", "sha-mismatch", "wrong-input-shape", "fewer-labels", "no-sidecar"])
def test_bad_model_evaluate(models, labelled, tmp_path, kind):
    pytest.importorskip("sklearn")
    m, named, words = _bad_model(kind, models, tmp_path / "export")
    data = tmp_path / "data"  # one class the (possibly shortened) class list always has
    shutil.copytree(labelled / "basophil", data / "basophil")
    res = cli_run("evaluate", m, "--data", data, "--split", "all", "--out", tmp_path / "ev")
    assert_one_line_error(res, named, words)
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("kind", ["truncated", "not-tflite", "sha-mismatch", "more-labels"])
def test_bad_model_bench(models, tmp_path, kind):
    m, named, words = _bad_model(kind, models, tmp_path / "export")
    res = cli_run("bench", m, "--runs", 1, "--warmup", 0, "--threads", 1)
    assert_one_line_error(res, named, words)


@pytest.fixture(scope="module")
def odd_models(models, tmp_path_factory):
    """Real TFLite models with two outputs, and with a one-channel input (sidecars say 5 classes, RGB)."""
    pytest.importorskip("tensorflow")
    import keras

    from firmware_host.metadata import Precision
    from tests._tflite_fixtures import _convert, write_model

    root = tmp_path_factory.mktemp("odd_models")
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    two = keras.Model(inp, [keras.layers.Dense(5, activation="softmax")(x), keras.layers.Dense(5, activation="softmax")(x)])
    gin = keras.Input((32, 32, 1))
    grey = keras.Model(gin, keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(gin)))
    return {
        "two-outputs": (
            write_model(root / "two" / Precision.float32.filename, _convert(two), Precision.float32),
            "model has outputs of 5 and 5 values; expected one of 5 (the classes) and the features",
        ),
        "grey-input": (write_model(root / "grey" / Precision.float32.filename, _convert(grey), Precision.float32), "model input shape is [1, 32, 32, 1]"),
    }


@pytest.mark.parametrize("kind", ["two-outputs", "grey-input"])
def test_model_with_wrong_tensors_classify(odd_models, labelled, kind):
    m, words = odd_models[kind]
    res = cli_run("classify", "--model", m, labelled / "basophil")
    assert_one_line_error(res, m, words)


# ============================================================== data folders: evaluate --split all


def test_evaluate_all_unknown_class_is_an_error(models, labelled, tmp_path):
    pytest.importorskip("sklearn")
    d = tmp_path / "data"
    shutil.copytree(labelled, d)
    save_jpeg(d / "lymphocyte" / "ly.jpg", cell_like(1))
    res = cli_run("evaluate", models.float32, "--data", d, "--split", "all", "--out", tmp_path / "ev")
    assert_one_line_error(res, d, "class folder(s) the model does not know: lymphocyte")


def test_an_unknown_class_folder_is_told_the_names_it_could_have(models, tmp_path):
    """A clinic's `Lymphocytes` folder: renaming it `other`, as the list of classes suggested, would lose the type."""
    pytest.importorskip("sklearn")
    d = tmp_path / "lab"
    for name in ("Lymphocytes", "neutrophil", "band"):
        save_jpeg(d / name / "a.jpg", cell_like(len(name)))
    res = cli_run("evaluate", models.root / "export_other" / "model_float32.tflite", "--data", d, "--split", "all", "--out", tmp_path / "ev")
    line = assert_one_line_error(res, d, "class folder(s) the model does not know: Lymphocytes, band, neutrophil")
    assert "lymphocyte, eosinophil, platelet, ig, smudge" in line
    assert line.endswith("; rename Lymphocytes -> lymphocyte?, neutrophil -> seg_neutrophil?)")


def test_evaluate_all_empty_folder(models, tmp_path):
    pytest.importorskip("sklearn")
    (tmp_path / "empty").mkdir()
    res = cli_run("evaluate", models.float32, "--data", tmp_path / "empty", "--split", "all", "--out", tmp_path / "ev")
    assert_one_line_error(res, tmp_path / "empty", "holds no class folder")


def test_evaluating_a_second_lab_keeps_the_first_labs_results(models, tmp_path):
    """``--split all`` on one lab's folder, then another's of the same name: each keeps its own files."""
    pytest.importorskip("sklearn")
    outputs = {}
    for lab, n in (("clinic_a", 3), ("clinic_b", 2)):
        cells = labelled_folder(tmp_path / lab / "cells", per_class=n)
        for _ in range(2):  # the same folder evaluated again replaces its own results
            res = cli_run("evaluate", models.float32, "--data", cells, "--split", "all", "--out", tmp_path / "ev", "--json", tmp_path / f"{lab}.json")
            assert res.exit_code == 0, res.output
        outputs[lab] = json.loads((tmp_path / f"{lab}.json").read_text())["outputs"]
    names = {lab: Path(o["metrics"]).name for lab, o in outputs.items()}
    assert names["clinic_a"] != names["clinic_b"] and all(n.startswith("float32_all_cells-") for n in names.values())
    for lab, n in (("clinic_a", 3), ("clinic_b", 2)):
        assert json.loads(Path(outputs[lab]["metrics"]).read_text())["n"] == n * len(CLASSES)
    assert len(list((tmp_path / "ev").glob("*_metrics.json"))) == 2
    from edgecell.runfolder import EVALUATION_OWNED

    assert atomic.foreign_files(tmp_path / "ev", EVALUATION_OWNED) == []  # what evaluate writes is listed as edgecell's


def test_output_stem_names_the_sources_evaluated_and_stays_short():
    from edgecell.evaluate import STEM_SOURCES_MAX, output_stem

    assert output_stem("keras", "test", {"bccd": "/d/bccd"}) == "keras_test"  # the run's own split: one name, as audit reads it
    two = output_stem("int8", "all", {"bccd": "/d/bccd", "barcelona": "/d/barcelona"})
    assert two.startswith("int8_all_barcelona+bccd-") and len(two) == len("int8_all_barcelona+bccd-") + 8
    assert output_stem("keras", "all", {"lab a": "/x"}) != output_stem("keras", "all", {"lab_a": "/x"})  # the hash tells them apart
    assert output_stem("keras", "all", {"a+b": "/x"}) != output_stem("keras", "all", {"a": "/x", "b": "/x"})
    assert len(output_stem("keras", "all", {"x" * 100: "/x"})) == len("keras_all_") + STEM_SOURCES_MAX + 9


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_evaluate_a_tflite_model(models, labelled, tmp_path, precision):
    pytest.importorskip("sklearn")
    res = cli_run("evaluate", getattr(models, precision), "--data", labelled, "--split", "all", "--out", tmp_path / "ev", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 15


# ============================================================== outputs: not writable, disk full


def _enospc_open(when):
    """An ``open`` for firmware_host.atomic that writes half of the data and then reports a full disk."""
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" not in mode or not when(os.fspath(file)):
            return fh

        class HalfThenFull:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()
                return False

            def write(self, data):
                fh.write(data[: len(data) // 2])
                fh.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(fh, name)

        return HalfThenFull()

    return fake_open


def test_classify_json_under_a_file_fails_before_classifying(models, labelled, tmp_path):
    (tmp_path / "results").write_text("not a folder")
    res = cli_run("classify", "--model", models.export, labelled, "--json", tmp_path / "results" / "r.json")
    assert_one_line_error(res, tmp_path / "results", "is a file, not a folder")
    assert "Differential count" not in res.output  # no work done only to be lost


def test_classify_csv_permission_denied(models, labelled, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    res = cli_run("classify", "--model", models.export, labelled, "--csv", tmp_path / "out" / "r.csv")
    assert_one_line_error(res, tmp_path / "out", "cannot write here (Permission denied)")


def test_classify_disk_full_keeps_the_previous_results(models, labelled, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    assert cli_run("classify", "--model", models.export, labelled / "basophil", "--json", out).exit_code == 0
    before = out.read_bytes()
    monkeypatch.setattr(atomic, "open", _enospc_open(lambda f: ".r.json." in f), raising=False)
    res = cli_run("classify", "--model", models.export, labelled, "--json", out)
    assert_one_line_error(res, out, "No space left on device")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no half-written temporary file


def test_staged_dir_failed_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    (target / "metadata.json").write_text("previous")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == target and ".tmp-" in Path(src).name:  # the second rename of the swap
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(EdgecellError, match="Permission denied.*previous one is unchanged"), atomic.staged_dir(target, marker="metadata.json") as tmp:
        (tmp / "metadata.json").write_text("new")
    assert (target / "metadata.json").read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_staged_dir_holds_ctrl_c_until_the_swap_is_done(tmp_path, monkeypatch):
    """Ctrl-C between the two renames must not leave neither the old nor the new folder."""
    target = tmp_path / "run"
    target.mkdir()
    (target / "metadata.json").write_text("previous")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(src) == target:  # the old folder has just been moved aside: worst moment
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic.staged_dir(target, marker="metadata.json") as tmp:
        (tmp / "metadata.json").write_text("new")
    assert (target / "metadata.json").read_text() == "new"
    assert leftovers(tmp_path) == []


SIGTERM_DURING_SWAP = """
import os, signal, sys
from pathlib import Path
from firmware_host import atomic
target = Path(sys.argv[1])
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if Path(src) == target:  # the old folder has just been moved aside
        os.kill(os.getpid(), signal.SIGTERM)
atomic.os.replace = replace
with atomic.staged_dir(target, marker="metadata.json") as tmp:
    (tmp / "metadata.json").write_text("new")
print("not reached: SIGTERM is delivered once the swap is done")
"""


def test_staged_dir_holds_sigterm_until_the_swap_is_done(tmp_path):
    """``kill`` or a service stop at the worst moment: the process still ends, with the new folder in place."""
    target = tmp_path / "run"
    target.mkdir()
    (target / "metadata.json").write_text("previous")
    p = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SWAP, str(target)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == -signal.SIGTERM, (p.returncode, p.stdout, p.stderr)
    assert "not reached" not in p.stdout
    assert (target / "metadata.json").read_text() == "new"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("what", ["mkdtemp", "mkstemp"])
def test_ctrl_c_just_after_the_staging_folder_or_temp_file_is_made(tmp_path, monkeypatch, what):
    """The moment a test (or a user) sees the staging folder appear is the moment to press Ctrl-C."""
    real = getattr(atomic.tempfile, what)

    def make_then_interrupt(*args, **kwargs):
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(atomic.tempfile, what, make_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        if what == "mkdtemp":
            with atomic.staged_dir(tmp_path / "run"):
                pytest.fail("the body must not run")
        else:
            atomic.write_text(tmp_path / "r.json", "{}")
    assert list(tmp_path.iterdir()) == []


KILLED_DURING_SWAP = """
import os, signal, sys
from pathlib import Path
from firmware_host import atomic
target = Path(sys.argv[1])
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if Path(src) == target:  # the old folder has just been moved aside: the power goes
        os.kill(os.getpid(), signal.SIGKILL)
atomic.os.replace = replace
with atomic.staged_dir(target, marker="metadata.json") as tmp:
    (tmp / "metadata.json").write_text("new")
"""


def test_what_a_killed_run_left_is_named_not_deleted(tmp_path):
    """``kill -9`` (or a power cut) mid-swap leaves the previous folder moved aside and the new one staged: the next
    run says where both are, and deletes neither (another run may be writing one of them)."""
    target = tmp_path / "run"
    target.mkdir()
    (target / "metadata.json").write_text("previous")
    p = subprocess.run([sys.executable, "-c", KILLED_DURING_SWAP, str(target)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    left = leftovers(tmp_path)
    assert [n.split("-")[0] for n in left] == [".run.old", ".run.tmp"], left
    (aside,) = [n for n in left if ".old-" in n]
    assert (tmp_path / aside / "prev" / "metadata.json").read_text() == "previous"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with atomic.staged_dir(target, marker="metadata.json") as tmp:
            (tmp / "metadata.json").write_text("newer")
    notes = sorted(str(w.message) for w in caught if issubclass(w.category, LeftOver))
    assert notes == sorted(
        [
            f"{tmp_path / aside} holds the previous run, moved aside by a run that was stopped while putting its results in place",
            f"{tmp_path / left[1]} is left from a run that was killed before it finished; delete it when no edgecell is writing here",
        ]
    )
    assert leftovers(tmp_path) == left  # named, not deleted
    assert (target / "metadata.json").read_text() == "newer"


def test_a_temporary_file_a_killed_classify_left_is_named(models, labelled, tmp_path):
    out = tmp_path / "r.json"
    stale = tmp_path / ".r.json.k2j3x9_a.tmp.json"  # as atomic_path names it
    stale.write_text('{"model": ')
    for unrelated in (".r.jsonl.tmp", ".r.json.csv.ab12cd34.tmp.csv", ".r.json.notes.tmp"):  # other outputs' or a person's
        (tmp_path / unrelated).write_text("")
    res = cli_run("classify", "--model", models.int8, labelled, "--json", out)
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert said == [f"note: {stale} is left from a run that was killed before it finished; delete it when no edgecell is writing here"]
    assert stale.exists() and json.loads(out.read_text())["results"]


def test_staged_folders_are_shareable_like_files(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic.staged_dir(tmp_path / "run") as tmp:
            atomic.write_text(tmp / "metadata.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "run" / "metadata.json").stat().st_mode & 0o777 == 0o644


def test_staged_dir_error_names_the_final_path(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "open", _enospc_open(lambda f: "metrics.json" in f), raising=False)
    with pytest.raises(EdgecellError) as exc, atomic.staged_dir(tmp_path / "run") as tmp:
        atomic.write_json(tmp / "metrics.json", {"a": 1})
    assert str(exc.value).startswith(f"{tmp_path / 'run' / 'metrics.json'}: cannot write file (No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _run_with(tmp_path: Path, *files: str) -> Path:
    run = tmp_path / "run"
    for f in ("metadata.json", "export/model_int8.tflite", *files):
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_text(f"old {f}")
    return run


def test_foreign_files_lists_what_the_writer_did_not_write(tmp_path):
    from edgecell.runfolder import EXPORT_OWNED, RUN_OWNED

    made = ("evaluation/keras_all_bccd-1f0e3a2b_metrics.json", "export/model_int8.json", "export/evaluation/int8_test_other.png")
    mine = ("export/results.csv", "export/bench.json", "evaluation/my.csv", "export/evaluation/notes.txt")
    run = _run_with(tmp_path, "notes.txt", "plots/mine.png", ".DS_Store", "export/._model_int8.tflite", *made, *mine)
    (run / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    # what train, convert and evaluate write, anywhere in the run, is edgecell's; a link to a folder is an entry, never followed
    assert atomic.foreign_files(run, RUN_OWNED) == sorted(["linked", "notes.txt", "plots/mine.png", *mine])
    assert atomic.foreign_files(run / "export", EXPORT_OWNED) == ["bench.json", "evaluation/notes.txt", "results.csv"]
    assert atomic.foreign_files(run, lambda folder: {"metadata.json", "notes.txt", "linked", "plots/*", "ev*/*"}) == sorted(
        ["export/model_int8.tflite", *(m for m in made + mine if m.startswith("export/"))]
    )


def test_staged_dir_never_deletes_a_file_it_did_not_write(tmp_path):
    from edgecell.runfolder import RUN_OWNED

    run = _run_with(tmp_path, "notes.txt")
    with pytest.raises(EdgecellError) as exc, atomic.staged_dir(run, marker="metadata.json", owned=RUN_OWNED):
        pytest.fail("refused before the body runs")
    assert str(exc.value) == (
        f"{run}: holds a file this command does not write (notes.txt), which replacing the folder would delete; move it out first, or choose another output folder"
    )
    with pytest.raises(EdgecellError, match=r"holds a file this command does not write \(notes.txt\)"):
        atomic.check_stageable(run, marker="metadata.json", owned=RUN_OWNED)  # before a long job, the same refusal
    assert (run / "notes.txt").read_text() == "old notes.txt" and leftovers(tmp_path) == []
    (run / "notes.txt").unlink()
    with atomic.staged_dir(run, marker="metadata.json", owned=RUN_OWNED) as tmp:
        (tmp / "metadata.json").write_text("new")
    assert sorted(p.name for p in run.iterdir()) == ["metadata.json"]  # its own files, export/ with them, replaced


def test_a_folder_that_cannot_be_listed_is_not_replaced(tmp_path, monkeypatch):
    from edgecell.runfolder import RUN_OWNED

    run = _run_with(tmp_path, "locked/a.txt")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(EdgecellError, match=r"cannot list a folder inside it \(Permission denied: .*locked\), so it is not replaced"):
        atomic.check_stageable(run, marker="metadata.json", owned=RUN_OWNED)


def test_staged_dir_keeps_a_file_put_there_while_it_worked(tmp_path):
    from edgecell.runfolder import RUN_OWNED

    run = _run_with(tmp_path)
    refused = pytest.raises(EdgecellError, match=r"holds 4 files this command does not write \(a.csv, b.csv, c.csv and 1 more\)")
    with refused, atomic.staged_dir(run, marker="metadata.json", owned=RUN_OWNED) as tmp:
        (tmp / "metadata.json").write_text("new")
        for name in "abcd":
            (run / f"{name}.csv").write_text("results saved beside the run during training")
    assert (run / "metadata.json").read_text() == "old metadata.json" and (run / "d.csv").is_file()
    assert leftovers(tmp_path) == []


# ============================================================== --debug and unexpected errors


def test_debug_shows_the_traceback_and_plain_does_not(models, labelled, tmp_path):
    m, _named, words = _bad_model("truncated", models, tmp_path / "export")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("EDGECELL_DEBUG", None)
    base = [sys.executable, "-m", "edgecell"]
    args = ["classify", "--model", str(m), str(labelled / "basophil")]
    plain = subprocess.run(base + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert nonblank(plain.stderr)[-1].startswith(f"Error: {m}: {words}"), plain.stderr
    debug = subprocess.run(base + ["--debug"] + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "ModelError" in debug.stderr


def test_unexpected_error_is_still_one_line(models, labelled, monkeypatch):
    import firmware_host.runtime

    def boom(*a, **k):
        raise RuntimeError("first line of a long message\nsecond line\nthird line")

    monkeypatch.setattr(firmware_host.runtime.Classifier, "load", boom)
    res = cli_run("classify", "--model", models.export, labelled)
    assert res.exit_code == 1
    last = nonblank(res.stderr)
    assert len(last) == 1 and last[0] == (
        "Error: unexpected error: RuntimeError: first line of a long message (re-run with --debug for the traceback, and report it)"
    )


# ============================================================== train, evaluate and convert on a messy data set


@pytest.fixture(scope="module")
def messy(real_data, tmp_path_factory) -> dict:
    """A small real data set with every kind of bad, odd, oddly named and duplicated file, trained on once."""
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("messy")
    data = make_slice(real_data, root / "data", 8)
    real = sorted((real_data / "basophil").iterdir())[0]
    bad = write_bad_images(data / "basophil", real.read_bytes())
    rgb = np.asarray(Image.open(sorted((real_data / "erythroblast").iterdir())[20]).convert("RGB"))
    odd = write_odd_images(data / "erythroblast", rgb)
    # duplicates: the same bytes twice in one class (kept, one split), and under two classes (left out)
    mono = sorted((data / "monocyte").iterdir())
    shutil.copy(mono[0], data / "monocyte" / "duplicate of first.jpg")
    shutil.copy(mono[1], data / "myeloblast" / "filed under two classes.jpg")
    run = root / "run"
    res = cli_run("train", "--data", data, "--out", run, "--epochs", 1, "--img-size", 32, "--widths", "4,8", "--seed", 3)
    return {"data": data, "run": run, "res": res, "bad": bad, "odd": odd, "mono": mono}


def test_train_skips_each_bad_file_with_one_line_and_uses_the_rest(messy):
    res, _data = messy["res"], messy["data"]
    assert res.exit_code == 0, res.output
    for name, reason in messy["bad"].items():
        lines = lines_naming(res.stderr, name, "warning: skipped")
        assert len(lines) == 1 and reason in lines[0], (name, res.stderr)
    rows = (messy["run"] / "split.csv").read_bytes().decode("utf-8", "surrogateescape")
    for name in messy["odd"]:
        assert f"erythroblast/{name}" in rows, name  # used, with its exact name (spaces, non-ASCII, non-UTF-8)
    for name in messy["bad"]:
        assert name not in rows
    # exact duplicates share a split; the same image under two classes is left out, named, both copies
    import csv

    table = {r["file"]: r for r in csv.DictReader(io.StringIO(rows))}
    first = f"monocyte/{messy['mono'][0].name}"
    assert table[first]["split"] == table["monocyte/duplicate of first.jpg"]["split"]
    assert "myeloblast/filed under two classes.jpg" not in table and f"monocyte/{messy['mono'][1].name}" not in table
    assert len(lines_naming(res.stderr, "filed under two classes.jpg", "ambiguous label")) == 1
    assert leftovers(messy["run"].parent) == []


def test_evaluate_reads_back_every_odd_name(messy, tmp_path):
    """The test split (from split.csv, odd names and all), then --split all with its bad files."""
    res = cli_run("evaluate", messy["run"], "--out", tmp_path / "ev", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    res = cli_run("evaluate", messy["run"], "--split", "all", "--out", tmp_path / "ev", "--json", tmp_path / "all.json")
    assert res.exit_code == 0, res.output
    for name, reason in messy["bad"].items():
        lines = lines_naming(res.stderr, name, "warning:")
        assert len(lines) == 1 and reason in lines[0], (name, res.stderr)
    # 5 x 8 real + the odd ones + one in-class duplicate; the image filed under two classes is left out (both copies)
    assert json.loads((tmp_path / "all.json").read_text())["n"] == 40 + len(messy["odd"]) + 1 + 1 - 2


def test_evaluate_all_one_class_and_one_image(messy, real_data, tmp_path):
    """A folder holding only one class (one image of it) is a legitimate thing to evaluate on."""
    d = tmp_path / "data"
    (d / "basophil").mkdir(parents=True)
    (d / "basophil" / "one.jpg").symlink_to(sorted((real_data / "basophil").iterdir())[-1])
    res = cli_run("evaluate", messy["run"], "--data", d, "--split", "all", "--out", tmp_path / "ev", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 1


def test_evaluate_all_class_of_only_bad_files(messy, real_data, tmp_path):
    """Its files are named one by one and the other classes are still evaluated; nothing usable at all is an error."""
    d = tmp_path / "data"
    write_bad_images(d / "basophil", sorted((real_data / "basophil").iterdir())[0].read_bytes())
    make_slice(real_data, tmp_path / "all", 2, offset=300)
    shutil.move(tmp_path / "all" / "monocyte", d / "monocyte")
    res = cli_run("evaluate", messy["run"], "--data", d, "--split", "all", "--out", tmp_path / "ev", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    for name, reason in BAD_IMAGES.items():
        lines = lines_naming(res.stderr, name, "warning: skipped")
        assert len(lines) == 1 and reason in lines[0], (name, res.stderr)
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 2
    shutil.rmtree(d / "monocyte")
    res = cli_run("evaluate", messy["run"], "--data", d, "--split", "all", "--out", tmp_path / "ev")
    assert_one_line_error(res, d, f"no usable images in basophil ({len(BAD_IMAGES)} unusable file(s) skipped)")


def test_evaluate_out_under_a_file(messy, tmp_path):
    (tmp_path / "report").write_text("a file, not a folder")
    res = cli_run("evaluate", messy["run"], "--out", tmp_path / "report" / "ev")
    assert_one_line_error(res, tmp_path / "report", "is a file, not a folder")
    assert (tmp_path / "report").read_text() == "a file, not a folder"


def test_evaluate_split_file_gone_since_training(messy, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(messy["data"], data, symlinks=True)
    rows = (messy["run"] / "split.csv").read_text(errors="surrogateescape").splitlines()[1:]
    gone = next(r.split(",")[0] for r in rows if r.split(",")[2] == "test")
    (data / gone).unlink()
    res = cli_run("evaluate", messy["run"], "--data", data, "--out", tmp_path / "ev")
    assert_one_line_error(res, data / gone, "no such file", "listed in the split manifest")


def test_evaluate_a_split_with_no_test_rows_names_the_manifest(messy, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(messy["run"], run, symlinks=True)
    text = (run / "split.csv").read_text(errors="surrogateescape").splitlines()
    (run / "split.csv").write_text("\n".join([text[0], *(r for r in text[1:] if r.split(",")[2] != "test")]) + "\n", errors="surrogateescape")
    res = cli_run("evaluate", run, "--data", messy["data"], "--out", tmp_path / "ev")  # a tuple of data folders was named: TypeError
    assert_one_line_error(res, run / "split.csv", "no images in the test split")


@pytest.mark.parametrize(
    "layout, words",
    [
        ("empty", "found 0"),
        ("one-class", "needs at least two class folders"),
        ("one-image", "basophil has 1"),
        ("all-bad", f"basophil has 0 ({len(BAD_IMAGES)} unusable file(s) skipped)"),
        ("no-image-file", "basophil has 0"),
    ],
)
def test_train_unusable_data_folders(real_data, tmp_path, layout, words):
    pytest.importorskip("tensorflow")
    data = tmp_path / "data"
    data.mkdir()
    if layout == "one-class":
        make_slice(real_data, tmp_path / "all", 6)
        shutil.move(tmp_path / "all" / "monocyte", data / "monocyte")
    elif layout in ("one-image", "all-bad"):
        make_slice(real_data, data, 6)
        shutil.rmtree(data / "basophil")
        if layout == "one-image":
            (data / "basophil").mkdir()
            src = sorted((real_data / "basophil").iterdir())[0]
            (data / "basophil" / src.name).symlink_to(src)
        else:
            write_bad_images(data / "basophil", sorted((real_data / "basophil").iterdir())[0].read_bytes())
    elif layout == "no-image-file":  # the class folder holds no image file at all: it is named, not the data folder
        make_slice(real_data, data, 6)
        shutil.rmtree(data / "basophil")
        (data / "basophil").mkdir()
        (data / "basophil" / "notes.txt").write_text("to do: copy the cells\n")
    out = tmp_path / "run"
    res = cli_run("train", "--data", data, "--out", out, "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    assert_one_line_error(res, data if layout in ("empty", "one-class") else data / "basophil", words)
    assert not out.exists() and leftovers(tmp_path) == []


def test_train_names_each_unusable_file_when_it_refuses_the_data(real_data, tmp_path):
    pytest.importorskip("tensorflow")
    data = make_slice(real_data, tmp_path / "data", 6)
    shutil.rmtree(data / "basophil")
    write_bad_images(data / "basophil", sorted((real_data / "basophil").iterdir())[0].read_bytes())
    res = cli_run("train", "--data", data, "--out", tmp_path / "run", "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    assert res.exit_code == 1
    for name, reason in BAD_IMAGES.items():
        lines = lines_naming(res.stderr, name, "warning: skipped")
        assert len(lines) == 1 and reason in lines[0], (name, res.stderr)


def test_train_out_under_a_file(messy, tmp_path):
    (tmp_path / "runs").write_text("a file")
    res = cli_run("train", "--data", messy["data"], "--out", tmp_path / "runs" / "r1", "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    assert_one_line_error(res, tmp_path / "runs", f"is a file, not a folder, so {tmp_path / 'runs' / 'r1'} cannot be created in it")
    assert (tmp_path / "runs").read_text() == "a file"


def test_train_out_in_a_folder_that_is_not_writable(tmp_path, monkeypatch):
    """--out inside a read-only folder: one line naming that folder, before any training, nothing left."""
    pytest.importorskip("tensorflow")
    import edgecell.train as train_mod
    from edgecell.demo import generate

    data = generate(tmp_path / "data", per_class=8, seed=0, size=48).out_dir
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write there anyway: refuse as the kernel does for everyone else

        def refusing(real):
            def make(*args, dir=None, **kwargs):
                if dir is not None and Path(dir) == locked:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                return real(*args, dir=dir, **kwargs)

            return make

        monkeypatch.setattr(atomic.tempfile, "mkdtemp", refusing(atomic.tempfile.mkdtemp))
        monkeypatch.setattr(atomic.tempfile, "mkstemp", refusing(atomic.tempfile.mkstemp))
    trained = []

    def fit(*args, **kwargs):
        trained.append(True)
        raise RuntimeError("training started although the run folder cannot be written")

    monkeypatch.setattr(train_mod, "fit", fit)
    try:
        res = cli_run("train", "--data", data, "--out", locked / "run", "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(res, locked, "cannot write here (Permission denied)")
    assert trained == []
    assert list(locked.iterdir()) == [] and leftovers(tmp_path) == []


def test_train_out_that_is_a_read_only_folder_is_refused_before_training(tmp_path, monkeypatch):
    """An earlier run made read-only: the swap at the end could not move it aside, after all the training."""
    pytest.importorskip("tensorflow")
    import edgecell.train as train_mod
    from edgecell.demo import generate

    data = generate(tmp_path / "data", per_class=8, seed=0, size=48).out_dir
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    real_access = os.access
    # root may write there anyway: say no to writing, as the kernel does for everyone else
    monkeypatch.setattr(atomic.os, "access", lambda p, mode, **kw: False if Path(p) == run and mode & os.W_OK else real_access(p, mode, **kw))
    monkeypatch.setattr(train_mod, "fit", lambda *a, **k: pytest.fail("training started"))
    try:
        res = cli_run("train", "--data", data, "--out", run, "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    finally:
        run.chmod(0o755)
    assert_one_line_error(res, run, "is read-only, so it cannot be replaced; make it writable")


def test_train_disk_full_keeps_the_previous_run(messy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(messy["run"], run)
    before = tree_digest(run)
    monkeypatch.setattr(atomic, "open", _enospc_open(lambda f: Path(f).name.startswith(".metadata.json.")), raising=False)
    res = cli_run("train", "--data", messy["data"], "--out", run, "--epochs", 1, "--img-size", 32, "--widths", "4,8")
    assert_one_line_error(res, run / "metadata.json", "No space left on device")
    assert tree_digest(run) == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- convert


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_convert_calibration_folder_empty(messy, tmp_path):
    (tmp_path / "cal").mkdir()
    res = cli_run("convert", messy["run"], "--int8", "--calibration", tmp_path / "cal")
    assert_one_line_error(res, tmp_path / "cal", "only 0 usable calibration image(s)")
    assert not (messy["run"] / "export").exists() and leftovers(messy["run"]) == []


def test_convert_calibration_folder_of_wrong_formats(messy, tmp_path):
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "notes.txt").write_text("calibration notes")
    Image.fromarray(cell_like(1)).save(cal / "cell.gif")
    Image.fromarray(cell_like(2)).save(cal / "cell.webp")
    write_bad_images(cal, jpeg_bytes(cell_like(3)))
    res = cli_run("convert", messy["run"], "--int8", "--calibration", cal)
    line = assert_one_line_error(res, cal, "only 0 usable calibration image(s)")
    assert "unusable file(s) skipped (first: " in line  # which, so the refusal can be acted on


def test_convert_calibration_folder_of_odd_sizes_and_modes(converted, real_data, tmp_path):
    """Any size is resized like every other image; too-small and broken files are named and skipped."""
    run = _copy_run(converted, tmp_path / "run")
    cal = tmp_path / "cal"
    cal.mkdir()
    for k, f in enumerate(sorted((real_data / "seg_neutrophil").iterdir())[100:112]):
        img = Image.open(f).convert("RGB")
        img = img.resize((1000, 700) if k % 3 == 0 else (24, 24) if k % 3 == 1 else img.size)
        (img.convert("L") if k % 4 == 0 else img).save(cal / f"cal_{k}.png")
    Image.new("RGB", (2, 2)).save(cal / "tiny.png")
    (cal / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    res = cli_run("convert", run, "--int8", "--max-drop", 100, "--calibration", cal, "--json", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert len(lines_naming(res.stderr, "tiny.png", "warning: skipped calibration image")) == 1
    assert len(lines_naming(res.stderr, "broken.jpg", "warning: skipped calibration image")) == 1
    assert json.loads((tmp_path / "p.json").read_text())["calibration"]["n"] == 12


def test_convert_calibration_image_with_a_non_utf8_name(converted, tmp_path):
    run = _copy_run(converted, tmp_path / "run")
    cal = tmp_path / "cal"
    write_odd_images(cal, cell_like(11))
    for k in range(6):
        Image.fromarray(cell_like(20 + k)).save(cal / f"c{k}.png")
    res = cli_run("convert", run, "--int8", "--max-drop", 100, "--calibration", cal)
    assert res.exit_code == 0, res.output
    assert "only 15 calibration images" in res.output  # all of them: the 9 odd ones (the Latin-1 name too) and 6 plain


def test_convert_not_a_run_folder(tmp_path):
    res = cli_run("convert", tmp_path, "--int8")
    assert_one_line_error(res, tmp_path, "not an edgecell run folder")


def test_convert_truncated_keras_model(messy, tmp_path):
    run = _copy_run(messy["run"], tmp_path / "run")
    (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:500])
    res = cli_run("convert", run)
    assert_one_line_error(res, run / "model.keras", "is not a Keras model file", "truncated")  # not Keras's "File not found"
    assert not (run / "export").exists() and leftovers(run) == []
    (tmp_path / "cal" / "basophil").mkdir(parents=True)  # a calibration folder with too few images: the model is checked first
    Image.fromarray(cell_like(1)).save(tmp_path / "cal" / "basophil" / "c.png")
    res = cli_run("convert", run, "--int8", "--calibration", tmp_path / "cal")
    assert_one_line_error(res, run / "model.keras", "is not a Keras model file")


def test_convert_disk_full_keeps_the_previous_export(converted, tmp_path, monkeypatch):
    run = _copy_run(converted, tmp_path / "run")
    before = tree_digest(run)
    monkeypatch.setattr(atomic, "open", _enospc_open(lambda f: Path(f).name.startswith(".model_float32.tflite.")), raising=False)
    res = cli_run("convert", run)
    assert_one_line_error(res, run / "export" / "model_float32.tflite", "No space left on device")
    assert tree_digest(run) == before
    assert leftovers(run) == []


def test_convert_export_not_writable(converted, tmp_path, monkeypatch):
    run = _copy_run(converted, tmp_path / "run")
    before = tree_digest(run)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == run / "export" and ".tmp-" in Path(src).name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    res = cli_run("convert", run)
    assert_one_line_error(res, run / "export", "Permission denied")
    assert tree_digest(run) == before
    assert leftovers(run) == []


# ============================================================== Ctrl-C in a real process


def _start(args: list[str], code: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("EDGECELL_DEBUG", None)
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "edgecell", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _interrupt_when(proc: subprocess.Popen, pattern: str, timeout: float = 120.0, settle: float = 0.0) -> tuple[str, str]:
    """Send SIGINT once ``pattern`` (a glob) matches; return (stdout, stderr) after the process ends."""
    deadline = time.monotonic() + timeout
    while not glob.glob(pattern):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {pattern} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{pattern} did not appear within {timeout} s")
        time.sleep(0.01)
    time.sleep(settle)
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process did not stop within 60 s of Ctrl-C")


def _assert_interrupted_cleanly(proc, err: str) -> None:
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert nonblank(err)[-1] == "Interrupted: nothing half-written was kept; earlier results are intact.", err


def test_ctrl_c_during_training(messy, real_data, tmp_path):
    run = _copy_run(messy["run"], tmp_path / "run")
    before = tree_digest(run)
    data = make_slice(real_data, tmp_path / "data", 8, offset=100)
    args = ["train", "--data", str(data), "--out", str(run), "--img-size", "32", "--widths", "4,8", "--epochs", "50", "--patience", "50"]
    proc = _start(args)
    _out, err = _interrupt_when(proc, str(tmp_path / ".run.tmp-*"), settle=0.5)  # the staging folder: training has begun
    _assert_interrupted_cleanly(proc, err)
    assert tree_digest(run) == before
    assert leftovers(tmp_path) == []
    # a re-run starts cleanly and succeeds (2 epochs instead of 50, to keep the test short)
    res = cli_run(*args[:-4], "--epochs", "2", "--patience", "2")
    assert res.exit_code == 0, res.output
    assert tree_digest(run) != before and json.loads((run / "metadata.json").read_text())["training"]["epochs_max"] == 2
    assert leftovers(tmp_path) == []


# The export folder is staged only for the last fraction of a second of a conversion (parity on a
# tiny test split), so to land Ctrl-C inside it every time, the process runs the real CLI with the
# parity step slowed down. Otherwise it is ``python -m edgecell convert ...``.
SLOW_PARITY = """
import runpy, sys, time
import converters.parity as parity
_real = parity.tflite_probs
def _slow(*args, **kwargs):
    time.sleep(60)
    return _real(*args, **kwargs)
parity.tflite_probs = _slow
sys.argv[0] = "edgecell"
runpy.run_module("edgecell", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_during_conversion_with_the_export_staged(converted, tmp_path):
    run = _copy_run(converted, tmp_path / "run")
    before = tree_digest(run)
    args = ["convert", str(run), "--int8", "--max-drop", "100"]
    proc = _start(args, code=SLOW_PARITY)
    _out, err = _interrupt_when(proc, str(run / ".export.tmp-*"))
    _assert_interrupted_cleanly(proc, err)
    assert tree_digest(run) == before
    assert leftovers(run) == []
    res = cli_run(*args)
    assert res.exit_code == 0, res.output
    assert leftovers(run) == [] and (run / "export" / "model_int8.tflite").is_file()


def test_ctrl_c_while_converting_to_int8(converted, tmp_path):
    """Plain ``python -m edgecell convert``, interrupted while the int8 converter is calibrating."""
    run = _copy_run(converted, tmp_path / "run")
    before = tree_digest(run)
    proc = _start(["convert", str(run), "--int8", "--max-drop", "100"])
    seen = []
    for line in proc.stdout:  # "converted float32: ..." is printed just before the int8 conversion starts
        seen.append(line)
        if line.startswith("converted float32"):
            proc.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("convert ended without converting:\n" + "".join(seen) + proc.stderr.read())
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (1, 130), err
    assert "Traceback" not in err
    last = nonblank(err)[-1]
    assert last.startswith("Interrupted:") or (last.startswith("Error:") and "interrupt" in last.lower()), err
    assert tree_digest(run) == before
    assert leftovers(run) == []


def test_evaluate_an_export_copied_away_from_its_run_reads_the_data_its_sidecar_records(converted, tmp_path):
    """`--split all` with no --data: the folders the sidecar records, not "the data folder is not there"."""
    copied = tmp_path / "pi_export"
    shutil.copytree(converted / "export", copied)
    res = CliRunner().invoke(cli, ["evaluate", str(copied / "model_int8.tflite"), "--split", "all", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    n_data = sum(1 for p in (converted.parent / "data").rglob("*") if p.is_file())
    assert json.loads((tmp_path / "e.json").read_text())["n"] == n_data


def test_convert_refuses_outputs_inside_the_runs_training_data(converted, tmp_path):
    """--calibration-out there would become a class folder of copies (and the data set could no longer be trained on)."""
    data = converted.parent / "data"
    before = sorted(p.name for p in data.iterdir())
    for args in (["--calibration-out", data / "cal"], ["--json", data / "p.json"]):
        res = cli_run("convert", converted, "--int8", *args)
        assert res.exit_code == 2 and "the run's training data" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in data.iterdir()) == before


def test_a_run_of_one_source_reads_its_data_folder_moved_and_renamed(converted, tmp_path):
    moved = tmp_path / "renamed"
    shutil.copytree(converted.parent / "data", moved)
    res = cli_run("evaluate", converted, "--data", moved, "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["n"] > 0


def test_evaluate_split_all_on_the_runs_own_data_says_it_is_not_held_out(converted, tmp_path):
    res = cli_run("evaluate", converted, "--split", "all", "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert "are in this run's training or validation split" in " ".join(res.output.split())


def test_a_corrupt_model_keras_is_named_as_such(converted, tmp_path):
    run = _copy_run(converted, tmp_path / "run")
    (run / "model.keras").write_bytes(b"garbage")
    res = cli_run("evaluate", run, "--json", tmp_path / "e.json")
    assert_one_line_error(res, run / "model.keras", "is not a Keras model file")


def test_evaluate_refuses_a_keras_file_that_is_not_its_runs_model(converted, tmp_path):
    """Any other .keras file in a run folder was evaluated as the run's model.keras, under its own name."""
    run = _copy_run(converted, tmp_path / "run")
    shutil.copy(run / "model.keras", run / "candidate.keras")
    res = cli_run("evaluate", run / "candidate.keras", "--json", tmp_path / "e.json")
    assert_one_line_error(res, run / "candidate.keras", "is not its run's model.keras")
    assert not (tmp_path / "e.json").exists()
    assert cli_run("evaluate", run / "model.keras", "--json", tmp_path / "e.json").exit_code == 0


def test_evaluate_a_run_folder_without_its_metadata_says_so(converted, tmp_path):
    run = _copy_run(converted, tmp_path / "run")
    (run / "metadata.json").unlink()
    assert_one_line_error(cli_run("evaluate", run), run, "holds model.keras but no metadata.json")


@pytest.mark.parametrize("field", ["classes", "input_size"])
def test_a_keras_model_unlike_its_metadata_is_refused(converted, tmp_path, field):
    """The Keras path read the metadata's classes as they were: an added class became a row of zeros in macro-F1."""
    run = _copy_run(converted, tmp_path / "run")
    meta = json.loads((run / "metadata.json").read_text())
    n, size = len(meta["classes"]), meta["input_size"]
    meta["classes"] += ["zzz"] if field == "classes" else []
    meta["input_size"] += 16 if field == "input_size" else 0
    (run / "metadata.json").write_text(json.dumps(meta))
    res = cli_run("evaluate", run, "--json", tmp_path / "e.json")
    line = assert_one_line_error(res, run / "model.keras", "does not match the run's metadata.json")
    assert f"the model has {n} outputs and a {size}x{size} input, the metadata {len(meta['classes'])} classes and a {meta['input_size']}x" in line


def test_another_runs_model_in_a_run_is_refused(converted, tiny_run, tmp_path):
    """convert sealed another run's model.keras with this run's temperature, never-seen score and lab check as
    verified (a review): the run records its model's SHA-256, and convert, evaluate and adapt check it first."""
    run = _copy_run(converted, tmp_path / "run")
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["model"]["sha256"] == hashlib.sha256((run / "model.keras").read_bytes()).hexdigest()
    shutil.copy(tiny_run / "model.keras", run / "model.keras")
    for args in (["convert", run], ["evaluate", run, "--json", tmp_path / "e.json"]):
        res = cli_run(*args)
        assert_one_line_error(res, run / "model.keras", "is not the model this run trained (its SHA-256 differs from the one metadata.json records)")
    del meta["model"]["sha256"]  # a run made before the digest was recorded: read as before
    (run / "metadata.json").write_text(json.dumps(meta))
    shutil.copy(converted / "model.keras", run / "model.keras")
    assert cli_run("evaluate", run, "--json", tmp_path / "e.json").exit_code == 0


def test_evaluate_of_another_folder_writes_nothing_into_the_training_data(converted, tmp_path):
    """--out inside the data the run was trained on would become a class folder of PNGs there."""
    other = tmp_path / "lab2"
    shutil.copytree(converted.parent / "data", other)
    data = converted.parent / "data"
    before = sorted(p.name for p in data.iterdir())
    for args in (["--out", data / "ev"], ["--json", data / "ev.json"]):
        res = cli_run("evaluate", converted, "--data", other, "--split", "all", *args)
        assert res.exit_code == 2 and "the model's training data" in " ".join(res.output.split()), res.output
    res = cli_run("audit", converted, "--data", other, "--json", data / "basophil" / "a.json")
    assert res.exit_code == 2 and "the run's training data" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in data.iterdir()) == before


def test_converting_again_without_int8_says_the_int8_model_is_gone(converted, tmp_path):
    """The export is replaced whole; its int8 model went without a word (a review)."""
    run = _copy_run(converted, tmp_path / "run")
    res = cli_run("convert", run)
    assert res.exit_code == 0, res.output
    assert "warning: the earlier export's int8 model is not in the new one (convert with --int8 to keep it)" in " ".join(res.stderr.split())
    assert not (run / "export" / "model_int8.tflite").exists()


def test_evaluate_writes_nothing_into_the_runs_export(converted, tmp_path):
    """evaluate --out RUN/export/ev wrote into the export, and convert then refused the folder (a review)."""
    before = sorted(p.name for p in (converted / "export").iterdir())
    for model in (converted / "export" / "model_int8.tflite", converted):
        res = cli_run("evaluate", model, "--out", converted / "export" / "ev")
        assert res.exit_code == 2 and "is inside the run's export folder" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in (converted / "export").iterdir()) == before


def test_evaluate_an_export_away_from_its_run_says_its_recorded_data_is_not_held_out(converted, tmp_path):
    copied = tmp_path / "pi_export"
    shutil.copytree(converted / "export", copied)
    res = cli_run("evaluate", copied / "model_int8.tflite", "--split", "all", "--json", tmp_path / "e.json")
    assert res.exit_code == 0 and "these figures are not a held-out test" in " ".join(res.output.split()), res.output


def test_copies_of_one_image_count_once_towards_a_class_minimum(tmp_path):
    """Six copies and one other image: the split could leave the class without a training image."""
    from edgecell import data as data_mod
    from firmware_host.errors import DataError

    root = tmp_path / "d"
    for k, c in enumerate(CLASSES[:2]):
        for i in range(6):
            save_jpeg(root / c / f"{c}_{i}.jpg", cell_like(10 * k + i))
    for i in range(6):
        save_jpeg(root / "monocyte" / f"copy_{i}.jpg", cell_like(99))
    save_jpeg(root / "monocyte" / "other.jpg", cell_like(98))
    with pytest.raises(DataError, match=r"monocyte has 7, 2 different .*at least 5 different images"):
        data_mod.scan(root)


def test_audit_split_reads_the_rows_of_the_source_given(tmp_path):
    """A run of two labs with the same file names: the audit of one lab's folder matches that lab's rows only."""
    from types import SimpleNamespace

    from edgecell import data as data_mod
    from edgecell.audit import split_for

    rows = [data_mod.ManifestRow("basophil/b0.jpg", "basophil", sp, f"{lab}-sha", lab, "basophil") for lab, sp in (("labA", "train"), ("labB", "test"))]
    data_mod.write_rows(tmp_path / "split.csv", rows)
    fs = SimpleNamespace(samples=[SimpleNamespace(rel="basophil/b0.jpg", sha256="labA-sha", label="basophil", source="labA")], root=tmp_path)
    split, _ = split_for(fs, 0, tmp_path)
    assert split.tolist() == ["train"]
    fs.samples[0].source = "moved"  # a run of one lab, its folder renamed: its rows, under the old name
    data_mod.write_rows(tmp_path / "split.csv", rows[:1])
    assert split_for(fs, 0, tmp_path)[0].tolist() == ["train"]
