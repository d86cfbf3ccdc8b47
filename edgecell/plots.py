"""PNG plots: confusion matrix, training curves, reliability diagram. Written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edgecell.metrics import DEFAULT_BINS, reliability_bins
from firmware_host.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    # text is text: a class folder named 'odd$\q{$' was parsed as mathtext and failed after the whole training
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(path: str | os.PathLike, cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix") -> None:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def training_curves_png(path: str | os.PathLike, history: dict) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, ax in (("loss", a1), ("accuracy", a2)):
        if key in history:
            ax.plot(epochs, history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.lines:  # a run adapted by prototypes has no epochs
            ax.legend()
    best = history.get("best_epoch")
    if best:
        for ax in (a1, a2):
            ax.axvline(best, color="grey", ls="--", lw=1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def reliability_png(path: str | os.PathLike, y_true: np.ndarray, curves: dict[str, np.ndarray], bins: int = DEFAULT_BINS) -> None:
    """Reliability diagram (accuracy vs confidence) and risk-coverage curve for each probs array: the curve refers
    the least confident images first, by the top probability alone (what the probabilities can do; the risk-coverage
    table of ``evaluate`` is what ``classify`` refers, with its review and ``other`` flags)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    a1.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    for name, probs in curves.items():
        ys, xs, _ = reliability_bins(y_true, probs, bins)
        a1.plot(xs, ys, marker="o", label=name)
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == y_true
        order = np.argsort(-conf)
        kept_acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
        coverage = np.arange(1, len(order) + 1) / len(order)
        a2.plot(1 - coverage, kept_acc, label=name)
    a1.set_xlabel("confidence")
    a1.set_ylabel("accuracy")
    a1.set_title("Reliability")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.set_xlabel("share referred to a specialist")
    a2.set_ylabel("accuracy of the cases kept")
    a2.set_title("Risk-coverage, top probability alone")
    a2.grid(alpha=0.3)
    a2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def other_curve_png(path: str | os.PathLike, curve: Sequence[dict], threshold: float | None, title: str = "The other decision against the threshold") -> None:
    """Share of the five types wrongly sent to ``other`` and share of ``other`` cells caught (overall and per
    type) against the never-seen score's threshold (:func:`edgecell.evaluate.other_report`'s ``curve``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    t = [c["threshold"] for c in curve]

    def line(values, **kw):
        ax.plot(t, [np.nan if v is None else 100 * v for v in values], **kw)

    line([c["five_sent_to_other"] for c in curve], color="tab:red", lw=2, label="five types wrongly sent to other")
    line([c["other_caught"] for c in curve], color="tab:blue", lw=2, label="other cells caught")
    for k in curve[0]["by_type"] if curve else ():
        line([c["by_type"][k] for c in curve], lw=1, ls="--", label=f"{k} caught")
    if threshold is not None:
        ax.axvline(threshold, color="grey", ls=":", label=f"model's threshold {threshold:.3g}")
    ax.set_xlabel("never-seen score threshold (classify --other-threshold)")
    ax.set_ylabel("% of cells")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
