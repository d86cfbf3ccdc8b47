"""Classify blood-cell images with a converted TFLite model, without TensorFlow.

``Classifier.load(path)`` takes a ``.tflite`` file or an export folder, reads the sidecar
metadata (:mod:`firmware_host.metadata`), refuses a model whose recorded preprocessing is not
this runtime's (:func:`firmware_host.metadata.check_preprocessing`), checks the model's SHA-256 *before* handing the bytes
to the interpreter, checks the model's input and output shapes against the metadata, and reads
the input/output quantisation from the interpreter's tensor details. The caller always deals in
``uint8`` images of shape ``(input_size, input_size, 3)`` (see :mod:`firmware_host.preprocess`) and
float probabilities that sum to 1, whatever the model's precision.

Steps per image:

1. :func:`firmware_host.preprocess.load_cell` - decode and resize (timed as ``preprocess_ms``);
2. quantise the pixels if the model's input is int8/uint8 (``q = round(x / scale) + zero_point``,
   clipped to the type's range; done with a 256-entry lookup table), else pass them as float32;
3. ``invoke``; dequantise the output (``p = scale * (q - zero_point)``), clip at 0 and renormalise;
   a model whose metadata has ``views`` > 1 is invoked once per mirrored view of the image
   (:mod:`firmware_host.mirrors`) and the dequantised outputs are averaged first;
4. if the metadata's ``temperature`` is not 1: ``p = softmax(log(p) / T)``.

Steps 2-4 are timed as ``inference_ms``.

:func:`triage` turns a prediction into the flag a clinic acts on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import statistics
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_host.decode import _decode_one, _process_pool, decode_many, default_workers, ordered_chunks, use_processes
from firmware_host.errors import ImageError, ModelError, os_reason, read_regular
from firmware_host.interpreter import MAX_THREADS, Backend, load_interpreter
from firmware_host.metadata import EXPORT_DIR, KERAS_FILE, ModelMetadata, Precision, Quantization, check_preprocessing, model_of_sidecar, read_metadata
from firmware_host.mirrors import view
from firmware_host.otherscore import OtherScore, other_tests
from firmware_host.paths import OTHER_CLASS
from firmware_host.preprocess import (
    IMAGE_SUFFIXES,
    MIN_SIDE,
    NO_COLOUR,
    check_exposure,
    decode_cell,
    image_rgb,
    load_cell,
    prepare_cell,
    rgb_array,
    unread_jpeg,
)

PRECISION_PREFERENCE = (Precision.int8, Precision.float32, Precision.float16)
"""Order in which a model is picked from an export folder when no precision is asked for."""

MAX_MODEL_BYTES = 256 << 20
"""No edgecell model comes near this (int8: about 0.1 MiB, float32: under 2 MiB); a larger file is refused unread."""
PARITY_FIELDS = ("status", "accuracy_drop_pp", "max_drop_pp")
"""What :meth:`Classifier.info` reports of the sidecar's parity check (``verification``)."""
DEFAULT_THRESHOLD = 0.7
"""Confidence below which a prediction is flagged as uncertain."""


def check_number(name: str, value, low: float, high: float | None = None, whole: bool = False) -> float:
    """``value`` as a float, if it is a finite number (a whole one if ``whole``) from ``low`` to ``high``; else a
    ValueError naming ``name``: the API's own check of what the command line's option types refuse (nan passes every
    comparison; a string or a bool is not a number here)."""
    number = float(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number >= low and (high is None or number <= high) and (not whole or number == int(number))):
        shown = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"  # noqa: E731 - 4294967295, not 4.29497e+09
        span = f"from {shown(low)} to {shown(high)}" if high is not None else f"at least {shown(low)}"
        raise ValueError(f"{name} must be a {'whole ' if whole else ''}number {span} (got {value!r})")
    return number


REVIEW_CLASSES = frozenset({"myeloblast", "erythroblast"})
"""Predicted classes that always go to a haematologist, however confident the model is.

* ``myeloblast``: a blast; blasts in peripheral blood are typical of acute myeloid leukaemia.
* ``erythroblast``: a nucleated red-cell precursor; abnormal in circulating adult blood.
"""

BLAST_CLASSES = frozenset({"myeloblast"})
"""Review classes that are blasts: a possible blast is said before the rest of a run's results (classify's and scan's
summary, the top of the review page), naming its images."""
NOT_WHITE_CELLS = frozenset({"erythroblast"})
"""Classes that are not white cells: a nucleated red cell is counted per 100 white cells beside the differential, not in
it (as a laboratory reports it). :func:`differential_shares`."""
NOT_WHITE_TYPES = frozenset({"platelet"})
"""Types a reviewer may name within ``other`` that are not white cells: the review page counts a cell named so with those
without a nucleus, outside the white cells."""
MIN_DIFFERENTIAL_CELLS = 100
"""A differential is read over at least this many white cells; over fewer, its percentages are said to be rough (one
blast in five cells reads as 20 %)."""
TRIAGE_NOTE = "Triage support, not a diagnosis: a person checks every flagged cell before any result is reported."
"""Said once with every run's results (classify's and scan's summary, the review page)."""


def differential_shares(counts: dict[str, int], no_nucleus: int = 0) -> dict:
    """The differential count as a laboratory reads it, from the cells counted per label (``counts``) and how many of
    those labelled ``other`` hold no whole stained nucleus (``no_nucleus``: the nucleus check; red cells, background,
    debris, a blank picture): ``white`` and ``white_cells``, the cells counted per white-cell class and in all: every
    class but those of :data:`NOT_WHITE_CELLS`, ``other`` less its cells without a nucleus (the rest of ``other`` is
    mostly lymphocytes and eosinophils, a platelet now and then); ``pct``, each white-cell class's share of them, in %;
    ``per_100_white_cells``, each class of :data:`NOT_WHITE_CELLS` counted per 100 white cells; ``no_nucleus``, the
    cells left out. Shares are None when no white cell was counted."""
    white = {c: n for c, n in counts.items() if c not in NOT_WHITE_CELLS}
    if OTHER_CLASS in white:
        no_nucleus = min(no_nucleus, white[OTHER_CLASS])
        white[OTHER_CLASS] -= no_nucleus
    else:
        no_nucleus = 0
    n = sum(white.values())
    return {
        "white": white,
        "white_cells": n,
        "pct": {c: (100.0 * k / n if n else None) for c, k in white.items()},
        "per_100_white_cells": {c: (100.0 * k / n if n else None) for c, k in counts.items() if c in NOT_WHITE_CELLS},
        "no_nucleus": no_nucleus,
    }


def differential_notes(counts: dict[str, int], no_nucleus: int = 0) -> list[str]:
    """What to say under the differential (classify's and scan's printed table, the review page): what the classes
    that are not white cells are counted as, what ``other`` holds, the cells left out for want of a nucleus, and too few
    white cells for its percentages (:data:`MIN_DIFFERENTIAL_CELLS`)."""
    shares = differential_shares(counts, no_nucleus)
    n, notes = shares["white_cells"], []
    if shares["per_100_white_cells"]:
        names = " and ".join(sorted(shares["per_100_white_cells"]))
        notes.append(f"{names}: a nucleated red cell, not a white cell; counted per 100 white cells, not among them.")
    if shares["white"].get(OTHER_CLASS):
        notes.append(
            f"{OTHER_CLASS}: white cells the model does not name (lymphocytes, eosinophils, immature granulocytes; a platelet now "
            "and then), and abnormal cells may be among them, blasts too: look at them."
        )
    if shares["no_nucleus"]:
        k = shares["no_nucleus"]
        notes.append(
            f"{k} cell{'s' if k != 1 else ''} labelled {OTHER_CLASS} with no whole stained nucleus found (usually red cells, background "
            "or debris; check them): left out of the white cells."
        )
    if not n and sum(counts.values()):
        notes.append("No white cell was counted, so there are no shares.")
    elif 0 < n < MIN_DIFFERENTIAL_CELLS:
        notes.append(
            f"Only {n} white cell{'s' if n != 1 else ''}: a differential is read over {MIN_DIFFERENTIAL_CELLS} or more, so these percentages are rough."
        )
    return notes


def is_possible_blast(label: str, top3: Sequence) -> bool:
    """Whether a cell is a possible blast: labelled one of :data:`BLAST_CLASSES`, or sent to ``other`` when the model's
    first choice was one (``top3``: its ``(label, probability)`` pairs or ``{"label", "prob"}`` records, most probable
    first; :func:`first_choice`)."""
    if label in BLAST_CLASSES:
        return True
    if label != OTHER_CLASS or not top3:
        return False
    best = top3[0]
    return (best["label"] if isinstance(best, dict) else best[0]) in BLAST_CLASSES


FLAG_UNCERTAIN = "uncertain - refer"
"""Flag for a prediction whose confidence is below the threshold."""
FLAG_REVIEW = "review: haematologist"
"""Flag for a confident prediction of one of :data:`REVIEW_CLASSES`."""
FLAG_OTHER = "not one of the five - refer"
"""Flag for a cell labelled :data:`OTHER_CLASS`: counted in a row of its own in the differential."""
OTHER_BY_CLASS = "taught as other"
"""Why a cell is ``other`` (:attr:`Prediction.other_reason`): its most probable class is ``other``..."""
OTHER_BY_SCORE = "unlike every trained type"
"""...its never-seen score is above the threshold..."""
OTHER_BY_NUCLEUS = "no whole stained nucleus"
"""...its crop holds no stained nucleus, or one cut by the frame (the nucleus check). Several reasons are joined by ``"; "``."""
OTHER_REASONS = {"class": OTHER_BY_CLASS, "score": OTHER_BY_SCORE, "nucleus": OTHER_BY_NUCLEUS}
"""The reason for each test of :func:`firmware_host.otherscore.other_tests`."""


def prob_text(p: float) -> str:
    """A probability as a person reads it: two decimals, but ">0.99" and "<0.01" rather than "1.00" and "0.00" (a
    calibrated probability is never certainty, and on a lab the model has not seen it can be high and wrong: a clinical
    review). The JSON and CSV keep every digit."""
    return ">0.99" if p >= 0.995 else "<0.01" if p < 0.005 else f"{p:.2f}"


def label_text(label: str, confidence: float, other_reason: str = "", reason: bool = True) -> str:
    """A cell's label and its probability, as a person reads it (classify's and scan's results, the boxes of
    ``--annotate`` and the review page); for a cell labelled ``other`` by its never-seen score or the nucleus check
    rather than by its most probable class, the reason instead (``reason=False``: the label alone): its probability of
    ``other`` is then low, and "other 0.04" reads as "4 % sure" (the JSON has every probability)."""
    if shown_reason(label, other_reason):
        return f"{label} ({other_reason})" if reason else label
    return f"{label} {prob_text(confidence)}"


def shown_reason(label: str, other_reason: str) -> str:
    """Why a cell is ``other``, when that is to be shown instead of its probability (:func:`label_text`): labelled
    ``other`` by its never-seen score or the nucleus check, not as its most probable class; else ""."""
    return other_reason if label == OTHER_CLASS and other_reason and OTHER_BY_CLASS not in other_reason else ""


LAB_ADVICE = (
    "check these results with care, and the pictures (a dark, washed-out or blurred one reads as another lab); "
    "if they are sharp and well exposed, adapt the model to this lab with a few dozen labelled cells (edgecell adapt)"
)
"""What a user should do when :func:`lab_warning` fires (a review's BCCD fields at 0.4 of their exposure: 22 of 24
cells sent to `other`, and the advice named the lab only)."""
ADAPTED_ADVICE = (
    "check these results with care; the model was adapted to {labs} with {cells} labelled cells: if these images are from {which}, "
    "label more of its cells and adapt again with all of them, from the run before it was first adapted to that lab (edgecell adapt, given this adapted run and that lab's cells, names that run), "
    "and if they are from another lab, adapt the model to it"
)
"""...and when it fires for a model that ``edgecell adapt`` already fitted to a lab (``lab_check["adapted_to"]``)."""


def lab_advice(lab_check: dict) -> str:
    """:data:`LAB_ADVICE`, or :data:`ADAPTED_ADVICE` naming the labs and cells of ``lab_check["adapted_to"]``."""
    adapted = lab_check.get("adapted_to") or {}
    if not adapted.get("sources"):
        return LAB_ADVICE
    labs = list(adapted["sources"])
    return ADAPTED_ADVICE.format(labs=", ".join(labs), cells=int(adapted.get("cells", 0)), which="that lab" if len(labs) == 1 else "one of those labs")


_EPS = 1e-12


NO_NUCLEUS_SHARE = 0.5
"""A set of cells more than this share of which hold no whole stained nucleus (the nucleus check) is no training lab's
cells: of ../shared's 5,030 cells of the five types, in three labs, none fails that check, and 2 of its 1,321 cells of
other types (platelets). Such a set is in another colour order (BGR, as OpenCV gives), another stain, or not white
cells; every cell of it is flagged, and the line says why (a review's 40 BGR cells: all `other`, no word of the cause)."""
NO_NUCLEUS_ADVICE = (
    "check the pictures: colours in another order (BGR, as OpenCV writes them), a stain other than a Romanowsky one "
    "(May-Grunwald-Giemsa, Wright, Leishman), or pictures that are not of white cells"
)


def lab_warning(mean_confidence: float, n: int, lab_check: dict, median_score: float | None = None, what: str = "images", no_nucleus: int = 0) -> str | None:
    """One line when a set of images looks unlike every lab the model was trained on, else None.

    ``lab_check`` comes from the model's sidecar (:func:`edgecell.metrics.fit_lab_check`). Two tests, each
    allowed to fire on 1 % of ``batch``-cell sets of every training source's own validation cells:

    * ``max_median_score``, with the set's ``median_score`` (the median never-seen score of its cells,
      :mod:`firmware_host.otherscore`): the cells lie further from every trained type. This is what catches a
      lab the model has never seen, where it is often confidently wrong.
    * ``min_mean_confidence``: the set's ``mean_confidence`` (calibrated) is lower. This catches cells of a known
      lab that the model is unsure of (types it knows from another lab's images only).

    A set of ``n`` >= ``batch`` images on which either fires is not like the training labs' (another stain,
    camera or magnification, or cells the model knows in another lab's look only), and the model's answers there
    are less reliable than its test figures say. ``what`` names the ``n`` things ("images"; scan's "cells").
    The advice that ends the line is :func:`lab_advice`'s. First, ``no_nucleus``: how many of the ``n`` hold no whole
    stained nucleus; more than :data:`NO_NUCLEUS_SHARE` of them is said as such (:data:`NO_NUCLEUS_ADVICE`). Like the
    two tests, only for a model with a lab check (every run trained since it was added) and a set of ``batch`` or more.
    """
    if not lab_check or n < int(lab_check.get("batch", 1)):
        return None
    if no_nucleus > NO_NUCLEUS_SHARE * n:
        return f"{no_nucleus} of these {n} {what} show no stained nucleus where a white cell's should be: {NO_NUCLEUS_ADVICE}"
    tests = []
    if median_score is not None and "max_median_score" in lab_check:
        tests.append((float(median_score), float(lab_check["max_median_score"]), "median never-seen score", "above"))
    if "min_mean_confidence" in lab_check:
        tests.append((float(mean_confidence), float(lab_check["min_mean_confidence"]), "mean confidence", "below"))
    for value, limit, statistic, relation in tests:
        if (value > limit) if relation == "above" else (value < limit):
            digits = 2
            while round(value, digits) == round(limit, digits) and digits < 6:  # never "0.21, below 0.21"
                digits += 1
            return f"these {n} {what} look unlike the labs this model was trained on ({statistic} {value:.{digits}f}, {relation} {limit:.{digits}f}): {lab_advice(lab_check)}"
    return None


def tally_lab_warning(n: int, confidence_sum: float, scores: Sequence[float], lab_check: dict, what: str = "images", no_nucleus: int = 0) -> str | None:
    """:func:`lab_warning` over a run's tally of ``n`` cells: the sum of their top probabilities, their never-seen
    scores (the median is read only when every cell has one), and how many hold no whole stained nucleus."""
    if not n:
        return None
    median = statistics.median(scores) if len(scores) == n else None
    return lab_warning(confidence_sum / n, n, lab_check, median, what, no_nucleus)


def has_no_nucleus(other_reason: str) -> bool:
    """Whether a cell's ``other_reason`` says the nucleus check sent it to ``other``."""
    return OTHER_BY_NUCLEUS in (other_reason or "")


@dataclass
class LabTally:
    """What the lab check reads of a set of cells, added one at a time: how many, the sum of their top (calibrated)
    probabilities, and their never-seen scores."""

    n: int = 0
    confidence_sum: float = 0.0
    scores: array = field(default_factory=lambda: array("d"))
    no_nucleus: int = 0

    def add(self, top: float, score: float | None, no_nucleus: bool = False) -> None:
        self.n += 1
        self.confidence_sum += top
        self.no_nucleus += bool(no_nucleus)
        if score is not None:
            self.scores.append(score)

    def warning(self, lab_check: dict, what: str = "images") -> str | None:
        """:func:`lab_warning` over the cells added."""
        return tally_lab_warning(self.n, self.confidence_sum, self.scores, lab_check, what, self.no_nucleus)


def slide_folder(path: str | os.PathLike, labelled: bool) -> str:
    """The folder that holds an image's slide: its own folder, or the one above when its folder is named after a class
    (``labelled``: ``slides/B/lymphocyte/x.jpg`` is slide B's). ``"."`` for an image given with no folder."""
    folder = os.path.dirname(os.fspath(path))
    if labelled:
        folder = os.path.dirname(folder)
    return folder or "."


@dataclass
class LabChecks:
    """What the lab check reads of a run's cells, per slide folder (:func:`slide_folder`); the run's own tally is their
    sum. Checked per folder as well as over the run: a slide of another lab among a day's slides of known ones is
    caught though the day as a whole is not, and named."""

    tallies: dict[str, LabTally] = field(default_factory=dict)

    def add(self, path: str | os.PathLike, labelled: bool, top: float, score: float | None, no_nucleus: bool = False) -> None:
        self.tallies.setdefault(slide_folder(path, labelled), LabTally()).add(top, score, no_nucleus)

    @property
    def run(self) -> LabTally:
        """The whole run's tally: every folder's together."""
        folders = self.tallies.values()
        return LabTally(
            sum(t.n for t in folders),
            sum(t.confidence_sum for t in folders),
            array("d", (v for t in folders for v in t.scores)),
            sum(t.no_nucleus for t in folders),
        )

    def warnings(self, lab_check: dict, what: str = "images") -> list[dict]:
        """``{"folder", "n", "lab_warning"}`` for each folder whose cells the check finds unlike the training labs, in
        the order first seen; none for a run of one folder (the run's own check says it)."""
        if len(self.tallies) < 2:
            return []
        found = ((folder, t, t.warning(lab_check, what)) for folder, t in self.tallies.items())
        return [{"folder": folder, "n": t.n, "lab_warning": line} for folder, t, line in found if line]


# ----------------------------------------------------------------------------------------------
# Predictions and triage


@dataclass
class Prediction:
    """The result of classifying one image."""

    path: str
    label: str
    confidence: float
    top3: list[tuple[str, float]]
    probs: np.ndarray = field(repr=False)
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    thumbnail: bytes | None = field(default=None, repr=False)
    """A small JPEG of the image, when ``classify_many(thumbnails=...)`` asked for one (the review page)."""
    sha256: str = ""
    """With a thumbnail: the file's :func:`firmware_host.report.short_sha`, which the review page's corrections carry."""
    other_score: float | None = None
    """The never-seen score (:mod:`firmware_host.otherscore`); None for a model without one."""
    nucleus_offset: float = math.nan
    """Degrees of hue between the crop's darkest pixels and a nucleus (:func:`firmware_host.preprocess.prepare_cell`);
    above :data:`~firmware_host.preprocess.NO_NUCLEUS_HUE` the crop holds no stained nucleus and is labelled
    ``other``. NaN: not measured (an array given already preprocessed) or grey."""
    other_reason: str = ""
    """Why the label is ``other`` (:data:`OTHER_BY_CLASS`, :data:`OTHER_BY_SCORE`, :data:`OTHER_BY_NUCLEUS`); empty otherwise."""

    def flag(self, threshold: float = DEFAULT_THRESHOLD) -> str:
        """The flag ``classify`` gives this cell at ``threshold`` (:func:`triage`): ``"review: haematologist"``,
        ``"uncertain - refer"``, ``"not one of the five - refer"``, or ``""``."""
        return triage(self, threshold)

    def other_fields(self) -> dict:
        """What decided ``other``, as JSON gives it (``other_score``, ``nucleus_offset``, ``other_reason``)."""
        return {
            "other_score": None if self.other_score is None else round(float(self.other_score), 6),
            "nucleus_offset": None if math.isnan(self.nucleus_offset) else round(float(self.nucleus_offset), 3),
            "other_reason": self.other_reason,
        }

    def to_dict(self, classes: Sequence[str]) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "confidence": float(self.confidence),
            "top3": [{"label": lab, "prob": float(p)} for lab, p in self.top3],
            "probs": {c: float(p) for c, p in zip(classes, self.probs)},
            **self.other_fields(),
            "preprocess_ms": round(float(self.preprocess_ms), 4),
            "inference_ms": round(float(self.inference_ms), 4),
        }


def first_choice(prediction: Prediction) -> str:
    """The class the network gave most probability (``top3``'s first), whatever the label says."""
    return prediction.top3[0][0] if prediction.top3 else prediction.label


def triage(prediction: Prediction, threshold: float = DEFAULT_THRESHOLD) -> str:
    """The flag for one prediction.

    * predicted class in :data:`REVIEW_CLASSES`: :data:`FLAG_REVIEW`, however sure the model is (a possible blast
      goes to the haematologist, and the count of those flags is the count of such cells); so is a cell labelled
      :data:`OTHER_CLASS` by its never-seen score or the nucleus check whose most probable class is one of them (the
      network took it for a blast: 9 of Kaggle's 800 myeloblasts, up to p 1.00, were referred as `other` alone), but
      for one with no whole stained nucleus whose first choice is a nucleated red cell (:data:`NOT_WHITE_CELLS`): a red
      cell, a blank picture (it filled the haematologist's queue; a clinical review);
    * labelled :data:`OTHER_CLASS` (its most probable class, its never-seen score passed the
      model's threshold, or it holds no stained nucleus: :meth:`Classifier.prediction`): :data:`FLAG_OTHER`
      (a person decides what it is);
    * confidence below ``threshold``, or an image with no colour (:data:`~firmware_host.preprocess.NO_COLOUR`: edgecell
      reads the stain's colours): :data:`FLAG_UNCERTAIN` (a person looks);
    * otherwise ``""`` (no flag).
    """
    threshold = check_number("threshold", threshold, 0, 1)  # nan passed every comparison: never uncertain (a review)
    if prediction.label == OTHER_CLASS:
        first = first_choice(prediction)
        red_cell = first in NOT_WHITE_CELLS and has_no_nucleus(prediction.other_reason)  # a nucleated red cell has a nucleus
        return FLAG_REVIEW if first in REVIEW_CLASSES and not red_cell else FLAG_OTHER
    if prediction.label in REVIEW_CLASSES:
        return FLAG_REVIEW
    if prediction.confidence < threshold or prediction.nucleus_offset == NO_COLOUR:
        return FLAG_UNCERTAIN
    return ""


def make_prediction(
    path: str | os.PathLike,
    probs: np.ndarray,
    classes: Sequence[str],
    other_threshold: float | None = None,
    nucleus_max: float | None = None,
    preprocess_ms: float = 0.0,
    inference_ms: float = 0.0,
    other_score: float | None = None,
    nucleus_offset: float = math.nan,
) -> Prediction:
    """A :class:`Prediction` from one image's calibrated probabilities over ``classes``: the most probable class, or
    :data:`OTHER_CLASS` when ``other_score`` is above ``other_threshold`` or ``nucleus_offset`` above ``nucleus_max``
    (:func:`firmware_host.otherscore.other_tests`, whose passing tests give ``other_reason``); the confidence is the
    probability of the label. What :meth:`Classifier.prediction` gives, and ``evaluate``'s per-image records."""
    order = np.argsort(-probs, kind="stable")
    classes = list(classes)
    top = [(classes[k], float(probs[k])) for k in order[:3]]
    score = None if other_score is None else np.float64(other_score)
    tests = other_tests(probs, score, other_threshold, classes, OTHER_CLASS, np.float64(nucleus_offset), nucleus_max)
    why = [text for key, text in OTHER_REASONS.items() if tests[key]]
    label = OTHER_CLASS if why else classes[int(order[0])]
    return Prediction(
        path=os.fspath(path),
        label=label,
        confidence=float(probs[classes.index(label)]),
        top3=top,
        probs=probs,
        preprocess_ms=preprocess_ms,
        inference_ms=inference_ms,
        other_score=other_score,
        nucleus_offset=float(nucleus_offset),
        other_reason="; ".join(why),
    )


# ----------------------------------------------------------------------------------------------
# Numeric helpers (pure functions; tested on their own)


@dataclass(frozen=True)
class TensorQuant:
    """dtype and affine quantisation of a model tensor, as the interpreter reports them."""

    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)

    def to_dict(self) -> dict:
        return {"dtype": np.dtype(self.dtype).name, "scale": float(self.scale), "zero_point": int(self.zero_point)}

    def to_metadata(self) -> Quantization:
        """The sidecar's record of it (:class:`firmware_host.metadata.Quantization`)."""
        return Quantization(float(self.scale), int(self.zero_point))


def input_lookup_table(q: TensorQuant) -> np.ndarray:
    """The quantised value of each pixel value 0-255: ``clip(round(x / scale) + zero_point)``."""
    info = np.iinfo(q.dtype)
    x = np.arange(256, dtype=np.float64)
    return np.clip(np.round(x / q.scale) + q.zero_point, info.min, info.max).astype(q.dtype)


def quantize_input(image: np.ndarray, q: TensorQuant) -> np.ndarray:
    """Quantise a uint8 image (values 0-255) for an int8/uint8 input; float inputs pass through as float."""
    if q.quantized:
        return input_lookup_table(q)[image]
    return image.astype(q.dtype)


def dequantize_output(raw: np.ndarray, q: TensorQuant) -> np.ndarray:
    """``scale * (q - zero_point)`` for an integer output, float64 copy for a float one."""
    if q.quantized:
        return (raw.astype(np.float64) - q.zero_point) * q.scale
    return raw.astype(np.float64)


def normalize(p: np.ndarray) -> np.ndarray:
    """Clip at 0 and rescale each row (last axis) to sum 1 (int8 softmax outputs are off by a few 1/256).

    A row that sums to 0 or is not finite becomes uniform.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(axis=-1, keepdims=True)
    bad = ~np.isfinite(s) | (s <= 0)
    return np.where(bad, 1.0 / p.shape[-1], p / np.where(bad, 1.0, s))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` along the last axis: softmax outputs recalibrated with temperature ``T``.

    One image's probabilities or a batch of them; the one place the temperature is applied.
    """
    if temperature == 1.0:
        return normalize(p)
    z = np.log(np.clip(np.asarray(p, dtype=np.float64), _EPS, None)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def latency_summary(values_ms: Sequence[float]) -> dict:
    """min/mean/p50/p95/p99/max of a list of latencies in ms (None when empty)."""
    if not len(values_ms):
        return {"n": 0, "min": None, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


# ----------------------------------------------------------------------------------------------
# Model selection


def resolve_model(path: str | os.PathLike, precision: Precision | str | None = None) -> Path:
    """The ``.tflite`` file to use for ``path`` (a file, or an export folder).

    In a folder, ``precision`` picks ``model_<precision>.tflite``; without it the first present of
    :data:`PRECISION_PREFERENCE` is used.
    """
    p = Path(path)
    want = Precision.of(precision) if precision is not None else None
    if p.is_dir():
        if want is not None:
            f = p / want.filename
            if not f.is_file():
                present = ", ".join(sorted(x.name for x in p.glob("model_*.tflite"))) or "none"
                raise ModelError(f"no {want.filename} in this folder (present: {present})", p)
            return f
        for prec in PRECISION_PREFERENCE:
            f = p / prec.filename
            if f.is_file():
                return f
        if (p / KERAS_FILE).is_file():  # a run folder: its models are in its export folder, once converted
            export = p / EXPORT_DIR
            if any(export.glob("model_*.tflite")):
                raise ModelError(f"is a run folder; its converted models are in {export}: give that folder", p)
            raise ModelError(f"is a run folder with no converted model yet; run `edgecell convert {p} --int8`, then give {export}", p)
        raise ModelError(
            f"no model in this folder (expected one of {', '.join(x.filename for x in PRECISION_PREFERENCE)}; run `edgecell convert`)",
            p,
        )
    if not p.exists():
        raise ModelError("no such model file or folder", p)
    if p.suffix.lower() == ".keras":
        raise ModelError(f"is a Keras model; the runtime runs the .tflite models `edgecell convert` writes ({p.parent / EXPORT_DIR})", p)
    if model := model_of_sidecar(p):
        raise ModelError(f"is the metadata of a model; give the model ({model.name}) or its folder", p)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise ModelError("is an image, not a model; give a .tflite file or an export folder", p)
    return p


def models_in(path: str | os.PathLike) -> list[Path]:
    """Every model of a folder in :data:`PRECISION_PREFERENCE` order, or ``[path]`` for a model file (a Keras model, a
    sidecar, an image or a missing path: :func:`resolve_model`'s one-line error)."""
    p = Path(path)
    if not p.is_dir():
        return [resolve_model(p)]
    found = [p / prec.filename for prec in PRECISION_PREFERENCE if (p / prec.filename).is_file()]
    if not found:
        resolve_model(p)  # raises the "no model in this folder" error
    return found


# ----------------------------------------------------------------------------------------------
# The classifier


def split_outputs(outputs: Sequence[dict], n_classes: int, path: str | os.PathLike = "<model>") -> tuple[dict, dict | None]:
    """(probabilities output, features output or None) of a model's output details.

    One output: the probabilities. Two: the one with ``n_classes`` values is the probabilities, the
    other the pooled features of the never-seen score (:mod:`firmware_host.otherscore`).
    """
    if len(outputs) == 1:
        return outputs[0], None
    sizes = [int(np.prod(o["shape"])) for o in outputs]
    probs = [k for k, n in enumerate(sizes) if n == n_classes]
    if len(probs) != 1:
        raise ModelError(f"model has outputs of {' and '.join(map(str, sizes))} values; expected one of {n_classes} (the classes) and the features", path)
    return outputs[probs[0]], outputs[1 - probs[0]]


def tensor_quant(detail: dict) -> TensorQuant:
    """The :class:`TensorQuant` of an interpreter tensor detail (``get_input_details()[0]``)."""
    scale, zero = detail.get("quantization", (0.0, 0))
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    zeros = np.asarray(params.get("zero_points", []))
    if scales.size == 1:  # per-tensor: the same numbers, taken from the newer field when present
        scale, zero = float(scales[0]), int(zeros[0]) if zeros.size else int(zero)
    return TensorQuant(dtype=np.dtype(detail["dtype"]), scale=float(scale), zero_point=int(zero))


_CLASSIFIERS: weakref.WeakSet = weakref.WeakSet()
"""Every :class:`Classifier` of this process, for :func:`_fresh_locks`."""


def _fresh_locks() -> None:
    """In a child process made by ``fork``: a lock another thread of the parent held at the fork stays held, with no
    thread to release it (the child hung on its first image); each classifier gets a new one."""
    for clf in list(_CLASSIFIERS):
        clf._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks)


class Classifier:
    """A loaded, verified model. One instance may be shared by threads: its interpreter runs one image at a time (a
    lock; LiteRT raised, or answered with another image's outputs, when two threads invoked it at once), so threads
    gain only on decoding and preprocessing; for parallel inference give each thread (or process) its own
    :meth:`load`."""

    def __init__(self, path: Path, meta: ModelMetadata, interpreter: Any, backend: Backend, threads: int, size_bytes: int):
        self._lock = threading.RLock()  # the interpreter and the input buffer are one per instance
        _CLASSIFIERS.add(self)
        self.path = path
        self.meta = meta
        self.interpreter = interpreter
        self.backend = backend
        self.threads = threads
        self.size_bytes = size_bytes
        self.fitted_other_threshold = (meta.other_score or {}).get("threshold")
        """The never-seen threshold fitted at training (the sidecar's), whatever ``other_threshold`` replaced it with
        (:meth:`load` sets it from the sidecar before any replacement; built from metadata directly, it is that metadata's)."""
        self._check_and_prepare()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        precision: Precision | str | None = None,
        backend: str | None = None,
        allow_unverified: bool = False,
        other_threshold: float | None = None,
    ) -> Classifier:
        """Load a ``.tflite`` file or the preferred (or ``precision``) model of an export folder.

        Raises :class:`ModelError` for a missing/broken sidecar, a sidecar whose preprocessing
        (version, resize filter, ...) is not this runtime's, a SHA-256 mismatch (changed or
        truncated file), a file the interpreter cannot read, or shapes that do not match the
        metadata; :class:`RuntimeMissingError` when no interpreter is installed. A model whose
        sidecar records a failed parity check is refused unless ``allow_unverified``; a file over
        :data:`MAX_MODEL_BYTES` is refused before it is read. ``other_threshold`` replaces the
        never-seen score's threshold of the sidecar (a model without a score is refused with it).
        """
        if threads is not None:
            threads = int(check_number("threads", threads, 1, MAX_THREADS, whole=True))
        if other_threshold is not None:
            other_threshold = check_number("other_threshold", other_threshold, 0.0)
        precision = Precision.of(precision) if precision is not None else None
        model_path = resolve_model(path, precision)
        meta = read_metadata(model_path)
        fitted = (meta.other_score or {}).get("threshold")
        if other_threshold is not None:
            if not meta.other_score:
                raise ModelError("has no never-seen score, so an other-threshold cannot apply (convert a run trained with this edgecell version)", model_path)
            meta.other_score = {**meta.other_score, "threshold": float(other_threshold)}
        why = meta.unverified
        if why and not allow_unverified:
            other = model_path.with_name(Precision.float32.filename)  # its folder's float32 model, checked against Keras too
            instead = ""
            if other != model_path and other.is_file():
                with contextlib.suppress(ModelError):
                    if read_metadata(other).unverified is None:
                        instead = f", use the float32 model beside it (--model {other})"
            raise ModelError(f"{why}; not used (convert again{instead}, or pass --allow-unverified to use it anyway)", model_path)
        check_preprocessing(meta, model_path)  # other pixels than in training: silently wrong answers
        if precision is not None and meta.precision != precision:
            article = "an" if meta.precision is Precision.int8 else "a"
            raise ModelError(f"is {article} {meta.precision.value} model but {precision.value} was asked for", model_path)
        try:  # a regular file, checked before reading: a 20 GiB file, a pipe or a device would be read for ever
            data = read_regular(model_path, MAX_MODEL_BYTES, ModelError, ".tflite file")
        except OSError as exc:
            raise ModelError(f"cannot read model ({os_reason(exc)})", model_path) from None
        if not data:
            raise ModelError("model file is empty (0 bytes)", model_path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.sha256.lower():
            raise ModelError(
                f"SHA-256 does not match its metadata ({len(data):,} bytes, sha256 {digest[:12]}..., expected {meta.sha256[:12]}...): "
                "the file is truncated or was changed after export; copy the export folder again",
                model_path,
            )
        threads = int(threads) if threads else (os.cpu_count() or 1)
        # The verified bytes themselves go to the interpreter: nothing can change between check and use.
        interpreter, chosen = load_interpreter(model_content=data, num_threads=threads, name=model_path, backend=backend)
        obj = cls(model_path, meta, interpreter, chosen, threads, len(data))
        obj.fitted_other_threshold = fitted
        obj._model_bytes = data  # keep the buffer alive as long as the interpreter
        return obj

    def _check_and_prepare(self) -> None:
        it = self.interpreter
        ins, outs = it.get_input_details(), it.get_output_details()
        if len(ins) != 1 or len(outs) not in (1, 2):
            raise ModelError(f"model has {len(ins)} inputs and {len(outs)} outputs, expected 1 and 1 (or 2 with the never-seen score's features)", self.path)
        i = ins[0]
        o, feats = split_outputs(outs, len(self.meta.classes), self.path)
        s = self.meta.input_size
        in_shape = [int(x) for x in i["shape"]]
        if in_shape != [1, s, s, 3]:
            raise ModelError(f"model input shape is {in_shape}, but its metadata says [1, {s}, {s}, 3]", self.path)
        out_shape = [int(x) for x in o["shape"]]
        n = len(self.meta.classes)
        if int(np.prod(out_shape)) != n or out_shape[-1] != n:
            raise ModelError(f"model output shape is {out_shape}, but its metadata lists {n} classes", self.path)
        self.input_quant = tensor_quant(i)
        self.output_quant = tensor_quant(o)
        self.other_score = self._other_score(feats)
        self.features_quant = tensor_quant(feats) if self.other_score else None
        self._feat_index = feats["index"] if self.other_score else None
        for role, q in (("input", self.input_quant), ("output", self.output_quant), ("features", self.features_quant)):
            if q is None:
                continue
            if q.dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.uint8)):
                raise ModelError(f"model {role} type is {q.dtype.name}; expected float32, int8 or uint8", self.path)
            if q.quantized and not (q.scale > 0 and np.isfinite(q.scale)):
                raise ModelError(f"model {role} is {q.dtype.name} but has no quantisation scale", self.path)
        self._in_index = i["index"]
        self._out_index = o["index"]
        self._lut = input_lookup_table(self.input_quant) if self.input_quant.quantized else None
        self._buf = np.zeros([1, s, s, 3], dtype=self.input_quant.dtype)
        # The usual int8 input (scale 1, zero point -128) is the pixel with its top bit flipped:
        # one XOR instead of a table lookup (about 15 times faster; same bytes, tested).
        self._xor128 = self._lut is not None and np.array_equal(self._lut.view(np.uint8), np.arange(256, dtype=np.uint8) ^ 0x80)

    def _other_score(self, feats: dict | None) -> OtherScore | None:
        """The sidecar's never-seen score, checked against the model's features output (None: argmax only)."""
        try:
            score = OtherScore.from_dict(self.meta.other_score)
        except ValueError as exc:  # the sidecar was checked on reading; a caller's meta may not have been
            raise ModelError(f"metadata has a bad field: other_score {exc}", self.path) from None
        if score is None:
            return None
        if feats is None:
            raise ModelError("its metadata has a never-seen score (other_score) but the model has no features output; convert it again", self.path)
        dim = int(np.prod(feats["shape"]))
        if dim != score.dim:
            raise ModelError(f"model's features output has {dim} values, but its never-seen score expects {score.dim}", self.path)
        return score

    # -- properties ----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @property
    def precision(self) -> Precision:
        return self.meta.precision

    @property
    def views(self) -> int:
        """How many mirrored views of each image the model is run on (:mod:`firmware_host.mirrors`)."""
        return self.meta.views

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def other_threshold(self) -> float | None:
        """The never-seen score's threshold (None: the model has no score; labels by argmax alone)."""
        return self.other_score.threshold if self.other_score else None

    def lab_warning(self, predictions: Iterable[Prediction], what: str = "images") -> str | None:
        """The model's slide-level lab check (:func:`lab_warning`) over ``predictions`` of one set of cells (a list, or
        any iterable, read once): one line when they look unlike the labs the model was trained on, else None (also for
        fewer than the check's set)."""
        predictions = list(predictions)  # a generator would be spent by the first pass
        scores = [p.other_score for p in predictions if p.other_score is not None]
        top = sum(float(np.max(p.probs)) for p in predictions)
        no_nucleus = sum(has_no_nucleus(p.other_reason) for p in predictions)
        return tally_lab_warning(len(predictions), top, scores, self.meta.lab_check, what, no_nucleus)

    def info(self) -> dict:
        """What a report says about the model and the runtime."""
        return {
            "path": str(self.path),
            "precision": self.precision.value,
            "sha256": self.meta.sha256,
            "size_bytes": self.size_bytes,
            "classes": self.classes,
            "input_size": self.input_size,
            "temperature": self.temperature,
            "views": self.views,
            # convert's parity check: its verdict, the int8 accuracy lost against Keras and the loss it allowed
            "parity": {k: self.meta.verification[k] for k in PARITY_FIELDS if k in self.meta.verification} or None,
            "other_score": {
                "kind": "mahalanobis",
                "threshold": self.other_score.threshold,
                "fitted_threshold": self.fitted_other_threshold,
                # the share of the validation split's five-type cells the fitted threshold sends to other
                "share": self.other_score.share if self.other_score.threshold == self.fitted_other_threshold else None,
                "nucleus_max_offset": self.other_score.nucleus_max,
            }
            if self.other_score
            else None,
            "input_quantization": self.input_quant.to_dict(),
            "output_quantization": self.output_quant.to_dict(),
            "interpreter": self.backend.name,
            "interpreter_version": self.backend.version,
            "threads": self.threads,
        }

    # -- inference -----------------------------------------------------------------------------

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        s = self.input_size
        if image.shape != (s, s, 3):
            raise ImageError(f"array shape {image.shape}, expected {(s, s, 3)} (use firmware_host.preprocess.load_image)")
        if image.dtype != np.uint8:
            raise ImageError(f"array dtype {image.dtype}, expected uint8 values 0-255")
        return image

    def invoke_raw(self, model_input: np.ndarray) -> np.ndarray:
        """Run the model on an already quantised ``(1, s, s, 3)`` input; return the raw output row."""
        with self._lock:
            self.interpreter.set_tensor(self._in_index, model_input)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out_index).reshape(-1)

    def predict_uncalibrated(self, image: np.ndarray) -> np.ndarray:
        """The model's own softmax for one preprocessed uint8 image, before the temperature.

        Quantises the image for an int8/uint8 input, invokes, dequantises and renormalises.
        (:meth:`invoke_raw` takes an already quantised batch; this takes the image.)
        """
        return self.predict_scored(image)[0]

    def _set_input(self, image: np.ndarray) -> None:
        """Quantise a uint8 image (or a mirrored view of one) into the input buffer."""
        if self._xor128:
            np.bitwise_xor(image, 0x80, out=self._buf.view(np.uint8)[0])
        elif self._lut is not None:
            np.take(self._lut, image, out=self._buf[0], mode="clip")  # "clip": no buffering (indices are 0-255)
        else:
            self._buf[0] = image

    def predict_scored(self, image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """:meth:`predict_uncalibrated` and the never-seen score (None for a model without one).

        A model with :attr:`views` > 1 is run once per mirrored view (:mod:`firmware_host.mirrors`), one
        image at a time; its dequantised outputs and features are averaged.
        """
        image = self._check_image(image)
        out = feats = 0.0
        for k in range(self.views):
            with self._lock:  # the buffer, the invocation and the features it leaves, for one image at a time
                self._set_input(view(image, k))
                out = out + dequantize_output(self.invoke_raw(self._buf), self.output_quant)
                if self.other_score is not None:
                    feats = feats + dequantize_output(self.interpreter.get_tensor(self._feat_index).reshape(-1), self.features_quant)
        probs = normalize(out / self.views)
        if self.other_score is None:
            return probs, None
        return probs, float(self.other_score.scores(feats / self.views))

    def predict_batch_scored(self, images: Sequence[np.ndarray], on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict_batch_uncalibrated` and the never-seen scores (None for a model without a score)."""
        out = np.zeros((len(images), len(self.classes)), np.float64)
        scores = np.full(len(images), np.nan)
        for k, img in enumerate(images):
            out[k], s = self.predict_scored(img)
            scores[k] = np.nan if s is None else s
            if on_progress:
                on_progress(k + 1)
        return out, (scores if self.other_score else None)

    def predict_batch_uncalibrated(self, images: Sequence[np.ndarray], on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """:meth:`predict_uncalibrated` of each image, as an ``(N, classes)`` float64 array.

        What the conversion's parity check and ``edgecell evaluate`` compare with the Keras
        softmax (the temperature is left out so calibration can be reported before and after).
        ``on_progress(done)`` is called after each image.
        """
        out = np.zeros((len(images), len(self.classes)), np.float64)
        for k, img in enumerate(images):
            out[k] = self.predict_uncalibrated(img)
            if on_progress:
                on_progress(k + 1)
        return out

    def predict_array(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (float64, sum 1, in :attr:`classes` order) for one preprocessed uint8 image."""
        return apply_temperature(self.predict_uncalibrated(image), self.temperature)

    def predict_array_scored(self, image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """:meth:`predict_array` and the never-seen score (None for a model without one)."""
        probs, score = self.predict_scored(image)
        return apply_temperature(probs, self.temperature), score

    def prediction(
        self,
        path: str | os.PathLike,
        probs: np.ndarray,
        preprocess_ms: float = 0.0,
        inference_ms: float = 0.0,
        other_score: float | None = None,
        nucleus_offset: float = math.nan,
    ) -> Prediction:
        """Wrap probabilities into a :class:`Prediction` (label, confidence, top-3): :func:`make_prediction` with this
        model's classes, never-seen threshold and nucleus check."""
        return make_prediction(
            path,
            probs,
            self.meta.classes,
            self.other_threshold,
            self.other_score.nucleus_max if self.other_score else None,
            preprocess_ms,
            inference_ms,
            other_score,
            nucleus_offset,
        )

    def classify_array(self, path: str | os.PathLike, image: np.ndarray, preprocess_ms: float = 0.0, nucleus_offset: float = math.nan) -> Prediction:
        """Classify a preprocessed image (``nucleus_offset``: what :func:`~firmware_host.preprocess.prepare_cell` gave with it)."""
        t0 = time.perf_counter()
        probs, score = self.predict_array_scored(image)
        return self.prediction(path, probs, preprocess_ms, (time.perf_counter() - t0) * 1000.0, score, nucleus_offset)

    def classify_rgb(self, path: str | os.PathLike, rgb: np.ndarray) -> Prediction:
        """Classify an RGB uint8 array of any size ``(H, W, 3)``, e.g. a cell cut from a field of view.

        It goes through :func:`firmware_host.preprocess.prepare_cell` (the step after decoding, timed as
        ``preprocess_ms``), so it gets the preprocessing of a single-cell image file; ``path``
        only names it in the result.
        """
        rgb = rgb_array(rgb, path, "Classifier.classify takes a PIL image of any mode")
        t0 = time.perf_counter()
        image, offset = prepare_cell(rgb, self.input_size)
        return self.classify_array(path, image, (time.perf_counter() - t0) * 1000.0, offset)

    def classify(self, image: str | os.PathLike | np.ndarray | Any, name: str | os.PathLike | None = None) -> Prediction:
        """Classify one cell, whatever holds it: an image file's path, a PIL image of any mode, or an RGB uint8 array
        ``(H, W, 3)`` of any size (a cell cut from a larger picture), or an image file's contents (``bytes`` holding a
        NUL byte, as every JPEG, PNG, TIFF and BMP does and no path can; ``bytearray``, ``memoryview``). ``name`` names
        it in the result (default: the path, else ``"<image>"``). An :class:`ImageError` for anything that is not a
        usable image, as for a file.
        A JPEG that ``Image.open`` gave and nothing has decoded yet is read as its file is, at a reduced size (DCT
        scaling, as in training); any other PIL image or array is used at its full size, which can change the answer for
        a few cells in a hundred, so give the path of a file, or the image as opened, when you have it."""
        name = None if name is None else os.fsdecode(name)  # a Path names it as its text, so the result stays JSON
        if isinstance(image, (bytearray, memoryview)) or (isinstance(image, bytes) and b"\0" in image):
            return self._classify_encoded(name or "<image>", bytes(image))  # a file's contents, decoded as the file would be
        if isinstance(image, (str, bytes)) and not image:  # "no such file" of an empty name named nothing (a review)
            raise ImageError("an empty path or empty bytes: give an image file's path or its contents", name or "<image>")
        if isinstance(image, (str, bytes, os.PathLike)):
            pred = self.classify_file(image)
            return dataclasses.replace(pred, path=name) if name else pred
        name = name or "<image>"
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
                raise ImageError(f"array shape {image.shape} has its channels first; give (H, W, 3), e.g. array.transpose(1, 2, 0)", name)
            if image.ndim == 3 and min(image.shape[:2]) < MIN_SIDE:
                raise ImageError(f"array is {image.shape[1]}x{image.shape[0]} pixels, too small to hold a cell (minimum {MIN_SIDE}x{MIN_SIDE})", name)
            if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.size:
                check_exposure(image, name, "array")  # as for a file (classify_rgb itself takes a field's dark corner too)
            return self.classify_rgb(name, image)
        from PIL import Image

        if isinstance(image, Image.Image):
            held = unread_jpeg(image)  # a JPEG opened but not decoded: read as its file is, so the same cell gets the same answer
            return self.classify_rgb(name, image_rgb(image, name)) if held is None else self._classify_encoded(name, held)
        raise ImageError(f"cannot classify a {type(image).__name__}: give an image file's path, a PIL image or an RGB uint8 array", name)

    def classify_file(self, path: str | os.PathLike) -> Prediction:
        """Load, preprocess and classify one image file (:class:`ImageError` if it is not usable)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise ImageError(f"classify_file takes a file's path, not a {type(path).__name__} (Classifier.classify takes images and arrays)", "<image>")
        path = os.fsdecode(path)
        return self._classify_encoded(path, path)

    def _classify_encoded(self, name: str, source: bytes | str) -> Prediction:
        """Decode, preprocess (timed as ``preprocess_ms``) and classify an image file: ``source`` its contents or its
        path; ``name`` names it in the result."""
        t0 = time.perf_counter()
        cell, offset = decode_cell(source, self.input_size, name) if isinstance(source, bytes) else load_cell(source, self.input_size)
        return self.classify_array(name, cell, (time.perf_counter() - t0) * 1000.0, offset)

    def classify_many(
        self, paths: Iterable[str | os.PathLike], workers: int | None = None, processes: bool | None = False, thumbnails: int = 0
    ) -> Iterator[tuple[str, Prediction | ImageError]]:
        """Classify many files, in input order, with decoding and inference spread over the cores.

        Args:
            workers: parallel workers (default: the cores, at most 4).
            processes: False (the default): decoding runs ahead in threads while this thread runs
                this classifier's interpreter (the interpreter releases the GIL while invoking).
                True: each of ``workers`` processes decodes *and* classifies its share of the
                files with its own single-threaded copy of this model (the same verified bytes),
                so Pillow's GIL-held work never waits on inference and nothing crosses between
                processes but file names and probabilities. None: processes for a list of at least
                :data:`firmware_host.decode.PROCESS_MIN_FILES` files and more than one worker, called
                where workers may import the main module (:func:`firmware_host.decode.main_is_guarded`).
                Where processes cannot start, threads are used.
            thumbnails: if > 0, each Prediction's ``thumbnail`` is a JPEG of the image as given, at most this many
                pixels wide (:func:`firmware_host.report.file_thumbnail`: a second, draft-size decode, about 1 ms),
                made in the worker that classified it.

        Yields ``(path, Prediction)`` or ``(path, ImageError)`` per file, in input order.
        """
        workers = workers or default_workers()
        pool = None
        data = getattr(self, "_model_bytes", None)  # the verified bytes (a Classifier from load())
        if data is not None and use_processes(paths, workers, processes):
            pool = _process_pool(workers, _init_worker_classifier, (self.path, self.meta, data, self.backend.name))
        if pool is None:
            for path, image, pre_ms, offset in decode_many(paths, self.input_size, workers, processes=False):
                if isinstance(image, ImageError):
                    yield path, image
                    continue
                pred = self.classify_array(path, image, pre_ms, offset)
                if thumbnails:
                    pred.thumbnail, pred.sha256 = _thumbnail(path, image, thumbnails)
                yield path, pred
            return
        local = functools.partial(_classify_paths, self, thumbnails=thumbnails)
        remote = functools.partial(_classify_in_worker, thumbnails=thumbnails) if thumbnails else _classify_in_worker
        for chunk, results in ordered_chunks(paths, pool, remote, local, workers):
            for path, (probs, pre_ms, inf_ms, reason, score, offset, *thumb) in zip(chunk, results):
                if reason is not None:
                    yield path, ImageError(reason, path)
                else:
                    pred = self.prediction(path, probs, pre_ms, inf_ms, score, offset)
                    pred.thumbnail, pred.sha256 = thumb[0] if thumb else (None, "")
                    yield path, pred


# ----------------------------------------------------------------------------------------------
# Worker processes of classify_many(processes=True)

_WORKER_CLASSIFIER: Classifier | None = None


def _init_worker_classifier(path: Path, meta: ModelMetadata, data: bytes, backend: str) -> None:
    """In a worker process: a single-threaded interpreter over the parent's verified model bytes."""
    global _WORKER_CLASSIFIER
    interpreter, chosen = load_interpreter(model_content=data, num_threads=1, name=path, backend=backend)
    clf = Classifier(path, meta, interpreter, chosen, 1, len(data))
    clf._model_bytes = data
    _WORKER_CLASSIFIER = clf


def _classify_paths(clf: Classifier, paths: list[str], thumbnails: int = 0) -> list[tuple]:
    """Decode and classify: ``(probabilities, decode ms, inference ms, None, score, nucleus offset)`` or
    ``(None, 0, 0, reason, None, nan)`` per path.

    With ``thumbnails`` > 0 each successful tuple has a seventh item, the JPEG thumbnail of the input and its file's
    short SHA-256 (:func:`_thumbnail`).
    """
    out = []
    for p in paths:
        image, pre_ms, reason, offset = _decode_one(p, clf.input_size)
        if reason is not None:
            out.append((None, 0.0, 0.0, reason, None, math.nan))
            continue
        t0 = time.perf_counter()
        probs, score = clf.predict_array_scored(image)
        item = (probs, pre_ms, (time.perf_counter() - t0) * 1000.0, None, score, offset)
        out.append(item + (_thumbnail(p, image, thumbnails),) if thumbnails else item)
    return out


def _classify_in_worker(paths: list[str], thumbnails: int = 0) -> list[tuple]:
    return _classify_paths(_WORKER_CLASSIFIER, paths, thumbnails)


def _thumbnail(path: str | os.PathLike, image: np.ndarray, px: int) -> tuple[bytes, str]:
    """The review page's picture of a cell: the image as given (a person judges the cell, not the model's recoloured
    crop), else the model's input; and the file's :func:`~firmware_host.report.short_sha` ("" if it cannot be read)."""
    from firmware_host.report import file_picture, thumbnail_jpeg

    jpeg, digest = file_picture(path, px)
    return jpeg or thumbnail_jpeg(image, px), digest


# ----------------------------------------------------------------------------------------------
# Metrics against folder labels (numpy only: no scikit-learn on the Pi)


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """``cm[i, j]`` = number of images of true class ``classes[i]`` predicted as ``classes[j]``."""
    index = {c: k for k, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    return cm


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Macro-F1 averages over the classes that occur in the labels or the predictions (as
    scikit-learn's ``f1_score(average="macro")`` does); an undefined precision or recall counts as 0.
    """
    cm = confusion_matrix(y_true, y_pred, classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            c: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])} for k, c in enumerate(classes)
        },
    }
