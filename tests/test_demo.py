"""The synthetic demo data set: layout, reproducibility, the CLI, and that morphology (not colour)
is what separates the classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecell import CLASSES
from edgecell.cli import cli
from edgecell.demo import DemoSummary, draw_cell, generate, image_rng


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    calls = []
    summary = generate(out, per_class=3, seed=5, size=64, progress_callback=lambda done, total: calls.append((done, total)))
    return out, summary, calls


def test_layout_shapes_and_counts(demo_set):
    out, summary, calls = demo_set
    assert isinstance(summary, DemoSummary)
    assert summary.counts == {c: 3 for c in CLASSES}
    assert summary.total == 15 and summary.seed == 5 and summary.size == 64
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)
    for cls in CLASSES:
        files = sorted((out / cls).iterdir())
        assert [p.name for p in files] == [f"{cls}_{i:05d}.jpg" for i in range(3)]
        for p in files:
            with Image.open(p) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    demo_md = (out / "DEMO.md").read_text()
    assert "synthetic" in demo_md.lower() and "seed: 5" in demo_md and "Complete: 15 images" in demo_md
    assert calls[-1] == (15, 15) and len(calls) == 15
    assert not [p for p in out.rglob("*.tmp")], "no temporary files left behind"


def test_same_seed_identical_bytes_other_seed_differs(tmp_path, demo_set):
    out, _, _ = demo_set
    again = generate(tmp_path / "again", per_class=3, seed=5, size=64).out_dir
    other = generate(tmp_path / "other", per_class=3, seed=6, size=64).out_dir
    assert _files(out) == _files(again)
    for rel in _files(out):
        if rel.endswith(".jpg"):
            assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
            assert (out / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_image_does_not_depend_on_drawing_order():
    late = np.asarray(draw_cell("monocyte", image_rng(3, 2, 7), 64))
    for i in range(3):  # drawing other images first changes nothing
        draw_cell("basophil", image_rng(3, 0, i), 64)
    assert np.array_equal(late, np.asarray(draw_cell("monocyte", image_rng(3, 2, 7), 64)))


def test_overwrites_previous_demo_set_and_drops_stale_images(tmp_path):
    out = tmp_path / "d"
    generate(out, per_class=4, seed=0, size=48)
    summary = generate(out, per_class=2, seed=1, size=48)
    assert summary.counts == {c: 2 for c in CLASSES}
    for cls in CLASSES:
        assert len(list((out / cls).iterdir())) == 2


def test_cli_writes_table_and_json(tmp_path):
    out, js = tmp_path / "demo", tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["demo-data", str(out), "--per-class", "5", "--seed", "3", "--size", "48", "--json", str(js)])
    assert result.exit_code == 0, result.output
    for cls in CLASSES:
        assert cls in result.output
        assert len(list((out / cls).glob("*.jpg"))) == 5
    assert "total" in result.output and "25" in result.output
    data = json.loads(js.read_text())
    assert data["counts"] == {c: 5 for c in CLASSES} and data["seed"] == 3 and data["synthetic"] is True


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


def test_draw_cell_rejects_unknown_class():
    with pytest.raises(ValueError, match="unknown class"):
        draw_cell("lymphocyte", np.random.default_rng(0))


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
