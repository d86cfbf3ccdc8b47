"""Reliability, round 2 (issue #18), outputs: never write over what the user gave, '-' is stdout, CSV round-trips.

Through the command line, as tests/test_reliability.py: an output that names an input image, a
model, its sidecar or anything inside a folder being read is refused in one line with exit 2,
before any work and without touching it; a pipe or a device is written to as a stream; standard
output that is closed, broken or full is one clear line; every file name survives CSV.
docs/reliability.md ("Where outputs may go") lists each case.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._realdata import make_slice
from tests._tflite_fixtures import CLASSES, copy_model, labelled_folder, save_jpeg

from .test_reliability import ROOT, assert_one_line_error, cli_run, leftovers, nonblank, tree_digest

# Names a careful user may well have: a carriage return, a line feed, a comma, quotes.
ODD_NAMES = ["carriage\rreturn.jpg", "line\nfeed.jpg", "comma, here.jpg", 'say "cheese".jpg', 'both\r\nends,"q".jpg']


@pytest.fixture
def labelled(tmp_path) -> Path:
    return labelled_folder(tmp_path / "data", per_class=2)


def digest(p: Path) -> bytes:
    return p.read_bytes()


# ============================================================== an output may not be what is read


@pytest.mark.parametrize("what", ["image", "model", "sidecar", "new-in-input-folder", "in-model-folder"])
def test_classify_output_onto_an_input_is_refused(models, labelled, tmp_path, what):
    model = copy_model(models.int8, tmp_path / "export")
    image = next((labelled / "basophil").iterdir())
    args = ["classify", "--model", model, labelled]
    target = {
        "image": image,
        "model": model,
        "sidecar": model.with_suffix(".json"),
        "new-in-input-folder": labelled / "report.json",
        "in-model-folder": tmp_path / "export" / "report.json",
    }[what]
    if what == "in-model-folder":
        args[2] = tmp_path / "export"
    before = tree_digest(tmp_path)
    res = cli_run(*args, "--json", target)
    line = assert_one_line_error(res, target, "--json", code=2)
    assert "Model" not in res.output  # refused before any work
    assert tree_digest(tmp_path) == before, line
    # the same through --csv, and through a symbolic link to it
    link = tmp_path / "link.csv"
    if target.exists():
        link.symlink_to(target)
        before = tree_digest(tmp_path)
        res = cli_run(*args, "--csv", link)
        assert_one_line_error(res, link, "--csv", code=2)
        assert tree_digest(tmp_path) == before


def test_classify_output_onto_an_image_given_by_a_glob_or_hard_link(models, labelled, tmp_path):
    image = next((labelled / "monocyte").iterdir())
    before = image.read_bytes()
    res = cli_run("classify", "--model", models.int8, str(labelled / "*" / "*.jpg"), "--json", image)
    assert_one_line_error(res, image, "would overwrite an input image", code=2)
    hard = tmp_path / "hard.json"
    os.link(image, hard)
    res = cli_run("classify", "--model", models.int8, image, "--csv", hard)
    assert_one_line_error(res, hard, "would overwrite an input image", code=2)
    assert image.read_bytes() == before


def test_bench_json_onto_the_model_is_refused(models, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(models.export, export)
    before = tree_digest(export)
    res = cli_run("bench", export / "model_int8.tflite", "--runs", 1, "--warmup", 0, "--threads", 1, "--json", export / "model_int8.tflite")
    assert_one_line_error(res, export / "model_int8.tflite", "would overwrite the model", code=2)
    res = cli_run("bench", export, "--runs", 1, "--warmup", 0, "--threads", 1, "--json", export / "model_float32.json")
    assert_one_line_error(res, export / "model_float32.json", "inside the model folder", code=2)
    assert tree_digest(export) == before


def test_bench_json_into_the_data_folder_is_refused(models, labelled, tmp_path):
    res = cli_run("bench", models.int8, "--runs", 1, "--warmup", 0, "--threads", 1, "--data", labelled, "--json", labelled / "monocyte" / "b.json")
    assert_one_line_error(res, labelled / "monocyte" / "b.json", "inside the data folder", code=2)
    assert not (labelled / "monocyte" / "b.json").exists()


@pytest.mark.parametrize("where", ["json-model", "json-data", "out-data"])
def test_evaluate_outputs_onto_inputs_are_refused(models, labelled, tmp_path, where):
    model = copy_model(models.int8, tmp_path / "export")
    before = tree_digest(tmp_path)
    args = ["evaluate", model, "--data", labelled, "--split", "all"]
    if where == "json-model":
        res = cli_run(*args, "--out", tmp_path / "ev", "--json", model)
        assert_one_line_error(res, model, "would overwrite the model", code=2)
    elif where == "json-data":
        res = cli_run(*args, "--out", tmp_path / "ev", "--json", labelled / "m.json")
        assert_one_line_error(res, labelled / "m.json", "inside the data folder", code=2)
    else:  # its PNGs would later be read as images of a class
        res = cli_run(*args, "--out", labelled / "basophil" / "ev")
        assert_one_line_error(res, labelled / "basophil" / "ev", "--out is inside the data folder", code=2)
    assert tree_digest(tmp_path) == before


def test_inspect_manifest_into_the_data_folder_is_refused(labelled, tmp_path):
    before = tree_digest(labelled)
    image = next((labelled / "myeloblast").iterdir())
    res = cli_run("inspect", "--data", labelled, "--manifest", image)
    assert_one_line_error(res, image, "--manifest is inside the data folder", code=2)
    res = cli_run("inspect", "--data", labelled, "--json", labelled / "i.json")
    assert_one_line_error(res, labelled / "i.json", "--json is inside the data folder", code=2)
    assert tree_digest(labelled) == before


def test_train_outputs_inside_the_data_folder_are_refused(labelled, tmp_path):
    before = tree_digest(labelled)
    res = cli_run("train", "--data", labelled, "--out", labelled / "run", "--epochs", 1)
    assert_one_line_error(res, labelled / "run", "--out is inside the data folder", code=2)
    res = cli_run("train", "--data", labelled, "--out", tmp_path / "run", "--json", labelled / "basophil" / "t.json")
    assert_one_line_error(res, labelled / "basophil" / "t.json", "--json is inside the data folder", code=2)
    res = cli_run("train", "--data", labelled, "--out", tmp_path)
    assert_one_line_error(res, tmp_path, "--out holds the data folder", code=2)
    # inside the run it writes: replaced with the run next time (or refused as a file train does not write)
    res = cli_run("train", "--data", labelled, "--out", tmp_path / "run", "--json", tmp_path / "run" / "t.json")
    assert_one_line_error(res, tmp_path / "run" / "t.json", "--json is inside --out, which this command replaces whole", code=2)
    assert tree_digest(labelled) == before and not (tmp_path / "run").exists()


def test_evaluate_json_onto_the_runs_records_is_refused(converted):
    """evaluate's --json over the run's metrics, history, or its export's parity record: refused as its split is."""
    run = converted
    before = tree_digest(run)
    for name in ("metrics.json", "history.json", "export/parity.json"):
        res = cli_run("evaluate", run, "--json", run / name)
        says = "is inside the run's export folder" if name.startswith("export/") else f"would overwrite the run's {name}"  # nothing goes there
        assert_one_line_error(res, run / name, says, code=2)
    assert tree_digest(run) == before


def test_audit_json_inside_the_data_folder_is_refused(labelled):
    res = cli_run("audit", "--data", labelled, "--json", labelled / "a.json")
    assert_one_line_error(res, labelled / "a.json", "--json is inside the data folder", code=2)
    assert not (labelled / "a.json").exists()


def test_convert_json_onto_the_runs_model_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "split.csv", "metadata.json"):
        (run / name).write_text(f"the run's {name}")
    (run / "export").mkdir()
    (run / "export" / "model_float32.tflite").write_text("the previous export")
    before = tree_digest(run)
    res = cli_run("convert", run, "--json", run / "model.keras")
    assert_one_line_error(res, run / "model.keras", "would overwrite the run's model.keras", code=2)
    res = cli_run("convert", run, "--json", run / "export" / "parity.json")
    assert_one_line_error(res, run / "export" / "parity.json", "inside the export folder", code=2)
    assert tree_digest(run) == before


# ============================================================== two outputs, empty and folder-like paths


def test_json_and_csv_to_the_same_file_is_refused(models, labelled, tmp_path):
    out = tmp_path / "r.txt"
    res = cli_run("classify", "--model", models.int8, labelled, "--json", out, "--csv", out)
    assert_one_line_error(res, out, "--json and --csv name the same file", code=2)
    assert not out.exists()
    res = cli_run("classify", "--model", models.int8, labelled, "--json", out, "--csv", tmp_path / "." / "r.txt")
    assert_one_line_error(res, tmp_path / "." / "r.txt", "same file", code=2)


def test_json_and_csv_both_to_stdout_is_refused_in_one_line(models, labelled):
    res = cli_run("classify", "--model", models.int8, labelled, "--json", "-", "--csv", "-")
    assert res.exit_code == 2 and nonblank(res.stderr)[-1].startswith("Error: only one of --json and --csv can write to stdout"), res.output


@pytest.mark.parametrize("command", ["classify", "bench", "inspect"])
def test_empty_output_path_is_a_user_error(models, labelled, command):
    args = {
        "classify": ["classify", "--model", models.int8, labelled],
        "bench": ["bench", models.int8, "--runs", 1, "--warmup", 0, "--threads", 1],
        "inspect": ["inspect", "--data", labelled],
    }[command]
    res = cli_run(*args, "--json", "")
    assert res.exit_code == 2, res.output
    assert "--json is an empty path" in nonblank(res.stderr)[-1]


@pytest.mark.parametrize("command", ["classify", "inspect"])
def test_an_output_that_writes_a_file_refuses_stdout(models, labelled, tmp_path, monkeypatch, command):
    """`--report -` wrote a file named '-' (over an input image of that name, found by a review), while the messages
    said '-' meant stdout: --report and --manifest now refuse '-' in one line, and suggest a name of their kind."""
    monkeypatch.chdir(tmp_path)
    opt, name = {"classify": ("--report", "report.html"), "inspect": ("--manifest", "manifest.csv")}[command]
    args = ["classify", "--model", models.int8, labelled] if command == "classify" else ["inspect", "--data", labelled]
    res = cli_run(*args, opt, "-")
    line = assert_one_line_error(res, "-", f"{opt} writes a file, not standard output; give a file name (such as {name})", code=2)
    assert line and not (tmp_path / "-").exists()
    res = cli_run(*args, opt, "")
    assert res.exit_code == 2 and nonblank(res.stderr)[-1].endswith(f"{opt} is an empty path; give a file name"), res.stderr
    res = cli_run(*args, opt, "newdir/")
    assert res.exit_code == 2 and f"give a file name (such as newdir/{name})" in nonblank(res.stderr)[-1], res.stderr
    if command == "classify":  # with --json on stdout too: the same refusal, not "only one of ... can write to stdout"
        res = cli_run(*args, "--json", "-", opt, "-")
        assert_one_line_error(res, "-", f"{opt} writes a file, not standard output", code=2)


def test_trailing_slash_names_a_folder(models, labelled, tmp_path):
    res = cli_run("classify", "--model", models.int8, labelled, "--json", f"{tmp_path / 'newdir'}/")
    line = assert_one_line_error(res, f"{tmp_path / 'newdir'}/", "ends with '/', so it names a folder", code=2)
    assert "give a file name" in line
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_a_folder_made_for_an_output_is_said_once(models, labelled, tmp_path, command):
    """A path that misses (a USB stick not mounted at /media/usb) would otherwise fill the SD card unseen."""
    stick = tmp_path / "media" / "usb"
    if command == "classify":
        args = ["classify", "--model", models.int8, labelled, "--csv", stick / "day1" / "today.csv"]
    else:  # a folder output
        pytest.importorskip("sklearn")
        args = ["evaluate", models.float32, "--data", labelled, "--split", "all", "--out", stick / "ev"]
    res = cli_run(*args)
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    made = stick / "day1" if command == "classify" else stick / "ev"
    assert notes == [f"note: created folder {made} ({tmp_path / 'media'} did not exist)"], res.stderr
    again = cli_run(*args)
    assert again.exit_code == 0 and "note: created folder" not in again.stderr


def test_the_python_api_makes_folders_without_a_warning(tmp_path):
    """In a process of its own: pytest drops the warning filters a module sets while the tests are collected."""
    target = tmp_path / "new" / "deeper" / "a.txt"
    code = f"from firmware_host.atomic import write_text; write_text({str(target)!r}, 'x')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "" and target.read_text() == "x", res.stderr


# ============================================================== pipes and devices are streams, modes are kept


def test_output_to_a_fifo_is_streamed_not_replaced(models, labelled, tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader waiting, as `cat fifo` would be
    try:
        res = cli_run("classify", "--model", models.int8, labelled, "--json", fifo)
        assert res.exit_code == 0, res.output
        chunks = []
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(json.loads(b"".join(chunks))["results"]) == 2 * len(CLASSES)
    assert leftovers(tmp_path) == []


def _char_device(tmp_path: Path) -> Path:
    """A node for the null device in ``tmp_path`` (never /dev/null itself, which a bug would replace)."""
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(dev, "w") as fh:
            fh.write("x")
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc}); the FIFO test covers streams")
    return dev


@pytest.mark.parametrize("command", ["classify-json", "classify-csv", "classify-report", "inspect-manifest", "bench-json"])
def test_output_to_a_character_device_is_written_not_replaced(models, labelled, tmp_path, command):
    dev = _char_device(tmp_path)
    args = {
        "classify-json": ["classify", "--model", models.int8, labelled, "--json", dev],
        # the page to /dev/null (it was fsynced: "Invalid argument", and the JSON beside it lost)
        "classify-report": ["classify", "--model", models.int8, labelled, "--report", dev, "--json", tmp_path / "kept.json"],
        "classify-csv": ["classify", "--model", models.int8, labelled, "--csv", dev],
        "inspect-manifest": ["inspect", "--data", labelled_folder(tmp_path / "five", per_class=5), "--manifest", dev],
        "bench-json": ["bench", models.int8, "--runs", 1, "--warmup", 0, "--threads", 1, "--json", dev],
    }[command]
    res = cli_run(*args)
    assert res.exit_code == 0, res.output
    assert stat.S_ISCHR(os.lstat(dev).st_mode), "the device was replaced by a regular file"
    assert leftovers(tmp_path) == []
    if command == "classify-report":
        assert json.loads((tmp_path / "kept.json").read_text())["results"]


def test_replaced_output_keeps_its_mode(models, labelled, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    out.chmod(0o664)
    csv_out = tmp_path / "r.csv"
    csv_out.write_text("")
    csv_out.chmod(0o600)  # a private report stays private
    res = cli_run("classify", "--model", models.int8, labelled, "--json", out, "--csv", csv_out)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o664
    assert stat.S_IMODE(csv_out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["results"]


def test_output_through_a_symlink_keeps_the_link(models, labelled, tmp_path):
    real = tmp_path / "reports" / "r.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    res = cli_run("classify", "--model", models.int8, labelled, "--json", link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and json.loads(real.read_text())["results"]


# ============================================================== standard output: closed, broken, full


def _edgecell(args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("EDGECELL_DEBUG", None)
    cmd = [sys.executable, "-m", "edgecell", *map(os.fspath, args)]
    return subprocess.run(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120, **kwargs)


def _assert_stdout_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    err = proc.stderr
    assert proc.returncode not in (0, None), err
    assert "Traceback" not in err and "unexpected error" not in err and "Exception ignored" not in err, err
    assert len([ln for ln in nonblank(err) if ln.startswith("Error:")]) == 1, err
    last = nonblank(err)[-1]
    for w in words:
        assert w in last, (w, last)


def test_json_to_a_closed_stdout_is_an_error(models, labelled):
    # the shell's `>&-`: file descriptor 1 closed before edgecell starts
    proc = _edgecell(["classify", "--model", models.int8, labelled, "--json", "-"], stdout=None, preexec_fn=lambda: os.close(1))
    _assert_stdout_line(proc, "standard output is closed")


@pytest.mark.parametrize("command", ["classify", "inspect"])
def test_json_to_a_full_stdout_is_one_line(models, labelled, command, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    args = ["classify", "--model", models.int8, labelled] if command == "classify" else ["inspect", "--data", labelled_folder(tmp_path / "five", per_class=5)]
    with open("/dev/full", "w") as full:
        proc = _edgecell([*args, "--json", "-"], stdout=full)
    _assert_stdout_line(proc, "stdout", "No space left on device")


@pytest.mark.parametrize("json_out", ["-", None])
def test_broken_pipe_on_stdout_is_one_line(models, labelled, json_out):
    r, w = os.pipe()
    os.close(r)  # the reader (`| head -1`) is already gone
    try:
        extra = ["--json", "-"] if json_out else []
        proc = _edgecell(["classify", "--model", models.int8, labelled, *extra], stdout=w)
    finally:
        os.close(w)
    _assert_stdout_line(proc, "stdout", "broken pipe")


# ============================================================== file names with CR, LF, commas and quotes


def _odd_named_copies(folder: Path, names=ODD_NAMES) -> None:
    rng = np.random.default_rng(3)
    for i, name in enumerate(names):
        save_jpeg(folder / name, np.clip(rng.normal(120 + 10 * i, 30, size=(40, 40, 3)), 0, 255).astype(np.uint8))


def test_classify_csv_round_trips_every_name(models, tmp_path):
    data = labelled_folder(tmp_path / "data", per_class=1)
    _odd_named_copies(data / "basophil")
    out = tmp_path / "r.csv"
    res = cli_run("classify", "--model", models.int8, data, "--csv", out)
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CLASSES) + len(ODD_NAMES)
    paths = {r["path"] for r in rows}
    for name in ODD_NAMES:
        assert str(data / "basophil" / name) in paths, repr(name)
    assert all(r["label"] in CLASSES for r in rows)


@pytest.fixture(scope="module")
def odd_run(real_data, tmp_path_factory) -> dict:
    """A tiny run trained on real images, some under names with CR, LF, commas and quotes."""
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("oddnames")
    data = make_slice(real_data, root / "data", 8, offset=40)
    for i, name in enumerate(ODD_NAMES):  # real images under odd names, spread over the classes
        c = CLASSES[i % len(CLASSES)]
        shutil.copy(sorted((real_data / c).iterdir())[300 + i], data / c / name)
    run = root / "run"
    res = cli_run("train", "--data", data, "--out", run, "--epochs", 1, "--img-size", 32, "--widths", "4,8", "--seed", 3)
    assert res.exit_code == 0, res.output
    return {"data": data, "run": run}


def test_train_split_csv_round_trips_every_name(odd_run):
    with open(odd_run["run"] / "split.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    files = {r["file"] for r in rows}
    assert len(rows) == 40 + len(ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        assert f"{CLASSES[i % len(CLASSES)]}/{name}" in files, repr(name)
    assert all(r["split"] in ("train", "val", "test") for r in rows)


def test_audit_and_evaluate_read_a_split_csv_with_odd_names(odd_run, tmp_path):
    res = cli_run("audit", odd_run["run"], "--no-stain-shift", "--json", tmp_path / "a.json")
    assert res.exit_code == 0, res.output
    res = cli_run("evaluate", odd_run["run"], "--out", tmp_path / "ev", "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    with open(odd_run["run"] / "split.csv", newline="", encoding="utf-8") as fh:
        test_files = {r["file"] for r in csv.DictReader(fh) if r["split"] == "test"}
    records = [json.loads(line) for line in Path(json.loads((tmp_path / "e.json").read_text())["outputs"]["predictions"]).read_text().splitlines()]
    assert json.loads((tmp_path / "a.json").read_text())["n"]["test"] == len(test_files)  # audit read every test row too
    assert {r["file"] for r in records} == test_files and any(any(ch in f for ch in ',"\r\n') for f in test_files)  # odd ones read


def test_convert_reads_a_split_csv_with_odd_names(odd_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(odd_run["run"], run)
    res = cli_run("convert", run, "--max-drop", 100, "--json", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert (run / "export" / "model_float32.tflite").is_file()


def test_calibration_manifest_round_trips_every_name():
    from converters.calibration import CalibrationItem, manifest_text

    fields = CalibrationItem.__dataclass_fields__
    items = [CalibrationItem(**{k: (name if k == "file" else "basophil" if k == "label" else "0" * 64) for k in fields}) for name in ODD_NAMES]
    rows = list(csv.DictReader(io.StringIO(manifest_text(items), newline="")))
    assert [r["file"] for r in rows] == ODD_NAMES
