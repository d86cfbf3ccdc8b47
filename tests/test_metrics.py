"""Metrics and temperature scaling (numpy and scikit-learn only, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from edgecell.metrics import T_MAX, T_MIN, apply_temperature, compute, expected_calibration_error, fit_temperature


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 2
    truth = _softmax(z)
    y = np.array([rng.choice(5, p=p) for p in truth])
    overconfident = _softmax(z * 2.0)  # as if the logits were doubled: T = 2 undoes it
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(2.0, rel=0.1)
    before = expected_calibration_error(y, overconfident)
    after = expected_calibration_error(y, apply_temperature(overconfident, t))
    assert after < before / 2


def test_temperature_is_bounded_when_validation_is_perfect():
    y = np.arange(100) % 5
    p = np.full((100, 5), 0.1)
    p[np.arange(100), y] = 0.6
    assert fit_temperature(y, p) == T_MIN
    assert T_MIN <= fit_temperature(y, np.full((100, 5), 0.2)) <= T_MAX


def test_compute_matches_hand_counts():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    m = compute(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))


def test_no_images_have_no_accuracy_rather_than_zero():
    """An empty test split wrote accuracy 0.0 to metrics.json: a figure of a model that was not measured."""
    from edgecell.metrics import metrics_table

    m = compute(np.zeros(0, np.int64), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["n"] == 0 and m["accuracy"] is None and m["macro_f1"] is None
    con = Console(width=100, record=True)
    con.print(metrics_table(m))
    assert "0.0000" not in con.export_text()


def test_apply_temperature_keeps_ranking_and_sums_to_one():
    p = _softmax(np.random.default_rng(1).normal(size=(50, 5)))
    for t in (0.5, 1.0, 3.0):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)
        assert (q.argmax(axis=1) == p.argmax(axis=1)).all()


def test_class_names_are_drawn_as_text_not_mathtext(tmp_path):
    """A class folder named 'odd$\\q{$' was parsed as mathtext: ValueError after the whole training."""
    pytest.importorskip("matplotlib")
    from edgecell.plots import confusion_matrix_png

    out = tmp_path / "cm.png"
    confusion_matrix_png(out, [[3, 1], [0, 4]], ["odd$\\q{$", "basophil"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
