"""The data pipeline: reading, validating, duplicates, the split and its manifest."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecell import data
from edgecell.cli import cli
from firmware_host.errors import DataError
from firmware_host.preprocess import load_image
from tests._realdata import CLASSES, make_slice


def _write_images(folder: Path, n: int, seed: int = 0, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img_{i:03d}.png")


@pytest.fixture()
def small_folder(tmp_path) -> Path:
    for k, c in enumerate(("a", "b", "c")):
        _write_images(tmp_path / c, 12, seed=k)
    return tmp_path


# ---------------------------------------------------------------- the real data set


@pytest.mark.realdata
def test_real_dataset_counts_duplicates_and_split(real_data):
    ds = data.scan(real_data)
    assert ds.classes == list(CLASSES)
    assert ds.counts() == {c: 800 for c in CLASSES}
    assert ds.skipped == []  # MANIFEST.csv and SOURCE.md sit at the root, not in class folders
    groups = ds.duplicate_groups()
    # SOURCE.md documents 6 exact pairs: 5 basophil, 1 monocyte
    assert sorted(len(g) for g in groups) == [2] * 6
    assert Counter(g[0].label for g in groups) == {"basophil": 5, "monocyte": 1}
    assert {frozenset(Path(s.rel).stem for s in g) for g in groups} >= {frozenset({"BA_225540", "BA_786369"}), frozenset({"MO_145357", "MO_997225"})}

    splits = data.make_split(ds, seed=42)
    split_of = {s.rel: sp for s, sp in zip(ds.samples, splits)}
    for g in groups:  # a duplicate pair never straddles splits
        assert len({split_of[s.rel] for s in g}) == 1
    per = Counter((s.label, sp) for s, sp in zip(ds.samples, splits))
    for c in CLASSES:  # stratified 70/15/15
        assert per[(c, "train")] == 560 and per[(c, "val")] == 120 and per[(c, "test")] == 120
    # reproducible from the seed, and a different seed gives a different split
    assert data.make_split(ds, seed=42) == splits
    assert data.make_split(ds, seed=7) != splits


@pytest.mark.realdata
def test_split_does_not_depend_on_listing_order(real_data, tmp_path):
    ds = data.scan(make_slice(real_data, tmp_path / "s", 30))
    a = data.make_split(ds, 3)
    rev = data.Dataset(ds.root, ds.classes, list(reversed(ds.samples)))
    b = data.make_split(rev, 3)
    assert dict(zip((s.rel for s in ds.samples), a)) == dict(zip((s.rel for s in rev.samples), b))


@pytest.mark.realdata
def test_manifest_roundtrip_and_loading(real_data, tmp_path):
    ds = data.scan(make_slice(real_data, tmp_path / "s", 20), size=32)
    assert ds.images.shape == (100, 32, 32, 3) and ds.images.dtype == np.uint8
    splits = data.make_split(ds, 1)
    data.write_manifest(tmp_path / "split.csv", ds, splits)
    rows = data.read_manifest(tmp_path / "split.csv")
    assert [r.file for r in rows] == sorted(s.rel for s in ds.samples)
    with open(tmp_path / "split.csv") as fh:
        assert next(csv.reader(fh)) == ["file", "class", "split", "sha256", "source", "type"]
    test_rows = [r for r in rows if r.split == "test"]
    x, y, _ = data.load_from_manifest(ds.root, test_rows, 32, ds.classes)
    assert len(x) == len(test_rows) and set(y) == set(range(5))
    # the arrays are exactly the shared preprocessing of those files
    np.testing.assert_array_equal(x[0], load_image(ds.root / test_rows[0].file, 32))


# ---------------------------------------------------------------- validation


def test_bad_files_are_skipped_and_reported(small_folder):
    a = small_folder / "a"
    (a / "truncated.jpg").write_bytes((small_folder / "a" / "img_000.png").read_bytes()[:100])
    (a / "empty.png").write_bytes(b"")
    (a / "notes.jpg").write_text("this is text, not a JPEG")
    (a / "folder.jpg").mkdir()
    (a / "broken.png").symlink_to(small_folder / "does-not-exist.png")
    (a / "back").symlink_to("../../elsewhere")  # no image suffix: broken all the same, not "not an image file"
    (a / "more").symlink_to(small_folder / "b", target_is_directory=True)  # not followed: said, not silent
    (a / "readme.txt").write_text("hello")
    ds = data.scan(small_folder)
    assert ds.counts() == {"a": 12, "b": 12, "c": 12}
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"truncated.jpg", "empty.png", "notes.jpg", "folder.jpg", "broken.png", "back", "more", "readme.txt"}
    assert reasons["more"].startswith("is a link to a folder, which is not followed: its images are not read")
    assert "empty" in reasons["empty.png"]
    assert "directory" in reasons["folder.jpg"]
    assert reasons["broken.png"] == reasons["back"] == "broken symbolic link"
    assert "not an image" in reasons["readme.txt"]


def test_bad_files_reported_by_cli(small_folder):
    (small_folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = CliRunner().invoke(cli, ["inspect", "--data", str(small_folder)])
    assert res.exit_code == 0, res.output
    assert "broken.jpg" in res.output and "1 file(s) skipped" in res.output


def test_too_few_classes_is_an_error(tmp_path):
    _write_images(tmp_path / "only", 10)
    with pytest.raises(DataError, match="at least two class folders"):
        data.scan(tmp_path)
    res = CliRunner().invoke(cli, ["inspect", "--data", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == f"Error: {tmp_path}: needs at least two class folders (one sub-folder of images per class); found 1: only"
    assert "Traceback" not in res.output


def test_empty_folder_is_an_error(tmp_path):
    res = CliRunner().invoke(cli, ["inspect", "--data", str(tmp_path)])
    assert res.exit_code == 1
    assert "found 0" in res.output and "Traceback" not in res.output


def test_class_with_too_few_images_is_an_error(small_folder):
    shutil.rmtree(small_folder / "c")
    _write_images(small_folder / "c", 2, seed=5)
    with pytest.raises(DataError, match="c has 2"):
        data.scan(small_folder)
    kept = data.scan(small_folder, keep_short=True)  # the data shown, the refusal kept for later
    assert kept.counts()["c"] == 2 and "c has 2" in str(kept.shortage)


def test_inspect_shows_a_short_class_then_refuses_reading_once(small_folder, monkeypatch):
    shutil.rmtree(small_folder / "c")
    _write_images(small_folder / "c", 2, seed=5)
    reads = []
    real = data.read_images
    monkeypatch.setattr(data, "read_images", lambda found, *a, **k: reads.append(len(found.files)) or real(found, *a, **k))
    res = CliRunner().invoke(cli, ["inspect", "--data", str(small_folder)])
    assert res.exit_code == 1 and "c has 2" in res.output.splitlines()[-1]
    assert "Images per cell type" in res.output and len(reads) == 1


def test_same_image_under_two_classes_is_left_out(small_folder):
    shutil.copy(small_folder / "a" / "img_000.png", small_folder / "b" / "copy.png")
    ds = data.scan(small_folder)
    assert ds.counts() == {"a": 11, "b": 12, "c": 12}
    assert sum("ambiguous label" in s.reason for s in ds.skipped) == 2


def test_split_every_class_in_every_split(small_folder):
    ds = data.scan(small_folder)
    splits = data.make_split(ds, 0)
    per = Counter((s.label, sp) for s, sp in zip(ds.samples, splits))
    for c in ds.classes:
        for sp in data.SPLITS:
            assert per[(c, sp)] >= 1


def test_manifest_detects_changed_file(small_folder, tmp_path):
    ds = data.scan(small_folder)
    splits = data.make_split(ds, 0)
    data.write_manifest(tmp_path / "m.csv", ds, splits)
    rows = data.read_manifest(tmp_path / "m.csv")
    _write_images(small_folder / "a", 1, seed=99)  # overwrites img_000.png with other pixels
    with pytest.raises(DataError, match=r"changed since the split manifest was written \(SHA-256 differs; is --data the folder the model was trained on\?\)"):
        data.load_from_manifest(small_folder, [r for r in rows if r.file == "a/img_000.png"], 16, ds.classes)


def _samples(types: dict[str, int]) -> data.Dataset:
    samples = [data.Sample(f"{t}/{i}.png", data.class_of(t), f"{t}{i}", "lab", t) for t, n in types.items() for i in range(n)]
    return data.Dataset(Path("lab"), sorted({s.label for s in samples}), samples)


def test_targets_learn_other_as_its_types():
    ds = _samples({"basophil": 3, "lymphocyte": 2, "eosinophil": 4, "other": 1, "monocyte": 2})
    names, t = ds.targets()
    assert ds.classes == ["basophil", "monocyte", "other"]
    assert names == ["basophil", "eosinophil", "lymphocyte", "monocyte", "other"]  # a folder named `other` is one type
    assert [names[i] for i in t] == [s.type for s in ds.samples]
    # one type taught as other (or none): the classes themselves
    for types in ({"basophil": 3, "lymphocyte": 2}, {"basophil": 3, "monocyte": 2}):
        one = _samples(types)
        names, t = one.targets()
        assert names == one.classes and (t == one.labels()).all()


def test_class_weights_give_other_the_weight_of_one_class_shared_by_its_types():
    from edgecell.model import merge_matrix
    from edgecell.train import class_weights

    ds = _samples({"basophil": 40, "monocyte": 20, "lymphocyte": 30, "eosinophil": 10})
    names, t = ds.targets()
    groups = merge_matrix(names, ds.classes).argmax(axis=1)
    w = class_weights(t, len(names), groups)
    per_class = np.zeros(len(ds.classes))
    np.add.at(per_class, groups[t], [w[i] for i in t])
    np.testing.assert_allclose(per_class, len(t) / len(ds.classes))  # every class weighs the same in the loss
    lymph, eos = (names.index(n) for n in ("lymphocyte", "eosinophil"))
    assert w[lymph] * 30 == pytest.approx(w[eos] * 10)  # and within `other`, each type the same
    assert class_weights(t, len(names)) != w  # without groups: each output balanced on its own


def test_target_matrix_teaches_a_type_its_own_output_and_an_unknown_type_its_class():
    from edgecell.model import target_matrix

    targets, classes = ["basophil", "eosinophil", "lymphocyte", "monocyte"], ["basophil", "monocyte", "other"]
    t = target_matrix(["monocyte", "other", "other", "other"], ["monocyte", "lymphocyte", "platelet", ""], targets, classes)
    np.testing.assert_array_equal(t[0], [0, 0, 0, 1])
    np.testing.assert_array_equal(t[1], [0, 0, 1, 0])  # a lymphocyte teaches the lymphocyte output
    np.testing.assert_array_equal(t[2], [0, 0.5, 0.5, 0])  # a type the model has no output for: its class, spread
    np.testing.assert_array_equal(t[3], t[2])  # a manifest without types, too
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
