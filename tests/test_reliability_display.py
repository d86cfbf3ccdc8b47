"""Reliability, round 2 (issue #18): what a person sees, and images used with a warning.

A flag is safety information: it is printed on every terminal width (one line per image when the
table would not fit) and errors print even with ``COLUMNS=0``; control characters in file names
are escaped wherever they are printed; a class folder that is a link to another class's folder
does not steal its images' labels; Python warnings about an image are one line naming it.
docs/reliability.md lists each case.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests._tflite_fixtures import CLASSES, distinct_copy, labelled_folder

from .test_reliability import ROOT, cli_run, nonblank, warning_lines

FLAGS = ("uncertain - refer", "review: haematologist")


@pytest.fixture
def labelled(tmp_path) -> Path:
    return labelled_folder(tmp_path / "data", per_class=2)


def _edgecell(args, columns: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS=columns)
    env.pop("EDGECELL_DEBUG", None)
    cmd = [sys.executable, "-m", "edgecell", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


# ============================================================== narrow terminals


@pytest.mark.parametrize("columns", ["0", "20", "40", "74"])
def test_every_flag_is_visible_on_a_narrow_terminal(models, labelled, columns):
    (labelled / "basophil" / "broken.jpg").write_bytes(b"not an image")
    # --threshold 1: every image is flagged, either for review or as uncertain
    proc = _edgecell(["classify", "--model", models.int8, labelled, "--threshold", 1], columns)
    assert proc.returncode == 1, proc.stderr  # the broken file
    names = sorted(p.name for p in labelled.rglob("*.jpg") if p.name != "broken.jpg")
    for name in names:
        lines = [ln for ln in proc.stdout.splitlines() if name in ln]
        assert lines, (name, proc.stdout)
        assert any(f in ln for ln in lines for f in FLAGS), (name, lines)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert any("broken.jpg" in ln and "not an image" in ln for ln in errors), proc.stderr
    assert "could not be classified" in proc.stderr


def test_wide_terminal_keeps_the_table(models, labelled):
    proc = _edgecell(["classify", "--model", models.int8, labelled, "--threshold", 1], "140")
    assert proc.returncode == 0, proc.stderr
    assert "top-3" in proc.stdout and "flag" in proc.stdout


# ============================================================== control characters in names


def test_control_characters_in_names_are_escaped(models, labelled, tmp_path):
    evil = "red\x1b[31mALERT\x1b[0m\rover.jpg"
    src = next((labelled / "basophil").iterdir())
    distinct_copy(src, labelled / "basophil" / evil, 1)  # its own bytes: a copy would be left out
    (labelled / "basophil" / "bad\x1b]0;pwned\x07.jpg").write_bytes(b"not an image")
    res = cli_run("classify", "--model", models.int8, labelled, "--csv", tmp_path / "r.csv")
    assert res.exit_code == 1, res.output
    for stream in (res.stdout, res.stderr):
        assert "\x1b" not in stream and "\r" not in stream and "\x07" not in stream, repr(stream)
    assert "red\\x1b[31mALERT" in res.stdout  # shown, escaped
    assert any("bad\\x1b]0;pwned\\x07.jpg" in ln and "error:" in ln for ln in res.stderr.splitlines()), res.stderr


def test_control_characters_in_an_error_line_are_escaped(tmp_path):
    data = tmp_path / "da\x1b[2Jta"
    data.mkdir()
    res = cli_run("inspect", "--data", data)
    assert res.exit_code == 1
    assert "\x1b" not in res.stderr and "da\\x1b[2Jta" in nonblank(res.stderr)[-1]


# ============================================================== a class folder linking to another


def test_class_folder_linking_to_another_class_keeps_the_labels(models, labelled, tmp_path):
    (labelled / "basophil" / "alias").symlink_to(labelled / "monocyte", target_is_directory=True)
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.int8, labelled, "--json", out)
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())["results"]
    assert len(results) == 2 * len(CLASSES)  # each image once
    mono = [r for r in results if Path(r["path"]).name.startswith("monocyte")]
    assert len(mono) == 2 and all(r["true_label"] == "monocyte" for r in mono), mono
    assert json.loads(out.read_text())["metrics"]["n_unlabelled"] == 0
    warned = [ln for ln in res.stderr.splitlines() if "warning:" in ln and "alias" in ln]
    assert len(warned) == 1 and "read already" in warned[0], res.stderr


# ============================================================== images used, with one line naming them


def _png_with_huge_icc(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    png = buf.getvalue()
    body = b"huge\x00\x00" + zlib.compress(b"\x00" * (PngImagePlugin.MAX_TEXT_CHUNK * 2))
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # right after IHDR, where the profile belongs


def test_png_with_an_oversized_colour_profile_is_used_without_it(models, labelled, tmp_path):
    rgb = np.asarray(Image.open(next((labelled / "monocyte").iterdir())).convert("RGB"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "profile.png").write_bytes(_png_with_huge_icc(rgb))
    Image.fromarray(rgb).save(odd / "plain.png")
    out = tmp_path / "r.json"
    res = cli_run("classify", "--model", models.int8, odd, "--json", out)
    assert res.exit_code == 0, res.output
    results = {Path(r["path"]).name: r for r in json.loads(out.read_text())["results"]}
    assert results["profile.png"]["probs"] == results["plain.png"]["probs"]
    lines = warning_lines(res.stderr)
    assert len(lines) == 1 and "profile.png" in lines[0] and "colour profile" in lines[0], res.stderr


def test_multi_page_tiff_is_used_with_a_warning_saying_which_page(models, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    pages = [Image.new("RGB", (40, 40), (40 * i, 90, 200 - 40 * i)) for i in range(3)]
    pages[0].save(odd / "stack.tif", save_all=True, append_images=pages[1:])
    res = cli_run("classify", "--model", models.int8, odd)
    assert res.exit_code == 0, res.output
    lines = warning_lines(res.stderr)
    assert len(lines) == 1 and "stack.tif" in lines[0] and "more than one page" in lines[0] and "only the first" in lines[0], res.stderr


def test_python_warnings_about_an_image_are_one_line_naming_it(models, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    pixels = np.full((40, 40), 200.0, np.float32)
    pixels[:10] = np.nan  # a quarter of them: the rest is an image (all NaN would be black, refused as too dark)
    Image.fromarray(pixels, "F").save(odd / "all-nan.tif")
    res = cli_run("classify", "--model", models.int8, odd)
    assert res.exit_code == 0, res.output
    assert "RuntimeWarning" not in res.stderr and "invalid value" not in res.stderr, res.stderr
    lines = warning_lines(res.stderr)
    assert len(lines) == 1 and "all-nan.tif" in lines[0] and "not numbers" in lines[0], res.stderr


def test_a_warning_prints_names_as_they_are_once():
    """warn() escapes rich markup and control characters itself (a source named ``x[red]y`` printed as ``xy``); a
    caller that escaped them too printed ``slide\\[red]`` (a review)."""
    from rich.console import Console

    from edgecell.console import warn
    from edgecell.views.classify import print_warnings

    con = Console(record=True, width=200, force_terminal=False)
    warn("slide[red]/cell[b].webp: a\nb", con)
    assert con.export_text().strip() == "warning: slide[red]/cell[b].webp: a\\nb"

    from types import SimpleNamespace

    job = SimpleNamespace(  # what print_warnings reads of a classify job
        classifier=SimpleNamespace(meta=SimpleNamespace(unverified=None), path="m"),
        links=[("slide[red]/alias", "slide[red]/real")],
        same_files=[],
        unread=[],
    )
    con = Console(record=True, width=300, force_terminal=False)
    print_warnings(con, job)
    assert "warning: slide[red]/alias: a link to slide[red]/real, which is read already" in con.export_text()
