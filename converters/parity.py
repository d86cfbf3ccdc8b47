"""The parity check: do the converted models answer like the Keras model on the test split?

The TFLite models run through :class:`firmware_host.runtime.Classifier`, the code the Pi runs
(SHA-256 check against the sidecar, input quantisation, dequantised output). Probabilities are
raw: dequantised, clipped and renormalised, *without* the temperature, so they compare directly
with the Keras softmax.

Figures per model: accuracy, macro-F1, per-class F1 and its change against Keras, top-1
agreement with Keras (and int8 against float32), mean and max absolute probability difference,
and file size. Rules:

* float32 must match Keras within :data:`FLOAT32_TOLERANCE` on every probability of every image;
  any mismatch is a converter problem and raises one :class:`EdgecellError` naming how many
  images and the worst ones (:func:`check_float32`).
* a quantised model (int8, float16) fails when its accuracy is more than ``max_drop``
  percentage points below the Keras accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from edgecell.runfolder import KERAS_FILE
from firmware_host.errors import EdgecellError

FLOAT32_TOLERANCE = 1e-4
"""Largest |p_tflite - p_keras| allowed for the float32 model, on any class of any image."""
FORMAT = "edgecell-parity/1"


def tflite_probs(
    model_path: str | os.PathLike, images: np.ndarray, threads: int | None = None, on_progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, dict]:
    """Raw probabilities of a .tflite (with its sidecar) on uint8 images, through the Pi's Classifier.

    Returns (probs (N, K) float64, classifier info).
    """
    probs, _, info = tflite_outputs(model_path, images, threads, on_progress)
    return probs, info


def tflite_outputs(
    model_path: str | os.PathLike, images: np.ndarray, threads: int | None = None, on_progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """:func:`tflite_probs` and the never-seen scores (None for a model without a score)."""
    from edgecell.tfutil import quiet_fds
    from firmware_host.runtime import Classifier

    with quiet_fds():  # the interpreter announces its delegate on stderr
        clf = Classifier.load(model_path, threads=threads, allow_unverified=True)  # this is the verification
    probs, scores = clf.predict_batch_scored([np.asarray(img, dtype=np.uint8) for img in images], on_progress)
    return probs, scores, clf.info()


def check_float32(
    keras_probs: np.ndarray, f32_probs: np.ndarray, files: Sequence[str], tol: float = FLOAT32_TOLERANCE, path: str | os.PathLike | None = None, worst: int = 3
) -> float:
    """Every float32 probability within ``tol`` of Keras, or one error listing all mismatches' count and the worst.

    Returns the largest difference.
    """
    diff = np.abs(np.asarray(f32_probs, np.float64) - np.asarray(keras_probs, np.float64)).max(axis=1) if len(files) else np.zeros(0)
    bad = np.where(diff > tol)[0]
    if bad.size:
        order = bad[np.argsort(-diff[bad], kind="stable")][:worst]
        listing = ", ".join(f"{files[i]} ({diff[i]:.2g})" for i in order)
        raise EdgecellError(
            f"float32 TFLite model disagrees with Keras on {bad.size} of {len(files)} test images "
            f"(|probability difference| > {tol:g}; worst: {listing}); the converter produced a different model, nothing was exported",
            path,
        )
    return float(diff.max()) if diff.size else 0.0


def _metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], decided: np.ndarray) -> dict:
    from edgecell.metrics import decided_metrics

    m = decided_metrics(y, probs, classes, decided)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "argmax_accuracy": m["argmax"]["accuracy"],
        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
    }


def build_report(
    y: np.ndarray,
    classes: Sequence[str],
    keras_probs: np.ndarray,
    tflite: dict[str, dict],
    max_drop: float,
    keras_size: int | None = None,
    keras_scores: np.ndarray | None = None,
    other_threshold: float | None = None,
    nucleus_offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
) -> dict:
    """The parity report.

    ``tflite`` maps precision -> {"probs": (N, K), "size_bytes": int, "file": str, "sha256": str,
    and optionally "scores": (N,) never-seen scores}. Accuracy and F1 are those of the labels ``classify`` gives
    (:func:`firmware_host.otherscore.decide`: with ``keras_scores``/"scores" and ``other_threshold`` the never-seen
    score, with ``nucleus_offsets`` and ``nucleus_max`` the nucleus check), the argmax alone beside them
    (``argmax_accuracy``). Each model also gets ``other_agreement_with_keras``: the share of images on which it and
    Keras make the same ``other`` decision, and the share each sends to ``other``.
    """
    from firmware_host.otherscore import decide
    from firmware_host.paths import OTHER_CLASS

    def decided(probs, scores):
        return decide(probs, scores, other_threshold, classes, nucleus_offsets=nucleus_offsets, nucleus_max=nucleus_max)

    def is_other(labels):
        if OTHER_CLASS not in classes:
            return np.zeros(len(labels), dtype=bool)
        return labels == list(classes).index(OTHER_CLASS)

    keras_labels = decided(keras_probs, keras_scores)
    keras_other = is_other(keras_labels)
    keras_pred = keras_probs.argmax(axis=1)
    keras = _metrics(y, keras_probs, classes, keras_labels)
    keras["size_bytes"] = keras_size
    keras["other_share"] = float(keras_other.mean()) if len(y) else 0.0
    models: dict[str, dict] = {"keras": keras}
    for prec, info in tflite.items():
        p = info["probs"]
        labels = decided(p, info.get("scores"))
        m = _metrics(y, p, classes, labels)
        diff = np.abs(p - keras_probs)
        m.update(
            {
                "file": info["file"],
                "sha256": info["sha256"],
                "size_bytes": int(info["size_bytes"]),
                "size_kb": round(info["size_bytes"] / 1024, 1),
                "per_class_f1_change": {c: m["per_class_f1"][c] - keras["per_class_f1"][c] for c in classes},
                "agreement_with_keras": float(np.mean(p.argmax(axis=1) == keras_pred)) if len(y) else 1.0,
                "prob_diff_mean": float(diff.mean()) if diff.size else 0.0,
                "prob_diff_max": float(diff.max()) if diff.size else 0.0,
                "accuracy_drop_pp": 100.0 * (keras["accuracy"] - m["accuracy"]),
            }
        )
        other = is_other(labels)
        m["other_share"] = float(other.mean()) if len(y) else 0.0
        m["other_agreement_with_keras"] = float(np.mean(other == keras_other)) if len(y) else 1.0
        if info.get("scores") is not None and keras_scores is not None and len(y):
            m["other_score_diff_max"] = float(np.nanmax(np.abs(info["scores"] - keras_scores)))
        if prec != "float32" and "float32" in tflite:
            m["agreement_with_float32"] = float(np.mean(p.argmax(axis=1) == tflite["float32"]["probs"].argmax(axis=1))) if len(y) else 1.0
        if prec == "float32":
            m["status"] = "passed" if m["prob_diff_max"] <= FLOAT32_TOLERANCE else "failed"
        else:
            m["status"] = "failed" if m["accuracy_drop_pp"] > max_drop + 1e-9 else "passed"
        models[prec] = m
    report = {
        "format": FORMAT,
        "split": "test",
        "n": len(y),
        "classes": list(classes),
        "float32_tolerance": FLOAT32_TOLERANCE,
        "max_drop_pp": float(max_drop),
        "other_threshold": other_threshold,
        "models": models,
        "size_ratio_int8_float32": (models["int8"]["size_bytes"] / models["float32"]["size_bytes"]) if "int8" in models and "float32" in models else None,
    }
    report["status"] = "failed" if any(m.get("status") == "failed" for m in models.values()) else "passed"
    return report


def failure_reason(report: dict, precision: str) -> str:
    """Why ``precision``'s model failed the parity check of ``report`` (:func:`parity_report`), in one line: its accuracy
    against Keras's, in points and test cells (on a small test split, a demo's or a clinic's first, one cell may be
    more than ``--max-drop``: said so), or its largest probability difference for float32."""
    m, n, allowed = report["models"][precision], report["n"], report["max_drop_pp"]
    if precision == "float32":
        return f"float32 probabilities differ from the Keras model's by up to {m['prob_diff_max']:.2g} (allowed: {report['float32_tolerance']:g})"
    cells = round(m["accuracy_drop_pp"] * n / 100)
    small = f"; on a test split of {n} cells one cell is {100 / n:.2f} points" if n and 100 / n > allowed else ""
    return (
        f"{precision} accuracy {100 * m['accuracy']:.2f}% is {m['accuracy_drop_pp']:.2f} points below the Keras model's "
        f"{100 * report['models']['keras']['accuracy']:.2f}% ({cells} of {n} test cells; allowed: --max-drop {allowed:g}{small})"
    )


def verification(report: dict, precision: str) -> dict:
    """The sidecar's ``verification`` field for one model: status and the figures behind it."""
    m = report["models"][precision]
    v = {
        "status": m["status"],
        "split": report["split"],
        "n": report["n"],
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "keras_accuracy": report["models"]["keras"]["accuracy"],
        "keras_macro_f1": report["models"]["keras"]["macro_f1"],
        "agreement_with_keras": m["agreement_with_keras"],
        "other_agreement_with_keras": m["other_agreement_with_keras"],
        "prob_diff_mean": m["prob_diff_mean"],
        "prob_diff_max": m["prob_diff_max"],
    }
    if precision == "float32":
        v["tolerance"] = report["float32_tolerance"]
    else:
        v["accuracy_drop_pp"] = m["accuracy_drop_pp"]
        v["max_drop_pp"] = report["max_drop_pp"]
        if "agreement_with_float32" in m:
            v["agreement_with_float32"] = m["agreement_with_float32"]
    return v


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def parity_table(report: dict) -> Table:
    """One column per model, one row per figure."""
    models = report["models"]
    names = [k for k in ("keras", "float32", "float16", "int8") if k in models]
    t = Table(title=f"Parity on the test split (n={report['n']}): Keras vs TFLite")
    t.add_column("")
    for k in names:
        t.add_column(k, justify="right")

    def row(label, fn):
        t.add_row(label, *[fn(k, models[k]) for k in names])

    row("accuracy", lambda k, m: _pct(m["accuracy"]))
    if any(m.get("argmax_accuracy") != m["accuracy"] for m in models.values()):  # the `other` rules changed a label
        row("argmax alone", lambda k, m: _pct(m.get("argmax_accuracy")))
    row("macro-F1", lambda k, m: f"{m['macro_f1']:.4f}")
    row("vs Keras (points)", lambda k, m: "" if k == "keras" else f"{0.0 - m['accuracy_drop_pp']:+.2f}")
    row("top-1 = Keras", lambda k, m: "" if k == "keras" else _pct(m["agreement_with_keras"]))
    row("top-1 = float32", lambda k, m: _pct(m["agreement_with_float32"]) if "agreement_with_float32" in m else "")
    row("sent to other", lambda k, m: _pct(m["other_share"]))
    row("other = Keras", lambda k, m: "" if k == "keras" else _pct(m["other_agreement_with_keras"]))
    row("mean |Δp|", lambda k, m: "" if k == "keras" else f"{m['prob_diff_mean']:.1e}")
    row("max |Δp|", lambda k, m: "" if k == "keras" else f"{m['prob_diff_max']:.1e}")
    t.add_section()
    for c in report["classes"]:
        row(
            f"F1 {c}",
            lambda k, m, c=c: f"{m['per_class_f1'][c]:.3f}" if k == "keras" else f"{m['per_class_f1'][c]:.3f} {0.0 + m['per_class_f1_change'][c]:+.3f}",
        )
    t.add_section()
    row("size", lambda k, m: "" if m.get("size_bytes") is None else f"{m['size_bytes'] / 1024:.1f} KB")
    row("bytes", lambda k, m: "" if m.get("size_bytes") is None else f"{m['size_bytes']:,}")
    if report.get("size_ratio_int8_float32") is not None:
        row("size / float32", lambda k, m: f"{m['size_bytes'] / models['float32']['size_bytes']:.1%}" if k in ("float16", "int8") else "")
    row("verdict", lambda k, m: "" if k == "keras" else ("[green]passed[/green]" if m["status"] == "passed" else "[red]failed[/red]"))
    return t


def keras_size(run_dir: str | os.PathLike) -> int | None:
    p = Path(run_dir) / KERAS_FILE
    return p.stat().st_size if p.is_file() else None
