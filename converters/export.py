"""Export a training run: convert its Keras model to TFLite, verify it, write ``RUN_DIR/export``.

The library behind ``edgecell convert`` (in the style of ultralytics' exporter: one table of
formats, one function per format, the metadata travelling with each model as its sidecar)::

    from converters.export import ExportOptions, export_run

    report = export_run(ExportOptions("runs/cells", int8=True))
    report["models"]["int8"]["accuracy"], report["outputs"]["int8"]

Steps: (1) the calibration set (a bad ``--calibration`` folder fails in a second, before
TensorFlow loads); (2) the run's test split and the Keras model's answers on it; (3) one
conversion per format of :data:`FORMATS`, each checked before anything is written; (4) the
export folder, built with :func:`firmware_host.atomic.staged_dir` so an interrupted or failed
export leaves the previous one intact: each ``model_<precision>.tflite`` with its
``model_<precision>.json`` sidecar, checked on the test split through the Pi's own
:class:`~firmware_host.runtime.Classifier` (``parity.json``). A quantised model that fails the
``max_drop`` check is still written, marked failed in its sidecar; the caller turns the report's
status into the exit code.

What the export says while it works goes to a :class:`Reporter` (silent by default; the command
passes one that draws rich spinners and progress bars).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from converters.calibration import DEFAULT_PER_CLASS, MAX_PER_CLASS, CalibrationSet
from edgecell.options import DEFAULT_SEED
from edgecell.runfolder import CALIBRATION_MANIFEST, EXPORT_DIR, EXPORT_OWNED, KERAS_FILE, PARITY_FILE, RUN_MARKER, SPLIT_FILE, RunFolder, recorded_data_reads
from firmware_host.metadata import DEFAULT_MAX_DROP, Precision

FULL_RANGE = (0.5, 254.5)
"""An int8 input whose real range does not cover this much of 0-255 clips pixel values (a warning)."""


@dataclass
class ExportOptions:
    """What to export (the options of ``edgecell convert``).

    Attributes:
        run_dir: the training run folder (``model.keras``, ``metadata.json``, ``split.csv``).
        int8, float16: also write these precisions (float32 is always written).
        calibration: a curated folder to calibrate int8 on, instead of the run's training split.
        calib_size: images per class picked from the training split (default :data:`DEFAULT_PER_CLASS`).
        calibration_out: also copy the calibration images used, with a manifest, to this folder.
        max_drop: percentage points of accuracy a quantised model may lose against Keras.
        seed: seed of the calibration selection.
        data_dir: the data folder (default: the one recorded in the run's metadata).
        threads: interpreter threads of the parity check (None: all cores).
    """

    run_dir: str
    int8: bool = False
    float16: bool = False
    calibration: str | None = None
    calib_size: int | None = None
    calibration_out: str | None = None
    max_drop: float = DEFAULT_MAX_DROP
    seed: int = DEFAULT_SEED
    data_dir: str | Sequence[str] | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        """What the command line's option types check, for the API too (a NaN ``max_drop`` passed the parity gate and
        was sealed into the sidecar as ``NaN``, not JSON; a review): a ValueError naming the field."""
        from edgecell.options import MAX_SEED
        from firmware_host.interpreter import MAX_THREADS
        from firmware_host.runtime import check_number

        check_number("max_drop", self.max_drop, 0.0, 100.0)
        check_number("seed", self.seed, 0, MAX_SEED, whole=True)
        if self.calib_size is not None:
            check_number("calib_size", self.calib_size, 1, MAX_PER_CLASS, whole=True)
        if self.threads is not None:
            check_number("threads", self.threads, 1, MAX_THREADS, whole=True)

    @property
    def precisions(self) -> list[Precision]:
        return [Precision.float32] + ([Precision.float16] if self.float16 else []) + ([Precision.int8] if self.int8 else [])


class Reporter:
    """Where an export reports progress; this one says nothing (a script, a test)."""

    def status(self, text: str) -> contextlib.AbstractContextManager:
        """A block of work with no count (loading the model, one conversion)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def progress(self, text: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A counted block of work; yields ``update(done, total=None)``."""
        yield lambda done, total=None: None

    def info(self, text: str) -> None:
        """One line for a person."""

    def warn(self, text: str) -> None:
        """One warning line for a person."""


# ----------------------------------------------------------------------------------------------
# One function per format: Keras model (+ calibration set for int8) -> TFLite bytes


def reads(run_dir: str | Path, calibration: str | None = None, data_dir: str | None = None) -> list[tuple[str, str]]:
    """What converting ``run_dir`` reads and writes itself, for :func:`firmware_host.atomic.check_outputs`."""
    run = Path(run_dir)
    out = [(str(run / name), f"the run's {name}") for name in (KERAS_FILE, SPLIT_FILE, RUN_MARKER)]
    out.append((str(run / EXPORT_DIR), "the export folder this command writes"))
    out += [(calibration, "the calibration folder being read"), (data_dir, "the data folder being read")]
    return out + recorded_data_reads(run)  # --calibration-out or --json there would become a class folder or an image


def export_float32(model, cal: CalibrationSet | None, views: int = 1) -> bytes:
    from converters import tflite

    return tflite.convert(model, Precision.float32)


def export_float16(model, cal: CalibrationSet | None, views: int = 1) -> bytes:
    from converters import tflite

    return tflite.convert(model, Precision.float16)


def export_int8(model, cal: CalibrationSet | None, views: int = 1) -> bytes:
    from converters import tflite

    return tflite.convert(model, Precision.int8, cal.representative_dataset(views))


FORMATS: dict[Precision, Callable[[object, CalibrationSet | None, int], bytes]] = {
    Precision.float32: export_float32,
    Precision.float16: export_float16,
    Precision.int8: export_int8,
}
"""Every format ``export_run`` can write, and the function that writes it: ``(network, calibration set, views)``,
where ``views`` is how many mirrored views of each image the runtime will run the network on (int8 calibrates on them)."""


# ----------------------------------------------------------------------------------------------
# The steps


def _calibration_set(opts: ExportOptions, run_dir: Path, data_dir: dict[str, Path], classes: list[str], size: int, rep: Reporter) -> CalibrationSet:
    from converters import calibration as cal_mod

    with rep.progress("reading calibration images", None) as tick:
        if opts.calibration:
            cal = cal_mod.from_folder(opts.calibration, classes, size, on_progress=tick)
        else:
            cal = cal_mod.from_run(run_dir, data_dir, classes, size, opts.calib_size or DEFAULT_PER_CLASS, opts.seed, on_progress=tick)
    for path, reason in cal.skipped:
        rep.warn(f"skipped calibration image {path}: {reason}")
    for w in cal.warnings:
        rep.warn(w)
    if opts.calibration:
        test_hashes = {r.sha256 for r in _test_rows(run_dir)}
        shared = sum(1 for it in cal.items if it.sha256 in test_hashes)
        if shared:  # said now, and kept in the parity report's notes (where a later reader of the export looks)
            cal.notes.append(
                f"{shared} of the {len(cal.items)} calibration images in {opts.calibration} are in the run's test split, "
                "on which the int8 model's parity is measured: for them it is not a held-out check"
            )
            rep.warn(cal.notes[-1])
    return cal


def _test_rows(run_dir: Path) -> list:
    from edgecell import data as data_mod

    return [r for r in data_mod.read_manifest(run_dir / SPLIT_FILE) if r.split == "test"]


def _test_split(run_dir: Path, data_dir: dict[str, Path], size: int, classes: list[str], rep: Reporter):
    from edgecell import data as data_mod
    from firmware_host.errors import DataError

    rows = _test_rows(run_dir)
    with rep.progress("reading test images", len(rows)) as tick:
        x_test, y_test, rows, offsets = data_mod.load_cells_from_manifest(data_dir, rows, size, classes, on_progress=lambda d, n: tick(d))
    if len(x_test) == 0:
        raise DataError("the run's test split is empty; nothing to verify the conversion on", run_dir / SPLIT_FILE)
    return x_test, y_test, [r.file for r in rows], offsets


def _int8_notes(io_int8) -> list[str]:
    if io_int8 is None:
        return []
    q = io_int8["input"]
    lo, hi = q.scale * (-128 - q.zero_point), q.scale * (127 - q.zero_point)
    if lo > FULL_RANGE[0] or hi < FULL_RANGE[1]:
        return [f"the int8 input covers pixel values {lo:.0f}-{hi:.0f} only (calibration images never used the full 0-255 range); others are clipped"]
    return []


def _source(run: RunFolder, data_dir: dict[str, Path]) -> dict:
    """Where a model came from, for its sidecar."""
    from firmware_host.metadata import sha256_file

    return {
        "run_dir": str(run.path.resolve()),
        "run_name": run.path.resolve().name,
        "keras_model": run.keras_path.name,
        "keras_sha256": sha256_file(run.keras_path),
        "dataset_path": str(Path(next(iter(data_dir.values()))).resolve()),
        "dataset_sources": {k: str(Path(v).resolve()) for k, v in data_dir.items() if k},
        "dataset_fingerprint": run.dataset_fingerprint,
        "split_sha256": sha256_file(run.split_path),
        "run_seed": run.seed,
    }


def export_run(opts: ExportOptions, reporter: Reporter | None = None) -> dict:
    """Convert, verify and write ``RUN_DIR/export``; returns the parity report (with ``outputs``)."""
    import numpy as np

    from converters import calibration as cal_mod
    from converters import parity, tflite
    from edgecell import __version__
    from edgecell.model import predict_with_features, views_of, with_features, without_views
    from edgecell.train import predict
    from firmware_host import preprocess
    from firmware_host.atomic import check_stageable, staged_dir, write_bytes, write_json
    from firmware_host.metadata import ModelMetadata, sha256_file, write_metadata
    from firmware_host.otherscore import OtherScore

    rep = reporter or Reporter()
    run = RunFolder.read(opts.run_dir)
    run_dir, classes, size = run.path, run.classes, run.input_size
    data_dir = run.sources(opts.data_dir)
    run.require_split(" (the test split and calibration need it)")
    run.require_keras()
    check_stageable(
        run_dir / EXPORT_DIR, marker=Precision.float32.filename, owned=EXPORT_OWNED, elsewhere=None
    )  # refuse an unwritable export before converting
    if opts.int8 and opts.calibration_out:
        check_stageable(opts.calibration_out, marker=cal_mod.MANIFEST_NAME, owned=cal_mod.copied_files)

    cal = _calibration_set(opts, run_dir, data_dir, classes, size, rep) if opts.int8 else None
    x_test, y_test, files, offsets_test = _test_split(run_dir, data_dir, size, classes, rep)
    other_score = OtherScore.from_dict(run.extra.get("other_score") or {})
    with rep.status("loading the Keras model"):
        model = run.load_keras()
        if other_score is None:
            keras_probs, keras_scores = predict(model, x_test).astype(np.float64), None
        else:  # the exported models get the pooled features as a second output (firmware_host.otherscore)
            keras_probs, feats = predict_with_features(model, x_test)
            keras_scores = other_score.scores(feats)
        # The file holds the network for one image; the runtime runs it on each mirrored view and averages
        # (firmware_host.mirrors): a batch of views took another mix of LiteRT's kernels on arm64 than on x86
        # (docs/design.md). Parity compares that with the Keras model, views and all.
        views = views_of(model)
        model = without_views(model)
        if other_score is not None:
            model = with_features(model)
    n_weights = tflite.weight_count(model)

    blobs: dict[Precision, bytes] = {}
    for prec in opts.precisions:
        with rep.status(f"converting to {prec.value} TFLite" + (f" (calibrating on {len(cal.items)} images)" if prec is Precision.int8 else "")):
            data = FORMATS[prec](model, cal, views)
        tflite.check_size(data, prec, n_weights, name=prec.filename)
        blobs[prec] = data
        rep.info(f"converted {prec.value}: {len(data):,} bytes ({len(data) / 1024:.1f} KB)")
    io_int8 = tflite.check_int8(blobs[Precision.int8], Precision.int8.filename, len(classes)) if opts.int8 else None
    notes = _int8_notes(io_int8)
    for n in notes:
        rep.warn(n)
    notes = (cal.notes if cal is not None else []) + notes

    source = _source(run, data_dir)
    export_dir = run_dir / EXPORT_DIR
    dropped = [p.value for p in Precision if p not in blobs and (export_dir / p.filename).is_file()]
    if dropped:  # the export is replaced whole: a precision not asked for again is gone (said, not silent; a review)
        notes.append(f"the earlier export's {' and '.join(dropped)} model is not in the new one (convert with --{' --'.join(dropped)} to keep it)")
        rep.warn(notes[-1])
    with staged_dir(export_dir, marker=Precision.float32.filename, owned=EXPORT_OWNED, elsewhere=None) as tmp:
        metas: dict[Precision, ModelMetadata] = {}
        for prec, data in blobs.items():
            path = write_bytes(tmp / prec.filename, data)
            q_in = q_out = None
            src = dict(source)
            if prec is Precision.int8:
                q_in, q_out = io_int8["input"].to_metadata(), io_int8["output"].to_metadata()
                src["calibration"] = cal.summary(classes) | {"manifest": CALIBRATION_MANIFEST}
            metas[prec] = ModelMetadata(
                classes=classes,
                input_size=size,
                precision=prec,
                sha256=sha256_file(path),
                file=prec.filename,
                preprocessing=preprocess.describe(),
                input_quantization=q_in,
                output_quantization=q_out,
                temperature=run.temperature,
                edgecell_version=__version__,
                source=src,
                verification={"status": "pending"},
                lab_check=dict(run.extra.get("lab_check") or {}),
                other_score=dict(run.extra.get("other_score") or {}),
                views=views,
            )
            write_metadata(path, metas[prec])
        if cal is not None:
            cal_mod.write_manifest(tmp / CALIBRATION_MANIFEST, cal.items)

        # parity, through the same Classifier the Pi uses
        results: dict[str, dict] = {}
        for prec in blobs:
            with rep.progress(f"parity: {prec.value} TFLite on {len(x_test)} test images", len(x_test)) as tick:
                probs, scores, _ = parity.tflite_outputs(tmp / prec.filename, x_test, threads=opts.threads, on_progress=tick)
            results[prec.value] = {"probs": probs, "scores": scores, "size_bytes": len(blobs[prec]), "file": prec.filename, "sha256": metas[prec].sha256}
            if prec is Precision.float32:
                parity.check_float32(keras_probs, probs, files, path=run_dir / EXPORT_DIR / prec.filename)
        report = parity.build_report(
            y_test,
            classes,
            keras_probs,
            results,
            opts.max_drop,
            parity.keras_size(run_dir),
            keras_scores,
            other_score.threshold if other_score else None,
            offsets_test,
            other_score.nucleus_max if other_score else None,
        )
        report["run_dir"] = str(run_dir.resolve())
        report["edgecell_version"] = __version__
        report["notes"] = notes
        if cal is not None:
            report["calibration"] = cal.summary(classes)
        if io_int8 is not None:
            report["int8_io"] = {r: io_int8[r].to_dict() for r in ("input", "output")}
        for prec, m in metas.items():
            m.verification = parity.verification(report, prec.value)
            write_metadata(tmp / prec.filename, m)
        write_json(tmp / PARITY_FILE, report)
        if cal is not None and opts.calibration_out:  # before the export is swapped in: a refused copy leaves the old export
            calibration_out = cal_mod.copy_selection(cal, opts.calibration_out)

    outputs = {p.value: str(export_dir / p.filename) for p in blobs}
    outputs["parity"] = str(export_dir / PARITY_FILE)
    if cal is not None:
        outputs["calibration_manifest"] = str(export_dir / CALIBRATION_MANIFEST)
        if opts.calibration_out:
            outputs["calibration_out"] = str(calibration_out)
    report["outputs"] = outputs
    return report
