"""A training run folder and its ``metadata.json``: read, validated and written in one place.

A run folder (written by ``edgecell train``) holds ``model.keras``, ``metadata.json`` (the
:class:`RunFolder` fields plus what training recorded: model shape, training figures, options),
``split.csv``, metrics, plots and, after ``edgecell convert``, ``export/``. See docs/design.md.

::

    run = RunFolder.read("runs/cells")      # a clear one-line error when it is not a run
    run.classes, run.input_size, run.temperature
    roots = run.sources(cli_data)           # source name -> folder: --data, else as recorded at training time
    model = run.load_keras()                # TensorFlow imported here, not before
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware_host.errors import DataError, EdgecellError
from firmware_host.metadata import (  # the names of a run's and an export's files: firmware_host's too, which keeps outputs off them
    ADAPT_FILE,
    CALIBRATION_MANIFEST,
    CV_FILE,
    EXPORT_DIR,
    HISTORY_FILE,
    KERAS_FILE,
    METRICS_FILE,
    PARITY_FILE,
    RUN_MARKER,
    SPLIT_FILE,
    Precision,
    preprocessing_mismatch,
    sha256_file,
    sidecar_path,
)

INPUT_SIZES = (32, 512)
"""The model input sizes edgecell trains (``train --img-size``) and reads from a run's metadata: a hand-edited 100000
would have every image decoded at that size before the model was looked at (the kernel killed it at 24 GB)."""

RUN_FORMAT = "edgecell-run/1"
PLOT_FILES = ("confusion_matrix.png", "training_curves.png")
EVALUATION_DIR = "evaluation"
"""Where ``edgecell evaluate`` writes, by default, beside the model it evaluates."""
EVALUATION_OUTPUTS = ("metrics.json", "predictions.jsonl", "confusion_matrix.png", "reliability.png", "other.json", "other.png")
"""What ``evaluate`` writes, each named ``<stem>_<output>`` (:func:`edgecell.evaluate.output_stem`)."""


def replacing(run_dir: str | os.PathLike) -> str | None:
    """What replacing ``run_dir`` with a new run removes, in words (None when it holds no run): said once the new run
    is in place, since a model already copied to a Pi from its ``export/`` no longer matches the run."""
    run = Path(run_dir)
    if not (run / RUN_MARKER).is_file():
        return None
    gone = [what for what, name in (("its export/ (convert the new run again)", EXPORT_DIR), ("its evaluation/", EVALUATION_DIR)) if (run / name).is_dir()]
    return f"replaced the earlier run in {run}" + (f", with {' and '.join(gone)}" if gone else "")


def _under(folder: str, owned) -> frozenset[str]:
    return frozenset(f"{folder}/{name}" for name in owned)


EVALUATION_OWNED = frozenset(f"*_{name}" for name in EVALUATION_OUTPUTS)
"""What edgecell writes in an evaluation folder (patterns, :data:`firmware_host.atomic.Owned`)."""
EXPORT_OWNED = frozenset({*(p.filename for p in Precision), *(sidecar_path(p.filename).name for p in Precision), PARITY_FILE, CALIBRATION_MANIFEST}) | _under(
    EVALUATION_DIR, EVALUATION_OWNED
)
"""What edgecell writes in an export folder (``convert``; ``evaluate`` of an exported model in its ``evaluation/``):
``convert`` refuses to replace one holding anything else, such as a CSV of results saved beside the models."""
RUN_OWNED = (
    frozenset({RUN_MARKER, SPLIT_FILE, KERAS_FILE, METRICS_FILE, HISTORY_FILE, CV_FILE, ADAPT_FILE, *PLOT_FILES})
    | _under(EVALUATION_DIR, EVALUATION_OWNED)
    | _under(EXPORT_DIR, EXPORT_OWNED)
)
"""What edgecell writes in a run folder (``train`` and ``adapt``; ``evaluate`` and ``convert`` in their sub-folders):
``train`` and ``adapt`` refuse to replace a run holding anything else (:func:`firmware_host.atomic.staged_dir`)."""


@dataclass
class RunFolder:
    """What a run's ``metadata.json`` says, typed; ``extra`` keeps every other recorded field.

    Attributes:
        path: the run folder.
        classes: class names in the model's output order.
        input_size: the model's square input size in pixels.
        temperature: the calibration temperature fitted on the validation split (1 = none).
        seed: the seed of the split and training.
        dataset: what training recorded about its data (``path``, ``fingerprint``, counts, ...).
        extra: the remaining metadata (``model``, ``training``, ``options``, ...), as recorded.
    """

    path: Path
    classes: list[str]
    input_size: int
    temperature: float = 1.0
    seed: int | None = None
    dataset: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def dataset_path(self) -> str | None:
        """The data folder the model was trained on, as recorded."""
        return self.dataset.get("path")

    @property
    def dataset_fingerprint(self) -> str | None:
        """The data set's fingerprint at training time."""
        return self.dataset.get("fingerprint")

    # -- files of the folder -------------------------------------------------------------------

    @property
    def learnt_as(self) -> list[str]:
        """The outputs the model learnt (``model.learnt_as``: ``other`` as its types, :func:`edgecell.model.with_classes`);
        its classes when it learnt them as they are, or was trained before types were learnt."""
        return list((self.extra.get("model") or {}).get("learnt_as") or self.classes)

    @property
    def metadata_path(self) -> Path:
        return self.path / RUN_MARKER

    @property
    def keras_path(self) -> Path:
        return self.path / KERAS_FILE

    @property
    def split_path(self) -> Path:
        return self.path / SPLIT_FILE

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a folder holding a run's metadata (not validated)."""
        return (Path(path) / RUN_MARKER).is_file()

    @classmethod
    def containing(cls, model_path: str | os.PathLike) -> RunFolder | None:
        """The run a model file belongs to (its folder or the one above, with a split), or None."""
        p = Path(model_path)
        for cand in (p.parent, p.parent.parent):
            if cls.is_run(cand) and (cand / SPLIT_FILE).is_file():
                return cls.read(cand)
        return None

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunFolder:
        """Read and validate ``path/metadata.json``; a folder that is not a run is a clear error."""
        path = Path(path)
        p = path / RUN_MARKER
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if path.name == EXPORT_DIR and (path.parent / RUN_MARKER).is_file():  # the export given for its run
                raise EdgecellError(f"this is a run's export folder (what goes to the Pi); give the run folder, {path.parent}", path) from None
            raise EdgecellError(f"not an edgecell run folder (no {RUN_MARKER}; create one with `edgecell train`)", path) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgecellError(f"unreadable run metadata ({exc})", p) from None
        if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise EdgecellError(f"not an edgecell run metadata file (format {fmt!r})", p)
        return cls.from_dict(path, meta)

    @classmethod
    def from_dict(cls, path: str | os.PathLike, meta: dict) -> RunFolder:
        """Validate a metadata dict (as read from ``metadata.json``) into a RunFolder."""
        where = Path(path) / RUN_MARKER
        classes = meta.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
            raise EdgecellError(f"run metadata: 'classes' must list at least two distinct class names (got {classes!r})", where)
        size = meta.get("input_size")
        if isinstance(size, bool) or not isinstance(size, int) or not INPUT_SIZES[0] <= size <= INPUT_SIZES[1]:
            raise EdgecellError(f"run metadata: 'input_size' must be a whole number of pixels from {INPUT_SIZES[0]} to {INPUT_SIZES[1]} (got {size!r})", where)
        temperature = meta.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise EdgecellError(f"run metadata: 'temperature' must be a positive number (got {temperature!r})", where)
        dataset = meta.get("dataset") or {}
        if not isinstance(dataset, dict):
            raise EdgecellError(f"run metadata: 'dataset' must be an object (got {dataset!r})", where)
        if (why := _check_recorded(meta, dataset)) is not None:
            raise EdgecellError(f"run metadata: {why}", where)
        known = {"format", "classes", "input_size", "temperature", "seed", "dataset"}
        return cls(
            path=Path(path),
            classes=list(classes),
            input_size=int(size),
            temperature=float(temperature),
            seed=meta.get("seed"),
            dataset=dict(dataset),
            extra={k: v for k, v in meta.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """The ``metadata.json`` content (the typed fields first, then ``extra``)."""
        out = {"format": RUN_FORMAT, "classes": list(self.classes), "input_size": self.input_size}
        extra = dict(self.extra)
        for k in ("preprocessing",):  # keep the recorded order of the first fields
            if k in extra:
                out[k] = extra.pop(k)
        out["seed"] = self.seed
        out["dataset"] = dict(self.dataset)
        if "split" in extra:
            out["split"] = extra.pop("split")
        out["temperature"] = self.temperature
        out.update(extra)
        return out

    def write(self, folder: str | os.PathLike | None = None) -> Path:
        """Write ``metadata.json`` (atomically) into ``folder`` (default: the run folder)."""
        from firmware_host.atomic import write_json

        return write_json(Path(folder or self.path) / RUN_MARKER, self.to_dict())

    # -- what the commands need from a run -----------------------------------------------------

    def sources(self, given: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> dict[str, Path]:
        """Source name -> folder of the run's data: from ``--data`` (one folder or several) if given,
        else as recorded (see :func:`edgecell.data.run_sources`)."""
        from edgecell.data import run_sources

        given = [given] if isinstance(given, (str, os.PathLike)) else list(given or [])
        return run_sources(self.dataset, given)

    def require_split(self, why: str = "") -> Path:
        """``split.csv``, or an error naming the run folder."""
        if not self.split_path.is_file():
            raise DataError(f"split.csv is missing from the run folder{why}", self.path)
        return self.split_path

    def require_keras(self) -> None:
        """Raise a one-line error now if the run's ``model.keras`` is missing or not a Keras file (no TensorFlow),
        or was trained with other preprocessing than this edgecell's: a command checks it before minutes of other
        work, not after, and never converts, evaluates or adapts a model on pixels it was not trained on."""
        if not self.keras_path.is_file():
            raise EdgecellError("model.keras is missing from the run folder", self.path)
        check_keras_file(self.keras_path)
        recorded = (self.extra.get("model") or {}).get("sha256")
        if recorded and sha256_file(self.keras_path) != recorded:  # runs made before the digest was recorded: not checked
            raise EdgecellError(
                f"is not the model this run trained (its SHA-256 differs from the one {RUN_MARKER} records): files of two runs "
                "mixed, or the model replaced; put the run's own model back, or train again",
                self.keras_path,
            )
        problem = preprocessing_mismatch(self.extra.get("preprocessing") or {}, "its model")
        if problem:
            raise EdgecellError(
                f"run metadata: {problem}, so its answers here would be wrong; train it again with this edgecell version", self.path / RUN_MARKER
            )

    def load_keras(self):
        """The run's Keras model (imports TensorFlow), checked against the metadata: one output per class, the input size."""
        from edgecell.model import load_model

        self.require_keras()
        try:
            model = load_model(self.keras_path)
        except Exception as exc:
            from firmware_host.errors import first_line

            raise EdgecellError(f"cannot load Keras model ({first_line(exc)})", self.keras_path) from None
        outputs, size = model.output_shape[-1], tuple(model.input_shape[1:3])
        if outputs != len(self.classes) or size != (self.input_size, self.input_size):
            raise EdgecellError(
                f"does not match the run's {RUN_MARKER}: the model has {outputs} outputs and a {size[0]}x{size[1]} input, the metadata "
                f"{len(self.classes)} classes and a {self.input_size}x{self.input_size} input (edited, or files of two runs mixed?)",
                self.keras_path,
            )
        return model


def check_keras_file(path: str | os.PathLike) -> None:
    """A one-line error unless ``path`` is at least a zip archive, as every ``.keras`` file is (no TensorFlow): Keras
    itself says "File not found" of a truncated one."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise EdgecellError("is not a Keras model file (a .keras file is a zip archive; this one is not: truncated or replaced?)", path)


RECORDS = ("model", "training", "split", "options", "adapted_from")
"""Metadata fields that are objects when present (commands read keys of them: ``"model": "x"`` ended adapt with a
TypeError)."""


def _check_recorded(meta: dict, dataset: dict) -> str | None:
    """What is wrong with the metadata fields that the commands read besides classes, size and temperature, or None.

    The never-seen score and the lab check get the same checks as in a model's sidecar (an empty one is a run
    without them)."""
    from firmware_host.metadata import SCHEMA

    for key in ("other_score", "lab_check"):
        if meta.get(key) not in (None, {}) and (why := SCHEMA[key][1](meta[key])) is not None:
            return f"'{key}' {why}"
    for key in RECORDS:
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"'{key}' must be an object (got {meta[key]!r})"
    seed = meta.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"'seed' must be a whole number (got {seed!r})"
    sources, path = dataset.get("sources"), dataset.get("path")
    if sources is not None and not (isinstance(sources, dict) and all(isinstance(v, str) and v for v in sources.values())):
        return f"'dataset.sources' must map each source's name to its folder (got {sources!r})"
    if path is not None and not (isinstance(path, str) and path):
        return f"'dataset.path' must be a folder (got {path!r})"
    return None


def recorded_data_reads(run_dir: str | os.PathLike, what: str = "the run's training data") -> list[tuple[str, str]]:
    """The data folders a run was trained on, as its metadata records them, for :func:`edgecell.options.check_outputs`:
    an output inside one would be read back as images (or a class folder) by the next ``train``, ``adapt`` or
    ``evaluate`` on them. Empty when the run cannot be read (the command says why)."""
    try:
        dataset = RunFolder.read(run_dir).dataset or {}
    except (EdgecellError, OSError):
        return []
    folders = [dataset.get("path"), *(dataset.get("sources") or {}).values()]
    return [(f, what) for f in dict.fromkeys(f for f in folders if f and Path(f).is_dir())]
