"""Evaluating a run's Keras model or any edgecell .tflite on a split of a data folder.

``evaluate`` resolves what it was given (a run folder, a ``model.keras``, a ``.tflite`` or an
export folder), finds the split manifest of the run the model came from, loads exactly the
images of the requested split, and computes metrics with scikit-learn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from edgecell import data as data_mod
from firmware_host.errors import DataError, EdgecellError


@dataclass
class Target:
    """What is evaluated.

    Attributes:
        kind: "keras" or a TFLite precision ("float32", "int8", "float16").
        model_path: the .keras or .tflite file.
        run_dir: the run folder the model belongs to (holds split.csv and metadata.json), if found.
        classes: class names in output order; input_size: model input size.
        temperature: the calibration temperature stored with the model.
    """

    kind: str
    model_path: Path
    run_dir: Path | None
    classes: list[str]
    input_size: int
    temperature: float
    dataset_path: str | None = None


def resolve(target: str | os.PathLike) -> Target:
    from edgecell.train import RUN_MARKER, read_run

    p = Path(target)
    if p.is_dir() and (p / RUN_MARKER).is_file():
        meta = read_run(p)
        return Target("keras", p / "model.keras", p, meta["classes"], int(meta["input_size"]), float(meta.get("temperature", 1.0)), meta["dataset"]["path"])
    if p.suffix == ".keras":
        run = p.parent
        meta = read_run(run)
        return Target("keras", p, run, meta["classes"], int(meta["input_size"]), float(meta.get("temperature", 1.0)), meta["dataset"]["path"])
    from firmware_host.metadata import read_metadata
    from firmware_host.runtime import resolve_model

    model = resolve_model(p)
    meta = read_metadata(model)
    run = None
    for cand in (model.parent, model.parent.parent):
        if (cand / RUN_MARKER).is_file() and (cand / "split.csv").is_file():
            run = cand
            break
    ds_path = None
    if run is not None:
        ds_path = read_run(run)["dataset"]["path"]
    return Target(meta.precision.value, model, run, list(meta.classes), int(meta.input_size), float(meta.temperature), ds_path)


class Predictor:
    """Raw (uncalibrated) softmax probabilities for uint8 image batches, Keras or TFLite."""

    def __init__(self, target: Target, threads: int | None = None):
        self.target = target
        if target.kind == "keras":
            from edgecell.train import load_keras

            self.model = load_keras(target.run_dir)
            self.clf = None
        else:
            from firmware_host.runtime import Classifier

            self.model = None
            self.clf = Classifier.load(target.model_path, threads=threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.model is not None:
            from edgecell.train import predict

            return predict(self.model, x)
        from firmware_host.runtime import dequantize_output, normalize

        out = []
        for img in x:
            raw = self.clf.invoke_raw(self.clf._check_image(img))
            out.append(normalize(dequantize_output(raw, self.clf.output_quant)))
        return np.stack(out) if out else np.zeros((0, len(self.target.classes)), np.float32)


def load_split(target: Target, data_dir: str | None, split: str, con: Console) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images and labels of ``split`` ("train", "val", "test" or "all")."""
    from edgecell.console import progress

    data_dir = data_dir or target.dataset_path
    if not data_dir or not Path(data_dir).is_dir():
        raise DataError("the data folder the model was trained on is not there; pass --data DIR", data_dir or "--data")
    if split == "all":
        from edgecell.train import report_skipped

        with progress(con, transient=True) as bar:
            task = bar.add_task("reading images", total=None)
            folders = {p.name for p in data_mod.list_class_folders(Path(data_dir))}
            unknown = sorted(folders - set(target.classes))
            if unknown:
                raise DataError(f"class folder(s) the model does not know: {', '.join(unknown)} (model classes: {', '.join(target.classes)})", data_dir)
            ds = data_mod.scan(data_dir, size=target.input_size, classes=[c for c in target.classes if c in folders], min_per_class=1,
                               on_progress=lambda d, n: bar.update(task, completed=d, total=n))
        report_skipped(ds, con)
        index = {c: i for i, c in enumerate(target.classes)}
        y = np.array([index[s.label] for s in ds.samples], dtype=np.int64)
        return ds.images, y, [s.rel for s in ds.samples]
    if target.run_dir is None:
        raise EdgecellError(f"no split manifest (split.csv) beside this model, so --split {split} is unknown; use --split all", target.model_path)
    rows = [r for r in data_mod.read_manifest(target.run_dir / "split.csv") if r.split == split]
    with progress(con, transient=True) as bar:
        task = bar.add_task(f"reading {split} images", total=len(rows))
        x, y, rows = data_mod.load_from_manifest(data_dir, rows, target.input_size, target.classes, on_progress=lambda d, n: bar.update(task, completed=d))
    return x, y, [r.file for r in rows]


def evaluate(target: Target, data_dir: str | None, split: str, con: Console, out_dir: str | None = None, threads: int | None = None) -> dict:
    """Metrics of ``target`` on ``split``; writes metrics JSON and confusion-matrix PNG to ``out_dir``."""
    from edgecell.metrics import apply_temperature, compute, expected_calibration_error
    from edgecell.plots import confusion_matrix_png, reliability_png
    from firmware_host.atomic import write_json

    x, y, files = load_split(target, data_dir, split, con)
    if len(x) == 0:
        raise DataError(f"no images in the {split} split", data_dir)
    predictor = Predictor(target, threads)
    probs = predictor(x)
    m = compute(y, probs, target.classes)
    cal = apply_temperature(probs, target.temperature)
    m.update(
        {
            "split": split,
            "model": str(target.model_path),
            "kind": target.kind,
            "temperature": target.temperature,
            "ece": expected_calibration_error(y, probs),
            "ece_calibrated": expected_calibration_error(y, cal),
        }
    )
    out = Path(out_dir) if out_dir else ((target.run_dir or target.model_path.parent) / "evaluation")
    stem = f"{target.kind}_{split}"
    write_json(out / f"{stem}_metrics.json", m)
    confusion_matrix_png(out / f"{stem}_confusion_matrix.png", m["confusion_matrix"], target.classes, f"{target.kind}, {split} split (n={m['n']})")
    reliability_png(out / f"{stem}_reliability.png", y, {"uncalibrated": probs, f"T={target.temperature:.2f}": cal})
    m["outputs"] = {"metrics": str(out / f"{stem}_metrics.json"), "confusion_matrix": str(out / f"{stem}_confusion_matrix.png"),
                    "reliability": str(out / f"{stem}_reliability.png")}
    return m
