"""Mirrored views of a cell image, whose answers the model averages (test-time augmentation).

A cell on a slide has no up, down, left or right, so a model answers for the image and for its
mirror images, and the answers are averaged: fewer errors that depend on how the cell lies in the
frame. This module is the one definition of those views, in their order; the Keras layer of
:func:`edgecell.model.with_views` makes the same ones in the graph for training and evaluation.

The converted model is the network for one image. On the Pi it is run once per view
(:meth:`firmware_host.runtime.Classifier.predict_scored`) and the dequantised outputs are averaged
in float64, so the model's sidecar only says how many views (``views``); an int8 model is
calibrated on the views too (:mod:`converters.calibration`).
"""

from __future__ import annotations

import numpy as np

VIEWS = (
    # (transpose, flip rows: up-down, flip columns: left-right)
    (False, False, False),  # the image
    (False, False, True),
    (False, True, False),
    (False, True, True),
    (True, False, False),  # its transpose, then the same mirrors of it
    (True, False, True),
    (True, True, False),
    (True, True, True),
)
"""Every view, in order; a model with ``n`` views averages the first ``n``."""

VIEW_CHOICES = (1, 2, 4, 8)
"""How many views a model may average: the image, + its left-right mirror, + up-down and both, + the transposes."""


def check_views(n) -> str | None:
    """What is wrong with ``n`` as a number of views, or None."""
    if isinstance(n, bool) or not isinstance(n, int) or n not in VIEW_CHOICES:
        return f"must be one of {', '.join(map(str, VIEW_CHOICES))}, not {n!r}"
    return None


def view(image: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` of an ``(H, W, C)`` image (a strided view of it: nothing is copied)."""
    transpose, rows, cols = VIEWS[k]
    v = image.transpose(1, 0, 2) if transpose else image
    if rows:
        v = v[::-1]
    if cols:
        v = v[:, ::-1]
    return v
