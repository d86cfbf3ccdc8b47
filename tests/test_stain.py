"""Stain-shift perturbations, evaluate --stain-shift and the risk-coverage table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell import stain
from edgecell.cli import cli
from edgecell.data import CELL_TYPES
from edgecell.evaluate import RISK_THRESHOLDS, risk_coverage
from firmware_host.runtime import REVIEW_CLASSES


def _cells(n=6, size=48, bg=stain.PEACH, seed=0):
    """Synthetic 'cells': a purple disc on a plain background, with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    out = np.empty((n, size, size, 3), np.float64)
    out[:] = bg
    out[:, disc] = (120, 60, 140)
    return np.clip(out + rng.normal(0, 3, out.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("p", stain.family(), ids=lambda p: p.name)
def test_every_perturbation_keeps_shape_dtype_and_input(p):
    x = _cells()
    before = x.copy()
    y = p(x, seed=7)
    assert y.shape == x.shape and y.dtype == np.uint8
    np.testing.assert_array_equal(x, before)  # input untouched
    single = p(x[0], seed=7)
    assert single.shape == x[0].shape and single.dtype == np.uint8


def test_same_seed_same_arrays_and_seed_matters_only_for_random_members():
    x = _cells(n=5)
    for p in stain.family():
        np.testing.assert_array_equal(p(x, seed=3), p(x, seed=3), err_msg=p.name)
    mix = stain.apply("random mix", x, seed=3)
    assert not np.array_equal(mix, stain.apply("random mix", x, seed=4))
    np.testing.assert_array_equal(stain.apply("hue +10 deg", x, seed=3), stain.apply("hue +10 deg", x, seed=4))


def test_family_names_are_unique_and_cover_the_issue():
    names = stain.names()
    assert len(names) == len(set(names)) == 11
    for want in ("hue +10 deg", "hue -20 deg", "saturation x0.6", "saturation x1.4", "brightness +15%", "brightness -15%", "grayscale", "background swap"):
        assert want in names
    with pytest.raises(KeyError):
        stain.apply("sepia", _cells(n=1))


def test_hsv_round_trip_and_hue_shift_is_reversible():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(stain.hsv_adjust(x), x)
    back = stain.hue_shift(stain.hue_shift(x, 20), -20)
    assert np.abs(back.astype(int) - x).max() <= 2


def test_grayscale_has_equal_channels():
    g = stain.grayscale(_cells())
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])


def test_saturation_and_brightness_go_the_right_way():
    x = _cells()
    spread = lambda a: (a.max(axis=-1).astype(int) - a.min(axis=-1)).mean()  # noqa: E731
    assert spread(stain.saturation(x, 0.6)) < spread(x) < spread(stain.saturation(x, 1.4))
    assert stain.brightness(x, 0.85).mean() < x.mean() < stain.brightness(x, 1.15).mean()


@pytest.mark.parametrize("src,dst", [(stain.PEACH, stain.LAVENDER), (stain.LAVENDER, stain.PEACH)])
def test_background_swap_moves_the_border_to_the_other_lab(src, dst):
    x = _cells(bg=src)
    before = stain.background_colour(x)
    after = stain.background_colour(stain.swap_background(x))
    d_before = np.linalg.norm(before - np.array(dst), axis=1)
    d_after = np.linalg.norm(after - np.array(dst), axis=1)
    assert (d_after < d_before).all()
    assert (d_after < 4).all()  # lands on the target tint, up to rounding
    assert (stain.nearest_background(after) == stain.BACKGROUNDS.index(dst)).all()


def test_preprocessing_neutralises_each_labs_background_on_real_images(real_slice):
    """The two labs' background tints (peach, lavender) are far apart in the files and close after
    preprocessing, which white-balances every image: the background-swap perturbation, made for
    whole frames, now has little left to swap."""
    from firmware_host.preprocess import load_image

    def backgrounds(cls):
        files = sorted((real_slice / cls).iterdir())[:8]
        return stain.background_colour(np.stack([load_image(f, 64) for f in files])).mean(axis=0)

    raw_gap = np.linalg.norm(np.array(stain.PEACH) - np.array(stain.LAVENDER))
    gap = np.linalg.norm(backgrounds("basophil") - backgrounds("myeloblast"))  # Barcelona against Munich
    assert gap < raw_gap / 2, (gap, raw_gap)


# ------------------------------------------------------------------------------- risk-coverage


def _probs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), y] += rng.uniform(0, 4, n)
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


CLASSES5 = list(CELL_TYPES)  # the five, in the model's order


def test_risk_coverage_is_monotone_and_matches_triage():
    y, p = _probs()
    rows = risk_coverage(y, p, CLASSES5)
    assert [r["threshold"] for r in rows] == list(RISK_THRESHOLDS)
    referred = [r["referred"] for r in rows]
    kept = [r["kept"] for r in rows]
    errors = [r["errors_kept"] for r in rows]
    assert referred == sorted(referred) and kept == sorted(kept, reverse=True) and errors == sorted(errors, reverse=True)
    caught = [r["errors_referred"] for r in rows]
    assert caught == sorted(caught)
    # the same rule as classify: below the threshold, or a review class whatever the threshold
    pred, conf = p.argmax(axis=1), p.max(axis=1)
    review = np.isin(pred, [CLASSES5.index(c) for c in REVIEW_CLASSES])
    for r in rows:
        kept = ~review & (conf >= r["threshold"])
        assert r["kept"] == int(kept.sum()) and r["errors_kept"] == int((kept & (pred != y)).sum())
        assert r["kept"] + round(r["referred"] * len(y)) == len(y)
    assert min(referred) >= review.mean() > 0  # a myeloblast is referred at any threshold (the table once said otherwise)


def test_risk_coverage_reads_the_labels_classify_gives():
    """A cell the never-seen score sends to `other` is flagged and scored as `other` (a review: the table scored the
    network's first choice, kept it, and counted errors classify never leaves unflagged)."""
    y, p = _probs(60, seed=2)
    classes = [*CLASSES5, "other"]
    p6 = np.hstack([p * 0.99, np.full((len(p), 1), 0.01)])
    decided = p6.argmax(axis=1)
    decided[:20] = classes.index("other")  # as if the never-seen score had fired
    rows = risk_coverage(y, p6, classes, decided, thresholds=(0.0,))
    assert rows[0]["kept"] <= len(y) - 20
    review = [classes.index(c) for c in REVIEW_CLASSES]
    kept = ~np.isin(np.arange(len(y)), np.arange(20)) & ~np.isin(decided, review)
    assert rows[0]["kept"] == int(kept.sum()) and rows[0]["kept_accuracy"] == pytest.approx((decided == y)[kept].mean())


def test_risk_coverage_edges():
    y, p = _probs(50, seed=1)
    everything = risk_coverage(y, p, CLASSES5, thresholds=(0.0, 1.0))
    unflagged = ~np.isin(p.argmax(axis=1), [CLASSES5.index(c) for c in REVIEW_CLASSES])  # always referred
    assert everything[0]["referred"] == pytest.approx(1 - unflagged.mean())
    assert everything[0]["kept_accuracy"] == pytest.approx((p.argmax(axis=1) == y)[unflagged].mean())
    assert everything[1]["kept"] == 0 and everything[1]["kept_accuracy"] is None and everything[1]["errors_referred"] == 1.0


# ------------------------------------------------------------------------------- evaluate --stain-shift


@pytest.mark.realdata
@pytest.mark.tf
def test_evaluate_stain_shift_on_tiny_run(tiny_run, tmp_path):
    out = tmp_path / "e.json"
    res = CliRunner().invoke(cli, ["evaluate", str(tiny_run), "--stain-shift", "--out", str(tmp_path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    s = m["stain_shift"]
    assert [r["name"] for r in s["perturbations"]] == stain.names()  # one entry per perturbation, in order
    assert s["clean"]["accuracy"] == pytest.approx(m["accuracy"])
    worst = min(s["perturbations"], key=lambda r: r["accuracy"])
    assert s["worst"]["name"] == worst["name"]
    assert s["worst"]["drop_points"] == pytest.approx(100 * (m["accuracy"] - worst["accuracy"]))
    n = m["n"]
    for r in s["perturbations"]:  # shares of the n test images
        for key in ("accuracy", "changed"):
            assert r[key] * n == pytest.approx(round(r[key] * n)), (r["name"], key)
        assert 0 <= r["macro_f1"] <= 1
    assert len(m["risk_coverage"]) == len(RISK_THRESHOLDS)
    assert "worst case" in res.output and "Risk-coverage" in res.output
    # written to the metrics JSON too
    assert json.loads((tmp_path / "keras_test_metrics.json").read_text())["stain_shift"]["worst"] == s["worst"]


@pytest.mark.tf
def test_evaluate_stain_shift_on_tflite(tmp_path_factory, tmp_path):
    """The TFLite path (evaluate.Predictor over the Pi's Classifier) runs the same family."""
    from tests._tflite_fixtures import build_models, labelled_folder

    models = build_models(tmp_path_factory)
    data = labelled_folder(tmp_path / "data", per_class=2, size=40)
    out = tmp_path / "e.json"
    res = CliRunner().invoke(
        cli, ["evaluate", str(models.int8), "--data", str(data), "--split", "all", "--stain-shift", "--out", str(tmp_path / "ev"), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["kind"] == "int8" and m["n"] == 10
    assert [r["name"] for r in m["stain_shift"]["perturbations"]] == stain.names()


@pytest.mark.tf
@pytest.mark.parametrize("which", ["float32", "int8"])
def test_evaluate_confidence_is_what_classify_reports(tmp_path_factory, tmp_path, which):
    """The calibration chain: evaluate's raw TFLite probabilities + the sidecar temperature = the Pi's numbers."""
    from edgecell.evaluate import Predictor, resolve
    from edgecell.metrics import apply_temperature
    from firmware_host.runtime import Classifier
    from tests._tflite_fixtures import build_models, copy_model, reseal

    models = build_models(tmp_path_factory)
    model = copy_model(getattr(models, which), tmp_path)
    side = json.loads(model.with_suffix(".json").read_text())
    side["temperature"] = 0.6
    model.with_suffix(".json").write_text(json.dumps(side))
    reseal(model)
    target = resolve(model)
    assert target.temperature == 0.6 and target.kind == which
    calibrated = apply_temperature(Predictor(target)(models.images), target.temperature)
    clf = Classifier.load(model)
    pi = np.stack([clf.predict_array(img) for img in models.images])
    np.testing.assert_allclose(calibrated, pi, atol=1e-9)
