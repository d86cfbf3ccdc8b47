"""``edgecell corrections apply``: the review page's CSV -> a labelled folder, and every way a CSV can be wrong."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell.cli import cli
from edgecell.corrections import MARKER, CorrectionsError, apply_corrections, default_classes
from edgecell.data import scan
from firmware_host.errors import DataError
from firmware_host.paths import OTHER_TYPES
from firmware_host.report import short_sha
from tests._tflite_fixtures import save_jpeg


def run(*args, cwd: Path | None = None):
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture
def images(tmp_path) -> Path:
    """slide/<class>/<name>.jpg: six small images, two sharing a file name in different folders."""
    root = tmp_path / "slide"
    rng = np.random.default_rng(3)
    for rel in ["monocyte/a.jpg", "monocyte/b.jpg", "basophil/a.jpg", "basophil/c d.jpg", "myeloblast/e.jpg", "myeloblast/f.jpg"]:
        save_jpeg(root / rel, rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return root


def write_csv(path: Path, rows, header=("file", "predicted", "corrected")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


GOOD = [
    ["monocyte/a.jpg", "monocyte", "other"],
    ["basophil/a.jpg", "basophil", "other"],  # same file name as the one above, another folder
    ["basophil/c d.jpg", "basophil", "monocyte"],
    ["myeloblast/e.jpg", "myeloblast", "erythroblast"],
]


@pytest.mark.parametrize("mode", ["copy", "hard", "sym"])
def test_apply_builds_a_folder_train_accepts(images, tmp_path, mode):
    before = digests(images)
    csv_path = write_csv(tmp_path / "corrections.csv", GOOD)
    out = tmp_path / "corrected"
    r = run("corrections", "apply", csv_path, "--out", out, "--link", mode, cwd=images)
    assert r.exit_code == 0, r.output
    assert "4 image(s)" in r.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["erythroblast", "monocyte", "other"]
    others = sorted(p.name for p in (out / "other").iterdir())
    assert len(others) == 2 and "a.jpg" in others  # the second a.jpg got a distinct name
    assert (out / "monocyte" / "c d.jpg").read_bytes() == (images / "basophil" / "c d.jpg").read_bytes()
    if mode == "sym":
        assert (out / "monocyte" / "c d.jpg").is_symlink()
    elif mode == "hard":
        assert os.path.samefile(out / "monocyte" / "c d.jpg", images / "basophil" / "c d.jpg")
    else:
        assert (
            not (out / "monocyte" / "c d.jpg").is_symlink() and (out / "monocyte" / "c d.jpg").stat().st_ino != (images / "basophil" / "c d.jpg").stat().st_ino
        )
    manifest = json.loads((out / MARKER).read_text())
    assert len(manifest["files"]) == 4 and manifest["mode"] == mode
    assert digests(images) == before  # the user's images untouched
    ds = scan(out, min_per_class=1)  # what train --data reads
    assert sorted(ds.classes) == ["erythroblast", "monocyte", "other"] and len(ds.samples) == 4
    assert leftovers(tmp_path, "corrected") == []


def test_a_staging_folder_left_by_a_killed_run_is_named(images, tmp_path):
    csv_path = write_csv(tmp_path / "corrections.csv", GOOD)
    stale = tmp_path / ".corrected.tmp-x1y2"
    (stale / "monocyte").mkdir(parents=True)
    r = run("corrections", "apply", csv_path, "--out", tmp_path / "corrected", cwd=images)
    assert r.exit_code == 0, r.output
    assert f"note: {stale} is left from a run that was killed before it finished; delete it when no edgecell is writing here\n" in r.output
    assert stale.is_dir()


def test_several_days_of_corrections_make_one_folder(images, tmp_path):
    """One CSV a day: applied together into one folder (applied one by one, each replaced the last; a review). A cell in
    two CSVs with the same class is kept once and said; with different classes it is refused, naming both rows."""
    monday = write_csv(tmp_path / "monday.csv", GOOD[:2])
    tuesday = write_csv(tmp_path / "tuesday.csv", GOOD[1:])
    out = tmp_path / "labelled"
    r = run("corrections", "apply", monday, tuesday, "--out", out, cwd=images)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"4 image(s) copied into {out} (erythroblast 1, monocyte 1, other 2).",
        "note: 1 row(s) named a cell an earlier CSV gave the same class; used once.",
    ]
    manifest = json.loads((out / MARKER).read_text())
    assert manifest["csv"] == [str(monday), str(tuesday)]
    assert [f["csv"] for f in manifest["files"]] == [str(monday), str(monday), str(tuesday), str(tuesday)]
    wednesday = write_csv(tmp_path / "wednesday.csv", [["./monocyte/a.jpg", "monocyte", "basophil"]])
    r = run("corrections", "apply", monday, wednesday, "--out", tmp_path / "other", cwd=images)
    assert r.exit_code == 1 and r.output.splitlines() == [
        f"Error: {wednesday}: line 2: ./monocyte/a.jpg: conflicts with {monday} line 2 ('other' there, 'basophil' here); correct one of them; nothing was written."
    ]
    # every CSV's problems are listed, not the first CSV's alone
    bad = write_csv(tmp_path / "bad.csv", [["nope.jpg", "", "other"]])
    r = run("corrections", "apply", bad, write_csv(tmp_path / "bad2.csv", [["monocyte/b.jpg", "", "blast"]]), "--out", tmp_path / "x", cwd=images)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(errors) == 2 and "bad.csv: line 2: nope.jpg: no such file" in errors[0] and "bad2.csv: line 2" in errors[1]
    assert not (tmp_path / "x").exists() and not (tmp_path / "other").exists()


def test_apply_again_replaces_its_own_folder_only_with_every_cell_it_holds_or_when_told(images, tmp_path):
    """A week's folder applied Tuesday's CSV alone lost Monday's cells with a note (a review): a CSV that does not list
    every cell the folder holds is refused, naming the CSV it was built from; with it, one folder of both; --replace
    (replace=True) builds it from the new CSV alone."""
    out = tmp_path / "corrected"
    apply_corrections(write_csv(tmp_path / "one.csv", GOOD), out, base=images)
    before = digests(out)
    two = write_csv(tmp_path / "two.csv", GOOD[:1])
    with pytest.raises(
        DataError,
        # the whole path: the review page always downloads corrections.csv, so a name alone does not tell Monday's from Tuesday's
        match=rf"holds {len(GOOD) - 1} cell\(s\) an earlier corrections apply put there \(.*\) that this CSV does not list; give the CSV\(s\) it was built from as well \({re.escape(str(tmp_path / 'one.csv'))}\) to keep them in one folder, or --replace to build it from these alone",
    ):
        apply_corrections(two, out, base=images)
    assert digests(out) == before
    done = apply_corrections([tmp_path / "one.csv", two], out, base=images)  # the week's CSVs together: kept, and counted once
    assert done.n == len(GOOD) and done.again == 1 and done.gone == 0
    apply_corrections(two, out, base=images, replace=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["other/a.jpg"]
    # the same cell under a corrected class is the same cell: not refused
    apply_corrections(write_csv(tmp_path / "three.csv", [[GOOD[0][0], GOOD[0][1], "basophil"]]), out, base=images)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["basophil/a.jpg"]


def test_cells_a_person_added_to_the_folder_are_never_deleted(images, tmp_path):
    """The folder is adapt's input, so a person may add labelled cells to it; applying again would have deleted them."""
    out = tmp_path / "corrected"
    apply_corrections(write_csv(tmp_path / "one.csv", GOOD), out, base=images)
    (out / "other" / ".DS_Store").write_bytes(b"litter")  # a file browser's, not a person's work
    before = digests(out)
    added = out / "monocyte" / "mine.jpg"
    added.parent.mkdir(exist_ok=True)
    added.write_bytes(b"a cell I labelled")
    r = run("corrections", "apply", write_csv(tmp_path / "two.csv", GOOD[:1]), "--out", out, cwd=images)
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {out}: holds a file this command does not write (monocyte/mine.jpg), which replacing the folder would delete; "
        "move it out first, or choose another output folder\n"
    )
    assert added.read_bytes() == b"a cell I labelled" and digests(out) == before | {"monocyte/mine.jpg": hashlib.sha256(b"a cell I labelled").hexdigest()}
    added.unlink()
    assert run("corrections", "apply", write_csv(tmp_path / "two.csv", GOOD[:1]), "--out", out, "--replace", cwd=images).exit_code == 0


@pytest.mark.parametrize("mode", ["copy", "sym"])
def test_an_image_a_person_changed_in_the_folder_is_not_overwritten(images, tmp_path, mode):
    """A copy a person replaced under the same name (a better crop of the cell) is their work: the next apply refuses.
    A link's contents are the source image, which replacing the folder leaves alone, so links are replaced as before."""
    out = tmp_path / "corrected"
    apply_corrections(write_csv(tmp_path / "one.csv", GOOD), out, base=images, mode=mode)
    edited = out / "monocyte" / "c d.jpg"
    if mode == "sym":
        edited.unlink()
        edited.symlink_to(images / "myeloblast" / "f.jpg")
    else:
        edited.write_bytes(b"a better crop")
    r = run("corrections", "apply", write_csv(tmp_path / "two.csv", GOOD), "--out", out, cwd=images)
    if mode == "sym":
        assert r.exit_code == 0, r.output
        return
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {out}: holds an image changed since corrections apply wrote it (monocyte/c d.jpg), which replacing the folder "
        "would lose; move it out first, or choose another --out\n"
    )
    assert edited.read_bytes() == b"a better crop"
    edited.unlink()  # moved out: the folder is corrections apply's again
    assert run("corrections", "apply", write_csv(tmp_path / "two.csv", GOOD), "--out", out, cwd=images).exit_code == 0
    assert (out / "monocyte" / "c d.jpg").read_bytes() == (images / "basophil" / "c d.jpg").read_bytes()


def test_a_name_that_is_not_utf8_is_found_from_the_review_pages_text(images, tmp_path):
    """The review page shows a Latin-1 byte of a file name as U+FFFD (it cannot hold the byte); its CSV row still
    finds the file, when one name in the folder shows so."""
    raw = os.fsencode(images / "monocyte") + b"/caf\xe9.jpg"
    with open(raw, "wb") as fh:
        fh.write((images / "monocyte" / "a.jpg").read_bytes())
    done = apply_corrections(write_csv(tmp_path / "c.csv", [["monocyte/caf\ufffd.jpg", "monocyte", "basophil"]]), tmp_path / "out", base=images)
    assert done.counts == {"basophil": 1} and os.fsencode(done.files[0][0]) == raw
    with open(os.fsencode(images / "monocyte") + b"/caf\xe8.jpg", "wb") as fh:  # a second name the page shows the same way
        fh.write(b"x")
    with pytest.raises(CorrectionsError, match="no such file"):
        apply_corrections(write_csv(tmp_path / "d.csv", [["monocyte/caf\ufffd.jpg", "monocyte", "basophil"]]), tmp_path / "out2", base=images)


def test_a_row_naming_a_file_that_is_not_an_image_is_refused(images, tmp_path):
    """train skips a file that is not an image by its name, so a corrected 'cell' that is one would be lost later."""
    (images / "today.csv").write_text("a,b\n")
    with pytest.raises(CorrectionsError, match=r"line 2: today.csv: not a type train reads \(.jpg .jpeg .jfif .png .tif .tiff .bmp\); convert it to PNG first"):
        apply_corrections(write_csv(tmp_path / "c.csv", [["today.csv", "other", "lymphocyte"]]), tmp_path / "out", base=images)


def test_types_taught_as_other_and_any_case_are_accepted(images, tmp_path):
    """A CSV written by hand: `Basophil` is basophil; `lymphocyte` gets its own folder, which train and adapt read as `other`."""
    rows = [["monocyte/a.jpg", "monocyte", "Basophil"], ["monocyte/b.jpg", "monocyte", "lymphocyte"]]
    done = apply_corrections(write_csv(tmp_path / "c.csv", rows), tmp_path / "out", base=images)
    assert done.counts == {"basophil": 1, "lymphocyte": 1}
    assert scan(tmp_path / "out", classes=["basophil", "other"], min_per_class=1).counts() == {"basophil": 1, "other": 1}


def test_applying_again_says_what_the_folder_held_and_what_is_gone(images, tmp_path):
    out = tmp_path / "corrected"
    assert run("corrections", "apply", write_csv(tmp_path / "one.csv", GOOD), "--out", out, cwd=images).exit_code == 0
    r = run("corrections", "apply", write_csv(tmp_path / "two.csv", GOOD[:1]), "--out", out, cwd=images)
    assert r.exit_code == 1 and "that this CSV does not list" in r.output and "--replace" in r.output
    r = run("corrections", "apply", tmp_path / "two.csv", "--out", out, "--replace", cwd=images)
    assert r.exit_code == 0
    gone = len(GOOD) - 1
    assert f"note: replaced the earlier folder, which held {len(GOOD)} image(s); {gone} of them are not in this CSV and are no longer there." in " ".join(
        r.output.split()
    )


def test_files_not_found_from_the_wrong_folder_say_where_to_run(images, tmp_path):
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", GOOD), "--out", tmp_path / "out", cwd=tmp_path)
    lines = r.output.splitlines()
    assert r.exit_code == 1 and len(lines) == len(GOOD) + 2
    assert (
        lines[-2]
        == f"{len(GOOD)} files are not found relative to {tmp_path}: run this in the folder classify was run in, or give --base (or the image was renamed or moved since the review)"
    )


def test_one_file_not_found_from_the_wrong_folder_is_one_line_saying_where_to_run(images, tmp_path):
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", GOOD[:1]), "--out", tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == 1 and r.output.splitlines() == [
        f"Error: {tmp_path / 'c.csv'}: line 2: monocyte/a.jpg: no such file (relative to {tmp_path}); run this in the folder classify "
        "was run in, or give --base (or the image was renamed or moved since the review); nothing was written."
    ]


def test_an_image_that_cannot_be_decoded_is_refused(images, tmp_path):
    """A truncated JPEG (which classify lists as failed) was copied into the labelled folder, where train skips it: a
    label lost without a word (found by a review)."""
    data = (images / "monocyte" / "a.jpg").read_bytes()
    (images / "monocyte" / "broken.jpg").write_bytes(data[: len(data) // 3])
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", [["monocyte/broken.jpg", "", "myeloblast"]]), "--out", tmp_path / "out", cwd=images)
    assert r.exit_code == 1 and len(r.output.splitlines()) == 1, r.output
    assert "line 2: monocyte/broken.jpg: cannot be read as an image (" in r.output and "so train would skip it" in r.output
    assert not (tmp_path / "out").exists()


def test_never_writes_over_a_folder_it_did_not_make(images, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", GOOD), "--out", out, cwd=images)
    assert r.exit_code == 1 and "not an edgecell folder" in r.output
    assert (out / "notes.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_source_inside_out_is_refused(images, tmp_path):
    # --out is the image folder itself (marked as if made by us): replacing it would delete the images
    (images / MARKER).write_text("{}")
    before = digests(images)
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", GOOD), "--out", images, cwd=images)
    assert r.exit_code == 1 and "is inside the output folder" in r.output
    assert digests(images) == before


def test_csv_inside_out_is_refused(images, tmp_path):
    """Replacing --out would delete the corrections being applied."""
    out = tmp_path / "corrected"
    assert run("corrections", "apply", write_csv(tmp_path / "c.csv", GOOD), "--out", out, cwd=images).exit_code == 0
    inside = write_csv(out / "c.csv", GOOD)
    r = run("corrections", "apply", inside, "--out", out, cwd=images)
    assert r.exit_code == 1 and "is inside the output folder" in r.output
    assert inside.is_file()


def test_a_cell_cut_from_a_16_bit_field_has_the_pixels_scan_classified(tmp_path):
    from PIL import Image

    from firmware_host.report import Box, cell_name
    from firmware_host.scan import decode_field

    root = tmp_path / "fields"
    root.mkdir()
    grey = (np.arange(120 * 200, dtype=np.uint16).reshape(120, 200) * 2).astype(np.uint16)
    Image.fromarray(grey).save(root / "g16.png")
    rows = [[cell_name("g16.png", Box(10, 20, 60, 80)), "monocyte", "other"]]
    apply_corrections(write_csv(tmp_path / "c.csv", rows), tmp_path / "out", base=root)
    cut = np.asarray(Image.open(tmp_path / "out" / "other" / "g16_10_20_60_80.png").convert("RGB"))
    from firmware_host.scan import cell_region

    x0, y0, x1, y1 = cell_region((10, 20, 60, 80), 200, 120)
    seen = decode_field((root / "g16.png").read_bytes())[y0:y1, x0:x1]
    assert seen.std() > 0 and np.array_equal(cut, seen)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([["monocyte/zzz.jpg", "monocyte", "other"]], ["line 2: monocyte/zzz.jpg: no such file"]),
        ([["monocyte/a.jpg", "monocyte", "blast"]], ["line 2: monocyte/a.jpg: unknown class 'blast'"]),
        ([["monocyte/a.jpg", "monocyte", " "]], ["line 2: monocyte/a.jpg: no corrected class"]),
        ([["monocyte/a.jpg", "monocyte", "../../etc"]], ["line 2: monocyte/a.jpg: unknown class '../../etc'"]),
        (
            [["monocyte/a.jpg", "monocyte", "other"], ["./monocyte/a.jpg", "monocyte", "other"]],
            ["line 3: ./monocyte/a.jpg: duplicate row (line 2 already gives it class 'other')"],
        ),
        (
            [["monocyte/a.jpg", "monocyte", "other"], ["monocyte/a.jpg", "monocyte", "basophil"]],
            ["line 3: monocyte/a.jpg: conflicting rows (line 2 says 'other', this one 'basophil')"],
        ),
        ([["monocyte/a.jpg", "monocyte"]], ["line 2: 2 fields, expected 3"]),
        ([["monocyte", "monocyte", "other"]], ["line 2: monocyte: not a regular file"]),
        ([["monocyte/a.jpg\0", "monocyte", "other"]], ["line 2: 'monocyte/a.jpg\\x00': a file name holding a NUL byte"]),
        (
            # several problems at once: one line each, in row order
            [["nope.jpg", "x", "other"], ["monocyte/b.jpg", "monocyte", "blast"], ["monocyte/a.jpg", "monocyte", "other"], ["monocyte/a.jpg", "m", "other"]],
            ["line 2: nope.jpg: no such file", "line 3: monocyte/b.jpg: unknown class 'blast'", "line 5: monocyte/a.jpg: duplicate row"],
        ),
    ],
    ids=["unknown-file", "unknown-class", "no-class", "path-as-class", "duplicate", "conflict", "short-row", "folder", "nul", "several"],
)
def test_bad_rows_one_line_each_nothing_written(images, tmp_path, rows, expected):
    csv_path = write_csv(tmp_path / "c.csv", GOOD[2:3] + rows)  # one good row first: still nothing written
    out = tmp_path / "corrected"
    r = run("corrections", "apply", csv_path, "--out", out, cwd=images)
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.lower().startswith("error:")]  # one problem: one "Error:" line
    assert len(errors) == len(expected), r.output
    for line, want in zip(errors, expected):
        assert str(csv_path) in line
        assert _shift(want) in line, (want, line)
    assert "nothing was written" in r.output and "Traceback" not in r.output
    assert not out.exists() and leftovers(tmp_path, "corrected") == []


def _shift(msg: str) -> str:
    """The expected messages count the data rows from line 2; the test puts one good row first."""
    import re

    return re.sub(r"line (\d+)", lambda m: f"line {int(m.group(1)) + 1}", msg)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "expected the header file,predicted,corrected,sha256, found 'an empty file'"),
        ("path,label\nmonocyte/a.jpg,other\n", "line 1: expected the header file,predicted,corrected,sha256, found 'path,label'"),
        (  # the quote opened on line 3 is never closed: line 3 is named, not the end of the file
            'file,predicted,corrected\nmonocyte/a.jpg,monocyte,other\n"monocyte/b.jpg,monocyte,other\nmonocyte/c.jpg,monocyte,other\n',
            "line 3: malformed CSV (unexpected end of data)",
        ),
        ("file,predicted,corrected\n", "holds no corrections"),
        ("path,label,confidence\na.jpg,monocyte,0.9\n", "this is classify's or scan's results CSV, not the corrections the review page downloads"),
        ("file,width,height,cell\nf.jpg,640,480,0\n", "this is classify's or scan's results CSV"),
        ("file,predicted,corrected,sha256,note\nmonocyte/a.jpg,monocyte,other,ab,odd\n", "remove the column(s) added after them (note)"),
        ("file,predicted,corrected,note\nmonocyte/a.jpg,monocyte,other,odd\n", "remove the column(s) added after them (note)"),  # an older page's
    ],
    ids=["empty", "wrong-header", "unclosed-quote", "header-only", "classify-results", "scan-results", "added-column", "added-column-old"],
)
def test_malformed_csv_one_line(images, tmp_path, content, expected):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(content, encoding="utf-8")
    out = tmp_path / "corrected"
    r = run("corrections", "apply", csv_path, "--out", out, cwd=images)
    assert r.exit_code == 1
    assert r.output.splitlines() == [line := r.output.splitlines()[0]], r.output  # one line, as every error (a review found two)
    assert line.startswith("Error: ") and expected in line and str(csv_path) in line and line.endswith("; nothing was written."), line
    assert not out.exists()


def test_thousands_of_bad_rows_print_the_first_fifty(images, tmp_path):
    """200,000 rows of an unrelated CSV printed 200,000 lines (38 s)."""
    from edgecell.commands.corrections import PROBLEMS_SHOWN

    csv_path = write_csv(tmp_path / "c.csv", [[f"nope{k}.jpg", "x", "other"] for k in range(500)])
    r = run("corrections", "apply", csv_path, "--out", tmp_path / "corrected", cwd=images)
    assert r.exit_code == 1 and len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == PROBLEMS_SHOWN
    assert f"... and {500 - PROBLEMS_SHOWN} more like them (not shown)." in r.output and "500 problem(s); nothing was written." in r.output


def test_line_numbers_are_the_files_lines_when_a_name_holds_a_line_break(images, tmp_path):
    """A quoted file name may span lines (the page quotes them); a problem is reported on the line an editor shows."""
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('file,predicted,corrected\n"two\nlines.jpg",monocyte,other\nmonocyte/a.jpg,monocyte,blast\n', encoding="utf-8")
    with pytest.raises(CorrectionsError) as exc:
        apply_corrections(csv_path, tmp_path / "out", base=images)
    assert [p.split(": ", 1)[1] for p in exc.value.problems] == [
        "line 2: two\nlines.jpg: no such file" + f" (relative to {images})",
        "line 4: monocyte/a.jpg: unknown class 'blast' (known: " + ", ".join(dict.fromkeys([*default_classes(), *OTHER_TYPES])) + ")",
    ]
    r = run("corrections", "apply", csv_path, "--out", tmp_path / "out", cwd=images)
    lines = r.output.splitlines()
    assert r.exit_code == 1 and len(lines) == 4  # one line each, where to run, and the count
    assert lines[0] == f"error: {csv_path}: line 2: two\\nlines.jpg: no such file (relative to {images})" and ": line 4: " in lines[1]


def test_not_utf8_and_missing_csv(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_bytes(b"file,predicted,corrected\n\xff\xfe,x,y\n")
    with pytest.raises(CorrectionsError, match="not a UTF-8 text file"):
        apply_corrections(bad, tmp_path / "out")
    with pytest.raises(CorrectionsError, match="no such file"):
        apply_corrections(tmp_path / "none.csv", tmp_path / "out")


def test_what_a_spreadsheet_or_a_wrong_file_makes_of_the_csv_is_named_with_what_to_do(images, tmp_path):
    """A review gave the page itself "line 214: malformed CSV", a UTF-16 file "not a UTF-8 text file", an Excel CSV
    with semicolons the header alone, and a SHA-256 an Excel turned into a number "a camera that numbers its pictures
    again?". Each is named for what it is, with what to do, and nothing is written."""
    from edgecell.corrections import RESAVE

    def problems(path: Path) -> list[str]:
        with pytest.raises(CorrectionsError) as exc:
            apply_corrections(path, tmp_path / "out", base=images)
        assert not (tmp_path / "out").exists()
        return [p.split(": ", 1)[1] for p in exc.value.problems]

    page = tmp_path / "today.html"
    page.write_text("\ufeff\n  <!DOCTYPE html>\n<html><body>file,predicted,corrected</body></html>\n", encoding="utf-8")
    assert problems(page) == ['the review page itself (HTML), not its corrections: open it in a browser, correct the cells and press "Download corrections"']
    utf16 = tmp_path / "unicode.csv"
    utf16.write_text("file,predicted,corrected\nmonocyte/a.jpg,monocyte,other\n", encoding="utf-16")
    assert problems(utf16) == [f"text in UTF-16, not the UTF-8 CSV the review page downloads: {RESAVE}"]
    semi = tmp_path / "semi.csv"
    semi.write_text("file;predicted;corrected;sha256\r\nmonocyte/a.jpg;monocyte;other;0123456789abcdef\r\n", encoding="utf-8-sig")
    assert problems(semi) == [
        "line 1: expected the header file,predicted,corrected,sha256, found 'file;predicted;corrected;sha256'; its fields are "
        f"separated by semicolons (as a spreadsheet saves CSV in some languages): {RESAVE}"
    ]
    number = write_csv(tmp_path / "number.csv", [["monocyte/a.jpg", "monocyte", "other", "1.23457E+15"]], header=("file", "predicted", "corrected", "sha256"))
    assert problems(number) == [f"line 2: monocyte/a.jpg: sha256 '1.23457E+15' is not the 16 hex digits the page writes: {RESAVE}"]
    # the page's own digits, in capitals, are still its digits
    digits = short_sha((images / "monocyte/a.jpg").read_bytes())
    upper = write_csv(tmp_path / "upper.csv", [["monocyte/a.jpg", "monocyte", "other", digits.upper()]], header=("file", "predicted", "corrected", "sha256"))
    apply_corrections(upper, tmp_path / "out", base=images)
    assert [p.name for p in (tmp_path / "out" / "other").iterdir()] == ["a.jpg"]


def test_classes_from_a_model(images, tmp_path):
    """--model: the model's classes (not the default five) and `other`."""
    from firmware_host.metadata import ModelMetadata, Precision, Quantization, sha256_file, write_metadata
    from firmware_host.preprocess import describe

    model = tmp_path / "m" / "model_int8.tflite"
    model.parent.mkdir()
    model.write_bytes(b"not read: only the sidecar's classes are")
    q = Quantization(1 / 255, -128)  # an int8 sidecar carries its quantisation (the schema requires it)
    meta = ModelMetadata(["lymphocyte", "monocyte"], 32, Precision.int8, sha256_file(model), model.name, describe(), q, q)
    write_metadata(model, meta)
    rows = [["monocyte/a.jpg", "monocyte", "lymphocyte"], ["monocyte/b.jpg", "monocyte", "basophil"]]
    r = run("corrections", "apply", write_csv(tmp_path / "c.csv", rows), "--out", tmp_path / "o", "--model", model, cwd=images)
    assert (
        r.exit_code == 1
        and "line 3: monocyte/b.jpg: unknown class 'basophil' (known: lymphocyte, monocyte, other, eosinophil, platelet, ig, smudge)" in r.output
    )


def test_csv_from_the_page_round_trips_odd_names(tmp_path):
    """Names with commas, quotes and newlines, quoted as the page's script quotes them (every field in quotes)."""
    root = tmp_path / "imgs"
    names = ["a,b.jpg", 'say "hi".jpg', "line\nbreak.jpg", "ß 血.jpg"]
    for n in names:
        save_jpeg(root / n, np.full((16, 16, 3), 200, np.uint8))
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731 - the page's csvField()
    text = "file,predicted,corrected\n" + "".join(",".join(map(q, [n, "monocyte", "other"])) + "\n" for n in names)
    (tmp_path / "c.csv").write_text(text, encoding="utf-8")
    done = apply_corrections(tmp_path / "c.csv", tmp_path / "out", base=root)
    assert done.n == 4 and sorted(p.name for p in (tmp_path / "out" / "other").iterdir()) == sorted(names)


def test_scan_cells_are_cut_out_of_their_field(tmp_path):
    """A scan cell (FIELD#x0,y0,x1,y1) becomes a PNG of the region scan classified (its box and a margin, clipped to the
    field: :func:`firmware_host.scan.cell_region`); a box outside the field is one line, nothing written."""
    from PIL import Image

    from firmware_host.report import Box, cell_name
    from firmware_host.scan import cell_region

    rng = np.random.default_rng(5)
    field = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    root = tmp_path / "fields"
    root.mkdir()
    Image.fromarray(field).save(root / "f1.png")
    rows = [[cell_name("f1.png", Box(10, 20, 60, 80)), "monocyte", "other"], [cell_name("f1.png", Box(100, 0, 150, 40)), "monocyte", "basophil"]]
    done = apply_corrections(write_csv(tmp_path / "c.csv", rows), tmp_path / "out", base=root)
    assert done.n == 2 and done.counts == {"other": 1, "basophil": 1}
    for name, box in (("other/f1_10_20_60_80.png", (10, 20, 60, 80)), ("basophil/f1_100_0_150_40.png", (100, 0, 150, 40))):
        x0, y0, x1, y1 = cell_region(box, 200, 120)
        assert (x1 - x0, y1 - y0) != (box[2] - box[0], box[3] - box[1])  # more than the bare box
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), field[y0:y1, x0:x1])
    rows = [[cell_name("f1.png", Box(150, 0, 260, 40)), "monocyte", "other"]]
    with pytest.raises(CorrectionsError, match=r"line 2: f1.png#150,0,260,40: box 150,0,260,40 is not inside the 200x120 field"):
        apply_corrections(write_csv(tmp_path / "d.csv", rows), tmp_path / "out2", base=root)
    assert not (tmp_path / "out2").exists()
    # a box that is not four whole numbers is a bad box, not a missing file (a review found "no such file")
    for box in ("-50,-50,9000,9000", "1.5,2,3,4", "10,20,60"):
        with pytest.raises(CorrectionsError, match=rf"line 2: f1.png#{box}: box '{box}' is not x0,y0,x1,y1 in whole pixels of the field$"):
            apply_corrections(write_csv(tmp_path / "e.csv", [[f"f1.png#{box}", "monocyte", "other"]]), tmp_path / "out3", base=root)
    # what it did, said as it did it: cells are cut, whatever --link says
    r = run(
        "corrections",
        "apply",
        write_csv(tmp_path / "f.csv", rows[:0] + [[cell_name("f1.png", Box(10, 20, 60, 80)), "", "other"]]),
        "--out",
        tmp_path / "out4",
        "--link",
        "sym",
        cwd=root,
    )
    assert r.exit_code == 0 and r.output.startswith(f"1 cell(s) cut out of their fields into {tmp_path / 'out4'} (other 1)."), r.output


def test_a_cell_that_cannot_be_written_names_where_it_goes(tmp_path, monkeypatch):
    """A full disk while cutting a cell blamed the field being read (a review); the error names the output."""
    import errno

    from PIL import Image

    from firmware_host.errors import DataError
    from firmware_host.report import Box, cell_name

    root = tmp_path / "fields"
    root.mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(root / "f1.png")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(DataError) as exc:
        apply_corrections(write_csv(tmp_path / "c.csv", [[cell_name("f1.png", Box(10, 20, 60, 80)), "", "other"]]), tmp_path / "out", base=root)
    assert exc.value.path == os.fspath(tmp_path / "out" / "other" / "f1_10_20_60_80.png"), exc.value.path
    assert f"cannot write the cell cut out of {root / 'f1.png'} (No space left on device)" in str(exc.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []
