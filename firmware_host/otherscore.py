"""The never-seen score: how far a cell's pooled features lie from every class the model was trained on.

A model trained on six classes (the five and ``other``) still puts a blank background, a red cell
alone or a cell type it has never seen into one of them, often with high confidence. Its pooled
features (the ``gap`` layer, before the last Dense layer) betray it: they lie far from every class's
training features. The score is the Mahalanobis distance to the nearest class mean,

    score(f) = min_k || (f - mean_k) @ W ||,

with one covariance shared by the classes (``W`` the Cholesky factor of its inverse), fitted on the
training split (:func:`edgecell.metrics.fit_other_threshold`). Its ``threshold`` is fitted on the
validation split so that a stated ``share`` of the five types' cells pass it. A cell is labelled
``other`` when its most probable class is ``other`` OR its score is above the threshold
(:func:`decide`). Measured against probability- and logit-based scores in docs/design.md.

The fitted statistics travel in the run's metadata and the model's sidecar as ``other_score``
(:meth:`OtherScore.to_dict`); arrays are float32, little-endian, base64 (a 128x128 matrix is
87 KB rather than half a megabyte of JSON numbers). This module needs numpy only.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from firmware_host.preprocess import NO_NUCLEUS_FOUND, no_nucleus

KIND = "mahalanobis"
"""The one kind of score so far."""
FEATURES_LAYER = "gap"
"""The Keras layer whose output the score reads (global average pooling, before Dense)."""


def encode_array(a: np.ndarray) -> dict:
    """``{"shape", "float32_base64"}``: a float array as little-endian float32 bytes in base64."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "float32_base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    """The float64 array of :func:`encode_array`; ValueError naming what is wrong."""
    if not isinstance(d, dict) or not isinstance(d.get("shape"), list) or not isinstance(d.get("float32_base64"), str):
        raise ValueError("must be an object with shape and float32_base64")
    shape = d["shape"]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError("has a bad shape")
    try:
        raw = base64.b64decode(d["float32_base64"], validate=True)
    except ValueError:
        raise ValueError("is not valid base64") from None
    if len(raw) != 4 * math.prod(shape):
        raise ValueError(f"holds {len(raw)} bytes, not the {4 * math.prod(shape)} of shape {shape}")
    a = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("holds a value that is not a finite number")
    return a


@dataclass(frozen=True)
class OtherScore:
    """The fitted never-seen score: class means, the whitening matrix and the threshold.

    Attributes:
        means: (classes, D) mean pooled features of each class on the training split.
        whitening: (D, D) ``W`` with ``W @ W.T`` the inverse of the shared covariance.
        threshold: a score above it labels the cell ``other``.
        share: the share of the five types' validation cells above ``threshold`` (what it was fitted to).
        nucleus_max: the nucleus check (:func:`firmware_host.preprocess.prepare_cell`): a crop whose nucleus
            offset is above it holds no stained nucleus and is labelled ``other``; None: no check (runs
            fitted before it).
    """

    means: np.ndarray
    whitening: np.ndarray
    threshold: float
    share: float = 0.0
    nucleus_max: float | None = None

    @property
    def dim(self) -> int:
        return int(self.whitening.shape[0])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The score of each row of ``features`` (N, D), or of one feature vector (D,)."""
        f = np.asarray(features, dtype=np.float64)
        z = (f[..., None, :] - self.means) @ self.whitening  # (..., classes, D)
        return np.sqrt(np.min(np.einsum("...kd,...kd->...k", z, z), axis=-1))

    def with_threshold(self, threshold: float) -> OtherScore:
        return OtherScore(self.means, self.whitening, float(threshold), self.share, self.nucleus_max)

    def to_dict(self) -> dict:
        return {
            "kind": KIND,
            "layer": FEATURES_LAYER,
            "threshold": float(self.threshold),
            "share": float(self.share),
            "means": encode_array(self.means),
            "whitening": encode_array(self.whitening),
        } | ({} if self.nucleus_max is None else {"nucleus_max_offset": float(self.nucleus_max)})

    @classmethod
    def from_dict(cls, d: dict) -> OtherScore | None:
        """None for an empty dict (no score: argmax only); ValueError naming what is wrong."""
        if not d:
            return None
        if d.get("kind") != KIND:
            raise ValueError(f"has kind {d.get('kind')!r}; this runtime knows {KIND!r}")
        t = d.get("threshold")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not (math.isfinite(t) and t >= 0):
            raise ValueError("needs a threshold >= 0")
        share = d.get("share", 0.0)
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ValueError("has a share that is not between 0 and 1")
        try:
            means, w = decode_array(d.get("means")), decode_array(d.get("whitening"))
        except ValueError as exc:
            raise ValueError(f"means or whitening {exc}") from None
        if means.ndim != 2 or w.ndim != 2 or w.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"has means of shape {list(means.shape)} and whitening of shape {list(w.shape)}; expected (classes, D) and (D, D)")
        nucleus = d.get("nucleus_max_offset")
        if nucleus is not None and (not isinstance(nucleus, (int, float)) or isinstance(nucleus, bool) or not 0 <= nucleus <= NO_NUCLEUS_FOUND):
            raise ValueError(f"has a nucleus_max_offset that is not between 0 and {NO_NUCLEUS_FOUND:g} degrees")
        return cls(means, w, float(t), float(share), None if nucleus is None else float(nucleus))


def other_tests(
    probs: np.ndarray,
    scores: np.ndarray | None,
    threshold: float | None,
    classes: Sequence[str],
    other: str = "other",
    nucleus_offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
) -> dict[str, np.ndarray]:
    """The three reasons a row is labelled ``other``, each a boolean per row (all False for a model without
    an ``other`` class): ``"class"``, ``other`` is its most probable class; ``"score"``, the never-seen score is
    above ``threshold``; ``"nucleus"``, the image holds no stained nucleus (its offset of
    :func:`firmware_host.preprocess.prepare_cell` in ``nucleus_offsets`` above ``nucleus_max``,
    :attr:`OtherScore.nucleus_max`). ``scores`` or ``threshold`` None: no score (what models without one always
    did); ``nucleus_offsets`` or ``nucleus_max`` None: no nucleus check. A NaN score or offset never passes.
    """
    pred = np.asarray(probs).argmax(axis=-1)
    none = np.zeros(pred.shape, dtype=bool)
    if other not in classes:
        return {"class": none, "score": none, "nucleus": none}
    tests = {"class": pred == list(classes).index(other), "score": none, "nucleus": none}
    if scores is not None and threshold is not None:
        with np.errstate(invalid="ignore"):
            tests["score"] = np.asarray(scores, dtype=np.float64) > threshold
    if nucleus_offsets is not None and nucleus_max is not None:
        tests["nucleus"] = np.asarray(no_nucleus(nucleus_offsets, nucleus_max))
    return tests


def decide(
    probs: np.ndarray,
    scores: np.ndarray | None,
    threshold: float | None,
    classes: Sequence[str],
    other: str = "other",
    nucleus_offsets: np.ndarray | None = None,
    nucleus_max: float | None = None,
) -> np.ndarray:
    """The label index of each row: ``other`` when any of :func:`other_tests` passes, else the most probable class."""
    pred = np.asarray(probs).argmax(axis=-1)
    tests = other_tests(probs, scores, threshold, classes, other, nucleus_offsets, nucleus_max)
    passed = tests["class"] | tests["score"] | tests["nucleus"]
    return np.where(passed, list(classes).index(other), pred) if other in classes else pred
