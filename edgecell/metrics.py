"""Classification metrics (scikit-learn) and their rich tables.

``compute`` is what ``train`` writes to ``metrics.json`` and what ``evaluate`` recomputes, so the
two can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.table import Table


def compute(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the mean |accuracy - confidence| weighted by bin size."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


T_MIN, T_MAX = 0.5, 10.0
"""Bounds of the fitted temperature: never sharpen by more than 2x, never flatten by more than 10x."""


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log(p) / T).

    Fitted on the validation split; a 1-D search over log T (no SciPy needed), bounded to
    [:data:`T_MIN`, :data:`T_MAX`]. When validation is (nearly) error-free the likelihood keeps
    improving as T shrinks; the bound stops such a split from making the model wildly over-confident.
    """
    logits = np.log(np.clip(probs, 1e-12, 1.0))

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y_true)), y_true].mean())

    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 200))
    best = min(grid, key=nll)
    lo, hi = best / 1.1, best * 1.1
    for _ in range(40):  # golden-section refinement
        a = hi - (hi - lo) / 1.618
        b = lo + (hi - lo) / 1.618
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.clip((lo + hi) / 2, T_MIN, T_MAX))


LAB_CHECK_BATCH = 20
"""Images a lab check needs: fewer say too little about a slide."""
LAB_CHECK_QUANTILE = 0.01
"""Share of in-lab batches that the lab check may wrongly call unlike the training labs."""


def fit_lab_check(cal_probs: np.ndarray, batch: int = LAB_CHECK_BATCH, quantile: float = LAB_CHECK_QUANTILE, draws: int = 4000, seed: int = 0) -> dict:
    """The slide-level lab check, fitted on calibrated validation probabilities of the training labs.

    Images from a lab the model has never seen get lower confidence on the whole: the lowest mean
    confidence that only ``quantile`` of random ``batch``-image sets of the training labs' own
    validation images fall below is the threshold (seeded resampling; see
    :func:`firmware_host.runtime.lab_warning`, which applies it).
    """
    conf = cal_probs.max(axis=1)
    if len(conf) == 0:
        return {}
    rng = np.random.default_rng(seed)
    means = conf[rng.integers(0, len(conf), size=(draws, batch))].mean(axis=1)
    return {"min_mean_confidence": float(np.quantile(means, quantile)), "batch": batch, "quantile": quantile, "validation_mean_confidence": float(conf.mean())}


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    if t == 1.0:
        return probs
    z = np.log(np.clip(probs, 1e-12, 1.0)) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def metrics_table(m: dict, title: str = "Metrics") -> Table:
    t = Table(title=title)
    t.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for c, v in m["per_class"].items():
        t.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    t.add_section()
    t.add_row("[bold]accuracy[/bold]", "", "", f"[bold]{m['accuracy']:.4f}[/bold]", str(m["n"]))
    t.add_row("[bold]macro-F1[/bold]", "", "", f"[bold]{m['macro_f1']:.4f}[/bold]", "")
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
