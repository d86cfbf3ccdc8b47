"""``edgecell classify`` and ``edgecell bench`` through the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell.cli import cli
from firmware_host.runtime import FLAG_OTHER, FLAG_REVIEW, FLAG_UNCERTAIN, REVIEW_CLASSES
from tests._tflite_fixtures import CLASSES, copy_model, labelled_folder, save_jpeg

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("cells") / "data", per_class=3)


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_has_summary_and_example():
    r = run("classify", "--help")
    assert r.exit_code == 0
    assert "Classify cell images" in r.output and "Example:" in r.output and "edgecell classify --model" in r.output
    for opt in ("--model", "--json", "--csv", "--threshold", "--threads", "--precision"):
        assert opt in r.output
    r = run("bench", "--help")
    assert r.exit_code == 0 and "Example:" in r.output and "--keras" in r.output


def test_all_good_exit_0_with_metrics(models, data, tmp_path):
    out = tmp_path / "r.json"
    r = run("classify", "--model", models.export, data, "--json", out, "--threads", 1)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["summary"]["n_classified"] == 15 and rep["summary"]["n_failed"] == 0 and rep["failed"] == []
    assert rep["model"]["precision"] == "int8" and rep["model"]["interpreter"]
    correct = sum(r["correct"] for r in rep["results"])
    assert rep["metrics"]["n"] == 15 and rep["metrics"]["accuracy"] == pytest.approx(correct / 15)
    cm = np.array(rep["metrics"]["confusion_matrix"])
    assert np.trace(cm) == correct and rep["metrics"]["macro_f1"] == pytest.approx(np.mean([rep["metrics"]["per_class"][c]["f1"] for c in CLASSES]))
    assert np.array(rep["metrics"]["confusion_matrix"]).sum() == 15
    assert sum(rep["summary"]["differential"].values()) == 15
    for res in rep["results"]:
        assert res["true_label"] == Path(res["path"]).parent.name
        assert sum(res["probs"].values()) == pytest.approx(1.0)
        assert res["preprocess_ms"] > 0 and res["inference_ms"] > 0
        assert res["flag"] in ("", FLAG_REVIEW, FLAG_UNCERTAIN)
    inf = sorted(r["inference_ms"] for r in rep["results"])
    assert rep["latency"]["inference_ms"]["p50"] == pytest.approx(np.percentile(inf, 50), abs=1e-3) and rep["latency"]["inference_ms"]["n"] == 15
    # the human summary
    assert "Differential count" in r.output and "accuracy" in r.output and "Confusion matrix" in r.output
    assert "p95" in r.output and "Flagged:" in r.output


def test_the_differential_is_of_the_white_cells_and_a_possible_blast_is_said_first(models, data, tmp_path):
    """As a laboratory reads a differential (a clinical review): shares of the white cells, other among them, a nucleated
    red cell per 100 of them; too few cells said; a possible blast named before the table; the JSON says the same."""
    from rich.console import Console

    from edgecell.views.classify import differential_table
    from firmware_host.classify import BLASTS_NAMED, blasts_line
    from firmware_host.runtime import TRIAGE_NOTE, differential_notes, differential_shares, is_possible_blast, label_text, prob_text
    from tests._tflite_fixtures import copy_model, reseal

    counts = {"seg_neutrophil": 6, "other": 5, "erythroblast": 2, "myeloblast": 0}
    shares = differential_shares(counts, no_nucleus=3)  # 3 of the 5 other cells hold no stained nucleus: not white cells
    assert shares == {
        "white": {"seg_neutrophil": 6, "other": 2, "myeloblast": 0},
        "white_cells": 8,
        "pct": {"seg_neutrophil": 75.0, "other": 25.0, "myeloblast": 0.0},
        "per_100_white_cells": {"erythroblast": 25.0},
        "no_nucleus": 3,
    }
    assert differential_shares({"erythroblast": 3})["pct"] == {} and differential_shares({"erythroblast": 3})["per_100_white_cells"] == {"erythroblast": None}
    assert differential_shares({"basophil": 2}, no_nucleus=4)["no_nucleus"] == 0  # a model without other has none
    con = Console(width=100, record=True)
    con.print(differential_table("Differential count", counts, 3))
    text = con.export_text()
    for row in (
        "│ seg_neutrophil                             │     6 │  75.0 │",
        "│ other                                      │     2 │  25.0 │",
        "│ white cells                                │     8 │ 100.0 │",
        "│ erythroblast (review), per 100 white cells │     2 │  25.0 │",
        "│ other, no stained nucleus (not counted)    │     3 │     - │",
    ):
        assert row in text, text
    notes = differential_notes(counts, 3)
    assert notes[0].startswith("erythroblast: a nucleated red cell, not a white cell") and notes[-1].startswith("Only 8 white cells")
    assert "3 cells labelled other with no whole stained nucleus found (usually red cells" in notes[2]
    assert not any(n.startswith("other:") for n in differential_notes({"seg_neutrophil": 6, "other": 3}, 3))  # no other with a nucleus
    assert is_possible_blast("myeloblast", []) and is_possible_blast("other", [("myeloblast", 0.6), ("other", 0.3)])
    assert not is_possible_blast("other", [{"label": "other", "prob": 0.6}, {"label": "myeloblast", "prob": 0.3}])  # taught as other
    assert not is_possible_blast("erythroblast", [("myeloblast", 0.4)]) and blasts_line(0, []) is None
    # a probability is never shown as certainty (1.00) or impossibility (0.00)
    assert [prob_text(p) for p in (0.9951, 0.994, 0.5, 0.0051, 0.0049)] == [">0.99", "0.99", "0.50", "0.01", "<0.01"]
    assert label_text("myeloblast", 0.999) == "myeloblast >0.99"
    files = [f"c{k}.jpg" for k in range(BLASTS_NAMED)]
    assert blasts_line(12, files, 12).endswith(f"(images: {', '.join(files)}, and 2 more): have a haematologist check them before any count is reported")
    assert blasts_line(10, files, 10).endswith(f"(images: {', '.join(files)}): have a haematologist check them before any count is reported")
    assert (
        blasts_line(1, ["a.jpg"])
        == "possible blast: 1 cell the model took for a myeloblast (images: a.jpg): have a haematologist check it before any count is reported"
    )

    # the CLI, with the six-class model given a nucleus check that some of the drawn cells fail: the JSON and the
    # printed table agree, and the cells without a nucleus are not white cells
    model = copy_model(models.root / "export_other" / "model_float32.tflite", tmp_path / "export")
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["other_score"]["nucleus_max_offset"] = 95.0
    model.with_suffix(".json").write_text(json.dumps(meta))
    reseal(model)
    out = tmp_path / "r.json"
    r = run("classify", "--model", model, data, "--json", out, "--threads", 1)
    rep = json.loads(out.read_text())
    summary, results = rep["summary"], rep["results"]
    bare = sum(x["label"] == "other" and "no whole stained nucleus" in x["other_reason"] for x in results)
    assert 0 < bare == summary["no_nucleus"], [x["other_reason"] for x in results]
    white = sum(n for c, n in summary["differential"].items() if c != "erythroblast") - bare
    assert summary["white_cells"] == white and set(summary["differential_pct"]) == {*CLASSES, "other"} - {"erythroblast"}
    assert summary["per_100_white_cells"]["erythroblast"] == pytest.approx(100 * summary["differential"]["erythroblast"] / white)
    blasts = [x["path"] for x in results if is_possible_blast(x["label"], x["top3"])]
    assert summary["flagged"]["possible_blasts"] == len(blasts) > 0
    assert [x["possible_blast"] for x in results] == [is_possible_blast(x["label"], x["top3"]) for x in results]
    in_other = sum(x["possible_blast"] and x["label"] == "other" for x in results)
    assert summary["possible_blasts_in_other"] == in_other > 0
    lines = r.output.splitlines()
    table = next(k for k, line in enumerate(lines) if line.startswith("Differential count"))
    assert lines[table - 1].startswith(f"possible blast: {len(blasts)} cell") and os.path.relpath(blasts[0], data) in lines[table - 1]
    assert lines[-1] == lines[table - 1]  # and said again last: the first has scrolled away on a small screen
    assert f"myeloblast (review) (+{in_other} possible in other)" in r.output  # its row does not read as no blast
    assert r.output.count("(possible blast)") == in_other  # each such cell marked in the printed results
    assert "│ white cells " in r.output and f"│ {white:>5} │ 100.0 │" in r.output
    assert f"{bare} cells labelled other with no whole stained nucleus found" in " ".join(r.output.split()) and TRIAGE_NOTE in " ".join(r.output.split())


def test_bad_files_among_good_ones_exit_1(models, data, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    good = sorted((data / "monocyte").glob("*.jpg"))
    for g in good:
        (d / g.name).write_bytes(g.read_bytes())
    (d / "zero.jpg").write_bytes(b"")
    (d / "trunc.jpg").write_bytes(good[0].read_bytes()[:200])
    (d / "text.jpg").write_text("hello, not an image")
    (d / "folder.jpg").mkdir()
    os.symlink(d / "gone.jpg", d / "link.jpg")
    out = tmp_path / "r.json"
    r = run("classify", "--model", models.export, d, "--json", out)
    assert r.exit_code == 1
    rep = json.loads(out.read_text())
    assert rep["summary"]["n_classified"] == len(good)
    failed = {Path(f["path"]).name: f["error"] for f in rep["failed"]}
    assert set(failed) == {"zero.jpg", "trunc.jpg", "text.jpg", "folder.jpg", "link.jpg"}
    assert "broken symbolic link" in failed["link.jpg"] and "directory" in failed["folder.jpg"]
    for name in failed:
        lines = [ln for ln in r.output.splitlines() if name in ln and "error" in ln]
        assert len(lines) == 1, (name, r.output)
    assert "5 of 8 inputs could not be classified" in r.output
    assert "Traceback" not in r.output


def test_a_long_run_lists_the_flagged_and_says_what_it_left_out(models, tmp_path, monkeypatch):
    """Over MANY images the table lists flagged ones only; the note counts the flagged and the unflagged left out
    apart (it used to give one number for both, "(156 not shown)", under "the first 100 of the 169 flagged")."""
    import firmware_host.classify as classify_mod
    import firmware_host.runtime as runtime_mod

    data = labelled_folder(tmp_path / "data", per_class=12)
    # the tiny random model may name every random image a review class; flag by confidence alone, at its median
    monkeypatch.setattr(runtime_mod, "REVIEW_CLASSES", frozenset())
    res = CliRunner().invoke(cli, ["classify", "--model", str(models.int8), str(data), "--json", str(tmp_path / "r.json")])
    confidences = sorted(r["confidence"] for r in json.loads((tmp_path / "r.json").read_text())["results"])
    median = f"{confidences[len(confidences) // 2]:.4f}"
    monkeypatch.setattr(classify_mod, "MAX_TABLE_ROWS", 3)
    res = CliRunner().invoke(cli, ["classify", "--model", str(models.int8), str(data), "--json", str(tmp_path / "r.json"), "--threshold", median])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    n, flagged = summary["n_classified"], summary["flagged"]["total"]
    assert n == 12 * len(CLASSES) > classify_mod.MANY and 3 < flagged < n  # some flagged beyond the table, some not flagged
    note = " ".join(res.stdout.split())
    assert f"{n} images classified: the table lists only the first 3 of the {flagged} flagged ones" in note
    assert f"(not shown: {flagged - 3} more flagged, {n - flagged} not flagged)" in note
    # every image flagged, and all in the table: nothing left out to name
    monkeypatch.setattr(classify_mod, "MAX_TABLE_ROWS", 100)
    res = CliRunner().invoke(cli, ["classify", "--model", str(models.int8), str(data), "--threshold", "1.0"])
    note = " ".join(res.stdout.split())
    assert res.exit_code == 0 and f"the table lists only the {n} flagged ones; add --csv FILE" in note and "not shown" not in note


def test_missing_path_argument_exit_1(models, data):
    r = run("classify", "--model", models.export, data / "basophil", data / "no_such.jpg")
    assert r.exit_code == 1
    assert "no_such.jpg: no such file or folder" in r.output


@pytest.mark.parametrize("kind", ["garbage", "truncated", "sha"])
def test_bad_model_one_line_error(models, data, tmp_path, kind):
    m = copy_model(models.int8, tmp_path / "bad")
    if kind == "garbage":
        m.write_bytes(b"\x00garbage" * 100)
    elif kind == "truncated":
        m.write_bytes(m.read_bytes()[:1000])
    else:
        m.write_bytes(m.read_bytes()[:-1] + b"\x01")
    r = CliRunner().invoke(cli, ["classify", "--model", str(m), str(data)])
    assert r.exit_code == 1
    err = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("Error:") and str(m) in err[0], r.output
    assert "Traceback" not in r.output


def test_json_to_stdout_stays_clean(models, data):
    r = run("classify", "--model", models.export, data / "basophil", "--json", "-")
    assert r.exit_code == 0
    rep = json.loads(r.stdout)
    assert len(rep["results"]) == 3 and rep["metrics"]["n"] == 3
    assert "Differential count" in r.stderr


def test_csv_one_row_per_image(models, data, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "r.csv"
    r = run("classify", "--model", models.export, "--precision", "float32", data, bad, "--csv", out)
    assert r.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 16
    ok = [x for x in rows if not x["error"]]
    assert len(ok) == 15 and all(x["label"] in CLASSES for x in ok)
    assert all(abs(sum(float(x[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4 for x in ok)
    assert {x["true_label"] for x in ok} == set(CLASSES)
    assert [x for x in rows if x["error"]][0]["path"] == str(bad)
    r = run("classify", "--model", models.export, data / "myeloblast", "--csv", "-")
    assert r.exit_code == 0 and r.stdout.startswith("path,label,confidence,flag")
    assert len(r.stdout.strip().splitlines()) == 4


def test_an_output_over_the_other_model_of_the_export_is_refused(models, data, tmp_path):
    """Given one model file, the other model in its export folder (and its sidecar) is protected as well."""
    exp = tmp_path / "exp"
    shutil.copytree(models.export, exp)
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    for out in ("model_float32.tflite", "model_float32.json"):
        r = run("classify", "--model", exp / "model_int8.tflite", data, "--csv", exp / out)
        assert r.exit_code == 2 and "beside" in r.output, r.output
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before


def test_an_output_over_an_image_or_model_that_is_not_read_is_refused(models, data, tmp_path):
    """A typo in --json/--csv/--report (another run's model, an image of another slide, a run's metadata) would have
    replaced a file this command does not read: one line, exit 2, the file as it was."""
    other = tmp_path / "other"
    shutil.copytree(models.export, other / "export")
    (other / "slide.jpg").write_bytes((data / "basophil").iterdir().__next__().read_bytes())
    (other / "model.keras").write_bytes(b"zip")
    (other / "metadata.json").write_text("{}")
    (other / "split.csv").write_text("file,class,split\n")
    for record in ("metrics.json", "history.json", "cv.json", "adapt.json", "export/parity.json"):
        (other / record).write_text("{}")
    (other / "export" / "calibration_manifest.csv").write_text("file\n")
    targets = {
        "export/model_int8.tflite": "a model",
        "export/model_int8.json": "a model's metadata",
        "slide.jpg": "an image",
        "metadata.json": "a model's metadata",
        "split.csv": "a run's split (what its model was trained and tested on)",
        **{name: f"a run's record of its training ({name})" for name in ("metrics.json", "history.json", "cv.json", "adapt.json")},
        "export/parity.json": "an export's parity report",
        "export/calibration_manifest.csv": "an export's calibration manifest",
    }
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    for rel, kind in targets.items():
        for opt in ("--json", "--csv", "--report"):
            r = run("classify", "--model", models.export, data / "basophil", opt, other / rel)
            assert r.exit_code == 2 and " ".join(r.output.split()) == (
                f"Error: {other / rel}: {opt} would overwrite {kind}, which no edgecell output replaces; choose another file"
            ), r.output
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    (other / "results.json").write_text("{}")  # an earlier results file is replaced, as before
    assert run("classify", "--model", models.export, data / "basophil", "--json", other / "results.json").exit_code == 0


def test_pictures_a_folder_search_does_not_read_are_named(models, data, tmp_path):
    slide = tmp_path / "slide"
    shutil.copytree(data / "basophil", slide)
    (slide / "c.gif").write_bytes(b"GIF89a")
    (slide / "._x.jpg").write_bytes(b"AppleDouble")  # a USB stick's macOS litter: not an image, not a failure
    jpeg = next(slide.glob("*.jpg"))
    shutil.copy(jpeg, slide / "IMG0001")  # a JPEG that lost its suffix: it was left out without a word
    (slide / "README").write_text("notes")  # a file without a suffix that is not a picture: nothing to say
    os.mkfifo(slide / "pipe")  # never opened to be looked at (it would block)
    from PIL import Image

    Image.open(jpeg).save(slide / "phone.jfif", "JPEG", quality=90)  # a JPEG by another of its names: read
    out = tmp_path / "r.json"
    r = run("classify", "--model", models.export, slide, "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["unread"] == [str(slide / "IMG0001"), str(slide / "c.gif")]  # for a script too, not on stderr alone
    assert str(slide / "phone.jfif") in [x["path"] for x in rep["results"]]
    assert (
        f"warning: 2 picture(s) in the folders given are not read, as edgecell reads .jpg .jpeg .jfif .png .tif .tiff .bmp from folders "
        f"({slide / 'IMG0001'}, {slide / 'c.gif'}); rename or convert them to one of these (or give each by name to read it)"
    ) in " ".join(r.output.split())
    r = run("classify", "--model", models.export, slide / "IMG0001")  # by name it is read
    assert r.exit_code == 0 and "IMG0001" in r.output, r.output


def test_flagged_total_counts_other_cells(models, data, tmp_path):
    """Every row with a flag is counted, `other` ones included, as the CSV and the review page show them."""
    out = tmp_path / "r.json"
    assert run("classify", "--model", models.root / "export_other", data, "--other-threshold", "0", "--json", out).exit_code == 0
    rep = json.loads(out.read_text())
    flags = [x["flag"] for x in rep["results"]]
    assert rep["summary"]["flagged"]["other"] == flags.count(FLAG_OTHER)
    assert rep["summary"]["flagged"]["total"] == sum(bool(f) for f in flags) == len(flags)
    # every cell is `other` here; one the network took for a myeloblast or erythroblast goes to the haematologist
    for x in rep["results"]:
        assert x["label"] == "other" and x["flag"] == (FLAG_REVIEW if x["top3"][0]["label"] in REVIEW_CLASSES else FLAG_OTHER), x
    assert rep["summary"]["flagged"]["review_other"] == flags.count(FLAG_REVIEW) > 0


def test_a_cell_sent_to_other_by_its_score_keeps_the_models_own_choice_in_view(models, data, tmp_path):
    """Labelled `other` by the never-seen score: the CSV's next classes and the printed line still show the class
    the model itself put first."""
    out = tmp_path / "r.csv"
    r = run("classify", "--model", models.root / "export_other", data, "--other-threshold", "0", "--csv", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert rows and all(x["label"] == "other" for x in rows)
    for x in rows:
        probs = {k[2:]: float(v) for k, v in x.items() if k.startswith("p_")}
        ranked = sorted((c for c in probs if c != "other"), key=lambda c: -probs[c])
        assert x["top2_label"] == ranked[0] and x["top3_label"] in ranked[:2]
    first = rows[0]
    assert f"(then {first['top2_label']} " in " ".join(r.output.split()) or len(rows) > 50


@pytest.mark.parametrize("threshold", [0.0, 0.7, 0.9, 1.0])
def test_threshold_and_flags(models, data, tmp_path, threshold):
    out = tmp_path / "r.json"
    assert run("classify", "--model", models.export, data, "--threshold", threshold, "--json", out).exit_code == 0
    rep = json.loads(out.read_text())
    for x in rep["results"]:
        if x["label"] in ("myeloblast", "erythroblast"):
            assert x["flag"] == FLAG_REVIEW
        else:
            assert x["flag"] == (FLAG_UNCERTAIN if x["confidence"] < threshold else "")
    assert rep["summary"]["flagged"]["review"] == sum(rep["summary"]["differential"].get(c, 0) for c in ("myeloblast", "erythroblast"))
    flagged = rep["summary"]["flagged"]
    assert flagged["review"] == sum(x["flag"] == FLAG_REVIEW for x in rep["results"])
    assert flagged["uncertain"] == sum(x["flag"] == FLAG_UNCERTAIN for x in rep["results"])
    if threshold == 0.0:
        assert flagged["uncertain"] == 0
    if threshold == 0.9:  # the tiny model is unsure of some images, sure of others
        assert 0 < sum(x["confidence"] < threshold for x in rep["results"]) < len(rep["results"])


def test_glob_pattern_and_single_file(models, data, tmp_path):
    out = tmp_path / "r.json"
    r = run("classify", "--model", models.int8, str(data / "*" / "*_0.jpg"), "--json", out)
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["results"]) == 5


def test_many_images_show_flagged_only(models, tmp_path):
    d = tmp_path / "many"
    rng = np.random.default_rng(0)
    for k in range(60):
        save_jpeg(d / f"img_{k:03d}.jpg", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), quality=70)
    r = run("classify", "--model", models.export, d)
    assert r.exit_code == 0
    assert "the table lists only the" in r.output and "flagged" in r.output
    assert "img_000.jpg" not in r.output or "Flagged images" in r.output


def test_bench_json(models, data, tmp_path):
    out = tmp_path / "b.json"
    r = run("bench", models.export, "--runs", 5, "--warmup", 1, "--threads", "1,2", "--data", data, "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert len(rep["results"]) == 4
    assert {(x["precision"], x["threads"]) for x in rep["results"]} == {("int8", 1), ("int8", 2), ("float32", 1), ("float32", 2)}
    for x in rep["results"]:
        assert x["latency_ms"]["n"] == 5 and x["latency_ms"]["p50"] > 0 and x["throughput_per_s"] > 0
        assert x["end_to_end"]["classified"] == 15 and x["size_bytes"] > 0
        assert "peak_rss_mb" not in x  # the old name, which read as a per-model figure
        # the model's own memory is a growth, far below the whole process's peak
        assert 0 <= x["model_rss_mb"] < x["process_peak_rss_mb"]
    peaks = [x["process_peak_rss_mb"] for x in rep["results"]]
    assert peaks == sorted(peaks)  # process-wide and monotonic: why it is not the per-model figure
    assert any(n.startswith("model_rss_mb = ") for n in rep["notes"]) and any(n.startswith("process_peak_rss_mb = ") for n in rep["notes"])
    assert len(rep["speedup_int8_vs_float32"]) == 2
    assert "int8 vs float32" in r.output
    assert "+RSS MB" in r.output and "peak MB" in r.output
    r = run("bench", models.int8, "--threads", "0")
    assert r.exit_code == 2


def test_bench_says_when_images_could_not_be_classified(models, data, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    (mixed / "monocyte" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "b.json"
    r = run("bench", models.export / "model_int8.tflite", "--runs", 2, "--warmup", 1, "--data", mixed, "--json", out)
    assert r.exit_code == 0, r.output
    e2e = json.loads(out.read_text())["results"][0]["end_to_end"]
    assert e2e["images"] == 16 and e2e["classified"] == 15 and "broken.jpg" in e2e["first_failure"]
    assert "1 of 16 images could not be classified" in " ".join(r.output.split())


def test_bench_refuses_data_of_which_no_image_can_be_read(models, tmp_path):
    """0 images per second, and a latency timed on noise, would look like a result."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "b.png").write_bytes(b"")
    out = tmp_path / "b.json"
    r = run("bench", models.int8, "--runs", 2, "--data", bad, "--json", out)
    assert r.exit_code == 1 and not out.exists()
    assert r.output == f"Error: {bad / 'a.jpg'}: not an image Pillow can read; nor can the other 1 image(s) given, so there is nothing to time end to end\n"


def test_bench_keras_comparison(models, tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "b.json"
    r = run("bench", models.float32, "--runs", 3, "--warmup", 1, "--threads", "1", "--keras", models.keras_file, "--json", out)
    assert r.exit_code == 0, r.output
    k = json.loads(out.read_text())["keras"]
    assert k["predict_one"]["latency_ms"]["n"] == 3 and k["predict_on_batch"]["batch"] == 32
    b = k["predict_on_batch"]
    assert b["images_per_s"] == pytest.approx(1000.0 * b["batch"] / b["latency_ms"]["mean"])
    assert b["p50_per_image_ms"] == pytest.approx(b["latency_ms"]["p50"] / b["batch"])
    assert 0 <= k["model_rss_mb"] < k["process_peak_rss_mb"] and "peak_rss_mb" not in k
    assert "Keras (model.keras" in r.output and "img/s at the mean" in r.output and "RSS added by the model" in r.output
    # a run folder works as well as the file
    r = run("bench", models.float32, "--runs", 1, "--warmup", 0, "--threads", "1", "--keras", models.keras_file.parent)
    assert r.exit_code == 0 and "Keras (model.keras" in r.output


def test_bench_rss_helpers_see_an_allocation():
    from firmware_host.bench import current_rss_mb, release_freed_memory, rss_added

    if current_rss_mb() is None:
        pytest.skip("/proc/self/statm is Linux-only; model_rss_mb is None elsewhere")
    release_freed_memory()
    before = current_rss_mb()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
    added = rss_added(before)
    assert 60 <= added <= 80, added
    del block
    release_freed_memory()
    assert current_rss_mb() < before + 16  # handed back: the next row does not inherit it


def test_bench_keras_without_tensorflow_is_an_error(tmp_path, monkeypatch):
    """Blocking the import (sys.modules[name] = None) is how Python itself marks a module absent."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes(b"never read: the TensorFlow check comes first")
    tflite = tmp_path / "model_int8.tflite"
    tflite.write_bytes(b"never read either: refused before any timing")
    r = CliRunner().invoke(cli, ["bench", str(tflite), "--keras", str(run_dir)])
    assert r.exit_code == 1, r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [
        'Error: --keras needs TensorFlow, which is not installed here (in edgecell\'s folder, pip install ".[train]"); leave out --keras to bench the TFLite models alone'
    ]


@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_evaluate_and_audit_without_the_training_extra_say_so_before_any_work(models, tmp_path, monkeypatch, command):
    """On a Pi's .[pi] install evaluate classified a whole set, then ended as an unexpected ModuleNotFoundError
    (scikit-learn), and audit after a minute (a review): one line first, naming the extra."""
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in the .[pi] environment of make pi-check
    args = ["evaluate", str(models.int8)] if command == "evaluate" else ["audit", "--data", str(tmp_path)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [
        f'Error: {command} needs scikit-learn and matplotlib, which this install lacks; this command needs the training extra: in edgecell\'s folder, pip install ".[train]"'
    ]


def test_bench_keras_of_a_truncated_model_says_so(models, tmp_path):
    """Keras's own message for it was "File not found", of a file that is there."""
    cut = tmp_path / "model.keras"
    cut.write_bytes(models.keras_file.read_bytes()[:500])
    r = CliRunner().invoke(cli, ["bench", str(models.int8), "--runs", "1", "--warmup", "0", "--threads", "1", "--keras", str(cut)])
    assert r.exit_code == 1 and r.output.splitlines()[-1].startswith(f"Error: {cut}: is not a Keras model file"), r.output


def test_bench_keras_without_a_keras_model_is_an_error(models, tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["bench", str(models.int8), "--runs", "1", "--warmup", "0", "--threads", "1", "--keras", str(empty)])
    assert r.exit_code == 1, r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [
        f"Error: {empty}: --keras: no .keras model in this folder (give a training run folder or its model.keras)"
    ]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    r = CliRunner().invoke(cli, ["bench", str(models.int8), "--keras", str(notes)])
    assert r.exit_code == 1
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [f"Error: {notes}: --keras wants a .keras file or a run folder holding one"]


def test_cli_runs_without_importing_tensorflow(models, data, tmp_path):
    """classify --help, a full classify and a bench in a fresh interpreter leave TensorFlow unimported."""
    out = tmp_path / "r.json"
    code = f"""
import sys
from click.testing import CliRunner
from edgecell.cli import cli
r = CliRunner()
a = r.invoke(cli, ["classify", "--help"])
b = r.invoke(cli, ["classify", "--model", {str(models.export)!r}, {str(data)!r}, "--json", {str(out)!r}])
c = r.invoke(cli, ["bench", {str(models.export)!r}, "--runs", "3", "--warmup", "1", "--threads", "1", "--data", {str(data)!r}])
print(a.exit_code, b.exit_code, c.exit_code)
print('tensorflow' in sys.modules, 'keras' in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "EDGECELL_INTERPRETER"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    codes, modules = p.stdout.strip().splitlines()[-2:]
    assert codes == "0 0 0", p.stdout
    assert modules == "False False"
    assert json.loads(out.read_text())["summary"]["n_classified"] == 15


@pytest.mark.realdata
def test_real_images_classify(models, tmp_path):
    from tests._realdata import real_data_or_skip

    real = real_data_or_skip()
    files = []
    for c in CLASSES:
        files += sorted((real / c).glob("*.jpg"))[:3]
    assert len(files) == 15, "expected at least 3 JPEGs per class"
    out = tmp_path / "real.json"
    r = run("classify", "--model", models.export, *files, "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["summary"]["n_classified"] == 15 and rep["metrics"]["n"] == 15
    assert {x["true_label"] for x in rep["results"]} == set(CLASSES)


def test_bench_table_keeps_every_figure_on_one_line_at_80_columns():
    """A figure split over two lines (1093. / 4) reads as two figures; a narrow terminal shortens names instead."""
    from rich.console import Console

    from edgecell.views.bench import print_report

    row = {
        "model": "/x/export/model_float32.tflite",
        "precision": "float32",
        "threads": 2,
        "size_bytes": 1093.4 * 1024,
        "latency_ms": {"min": 0.754, "p50": 0.831, "p95": 0.952, "p99": 1.06, "mean": 0.84},
        "throughput_per_s": 1190.0,
        "end_to_end": {"images": 10, "classified": 10, "images_per_s": 251.0},
        "model_rss_mb": 2.7,
        "process_peak_rss_mb": 62.0,
        "interpreter": "ai_edge_litert",
    }
    con = Console(width=80, record=True, force_terminal=False)
    print_report(con, [row], None, True)
    line = next(ln for ln in con.export_text().splitlines() if ln.strip().startswith("export"))
    for figure in ("1093", "0.754", "0.831", "0.952", "1.06", "1190", "251", "2.7", "62"):
        assert figure in line.split(), (figure, line)


def test_bench_rows_of_two_runs_exports_are_told_apart():
    """Every run's export folder is called ``export``: rows and speed-up lines of two runs read "export" and
    "export", one 3.7x faster, the other 1.6x slower (a review); they are named by as much of the path as tells them apart."""
    from rich.console import Console

    from edgecell.views.bench import print_report

    def row(run, prec, p50):
        lat = {"min": p50, "p50": p50, "p95": p50, "p99": p50, "mean": p50}
        return {
            "model": f"/x/{run}/export/model_{prec}.tflite",
            "precision": prec,
            "threads": 1,
            "size_bytes": 300 * 1024 if prec == "int8" else 1100 * 1024,
            "latency_ms": lat,
            "throughput_per_s": 1000 / p50,
            "end_to_end": None,
            "model_rss_mb": 2.0,
            "process_peak_rss_mb": 60.0,
            "interpreter": "ai_edge_litert",
        }

    con = Console(width=160, record=True, force_terminal=False)
    print_report(con, [row("run_a", "float32", 0.9), row("run_a", "int8", 0.3), row("run_b", "float32", 0.5), row("run_b", "int8", 0.8)], None, False)
    text = con.export_text()
    assert "int8 vs float32 (run_a/export, 1 thread(s))" in text and "int8 vs float32 (run_b/export, 1 thread(s))" in text
    assert sum(ln.strip().startswith("run_a/export") for ln in text.splitlines()) == 2


def test_what_the_model_cannot_say_and_a_threshold_set_by_hand_are_said_before_the_results(models, data, tmp_path):
    """A five-class model counts a lymphocyte as one of the five; --other-threshold 0 sends every cell to other: the
    printed output and the review page said neither."""
    r = run("classify", "--model", models.export, data / "basophil", "--report", tmp_path / "p.html")
    assert r.exit_code == 0 and r.output.count("warning: this model has no `other` class") == 1, r.output
    assert "this model has no `other` class" in (tmp_path / "p.html").read_text(encoding="utf-8")
    out = tmp_path / "r.json"
    r = run("classify", "--model", models.root / "export_other", data / "basophil", "--other-threshold", "0", "--json", out)
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "warning: cells are sent to other above a never-seen score of 0 (--other-threshold), not this model's" in said
    score = json.loads(out.read_text())["model"]["other_score"]
    assert score["threshold"] == 0.0 and score["fitted_threshold"] > 0 and score["share"] is None  # the share is the fitted one's
    r = run("classify", "--model", models.root / "export_other", data / "basophil")
    assert "warning: cells are sent to other above" not in r.output and "no `other` class" not in r.output
