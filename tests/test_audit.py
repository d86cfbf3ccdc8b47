"""edgecell audit: morphology-free baselines, the shuffled-label control and the shortcut warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell import audit as audit_mod
from edgecell.cli import cli
from tests.conftest import CLASSES


@pytest.fixture(scope="module")
def slice_audit(real_slice, tmp_path_factory):
    """`edgecell audit` on the 40-per-class slice, run once through the CLI (no TensorFlow needed)."""
    out = tmp_path_factory.mktemp("audit") / "audit.json"
    res = CliRunner().invoke(cli, ["audit", "--data", str(real_slice), "--seed", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.read_text())


def _baseline(result, name):
    return next(r for r in result["baselines"] if r["name"] == name)


def test_audit_runs_and_reports_every_baseline(slice_audit):
    output, result = slice_audit
    assert [r["name"] for r in result["baselines"]] == [b[0] for b in audit_mod.BASELINES]
    assert result["n"] == {"train": 140, "val": 30, "test": 30}
    for r in result["baselines"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0
    assert "Shortcut audit" in output and "shuffled" in output
    assert result["cnn"] is None and "no CNN to compare" in output


def test_lab_groups_found_from_image_size(slice_audit):
    _, result = slice_audit
    assert result["lab_groups"] == [
        {"size": "360x363", "classes": ["basophil", "erythroblast", "monocyte"]},
        {"size": "400x400", "classes": ["myeloblast", "seg_neutrophil"]},
    ]


def test_size_alone_separates_the_two_labs(slice_audit):
    """The known shortcut: width and height from the header tell PBC from LMU on every test image."""
    _, result = slice_audit
    size = _baseline(result, "size")
    assert size["group_accuracy"] == 1.0
    assert size["accuracy"] >= 0.35  # well above chance (0.2) with two numbers that say nothing about a cell
    assert any("image size alone tells the acquisition groups apart" in w for w in result["warnings"])


def test_shuffled_control_is_at_chance(slice_audit):
    _, result = slice_audit
    c = result["shuffled_control"]
    assert c["chance"] == pytest.approx(0.2)
    assert abs(c["accuracy"] - c["chance"]) <= 0.1, c
    assert c["at_chance"]


def test_warning_when_a_baseline_is_close_to_the_cnn(slice_audit):
    _, result = slice_audit
    best = max(r["accuracy"] for r in result["baselines"])
    close = dict(result, cnn={"accuracy": best + 0.02, "macro_f1": best, "group_accuracy": None}, margin_points=3.0)
    warned = audit_mod.warnings_for(close)
    assert any("within 2.0 points of the CNN" in w for w in warned)
    far = dict(result, cnn={"accuracy": best + 0.10, "macro_f1": best, "group_accuracy": None}, margin_points=3.0)
    assert not any("of the CNN" in w or "above the CNN" in w for w in audit_mod.warnings_for(far))


def test_audit_with_a_run_folder_uses_its_split_and_metrics(real_slice, tmp_path):
    """RUN_DIR: split.csv decides the split, metrics.json gives the CNN's accuracy (a stand-in run, no training)."""
    from edgecell import data as data_mod
    from edgecell.train import RUN_FORMAT

    ds = data_mod.scan(real_slice)
    splits = data_mod.make_split(ds, 5)
    run = tmp_path / "run"
    run.mkdir()
    data_mod.write_manifest(run / "split.csv", ds, splits)
    (run / "metadata.json").write_text(json.dumps({"format": RUN_FORMAT, "classes": list(CLASSES), "seed": 5, "dataset": {"path": str(real_slice)}}))
    cm = np.diag([6, 6, 6, 6, 6]).tolist()
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.40, "macro_f1": 0.40, "n": 30, "confusion_matrix": cm}))
    out = tmp_path / "a.json"
    res = CliRunner().invoke(cli, ["audit", str(run), "--json", str(out)])  # --data defaults to the run's
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["split_source"].endswith("split.csv")
    test_files = {s.rel for s, sp in zip(ds.samples, splits) if sp == "test"}
    assert result["n"]["test"] == len(test_files) == 30
    assert result["cnn"]["accuracy"] == 0.40 and result["cnn"]["group_accuracy"] == 1.0
    assert result["cnn_lead_points"] == pytest.approx(100 * (0.40 - max(r["accuracy"] for r in result["baselines"])))
    # a CNN at 40% is beaten by colour alone: the warning must say so in plain words
    assert "without looking at a cell's shape" in " ".join(res.output.split())


def test_image_features_from_one_decode(tmp_path):
    from PIL import Image

    a = np.zeros((40, 60, 3), np.uint8)
    a[...] = (200, 100, 50)
    a[15:25, 20:40] = (10, 20, 30)  # a "cell" in the middle, away from the corners
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    f = audit_mod.image_features(p.read_bytes(), p)
    assert f["size"].tolist() == [60, 40]
    np.testing.assert_allclose(f["corner"] * 255, [200, 100, 50], atol=1e-3)
    assert f["hist"].shape == (48,)
    np.testing.assert_allclose(f["hist"].reshape(3, 16).sum(axis=1), 1.0, atol=1e-6)
    assert f["thumb"].shape == (192,)


def test_audit_help_has_summary_and_example():
    res = CliRunner().invoke(cli, ["audit", "--help"])
    assert res.exit_code == 0
    assert "Example:" in res.output and "edgecell audit --data" in res.output


def test_audit_needs_data(tmp_path):
    res = CliRunner().invoke(cli, ["audit"])
    assert res.exit_code == 1 and "--data" in res.output and "Traceback" not in res.output
