"""The synthetic demo data set: layout, reproducibility, the CLI, and that morphology (not colour)
is what separates the classes; the cell types that are not one of the five (taught as `other`) and
the non-cell images of the never-seen check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecell import CLASSES
from edgecell.cli import cli
from edgecell.demo import OBJECT_KINDS, OTHER_CELL_TYPES, DemoSummary, draw_cell, draw_object, generate, image_rng

FOLDERS = (*CLASSES, *OTHER_CELL_TYPES)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _generate(base, **kwargs):
    """A demo set in base/data with its non-cell images in base/objects."""
    return generate(base / "data", objects_dir=base / "objects", **kwargs)


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    calls = []
    summary = _generate(base, per_class=3, seed=5, size=64, progress_callback=lambda done, total: calls.append((done, total)))
    return base, summary, calls


def _check_jpegs(files, size):
    for p in files:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (size, size)


def test_layout_shapes_and_counts(demo_set):
    base, summary, calls = demo_set
    out, objects = base / "data", base / "objects"
    assert isinstance(summary, DemoSummary)
    assert summary.counts == {c: 3 for c in FOLDERS}
    assert set(OTHER_CELL_TYPES) == {"lymphocyte", "eosinophil"} and not set(OTHER_CELL_TYPES) & set(CLASSES)
    assert summary.objects == {k: 3 for k in OBJECT_KINDS} and summary.objects_dir == objects
    assert summary.total == 30 and summary.seed == 5 and summary.size == 64
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(FOLDERS)
    for cls in FOLDERS:
        files = sorted((out / cls).iterdir())
        assert [p.name for p in files] == [f"{cls}_{i:05d}.jpg" for i in range(3)]
        _check_jpegs(files, 64)
    # the non-cell images lie flat in a folder of their own, outside the data: no class folder to train on
    assert not [p for p in objects.iterdir() if p.is_dir()]
    assert sorted(p.name for p in objects.glob("*.jpg")) == sorted(f"{k}_{i:05d}.jpg" for k in OBJECT_KINDS for i in range(3))
    _check_jpegs(objects.glob("*.jpg"), 64)
    demo_md = (out / "DEMO.md").read_text()
    assert "synthetic" in demo_md.lower() and "seed: 5" in demo_md and "Complete: 21 images" in demo_md
    assert "| lymphocyte | 3 | other" in demo_md and "| eosinophil | 3 | other" in demo_md and "| monocyte | 3 | monocyte |" in demo_md
    assert str(objects) in demo_md and f"--objects {objects}" in demo_md
    objects_md = (objects / "DEMO.md").read_text()
    assert "Complete: 9 images" in objects_md and all(f"| {k} |" in objects_md for k in OBJECT_KINDS)
    assert calls[-1] == (30, 30) and len(calls) == 30
    assert not [p for p in base.rglob("*.tmp")], "no temporary files left behind"


def test_same_seed_identical_bytes_other_seed_differs(tmp_path, demo_set):
    base, _, _ = demo_set
    again = tmp_path / "again"
    other = tmp_path / "other"
    _generate(again, per_class=3, seed=5, size=64)
    _generate(other, per_class=3, seed=6, size=64)
    assert _files(base) == _files(again)
    jpegs = [rel for rel in _files(base) if rel.endswith(".jpg")]
    assert {rel.split("/")[1] for rel in jpegs if rel.startswith("data/")} == set(FOLDERS)
    assert len([rel for rel in jpegs if rel.startswith("objects/")]) == 3 * len(OBJECT_KINDS)
    for rel in jpegs:
        assert (base / rel).read_bytes() == (again / rel).read_bytes(), rel
        assert (base / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_leaving_the_others_out_draws_the_same_five(tmp_path, demo_set):
    base, _, _ = demo_set
    summary = generate(tmp_path / "five", per_class=3, seed=5, size=64, others=False)
    assert summary.counts == {c: 3 for c in CLASSES} and summary.objects == {} and summary.total == 15
    assert sorted(p.name for p in (tmp_path / "five").iterdir() if p.is_dir()) == sorted(CLASSES)
    for cls in CLASSES:  # the five do not depend on whether the others are drawn
        for i in range(3):
            rel = f"{cls}/{cls}_{i:05d}.jpg"
            assert (tmp_path / "five" / rel).read_bytes() == (base / "data" / rel).read_bytes(), rel
    assert "--no-others" in (tmp_path / "five" / "DEMO.md").read_text()


def test_leaving_the_others_out_again_removes_a_previous_sets_others(tmp_path):
    """They would still be read, and taught as `other`, by train."""
    out = tmp_path / "d"
    generate(out, per_class=2, seed=0, size=48)
    assert all((out / c).is_dir() for c in OTHER_CELL_TYPES)
    generate(out, per_class=2, seed=0, size=48, others=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)


def test_objects_folder_must_lie_apart_from_the_data(tmp_path):
    from firmware_host.errors import EdgecellError

    for objects in (tmp_path / "data" / "unseen", tmp_path / "data", tmp_path):
        with pytest.raises(EdgecellError, match="training would read it as a class"):
            generate(tmp_path / "data", per_class=2, size=48, objects_dir=objects)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_image_does_not_depend_on_drawing_order():
    late = np.asarray(draw_cell("monocyte", image_rng(3, 2, 7), 64))
    for i in range(3):  # drawing other images first changes nothing
        draw_cell("basophil", image_rng(3, 0, i), 64)
    assert np.array_equal(late, np.asarray(draw_cell("monocyte", image_rng(3, 2, 7), 64)))


def test_overwrites_previous_demo_set_and_drops_stale_images(tmp_path):
    out = tmp_path / "d"
    generate(out, per_class=4, seed=0, size=48)
    summary = generate(out, per_class=2, seed=1, size=48)
    assert summary.counts == {c: 2 for c in FOLDERS}
    for cls in FOLDERS:
        assert len(list((out / cls).iterdir())) == 2


def test_cli_writes_table_and_json(tmp_path):
    out, js = tmp_path / "demo", tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["demo-data", str(out), "--per-class", "5", "--seed", "3", "--size", "48", "--json", str(js)])
    assert result.exit_code == 0, result.output
    for cls in FOLDERS:
        assert cls in result.output
        assert len(list((out / cls).glob("*.jpg"))) == 5
    assert "total" in result.output and "35" in result.output and "other" in result.output
    data = json.loads(js.read_text())
    assert data["counts"] == {c: 5 for c in FOLDERS} and data["seed"] == 3 and data["synthetic"] is True
    assert data["other_types"] == list(OTHER_CELL_TYPES) and data["objects_dir"] is None and data["objects"] == {}


def test_cli_no_others_and_objects(tmp_path):
    out, objects, js = tmp_path / "demo", tmp_path / "unseen_objects", tmp_path / "summary.json"
    args = ["demo-data", str(out), "--per-class", "5", "--size", "48", "--no-others", "--objects", str(objects), "--json", str(js)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)
    assert len(list(objects.glob("*.jpg"))) == 5 * len(OBJECT_KINDS)
    data = json.loads(js.read_text())
    assert data["objects"] == {k: 5 for k in OBJECT_KINDS} and data["objects_dir"] == str(objects) and data["total"] == 40
    # the folders named on the command line are noted as created, not each class folder the demo set holds
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: created folder")]
    assert notes == [f"note: created folder {out}, which did not exist", f"note: created folder {objects}, which did not exist"], result.stderr


def test_cli_refuses_objects_inside_the_data(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo-data", str(out), "--per-class", "5", "--objects", str(out / "objects")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(out / "objects") in lines[0]
    assert not out.exists(), "nothing written"


def test_cli_refuses_json_inside_the_images(tmp_path):
    """It wrote the JSON over one of the drawn images (or would have trained as a stray file)."""
    out = tmp_path / "demo"
    assert CliRunner().invoke(cli, ["demo-data", str(out), "--per-class", "5"]).exit_code == 0
    image = out / "basophil" / "basophil_00000.jpg"
    before = image.read_bytes()
    result = CliRunner().invoke(cli, ["demo-data", str(out), "--per-class", "5", "--json", str(image)])
    assert result.exit_code == 2 and result.output.startswith(f"Error: {image}: --json is inside OUT"), result.output
    assert image.read_bytes() == before


def test_cli_rejects_too_few_per_class(tmp_path):
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "x"), "--per-class", "2"])
    assert result.exit_code == 2
    assert "--per-class" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_refuses_foreign_folder(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not mine")
    result = CliRunner().invoke(cli, ["demo-data", str(foreign), "--per-class", "5"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(foreign) in lines[0] and lines[0].startswith("Error:")
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"], "nothing written"


def test_a_folder_is_an_earlier_demo_set_only_when_its_marker_says_so(tmp_path):
    """A person's own DEMO.md (and the images beside it), or a demo set given as --objects, were written over."""
    from firmware_host.errors import EdgecellError

    project = tmp_path / "proj"
    (project / "basophil").mkdir(parents=True)
    (project / "DEMO.md").write_text("# My notes for the demo on Friday\n")
    (project / "basophil" / "basophil_00003.jpg").write_bytes(b"a photo of mine")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    with pytest.raises(EdgecellError, match=r"is not a previous demo set \(its DEMO.md is not one demo-data wrote for a demo set\)"):
        generate(project, per_class=2, size=48)
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
    generate(tmp_path / "a", per_class=2, size=48)
    with pytest.raises(EdgecellError, match="is not a previous folder of non-cell images"):
        generate(tmp_path / "c", per_class=2, size=48, objects_dir=tmp_path / "a")
    generate(tmp_path / "c", per_class=2, size=48, objects_dir=tmp_path / "objects")
    generate(tmp_path / "c", per_class=3, size=48, objects_dir=tmp_path / "objects")  # each an earlier one of its kind


def test_draw_cell_rejects_unknown_class():
    with pytest.raises(ValueError, match="unknown class"):
        draw_cell("platelet", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown kind"):
        draw_object("lymphocyte", np.random.default_rng(0))


@pytest.fixture(scope="module")
def sample():
    """30 images per class at 96 px: pixels (N, 96, 96, 3) float and labels (N,)."""
    images, labels = [], []
    for ci, cls in enumerate(CLASSES):
        for i in range(30):
            images.append(np.asarray(draw_cell(cls, image_rng(11, ci, i), 96), dtype=np.float32))
            labels.append(ci)
    return np.stack(images), np.array(labels)


def test_mean_colour_alone_does_not_separate_classes(sample):
    x, y = sample
    mean_rgb = x.mean(axis=(1, 2))
    # nearest class mean, leave-one-out: an optimistic colour-only classifier
    correct = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        centres = np.stack([mean_rgb[keep & (y == k)].mean(0) for k in range(len(CLASSES))])
        correct += int(np.argmin(((centres - mean_rgb[i]) ** 2).sum(1)) == y[i])
    accuracy = correct / len(y)
    assert accuracy < 0.6, f"mean colour alone classifies {accuracy:.0%}: the nuisance colour variation is too weak"


def test_morphology_differs_by_class(sample):
    x, y = sample
    grey = x.mean(axis=-1)
    background = np.percentile(grey, 90, axis=(1, 2))[:, None, None]
    dark = (grey < 0.55 * background).mean(axis=(1, 2))  # nucleus / granule pixels
    mean = {cls: dark[y == k].mean() for k, cls in enumerate(CLASSES)}
    # a big nucleus filling the cell vs. a small dense one, or thin lobes
    assert mean["myeloblast"] > 3 * mean["erythroblast"]
    assert mean["myeloblast"] > 3 * mean["seg_neutrophil"]
    assert mean["basophil"] > 2 * mean["seg_neutrophil"]
    assert mean["monocyte"] > 2 * mean["erythroblast"]


def _dark_share(images):
    """Share of nucleus / granule pixels (darker than 55% of the background) per image."""
    grey = images.mean(axis=-1)
    background = np.percentile(grey, 90, axis=(1, 2))[:, None, None]
    return (grey < 0.55 * background).mean(axis=(1, 2))


def _draw_many(cls, index, n=30, size=96):
    return np.stack([np.asarray(draw_cell(cls, image_rng(11, index, i), size), dtype=np.float32) for i in range(n)])


def test_lymphocyte_is_small_with_a_nucleus_filling_it(sample):
    x, y = sample
    lymph = _dark_share(_draw_many("lymphocyte", 100)).mean()
    dark = {cls: _dark_share(x[y == k]).mean() for k, cls in enumerate(CLASSES)}
    # small: far fewer drawn nucleus pixels than a monocyte or a myeloblast ...
    assert 2 * lymph < dark["monocyte"] and 3 * lymph < dark["myeloblast"]
    # ... but a nucleus filling most of a red-cell-sized cell: more than an erythroblast's small one
    assert lymph > 1.2 * dark["erythroblast"]


def _hue_degrees(img, size):
    """Saturation-weighted circular mean hue (degrees, -180..180) of the light, coloured pixels
    near the centre (the white cell's cytoplasm and granules, not its dark nucleus)."""
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32) / 255.0
    grey = np.asarray(img, dtype=np.float32).mean(-1)
    yy, xx = np.mgrid[:size, :size] + 0.5
    centre = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (0.2 * size) ** 2
    keep = centre & (grey > 0.55 * np.percentile(grey, 90)) & (hsv[..., 1] > 0.15)
    angle, weight = hsv[..., 0][keep] * 2 * np.pi, hsv[..., 1][keep]
    return float(np.degrees(np.arctan2((weight * np.sin(angle)).sum(), (weight * np.cos(angle)).sum())))


def _circular_mean(degrees):
    return float(np.degrees(np.angle(np.exp(1j * np.radians(degrees)).mean())))


def test_eosinophil_granules_are_orange_red():
    hues = {cls: [_hue_degrees(draw_cell(cls, image_rng(11, 100, i), 96), 96) for i in range(30)] for cls in ("eosinophil", "seg_neutrophil", "basophil")}
    # every eosinophil red to orange (within the +-40 degree stain-hue nuisance), orange-red on average
    assert all(-50 < h < 65 for h in hues["eosinophil"]), hues["eosinophil"]
    assert -15 < _circular_mean(hues["eosinophil"]) < 35
    # the lilac neutrophil and the purple-black basophil granules are not
    for cls in ("seg_neutrophil", "basophil"):
        assert _circular_mean(hues[cls]) < -25, (cls, hues[cls])


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_non_cell_images_hold_no_white_cell(kind):
    """No dark nucleus anywhere in a non-cell image of the smear kinds; the pattern is not a smear."""
    images = np.stack([np.asarray(draw_object(kind, image_rng(11, 200, i), 96), dtype=np.float32) for i in range(10)])
    assert images.shape == (10, 96, 96, 3)
    if kind == "pattern":  # saturated flat colours, unlike any stain
        saturation = (images.max(-1) - images.min(-1)) / (images.max(-1) + 1e-6)
        assert np.median(saturation.reshape(10, -1).max(1)) > 0.6
    else:
        # at most a speck where red cells overlap: far less than the smallest white cell's nucleus
        assert _dark_share(images).max() < 0.5 * _dark_share(_draw_many("lymphocyte", 100, n=10)).min()
        spread = images.mean(-1).reshape(10, -1).std(1)
        assert (spread < 6).all() if kind == "background" else (spread > 6).all()
