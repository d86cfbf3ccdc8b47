"""What a converted model carries: its metadata sidecar and precision.

Every ``model_<precision>.tflite`` written by ``edgecell convert`` has a ``model_<precision>.json``
beside it. Copying the export folder to a Pi is enough to classify: the sidecar holds the class
names in order, the input size, the preprocessing, the quantisation of input and output, the
calibration temperature and a SHA-256 of the model bytes, which the runtime checks before use.
The runtime also refuses a sidecar whose preprocessing is not its own
(:func:`check_preprocessing`): the model would be fed other pixels than it was trained on.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from firmware_host.errors import ModelError, os_reason, read_regular
from firmware_host.mirrors import check_views

FORMAT = "edgecell-model/1"

# The files of a run folder (``edgecell train``; :mod:`edgecell.runfolder`) and of an export folder (``convert``),
# named here so that the runtime's output checks know them too (:func:`firmware_host.atomic.check_outputs`).
RUN_MARKER = "metadata.json"
"""The file that makes a folder a run folder."""
SPLIT_FILE = "split.csv"
KERAS_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CV_FILE = "cv.json"
ADAPT_FILE = "adapt.json"
"""``edgecell adapt``'s before/after report."""
RUN_RECORDS = (METRICS_FILE, HISTORY_FILE, CV_FILE, ADAPT_FILE)
"""What a run records of its training (beside its model, split and metadata)."""
EXPORT_DIR = "export"
"""Where ``edgecell convert`` writes a run's models."""
PARITY_FILE = "parity.json"
"""``convert``'s parity report, in the export folder."""
CALIBRATION_MANIFEST = "calibration_manifest.csv"
"""The int8 calibration images, in the export folder."""


class Precision(str, enum.Enum):
    """Numeric precision of a TFLite model.

    The value is the command-line flag (``--int8``), the file suffix (``model_int8.tflite``) and
    the ``precision`` field of the metadata.
    """

    float32 = "float32"
    float16 = "float16"
    int8 = "int8"

    @classmethod
    def of(cls, value: Precision | str) -> Precision:
        """``value`` as a precision, in any case (``"INT8"``); a ValueError listing the precisions otherwise."""
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(f"precision must be one of {', '.join(p.value for p in cls)} (got {value!r})") from None

    @property
    def filename(self) -> str:
        """File name of a model of this precision: ``model_<precision>.tflite``."""
        return f"model_{self.value}.tflite"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


@dataclass
class Quantization:
    """Affine quantisation of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


@dataclass
class ModelMetadata:
    """The sidecar JSON of a converted model.

    Fields:
        classes: class names, in the order of the model's outputs.
        input_size: the model takes ``input_size`` x ``input_size`` RGB images, values 0-255.
        precision: float32, float16 or int8.
        sha256: SHA-256 of the .tflite file's bytes.
        file: the .tflite file name (beside this sidecar).
        preprocessing: the description from :func:`firmware_host.preprocess.describe`.
        input_quantization / output_quantization: set for int8 models, else None.
        temperature: divide logits by this before the softmax (1.0 = uncalibrated).
        edgecell_version: version that wrote the model.
        source: where it came from (run directory, Keras model hash, data set fingerprint).
        verification: the parity check's verdict, e.g. ``{"status": "passed", ...}``.
        lab_check: the slide-level check of :func:`firmware_host.runtime.lab_warning`
            (``min_mean_confidence``, ``batch``, and ``max_median_score`` when the model has a never-seen
            score), fitted on the training labs; ``adapted_to`` (``sources``, ``cells``) when ``edgecell adapt``
            fitted the model to a lab, which changes the check's advice; empty: no check.
        other_score: the never-seen score (:class:`firmware_host.otherscore.OtherScore`: class
            means, whitening matrix, ``threshold``, ``share``) read from the model's second output;
            empty: the label is the most probable class (models exported before it).
        views: how many mirrored views of each image the runtime runs the model on and averages
            (:mod:`firmware_host.mirrors`); 1: the image alone (models exported before it).
    """

    classes: list[str]
    input_size: int
    precision: Precision
    sha256: str
    file: str
    preprocessing: dict = field(default_factory=dict)
    input_quantization: Quantization | None = None
    output_quantization: Quantization | None = None
    temperature: float = 1.0
    edgecell_version: str = ""
    source: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    lab_check: dict = field(default_factory=dict)
    other_score: dict = field(default_factory=dict)
    views: int = 1
    format: str = FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["precision"] = self.precision.value
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike = "<metadata>") -> ModelMetadata:
        """Check ``d`` against :data:`SCHEMA` (every field's type and range) and build the metadata.

        The first field that is missing or wrong is named in one :class:`ModelError` line.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"not an edgecell model metadata file (expected format {FORMAT!r})", path)
        for name, (required, check) in SCHEMA.items():
            if name not in d or d[name] is None:
                if required or (name.endswith("_quantization") and d.get("precision") == Precision.int8.value):
                    raise ModelError(f"metadata has a bad field: {name} is missing", path)
                continue
            problem = check(d[name])
            if problem is None and name.endswith("_quantization") and d.get("precision") != Precision.int8.value:
                problem = f"is set, but a {d.get('precision')} model has no quantised {name.split('_')[0]}"
            if problem:
                raise ModelError(f"metadata has a bad field: {name} {problem}", path)
        q_in, q_out = d.get("input_quantization"), d.get("output_quantization")
        return cls(
            classes=list(d["classes"]),
            input_size=int(d["input_size"]),
            precision=Precision(d["precision"]),
            sha256=d["sha256"],
            file=d["file"],
            preprocessing=dict(d.get("preprocessing") or {}),
            input_quantization=Quantization(float(q_in["scale"]), int(q_in["zero_point"])) if q_in else None,
            output_quantization=Quantization(float(q_out["scale"]), int(q_out["zero_point"])) if q_out else None,
            temperature=float(d["temperature"]),
            edgecell_version=str(d.get("edgecell_version") or ""),
            source=dict(d.get("source") or {}),
            verification=dict(d.get("verification") or {}),
            lab_check=dict(d.get("lab_check") or {}),
            other_score=dict(d.get("other_score") or {}),
            views=int(d.get("views") or 1),
        )

    @property
    def loosened(self) -> str | None:
        """What to know of a model whose parity check passed with more accuracy loss allowed than
        :data:`DEFAULT_MAX_DROP` (``convert --max-drop``), or None."""
        v = self.verification
        try:
            allowed, drop = float(v["max_drop_pp"]), float(v["accuracy_drop_pp"])
        except (KeyError, TypeError, ValueError):
            return None
        if v.get("status") != "passed" or allowed <= DEFAULT_MAX_DROP:
            return None
        return (
            f"its conversion was allowed to lose up to {_num(allowed)} points of test accuracy against the trained model "
            f"(convert --max-drop; the default is {_num(DEFAULT_MAX_DROP)}); it lost {_num(drop)}"
        )

    @property
    def unverified(self) -> str | None:
        """Why this model's own parity check says it should not be used, or None.

        ``edgecell convert`` records the check in ``verification``; a model whose check failed
        (its accuracy dropped more than allowed, or float32 differs from Keras) is still written,
        so that it can be inspected, but classifying with it needs ``--allow-unverified``.
        """
        status = self.verification.get("status")
        if status == "failed":
            v = self.verification
            if "accuracy_drop_pp" in v and "max_drop_pp" in v:
                return (
                    f"its parity check failed: test accuracy {_num(v['accuracy_drop_pp'])} points below Keras, more than the {_num(v['max_drop_pp'])} allowed"
                )
            return "its parity check against the Keras model failed"
        if status not in (None, "passed"):
            return f"its parity check did not finish (status {status!r})"
        return None


DEFAULT_MAX_DROP = 1.0
"""Default ``edgecell convert --max-drop``: percentage points of accuracy an int8 model may lose against Keras. A model
converted with more allowed says so when it classifies (:meth:`ModelMetadata.loosened`)."""


def _num(x) -> str:
    try:
        return f"{float(x):.2f}"
    except (TypeError, ValueError):
        return "?"


# ------------------------------------------------------------------------------ the sidecar's schema

MAX_INPUT_SIZE = 4096
"""Largest ``input_size`` a sidecar may give (an edgecell model takes 32-512 px)."""
TEMPERATURE_RANGE = (0.01, 100.0)
"""Calibration temperatures outside this range are not calibration: at 1e308 every probability
becomes 1/k (every cell the first class, no review flag), near 0 they overflow."""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_classes(v) -> str | None:
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of class names"
    if not all(isinstance(c, str) and c.strip() for c in v):
        bad = next(c for c in v if not (isinstance(c, str) and c.strip()))
        return f"must hold only non-empty strings (found {json.dumps(bad)[:40]})"
    if len(set(v)) != len(v):
        return "has duplicate class names"
    return None


def _check_input_size(v) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool):
        return f"must be a whole number of pixels (found {json.dumps(v)[:40]})"
    if not 1 <= v <= MAX_INPUT_SIZE:
        return f"is {v} (must be 1 to {MAX_INPUT_SIZE})"
    return None


def _check_temperature(v) -> str | None:
    import math

    if not _is_number(v):
        return f"must be a number (found {json.dumps(v)[:40]})"
    lo, hi = TEMPERATURE_RANGE
    if not (math.isfinite(v) and lo <= v <= hi):
        return f"is {v:g} (must be a positive number from {lo:g} to {hi:g})"
    return None


def _check_precision(v) -> str | None:
    if v not in {p.value for p in Precision}:
        return f"must be one of {', '.join(p.value for p in Precision)} (found {json.dumps(v)[:40]})"
    return None


def is_hex_digest(v, length: int = 64) -> bool:
    """Whether ``v`` is ``length`` hexadecimal digits (a SHA-256, or the first digits of one), in either case."""
    return isinstance(v, str) and len(v) == length and all(c in "0123456789abcdefABCDEF" for c in v)


def _check_sha256(v) -> str | None:
    if not is_hex_digest(v):
        return "is not a SHA-256 hex digest"
    return None


def _check_file(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be the model's file name"
    return None


def _check_quantization(v) -> str | None:
    import math

    if not isinstance(v, dict):
        return "must be an object with scale and zero_point"
    for key in ("scale", "zero_point"):
        if key not in v:
            return f"has no {key}"
    if not _is_number(v["scale"]) or not (math.isfinite(v["scale"]) and v["scale"] > 0):
        return f"has a bad scale ({json.dumps(v['scale'])[:40]}; must be a positive number)"
    if not isinstance(v["zero_point"], int) or isinstance(v["zero_point"], bool) or not -128 <= v["zero_point"] <= 255:
        return f"has a bad zero_point ({json.dumps(v['zero_point'])[:40]}; must be a whole number from -128 to 255)"
    return None


def _object(v) -> str | None:
    return None if isinstance(v, dict) else "must be an object"


def _string(v) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _check_lab_check(v) -> str | None:
    import math

    if not isinstance(v, dict):
        return "must be an object"
    if not v:
        return None
    ok = isinstance(v.get("batch"), int) and not isinstance(v.get("batch"), bool) and v["batch"] >= 1
    ok = ok and _is_number(v.get("min_mean_confidence")) and math.isfinite(v["min_mean_confidence"]) and 0 <= v["min_mean_confidence"] <= 1
    if not ok:
        return "needs an integer batch >= 1 and a min_mean_confidence between 0 and 1"
    score = v.get("max_median_score")
    if score is not None and not (_is_number(score) and math.isfinite(score) and score >= 0):
        return "has a max_median_score that is not a number >= 0"
    adapted = v.get("adapted_to")
    if adapted is not None:
        adapted = adapted if isinstance(adapted, dict) else {}
        sources, cells = adapted.get("sources"), adapted.get("cells")
        names_ok = isinstance(sources, list) and all(isinstance(s, str) for s in sources)
        if not (names_ok and isinstance(cells, int) and not isinstance(cells, bool) and cells >= 0):
            return "has an adapted_to that is not {sources: [names], cells: count}"
    return None


def _check_other_score(v) -> str | None:
    from firmware_host.otherscore import OtherScore

    if not isinstance(v, dict):
        return "must be an object"
    try:
        OtherScore.from_dict(v)
    except ValueError as exc:
        return str(exc)
    return None


SCHEMA = {
    # field: (required, check returning what is wrong or None)
    "classes": (True, _check_classes),
    "input_size": (True, _check_input_size),
    "precision": (True, _check_precision),
    "sha256": (True, _check_sha256),
    "file": (True, _check_file),
    "temperature": (True, _check_temperature),
    "preprocessing": (False, _object),
    "input_quantization": (False, _check_quantization),
    "output_quantization": (False, _check_quantization),
    "edgecell_version": (False, _string),
    "source": (False, _object),
    "verification": (False, _object),
    "lab_check": (False, _check_lab_check),
    "other_score": (False, _check_other_score),
    "views": (False, check_views),
}
"""Every field of a model sidecar: whether it must be there and what it must hold. The
quantisation fields must be there for an int8 model and absent (or null) otherwise."""


PREPROCESSING_LIMITS = frozenset({"max_pixels"})
"""Keys of the preprocessing description that are safety limits, not pixel arithmetic: a model
recorded with a different value still sees the same pixels, so they are not compared."""


def preprocessing_mismatch(recorded: dict, model: str = "the model") -> str | None:
    """What differs between a sidecar's recorded preprocessing and this runtime's, or None.

    The version is compared first; with equal versions every other key of
    :func:`firmware_host.preprocess.describe` (except :data:`PREPROCESSING_LIMITS`) must match too,
    so a hand-edited or foreign sidecar cannot claim version 1 with, say, a bicubic resize.
    An empty description (no ``preprocessing`` in the sidecar) is a mismatch: nothing says what
    the model was trained on. ``model`` names the model in the returned phrase.
    """
    from firmware_host.preprocess import describe

    current = describe()
    if not recorded:
        return f"records no preprocessing for {model} (this runtime does v{current['version']})"
    if recorded.get("version") != current["version"]:
        return f"{model} was trained with preprocessing v{recorded.get('version')}, this runtime does v{current['version']}"
    diffs = [
        f"{k} {recorded[k]!r} (this runtime: {current[k]!r})" if k in recorded else f"no {k} (this runtime: {current[k]!r})"
        for k in sorted(current)
        if k not in PREPROCESSING_LIMITS and k != "version" and recorded.get(k) != current[k]
    ]
    if diffs:
        return f"{model} was trained with preprocessing v{current['version']} but " + ", ".join(diffs)
    return None


def check_preprocessing(meta: ModelMetadata, model_path: str | os.PathLike) -> None:
    """Raise :class:`ModelError` naming the sidecar and the model if ``meta`` records other
    preprocessing than this runtime's: the model would see other pixels and answer wrongly."""
    model = Path(model_path)
    problem = preprocessing_mismatch(meta.preprocessing, model.name)
    if problem:
        raise ModelError(f"{problem}, so its answers here cannot be trusted; {_older_version_advice(meta.edgecell_version)}", sidecar_path(model))


def edgecell_version() -> str:
    """The installed edgecell's version (firmware_host is part of that distribution), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgecell")
    except PackageNotFoundError:
        return "unknown"


def report_head(fmt: str) -> dict:
    """The first members of a JSON report: ``format`` (what it is and its layout's version, as ``edgecell-classify/1``)
    and the ``edgecell_version`` that wrote it, for a script to check what it reads."""
    return {"format": fmt, "edgecell_version": edgecell_version()}


def _older_version_advice(exported_by: str | None) -> str:
    """What to do with a model this runtime refuses for its preprocessing: retrain it, or classify with the edgecell
    version that exported it, when that is another version (a sidecar edited by hand, or written by a build of this
    same version, names nothing else to install)."""
    retrain = "retrain and re-export it with this edgecell version"
    if not exported_by or exported_by == edgecell_version():
        return retrain
    return f"classify with the edgecell version that exported it ({exported_by}), or {retrain} ({edgecell_version()})"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model_int8.tflite`` -> ``model_int8.json``."""
    return Path(model_path).with_suffix(".json")


def model_of_sidecar(path: str | os.PathLike) -> Path | None:
    """The model whose sidecar ``path`` is (``model_int8.json`` -> ``model_int8.tflite``, when that file is there), else None."""
    p = Path(path)
    model = p.with_suffix(".tflite")
    return model if p.suffix.lower() == ".json" and model.is_file() else None


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256, hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


MAX_METADATA_BYTES = 1 << 20
"""A sidecar is a few kilobytes; a larger one is not read."""
DIGEST = "digest"
"""The sidecar's field holding the SHA-256 of the rest of it (:func:`sidecar_digest`). The model's SHA-256 covers the
.tflite file only, and an edited sidecar (classes reordered, a review class renamed, `other` renamed, a threshold
changed) gave wrong answers from a verified model without a sign. A sidecar without it is refused when it describes this
runtime's preprocessing (every edgecell that writes that seals it, so the digest was taken out by hand); one of an
older preprocessing is refused for that instead."""


def sidecar_digest(d: dict) -> str:
    """SHA-256 of a sidecar's fields but :data:`DIGEST`, as canonical JSON (sorted keys, no spaces)."""
    rest = {k: v for k, v in d.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode("ascii")).hexdigest()


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the sidecar of ``model_path``; a missing or broken sidecar is a :class:`ModelError`."""
    side = sidecar_path(model_path)
    try:
        d = json.loads(read_regular(side, MAX_METADATA_BYTES, ModelError, "metadata file").decode("utf-8"))
    except FileNotFoundError:
        raise ModelError(f"metadata file {side.name} is missing beside the model (copy the whole export folder)", model_path) from None
    except RecursionError:
        raise ModelError("metadata file is unreadable (nested too deeply)", side) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, a number of thousands of digits
        raise ModelError(f"metadata file is unreadable ({os_reason(exc)})", side) from None
    meta = ModelMetadata.from_dict(d, side)
    if DIGEST not in d and not preprocessing_mismatch(meta.preprocessing):
        # every edgecell that writes this preprocessing seals its sidecars: one without a seal was unsealed by hand
        raise ModelError(
            "metadata file has no digest, though convert seals every sidecar of this preprocessing version: it was edited "
            "after convert wrote it, so the classes, calibration and thresholds it holds may not be this model's; convert "
            "the run again (thresholds are set on the command line: --threshold, --other-threshold)",
            side,
        )
    if DIGEST in d and d[DIGEST] != sidecar_digest(d):
        raise ModelError(
            "metadata file was changed after convert wrote it (its digest differs): the classes, calibration and thresholds "
            "it holds may not be this model's; convert the run again (thresholds are set on the command line: --threshold, "
            "--other-threshold)",
            side,
        )
    return meta


def write_metadata(model_path: str | os.PathLike, meta: ModelMetadata) -> Path:
    from firmware_host.atomic import write_json

    d = meta.to_dict()
    return write_json(sidecar_path(model_path), {**d, DIGEST: sidecar_digest(d)})


def model_reads(model_path: str | os.PathLike) -> list[tuple[str, str]]:
    """What a command reading ``model_path`` reads, as :func:`firmware_host.atomic.check_outputs` takes it.

    A whole export folder; or a model file, its sidecar and every other model (and sidecar) beside it, since an
    export folder holds the float32 and int8 models together; no output may be written over them.
    """
    p = Path(model_path)
    if p.is_dir():
        return [(os.fspath(p), "the model folder being read")]
    beside = sorted(q for q in p.parent.glob("*.tflite") if q.name != p.name) if p.parent.is_dir() else []
    out = [(os.fspath(p), "the model"), (os.fspath(sidecar_path(p)), "the model's metadata")]
    for q in beside:
        out += [(os.fspath(q), "a model beside the one being read"), (os.fspath(sidecar_path(q)), "the metadata of a model beside it")]
    return out
