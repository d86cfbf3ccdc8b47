"""The never-seen score end to end: fitted by train, exported by convert, applied by classify (issue #13)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell.cli import cli
from firmware_host.otherscore import OtherScore

pytest.importorskip("tensorflow")

LENIENT = ["--max-drop", "100"]


def test_fit_other_threshold_sends_the_stated_share_of_validation_cells():
    from edgecell.metrics import fit_other_threshold
    from edgecell.model import ModelSpec, build_model, predict_with_features

    classes = ["basophil", "monocyte", "other", "seg_neutrophil"]
    model = build_model(ModelSpec(32, len(classes), widths=(8, 16), depths=(1, 1)), seed=3)
    rng = np.random.default_rng(0)
    x_tr, x_va = (rng.integers(0, 256, size=(n, 32, 32, 3)).astype(np.uint8) for n in (80, 200))
    y_tr, y_va = rng.integers(0, 4, 80), rng.integers(0, 4, 200)
    fitted = fit_other_threshold(model, x_tr, y_tr, x_va, y_va, classes, share=0.05)
    score = OtherScore.from_dict(fitted)
    assert score.share == 0.05 and score.means.shape == (4, 16) and score.dim == 16
    probs, feats = predict_with_features(model, x_va)
    five = (y_va != 2) & (probs.argmax(axis=1) != 2)
    assert fitted["validation_n"] == int(five.sum())
    scores = score.scores(feats[five])
    # the threshold is one of the validation scores; a second pass of oneDNN may round that one a hair higher
    assert 0 < (scores > score.threshold * (1 + 1e-6)).mean() <= 0.05
    # a model without an `other` class: no score (argmax only)
    assert fit_other_threshold(model, x_tr, y_tr, x_va, y_va, ["a", "b", "c", "d"]) == {}
    # a model that calls every validation cell `other` (undertrained) keeps its score and nucleus check (a review:
    # both were dropped in silence), fitted on the five's cells
    p_other = np.zeros((len(x_va), 4))
    p_other[:, 2] = 1.0
    kept = fit_other_threshold(model, x_tr, y_tr, x_va, y_va, classes, offsets_train=np.zeros(len(x_tr)), val_outputs=(p_other, feats))
    assert kept["validation_n"] == int((y_va != 2).sum()) and OtherScore.from_dict(kept).nucleus_max is not None


def test_fit_feature_distance_whitens_the_shared_covariance():
    from edgecell.metrics import fit_feature_distance

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 500)
    f = rng.normal(size=(1000, 3)) @ np.diag([1.0, 2.0, 0.5]) + np.where(y[:, None] == 1, 10.0, 0.0)
    means, w = fit_feature_distance(f, y, 3)
    np.testing.assert_allclose(means[0], 0, atol=0.4)
    np.testing.assert_allclose(means[1], 10, atol=0.4)
    np.testing.assert_allclose(means[2], f.mean(axis=0))  # a class without images: the overall mean
    z = (f - means[y]) @ w
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(3), atol=0.02)  # less the small ridge


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """A tiny model trained on a demo set with lymphocytes and eosinophils (class `other`), with four views (the
    default, said here so the test keeps them), then converted."""
    root = tmp_path_factory.mktemp("other_run")
    runner = CliRunner()
    res = runner.invoke(cli, ["demo-data", str(root / "data"), "--per-class", "16", "--size", "64", "--objects", str(root / "objects")])
    assert res.exit_code == 0, res.output
    args = ["train", "--data", str(root / "data"), "--out", str(root / "run"), "--epochs", "6", "--img-size", "32", "--widths", "8,16,32", "--seed", "1"]
    args += ["--views", "4"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["convert", str(root / "run"), "--int8", "--json", str(root / "parity.json"), *LENIENT])
    assert res.exit_code == 0, res.output
    return root


def test_other_is_learnt_as_its_types_and_added_back_up(other_run):
    import keras

    from edgecell.model import CLASSES_LAYER, load_model, merge_matrix, views_of, without_views

    meta = json.loads((other_run / "run" / "metadata.json").read_text())
    learnt, classes = meta["model"]["learnt_as"], meta["classes"]
    assert {"lymphocyte", "eosinophil"} <= set(learnt) and "other" not in learnt and "other" in classes
    viewed = load_model(other_run / "run" / "model.keras")
    assert views_of(viewed) == meta["model"]["views"] == 4  # trained with --views 4
    model = without_views(viewed)
    last = model.get_layer(CLASSES_LAYER)
    assert not last.trainable and model.output_shape[-1] == len(classes)
    np.testing.assert_array_equal(last.get_weights()[0], merge_matrix(learnt, classes))
    types = keras.Model(model.input, model.get_layer("probs").output)
    x = np.random.default_rng(2).integers(0, 256, size=(8, 32, 32, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*structure of `inputs`")  # called with a batch, as edgecell calls it
        p_types, p = np.asarray(types(x)), np.asarray(model(x))
    other = [i for i, t in enumerate(learnt) if t in ("lymphocyte", "eosinophil")]
    np.testing.assert_allclose(p[:, classes.index("other")], p_types[:, other].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_train_records_the_score_and_convert_exports_it(other_run):
    from firmware_host.interpreter import load_interpreter
    from firmware_host.metadata import read_metadata

    meta = json.loads((other_run / "run" / "metadata.json").read_text())
    score = OtherScore.from_dict(meta["other_score"])
    assert "other" in meta["classes"] and score.share == 0.01 and score.dim == 32
    # the lab check reads the validation cells' never-seen scores: the limit a new lab's sets pass lies above their median
    check = meta["lab_check"]
    assert check["max_median_score"] > check["validation_median_score"] > 0 and 0 < check["min_mean_confidence"] < 1
    for prec in ("float32", "int8"):
        model = other_run / "run" / "export" / f"model_{prec}.tflite"
        assert read_metadata(model).other_score == meta["other_score"]
        assert read_metadata(model).lab_check == check  # travels with the model to the Pi
        it, _ = load_interpreter(model_content=model.read_bytes(), num_threads=1)
        assert sorted(int(np.prod(o["shape"])) for o in it.get_output_details()) == sorted([len(meta["classes"]), 32])
        # the file is the network for one image; the sidecar tells the runtime to run it on the four views
        assert [int(d) for d in it.get_input_details()[0]["shape"]] == [1, 32, 32, 3] and read_metadata(model).views == 4


def test_parity_reports_the_other_decision(other_run):
    report = json.loads((other_run / "parity.json").read_text())
    assert report["other_threshold"] == pytest.approx(json.loads((other_run / "run" / "metadata.json").read_text())["other_score"]["threshold"])
    f32, i8 = report["models"]["float32"], report["models"]["int8"]
    assert f32["other_agreement_with_keras"] == 1.0 and f32["other_share"] == report["models"]["keras"]["other_share"]
    assert 0.5 <= i8["other_agreement_with_keras"] <= 1.0
    assert f32["other_score_diff_max"] < 1e-2
    sidecar = json.loads((other_run / "run" / "export" / "model_int8.json").read_text())
    assert sidecar["verification"]["other_agreement_with_keras"] == i8["other_agreement_with_keras"]


def test_classify_sends_never_seen_objects_to_other(other_run):
    from firmware_host.classify import classify_paths
    from firmware_host.runtime import FLAG_OTHER

    export = other_run / "run" / "export"
    rows = []
    summary = classify_paths(export, [str(other_run / "objects")], other_threshold=0.0, on_result=lambda p, r: rows.append(r))
    assert rows and all(r["label"] == "other" and r["flag"] == FLAG_OTHER and r["other_score"] > 0 for r in rows)
    assert summary.differential["other"] == len(rows)
    plain = []
    classify_paths(export, [str(other_run / "objects")], other_threshold=1e9, on_result=lambda p, r: plain.append(r))
    # the score off: the most probable class, unless the crop holds no stained nucleus (the nucleus check)
    limit = json.loads((other_run / "run" / "metadata.json").read_text())["other_score"]["nucleus_max_offset"]
    checked = [r for r in plain if r["nucleus_offset"] is not None and r["nucleus_offset"] > limit]
    assert checked and all(r["label"] == "other" and r["flag"] == FLAG_OTHER for r in checked)
    assert all(r["label"] == max(r["probs"], key=r["probs"].get) for r in plain if r not in checked)


def test_evaluate_reports_other_per_type_and_the_curve(other_run, tmp_path):
    out = tmp_path / "ev"
    res = CliRunner().invoke(cli, ["evaluate", str(other_run / "run"), "--out", str(out), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    rep = m["other"]
    thr = json.loads((other_run / "run" / "metadata.json").read_text())["other_score"]["threshold"]
    assert rep["threshold"] == pytest.approx(thr) and rep["score"] is True
    types = {k.split("/", 1)[1]: v for k, v in rep["by_type"].items()}
    assert types["lymphocyte"]["other"] and types["eosinophil"]["other"] and not types["basophil"]["other"]
    assert rep["five_n"] + rep["other_n"] == m["n"]
    # the curve runs from every cell sent to other (lowest threshold) to the argmax alone (highest)
    first, last = rep["curve"][0], rep["curve"][-1]
    assert first["five_sent_to_other"] >= last["five_sent_to_other"] and first["other_caught"] >= last["other_caught"]
    assert set(first["by_type"]) == {k for k, v in rep["by_type"].items() if v["other"]}
    assert json.loads((out / "keras_test_other.json").read_text())["curve"] == rep["curve"]
    assert (out / "keras_test_other.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sent to other" in " ".join(res.output.split())
    # --other-threshold 0: every cell is other
    res = CliRunner().invoke(
        cli, ["evaluate", str(other_run / "run" / "export"), "--other-threshold", "0", "--out", str(tmp_path / "ev0"), "--json", str(tmp_path / "m0.json")]
    )
    assert res.exit_code == 0, res.output
    rep0 = json.loads((tmp_path / "m0.json").read_text())["other"]
    assert rep0["five_sent_to_other"] == 1.0 and rep0["other_caught"] == 1.0 and rep0["threshold"] == 0.0


def test_one_accuracy_everywhere_the_one_classify_gives(other_run, tmp_path):
    """`train`'s metrics.json, `evaluate`'s headline, its per-source rows and `convert`'s parity report give the accuracy
    of the labels a clinic gets (the never-seen score and the nucleus check included), and the Pi runtime gives the same
    on the same test images. A review found the headline figures 0.6 points above the runtime's: they read the argmax."""
    from edgecell import data as data_mod
    from firmware_host.classify import classify_paths

    run = other_run / "run"
    model = run / "export" / "model_float32.tflite"
    rows = [r for r in data_mod.read_manifest(run / "split.csv") if r.split == "test"]
    files = [str(other_run / "data" / r.file) for r in rows]
    results = []
    classify_paths(model, files, on_result=lambda p, r: results.append(r))
    # a threshold that sends about half the cells to `other`, so that the argmax and the labels given differ
    threshold = float(np.median([r["other_score"] for r in results]))
    args = ["evaluate", str(model), "--other-threshold", str(threshold), "--out", str(tmp_path / "ev"), "--json", str(tmp_path / "m.json")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    summary = classify_paths(model, files, other_threshold=threshold)
    runtime = summary.metrics()
    assert summary.n_classified == len(rows) == m["n"]
    assert m["accuracy"] == pytest.approx(runtime["accuracy"], abs=1e-9) and m["macro_f1"] == pytest.approx(runtime["macro_f1"], abs=1e-9)
    assert m["confusion_matrix"] == runtime["confusion_matrix"] and m["accuracy"] != m["argmax"]["accuracy"]
    per_source = m["sources"]["by_source"]
    assert sum(g["accuracy"] * g["n"] for g in per_source.values()) / m["n"] == pytest.approx(m["accuracy"], abs=1e-9)
    # at the model's own threshold: parity.json, and what the runtime gives
    plain = classify_paths(model, files).metrics()
    parity = json.loads((other_run / "parity.json").read_text())["models"]
    assert parity["float32"]["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-9)
    keras = json.loads((run / "metrics.json").read_text())
    assert keras["accuracy"] == pytest.approx(parity["keras"]["accuracy"], abs=1e-9)  # the same test split, the same rules
    assert keras["argmax"]["accuracy"] == pytest.approx(parity["keras"]["argmax_accuracy"], abs=1e-9)
    assert m["argmax"]["accuracy"] == pytest.approx(parity["float32"]["argmax_accuracy"], abs=1e-9)


def test_evaluate_names_each_cell_as_classify_labels_and_flags_it(other_run, tmp_path):
    """evaluate's JSON Lines: one record per test image, with the label, flag and confidence the Pi runtime gives the
    same file (at a threshold that sends some cells to `other`), and adding up to the per-type figures."""
    from collections import defaultdict

    from edgecell import data as data_mod
    from firmware_host.classify import classify_paths

    run = other_run / "run"
    model = run / "export" / "model_float32.tflite"
    rows = [r for r in data_mod.read_manifest(run / "split.csv") if r.split == "test"]
    pi = {}
    classify_paths(model, [str(other_run / "data" / r.file) for r in rows], on_result=lambda p, r: pi.update({r["path"]: r}))
    threshold = float(np.median([r["other_score"] for r in pi.values()]))
    pi.clear()
    classify_paths(model, [str(other_run / "data" / r.file) for r in rows], other_threshold=threshold, on_result=lambda p, r: pi.update({r["path"]: r}))
    res = CliRunner().invoke(
        cli, ["evaluate", str(model), "--other-threshold", str(threshold), "--out", str(tmp_path / "ev"), "--json", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m)[:2] == ["format", "edgecell_version"] and m["format"] == "edgecell-evaluation/1"
    assert json.loads(Path(m["outputs"]["metrics"]).read_text()) == m  # the file and --json: one report
    path = Path(m["outputs"]["predictions"])
    assert path.parent == tmp_path / "ev" and path.name == "float32_test_predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["file"] for r in records) == sorted(r.file for r in rows)
    reasons = set()
    for rec in records:
        got = pi[str(other_run / "data" / rec["file"])]
        assert Path(m["folders"][rec["source"]], rec["file"]) == (other_run / "data" / rec["file"]).resolve()  # joined back to its image
        assert (rec["label"], rec["flag"], rec["other_reason"]) == (got["label"], got["flag"], got["other_reason"]), rec["file"]
        assert rec["confidence"] == pytest.approx(got["confidence"], abs=1e-6) and rec["right"] == (rec["label"] == rec["true"])
        reasons.add(rec["other_reason"])
    assert "" in reasons and len(reasons) > 1  # some cells labelled other, some not: the comparison covers both
    tally = defaultdict(lambda: [0, 0, 0])
    for rec in records:
        t = tally[f"{rec['source']}/{rec['type']}"]
        t[0], t[1], t[2] = t[0] + 1, t[1] + rec["right"], t[2] + (not rec["right"] and not rec["flag"])
    for key, (n, right, unflagged) in tally.items():
        g = m["sources"]["by_type"][key]
        assert (n, right, unflagged) == (g["n"], round(g["accuracy"] * n), round(g["wrong_unflagged"] * n)), key


def test_other_threshold_user_errors(other_run, tiny_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["classify", "--model", str(other_run / "run" / "export"), str(other_run / "objects"), "--other-threshold", "-1"])
    assert res.exit_code == 2 and "--other-threshold" in res.output
    res = runner.invoke(cli, ["evaluate", str(tiny_run), "--other-threshold", "1", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "has no never-seen score" in lines[0] and "Traceback" not in res.output


def test_classify_cli_other_threshold_overrides_the_sidecar(other_run, tmp_path):
    js = tmp_path / "r.json"
    args = ["classify", "--model", str(other_run / "run" / "export"), str(other_run / "objects"), "--json", str(js)]
    res = CliRunner().invoke(cli, [*args, "--other-threshold", "0"])
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text())
    assert report["model"]["other_score"]["threshold"] == 0.0
    assert all(r["label"] == "other" for r in report["results"])
    assert report["summary"]["differential"]["other"] == len(report["results"])


def test_adapt_trains_the_types_and_keeps_adding_them_up(other_run, tmp_path):
    from edgecell.model import CLASSES_LAYER, load_model, merge_matrix, views_of, without_views

    drawn = tmp_path / "drawn"  # new cells (the run's own would be refused: they are in its split)
    res = CliRunner().invoke(cli, ["demo-data", str(drawn), "--per-class", "8", "--size", "64", "--seed", "5"])
    assert res.exit_code == 0, res.output
    local = tmp_path / "clinic"
    for typ in ("lymphocyte", "seg_neutrophil"):
        (local / typ).mkdir(parents=True)
        for f in sorted((drawn / typ).iterdir()):
            (local / typ / f.name).symlink_to(f)
    out = tmp_path / "adapted"
    res = CliRunner().invoke(
        cli, ["adapt", str(other_run / "run"), "--data", str(local), "--out", str(out), "--method", "fine-tune", "--epochs", "2", "--replay", "10"]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    parent = json.loads((other_run / "run" / "metadata.json").read_text())
    assert meta["model"]["learnt_as"] == parent["model"]["learnt_as"] and meta["classes"] == parent["classes"]
    adapted, parent_model = load_model(out / "model.keras"), load_model(other_run / "run" / "model.keras")
    assert views_of(adapted) == views_of(parent_model) > 1  # the parent's views are put back around the network
    model = without_views(adapted)
    last = model.get_layer(CLASSES_LAYER)
    assert not last.trainable
    np.testing.assert_array_equal(last.get_weights()[0], merge_matrix(meta["model"]["learnt_as"], meta["classes"]))
    before = without_views(parent_model)
    moved = [a for a, b in zip(model.get_layer("logits").get_weights(), before.get_layer("logits").get_weights()) if not np.array_equal(a, b)]
    assert moved  # the types' layer was trained
