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

from firmware_host.errors import ModelError

FORMAT = "edgecell-model/1"


class Precision(str, enum.Enum):
    """Numeric precision of a TFLite model.

    The value is the command-line flag (``--int8``), the file suffix (``model_int8.tflite``) and
    the ``precision`` field of the metadata.
    """

    float32 = "float32"
    float16 = "float16"
    int8 = "int8"

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
            (``min_mean_confidence``, ``batch``), fitted on the training labs; empty: no check.
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
    format: str = FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["precision"] = self.precision.value
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike = "<metadata>") -> ModelMetadata:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"not an edgecell model metadata file (expected format {FORMAT!r})", path)
        try:
            q_in = d.get("input_quantization")
            q_out = d.get("output_quantization")
            meta = cls(
                classes=[str(c) for c in d["classes"]],
                input_size=int(d["input_size"]),
                precision=Precision(d["precision"]),
                sha256=str(d["sha256"]),
                file=str(d["file"]),
                preprocessing=dict(d.get("preprocessing") or {}),
                input_quantization=Quantization(**q_in) if q_in else None,
                output_quantization=Quantization(**q_out) if q_out else None,
                temperature=float(d.get("temperature", 1.0)),
                edgecell_version=str(d.get("edgecell_version", "")),
                source=dict(d.get("source") or {}),
                verification=dict(d.get("verification") or {}),
                lab_check=dict(d.get("lab_check") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"metadata is missing or has a bad field ({exc})", path) from None
        meta._validate(path)
        return meta

    def _validate(self, path: str | os.PathLike) -> None:
        """Refuse values that would give silently wrong answers (a zero temperature, no classes...)."""
        import math

        problems = []
        if not self.classes:
            problems.append("classes is empty")
        elif len(set(self.classes)) != len(self.classes):
            problems.append("classes has duplicate names")
        if self.input_size < 1:
            problems.append(f"input_size is {self.input_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"temperature is {self.temperature} (must be a positive number)")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256):
            problems.append("sha256 is not a SHA-256 hex digest")
        if self.lab_check:
            lc = self.lab_check
            ok = isinstance(lc.get("batch"), int) and lc["batch"] >= 1
            ok = ok and isinstance(lc.get("min_mean_confidence"), (int, float)) and math.isfinite(lc["min_mean_confidence"])
            if not ok or not 0 <= lc["min_mean_confidence"] <= 1:
                problems.append("lab_check needs an integer batch >= 1 and a min_mean_confidence between 0 and 1")
        if problems:
            raise ModelError(f"metadata has bad values: {'; '.join(problems)}", path)


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
        by = f" ({meta.edgecell_version})" if meta.edgecell_version else ""
        raise ModelError(
            f"{problem}, so its answers here cannot be trusted; "
            f"classify with the edgecell version that exported it{by}, or retrain and re-export it with this edgecell version",
            sidecar_path(model),
        )


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model_int8.tflite`` -> ``model_int8.json``."""
    return Path(model_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256, hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the sidecar of ``model_path``; a missing or broken sidecar is a :class:`ModelError`."""
    side = sidecar_path(model_path)
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"metadata file {side.name} is missing beside the model (copy the whole export folder)", model_path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"metadata file is unreadable ({exc})", side) from None
    return ModelMetadata.from_dict(d, side)


def write_metadata(model_path: str | os.PathLike, meta: ModelMetadata) -> Path:
    from firmware_host.atomic import write_json

    return write_json(sidecar_path(model_path), meta.to_dict())
