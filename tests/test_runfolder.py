"""RunFolder: the one reader and writer of a run's metadata.json (no TensorFlow needed)."""

from __future__ import annotations

import json

import pytest

from edgecell.runfolder import RUN_FORMAT, RUN_MARKER, RunFolder
from firmware_host.errors import DataError, EdgecellError

META = {
    "format": RUN_FORMAT,
    "classes": ["a", "b", "c"],
    "input_size": 48,
    "preprocessing": {"version": 1},
    "seed": 3,
    "dataset": {"path": "/data/cells", "fingerprint": "abc", "counts": {"a": 1}, "skipped": 0},
    "split": {"train": 1, "val": 1, "test": 1},
    "temperature": 1.5,
    "model": {"widths": [8]},
    "training": {"epochs_run": 2},
}


def write(folder, meta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_MARKER).write_text(json.dumps(meta))


def test_read_types_the_fields(tmp_path):
    write(tmp_path / "run", META)
    run = RunFolder.read(tmp_path / "run")
    assert (run.classes, run.input_size, run.temperature, run.seed) == (["a", "b", "c"], 48, 1.5, 3)
    assert (run.dataset_path, run.dataset_fingerprint) == ("/data/cells", "abc")
    assert run.extra["training"] == {"epochs_run": 2} and run.keras_path == tmp_path / "run" / "model.keras"


def test_learnt_as_is_the_recorded_outputs_or_the_classes(tmp_path):
    write(tmp_path / "old", META)  # trained before `other` was learnt as its types
    assert RunFolder.read(tmp_path / "old").learnt_as == ["a", "b", "c"]
    write(tmp_path / "new", {**META, "model": {"widths": [8], "learnt_as": ["a", "b", "lymphocyte", "platelet"]}})
    assert RunFolder.read(tmp_path / "new").learnt_as == ["a", "b", "lymphocyte", "platelet"]


def test_write_then_read_gives_the_same_file(tmp_path):
    write(tmp_path / "run", META)
    run = RunFolder.read(tmp_path / "run")
    run.write(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / RUN_MARKER).read_text()) == META
    assert list(json.loads((tmp_path / "copy" / RUN_MARKER).read_text())) == list(META)  # the recorded key order


def test_temperature_defaults_to_one(tmp_path):
    write(tmp_path / "run", {k: v for k, v in META.items() if k != "temperature"})
    assert RunFolder.read(tmp_path / "run").temperature == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "not an edgecell run metadata file"),
        ({"classes": ["a"]}, "'classes' must list at least two"),
        ({"classes": ["a", "a"]}, "'classes' must list at least two distinct"),
        ({"input_size": "48"}, "'input_size' must be a whole number of pixels from 32 to 512"),
        ({"input_size": 0}, "'input_size' must be a whole number of pixels"),
        ({"input_size": 100000}, "'input_size' must be a whole number of pixels"),  # every image decoded at that size: killed at 24 GB
        ({"model": "x"}, "'model' must be an object"),
        ({"training": "x"}, "'training' must be an object"),
        ({"adapted_from": "x"}, "'adapted_from' must be an object"),
        ({"temperature": -1}, "'temperature' must be a positive number"),
        ({"seed": "x"}, "'seed' must be a whole number"),
        ({"dataset": {"sources": 5}}, "'dataset.sources' must map each source's name to its folder"),
        ({"dataset": {"sources": {"demo": 5}}}, "'dataset.sources' must map"),
        ({"dataset": {"path": 3}}, "'dataset.path' must be a folder"),
        ({"other_score": "x"}, "'other_score' must be an object"),
        ({"other_score": {"kind": "mahalanobis"}}, "'other_score' .*threshold"),
        ({"lab_check": "x"}, "'lab_check' must be an object"),
        ({"lab_check": {"batch": 0}}, "'lab_check' needs an integer batch"),
    ],
)
def test_invalid_metadata_is_one_line_naming_the_file(tmp_path, change, message):
    write(tmp_path / "run", META | change)
    with pytest.raises(EdgecellError, match=message) as info:
        RunFolder.read(tmp_path / "run")
    assert info.value.path == str(tmp_path / "run" / RUN_MARKER) and "\n" not in str(info.value)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(EdgecellError, match="not an edgecell run folder"):
        RunFolder.read(tmp_path)
    # a run's export given for the run (adapt RUN/export, audit RUN/export; found by a review): the run is named
    write(tmp_path / "run", META)
    (tmp_path / "run" / "export").mkdir()
    with pytest.raises(EdgecellError, match=r"export: this is a run's export folder \(what goes to the Pi\); give the run folder, .*run$") as info:
        RunFolder.read(tmp_path / "run" / "export")
    assert info.value.path == str(tmp_path / "run" / "export")
    (tmp_path / RUN_MARKER).write_text("{not json")
    with pytest.raises(EdgecellError, match="unreadable run metadata"):
        RunFolder.read(tmp_path)


def test_containing_finds_the_run_of_an_exported_model(tmp_path):
    write(tmp_path / "run", META)
    (tmp_path / "run" / "split.csv").write_text("file,class,split\n")
    model = tmp_path / "run" / "export" / "model_int8.tflite"
    assert RunFolder.containing(model).path == tmp_path / "run"
    assert RunFolder.containing(tmp_path / "elsewhere" / "model_int8.tflite") is None
    (tmp_path / "run" / "split.csv").unlink()
    with pytest.raises(DataError, match="split.csv is missing"):
        RunFolder.read(tmp_path / "run").require_split()


@pytest.mark.parametrize("recorded", [{"version": 2}, None])
def test_a_run_trained_with_other_preprocessing_is_refused_before_its_model_is_used(tmp_path, recorded):
    """convert, evaluate and adapt read the run's model through require_keras: a run of another preprocessing
    version would be converted, evaluated or adapted on pixels it never saw (and its export labelled this version's)."""
    import zipfile

    from firmware_host.preprocess import PREPROCESSING_VERSION, describe

    meta = {k: v for k, v in META.items() if k != "preprocessing"}
    if recorded is not None:
        meta["preprocessing"] = describe() | recorded
    write(tmp_path / "run", meta)
    with zipfile.ZipFile(tmp_path / "run" / "model.keras", "w") as z:  # a zip archive, as a .keras file is
        z.writestr("config.json", "{}")
    run = RunFolder.read(tmp_path / "run")
    with pytest.raises(EdgecellError) as err:
        run.require_keras()
    said = "trained with preprocessing v2, this runtime does" if recorded else "records no preprocessing for its model"
    assert said in str(err.value) and f"v{PREPROCESSING_VERSION}" in str(err.value) and "train it again" in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "run" / RUN_MARKER))
    meta["preprocessing"] = describe()
    write(tmp_path / "run", meta)
    RunFolder.read(tmp_path / "run").require_keras()  # this version's: no error
