"""Classification metrics (scikit-learn) and their rich tables.

``compute`` is what ``train`` writes to ``metrics.json`` and what ``evaluate`` recomputes, so the
two can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.table import Table


def compute(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], y_pred: np.ndarray | None = None) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix of ``y_pred`` (class indices; default
    the argmax of ``probs``).

    One definition with ``edgecell classify``'s (:func:`firmware_host.runtime.classification_metrics`): macro-F1 averages
    over the classes that occur in the labels or the predictions, so a lab's images that hold four of a model's six
    classes are not marked down for the two they lack.
    """
    from firmware_host.runtime import classification_metrics

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    names = np.asarray(list(classes), dtype=object)
    return classification_metrics(names[y_true], names[y_pred], classes)  # no images: accuracy and macro-F1 None, not 0


def decided_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], decided: np.ndarray) -> dict:
    """:func:`compute` of the labels a model's user gets (``decided``: the argmax, then ``other`` by the never-seen score
    and the nucleus check, :func:`firmware_host.otherscore.decide`), with the network's argmax alone beside them as
    ``argmax`` (accuracy, macro-F1): the figure ``classify`` reports is the first."""
    m = compute(y_true, probs, classes, decided)
    alone = compute(y_true, probs, classes)
    m["argmax"] = {"accuracy": alone["accuracy"], "macro_f1": alone["macro_f1"]}
    return m


DEFAULT_BINS = 15
"""Equal-width confidence bins of the expected calibration error and the reliability diagram."""


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty confidence bin: accuracy, mean confidence and share of the images.

    The binning is scikit-learn's :func:`~sklearn.calibration.calibration_curve` (equal width,
    ``strategy="uniform"``, bins closed on the right) on "was the top class right" against the
    top-class confidence; the expected calibration error and the reliability diagram both use it.
    """
    from sklearn.calibration import calibration_curve

    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.int64)
    acc, mean_conf = calibration_curve(correct, conf, n_bins=bins, strategy="uniform", pos_label=1)
    counts = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], conf), minlength=bins)  # calibration_curve's bin ids
    return acc, mean_conf, counts[counts > 0] / len(conf)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE: the mean |accuracy - confidence| over :func:`reliability_bins`, weighted by bin size."""
    if not len(probs):
        return 0.0
    acc, conf, share = reliability_bins(y_true, probs, bins)
    return float(np.sum(share * np.abs(acc - conf)))


T_MIN, T_MAX = 0.5, 10.0
"""Bounds of the fitted temperature: never sharpen by more than 2x, never flatten by more than 10x."""


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log(p) / T).

    Fitted on the validation split with SciPy's bounded scalar minimiser over log T, within
    [:data:`T_MIN`, :data:`T_MAX`]. When validation is (nearly) error-free the likelihood keeps
    improving as T shrinks; the bound stops such a split from making the model wildly over-confident.
    """
    from scipy.optimize import minimize_scalar

    logits = np.log(np.clip(probs, 1e-12, 1.0))
    y_true = np.asarray(y_true)

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y_true)), y_true].mean())

    res = minimize_scalar(lambda u: nll(np.exp(u)), bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded", options={"xatol": 1e-6})
    # the minimiser stops just inside a bound; the bound itself when it is at least as good
    return float(min((T_MIN, float(np.exp(res.x)), T_MAX), key=nll))


LAB_CHECK_BATCH = 20
"""Images a lab check needs: fewer say too little about a slide."""
LAB_CHECK_QUANTILE = 0.01
"""Share of in-lab batches that the lab check may wrongly call unlike the training labs."""
LAB_CHECK_MIN_SOURCE = 50
"""Validation cells a training source needs for its own limit; fewer say too little of its spread (they count
in the pool of all the validation cells, which always has a limit too)."""
LAB_CHECK_TOLERANCE = 0.9
"""How sure a limit is to fire on at most :data:`LAB_CHECK_QUANTILE` of a training lab's sets: a limit read off a
few hundred validation cells is off by their sampling error, and so fired on 1.9 % of fresh sets on average (up to
3.5 %; simulated, docs/design.md) where 1 % was meant; the limit is taken across resamples of the validation
cells (a one-sided tolerance limit)."""
LAB_CHECK_RESAMPLES = 40
"""Resamples of the validation cells behind :data:`LAB_CHECK_TOLERANCE`."""


def fit_lab_check(
    cal_probs: np.ndarray,
    scores: np.ndarray | None = None,
    sources: Sequence[str] | None = None,
    batch: int = LAB_CHECK_BATCH,
    quantile: float = LAB_CHECK_QUANTILE,
    draws: int = 2000,
    seed: int = 0,
    min_source: int = LAB_CHECK_MIN_SOURCE,
    tolerance: float = LAB_CHECK_TOLERANCE,
    resamples: int = LAB_CHECK_RESAMPLES,
) -> dict:
    """The slide-level lab check, fitted on the training labs' validation images.

    Images from a lab the model has never seen lie far from every trained type in the model's feature space:
    with the never-seen ``scores`` of the validation cells (:class:`firmware_host.otherscore.OtherScore`, every
    cell, whatever its type), ``max_median_score`` is the median score that only ``quantile`` of random
    ``batch``-cell sets of those cells rise above. Without scores (a model with no never-seen score) the check
    reads the calibrated confidence instead, which an unseen lab lowers less: ``min_mean_confidence``, the mean
    that only ``quantile`` of such sets fall below. With ``sources`` (each cell's), sets are also drawn from one
    source at a time (each with at least ``min_source`` cells) and the limit is the loosest of the sources' and
    the pool's: a clinic's slide comes from one lab, and a lab with few training images lies further from the
    class means than the mix of all. Each limit is the one that ``tolerance`` of ``resamples`` bootstrap resamples
    of the cells (``draws`` sets each) do not pass: a one-sided tolerance limit, so that the sampling error of the
    validation cells does not make the check fire more often than ``quantile`` on the lab's other slides.
    Seeded resampling; see :func:`firmware_host.runtime.lab_warning`, which applies it.
    """
    conf = cal_probs.max(axis=1)
    if len(conf) == 0:
        return {}
    with_scores = scores is not None and len(scores) == len(conf)
    scores = np.asarray(scores, np.float64) if with_scores else None
    groups = [np.arange(len(conf))]
    if sources is not None and len(sources) == len(conf):
        labels = np.asarray(sources)
        per_source = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        groups += [g for g in per_source if len(g) >= min_source and len(g) < len(conf)]
    rng = np.random.default_rng(seed)
    low, high = [], []
    for g in groups:
        pools = g[rng.integers(0, len(g), size=(resamples, len(g)))]  # each resample of the cells, then its sets
        sets = rng.integers(0, len(g), size=(resamples, draws * batch))
        picks = np.take_along_axis(pools, sets, axis=1).reshape(resamples, draws, batch)
        low.append(np.quantile(np.quantile(conf[picks].mean(axis=2), quantile, axis=1), 1.0 - tolerance))
        if with_scores:
            high.append(np.quantile(np.quantile(np.median(scores[picks], axis=2), 1.0 - quantile, axis=1), tolerance))
    check = {"min_mean_confidence": float(min(low)), "batch": batch, "quantile": quantile, "validation_mean_confidence": float(conf.mean())}
    if with_scores:
        check |= {"max_median_score": float(max(high)), "validation_median_score": float(np.median(scores))}
    return check


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log(p) / T) for each row: the runtime's :func:`firmware_host.runtime.apply_temperature`."""
    from firmware_host.runtime import apply_temperature as apply

    return apply(probs, t)


def metrics_table(m: dict, title: str = "Metrics") -> Table:
    t = Table(title=title)
    t.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for c, v in m["per_class"].items():
        t.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    t.add_section()
    t.add_row("[bold]accuracy[/bold]", "", "", f"[bold]{four_places(m['accuracy'])}[/bold]", str(m["n"]))
    t.add_row("[bold]macro-F1[/bold]", "", "", f"[bold]{four_places(m['macro_f1'])}[/bold]", "")
    return t


def confusion_table(m: dict, title: str = "Confusion matrix (rows: true, columns: predicted)") -> Table:
    classes = m["classes"]
    t = Table(title=title)
    t.add_column("true \\ predicted")
    for c in classes:
        t.add_column(c[:8], justify="right")
    for i, c in enumerate(classes):
        row = m["confusion_matrix"][i]
        t.add_row(c, *[f"[bold green]{v}[/bold green]" if i == j else (f"[red]{v}[/red]" if v else "0") for j, v in enumerate(row)])
    return t


DEFAULT_OTHER_SHARE = 0.01
"""Share of the five types' validation cells that the never-seen score may send to ``other`` (on top of
those whose most probable class is ``other``)."""
COVARIANCE_RIDGE = 1e-3
"""Added to the diagonal of the features' covariance, times its mean variance: a feature that never fires
(no variance) would otherwise make int8 rounding of it count as a far-away image."""


def fit_feature_distance(features: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the whitening matrix ``W`` (``W @ W.T`` = the inverse of one covariance shared by the classes).

    A class without images gets the mean of all features (it never is the nearest by accident: it
    sits among the others).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    overall = f.mean(axis=0)
    means = np.stack([f[y == k].mean(axis=0) if (y == k).any() else overall for k in range(n_classes)])
    centred = f - means[y]
    cov = centred.T @ centred / max(1, len(f))
    cov += COVARIANCE_RIDGE * max(float(np.trace(cov)) / f.shape[1], 1e-12) * np.eye(f.shape[1])
    return means, np.linalg.cholesky(np.linalg.inv(cov))


NUCLEUS_QUANTILE = 0.999
"""The nucleus check clears this share of the training images' nucleus offsets..."""
NUCLEUS_MARGIN = 10.0
"""...by this many degrees of hue (:func:`fit_nucleus_check`)."""


def fit_nucleus_check(offsets: np.ndarray) -> float:
    """The nucleus check's limit for a model trained on images with these nucleus offsets
    (:func:`firmware_host.preprocess.prepare_cell`): at least :data:`~firmware_host.preprocess.NO_NUCLEUS_HUE`,
    and :data:`NUCLEUS_MARGIN` degrees above the :data:`NUCLEUS_QUANTILE` quantile of the offsets, so that
    the check never sends the kind of image the model was taught (real cells: about 30 degrees at most;
    edgecell's drawn demo cells, whose granules can be darker than their nucleus, much more), at most
    :data:`~firmware_host.preprocess.NO_NUCLEUS_FOUND`."""
    from firmware_host.preprocess import NO_NUCLEUS_FOUND, NO_NUCLEUS_HUE

    offsets = np.asarray(offsets, dtype=np.float64)
    offsets = offsets[np.isfinite(offsets) & (offsets >= 0) & (offsets < NO_NUCLEUS_FOUND)]  # no whole nucleus, or no colour: no hue
    if not len(offsets):
        return float(NO_NUCLEUS_HUE)
    return float(min(NO_NUCLEUS_FOUND, max(NO_NUCLEUS_HUE, np.quantile(offsets, NUCLEUS_QUANTILE) + NUCLEUS_MARGIN)))


def fit_other_threshold(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    share: float = DEFAULT_OTHER_SHARE,
    offsets_train: np.ndarray | None = None,
    val_outputs: tuple[np.ndarray, np.ndarray] | None = None,
    groups_train: np.ndarray | None = None,
) -> dict:
    """The never-seen score of :mod:`firmware_host.otherscore`, fitted: what a run records as ``other_score``.

    The class means and shared covariance of the Keras ``model``'s pooled features on the training
    images; the threshold is the score that only ``share`` of the validation split's five-type cells
    exceed (among those not already labelled ``other`` by their most probable class). With the training
    images' nucleus offsets, the nucleus check too (:func:`fit_nucleus_check`). Empty (no score: the runtime
    labels by the most probable class alone) for a model without an ``other`` class. ``val_outputs``: the
    model's probabilities and features on ``x_val``, when the caller has them already. ``groups_train``: one
    mean per group of the training images (integers from 0) instead of one per class, e.g. one per cell type of
    each lab, so that a cell's score is its distance to the nearest group.
    """
    from edgecell.model import predict_with_features
    from firmware_host.otherscore import OtherScore
    from firmware_host.paths import OTHER_CLASS

    if OTHER_CLASS not in classes or not len(x_train) or not len(x_val):
        return {}
    other = list(classes).index(OTHER_CLASS)
    _, f_train = predict_with_features(model, x_train)
    groups = np.asarray(y_train if groups_train is None else groups_train, dtype=np.int64)
    means, whitening = fit_feature_distance(f_train, groups, int(groups.max()) + 1 if groups_train is not None else len(classes))
    p_val, f_val = predict_with_features(model, x_val) if val_outputs is None else val_outputs
    of_five = np.asarray(y_val) != other
    five = of_five & (p_val.argmax(axis=1) != other)
    if not five.any():  # a model that calls every cell `other` (undertrained): fitted on the five's cells all the same
        five = of_five
    if not five.any():
        return {}
    scores = OtherScore(means, whitening, 0.0).scores(f_val[five])
    threshold = float(np.quantile(scores, 1.0 - share, method="higher"))
    nucleus = None if offsets_train is None else fit_nucleus_check(offsets_train)
    return OtherScore(means, whitening, threshold, float(share), nucleus).to_dict() | {"validation_n": int(five.sum())}


def four_places(v: float | None) -> str:
    """A figure to four places, or "-" for none (a set without images)."""
    return "-" if v is None else f"{v:.4f}"
