"""edgecell convert"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import click

from converters.calibration import DEFAULT_PER_CLASS
from edgecell.options import emit_json, json_option, seed_option

EXPORT_DIR = "export"
CALIBRATION_MANIFEST = "calibration_manifest.csv"
PARITY_FILE = "parity.json"


@dataclass
class ConvertOptions:
    """What ``edgecell convert`` was asked to do (see the command's help)."""

    run_dir: str
    int8: bool = False
    float16: bool = False
    calibration: str | None = None
    calib_size: int | None = None
    calibration_out: str | None = None
    max_drop: float = 1.0
    seed: int = 42
    data_dir: str | None = None
    threads: int | None = None


@contextlib.contextmanager
def _status(con, text: str):
    """A spinner that keeps turning while the converter's fds 1 and 2 point at /dev/null.

    On a terminal the spinner writes to a duplicate of the console's file descriptor, which
    :func:`edgecell.tfutil.quiet_fds` leaves alone; elsewhere (pipes, tests) it is the console itself.
    """
    from rich.console import Console

    own = None
    try:
        fd = con.file.fileno() if con.is_terminal else None
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd in (1, 2):
        own = Console(file=os.fdopen(os.dup(fd), "w"), force_terminal=True, highlight=False)
    try:
        with (own or con).status(text):
            yield
    finally:
        if own is not None:
            own.file.close()


def export_run(opts: ConvertOptions, con) -> dict:
    """Convert, verify and write ``RUN_DIR/export``; returns the parity report (with ``outputs``).

    The export folder is built with :func:`firmware_host.atomic.staged_dir`: an interrupted or
    failed conversion (including a float32 parity failure) leaves the previous export intact. A
    quantised model that fails the ``--max-drop`` check is still written, marked failed in its
    sidecar; the caller turns the report's status into the exit code.
    """
    import numpy as np

    from converters import calibration as cal_mod
    from converters import parity, tflite
    from edgecell import __version__
    from edgecell import data as data_mod
    from edgecell.console import progress, warn
    from edgecell.train import load_keras, predict, read_run
    from firmware_host import preprocess
    from firmware_host.atomic import check_stageable, staged_dir, write_bytes, write_json
    from firmware_host.errors import DataError
    from firmware_host.metadata import ModelMetadata, Precision, Quantization, sha256_file, write_metadata

    run_dir = Path(opts.run_dir)
    meta = read_run(run_dir)
    classes = list(meta["classes"])
    size = int(meta["input_size"])
    temperature = float(meta.get("temperature", 1.0))
    roots = data_mod.run_sources(meta.get("dataset", {}), [opts.data_dir] if opts.data_dir else [])
    if not (run_dir / "split.csv").is_file():
        raise DataError("split.csv is missing from the run folder (the test split and calibration need it)", run_dir)
    check_stageable(run_dir / EXPORT_DIR, marker=Precision.float32.filename)  # refuse an unwritable export before converting

    # 1. the calibration set first: a bad --calibration folder fails in a second, before TensorFlow loads
    cal = None
    if opts.int8:
        with progress(con, transient=True) as bar:
            task = bar.add_task("reading calibration images", total=None)
            tick = lambda d, n: bar.update(task, completed=d, total=n)  # noqa: E731
            if opts.calibration:
                cal = cal_mod.from_folder(opts.calibration, classes, size, on_progress=tick)
            else:
                cal = cal_mod.from_run(run_dir, roots, classes, size, opts.calib_size or cal_mod.DEFAULT_PER_CLASS, opts.seed, on_progress=tick)
        for path, reason in cal.skipped:
            warn(f"skipped calibration image {path}: {reason}")
        for w in cal.warnings:
            warn(w)

    # 2. the test split and the Keras model's answers on it
    rows = [r for r in data_mod.read_manifest(run_dir / "split.csv") if r.split == "test"]
    with progress(con, transient=True) as bar:
        task = bar.add_task("reading test images", total=len(rows))
        x_test, y_test, rows = data_mod.load_from_manifest(roots, rows, size, classes, on_progress=lambda d, n: bar.update(task, completed=d))
    if len(x_test) == 0:
        raise DataError("the run's test split is empty; nothing to verify the conversion on", run_dir / "split.csv")
    files = [r.file for r in rows]
    with _status(con, "loading the Keras model"):
        model = load_keras(run_dir)
        keras_probs = predict(model, x_test).astype(np.float64)
    n_weights = tflite.weight_count(model)

    # 3. conversions, each checked before anything is written
    wanted = [Precision.float32] + ([Precision.float16] if opts.float16 else []) + ([Precision.int8] if opts.int8 else [])
    blobs: dict[Precision, bytes] = {}
    for prec in wanted:
        with _status(con, f"converting to {prec.value} TFLite" + (f" (calibrating on {len(cal.items)} images)" if prec is Precision.int8 else "")):
            data = tflite.convert(model, prec, cal.representative_dataset() if prec is Precision.int8 else None)
        tflite.check_size(data, prec, n_weights, name=prec.filename)
        blobs[prec] = data
        con.print(f"converted {prec.value}: {len(data):,} bytes ({len(data) / 1024:.1f} KB)")
    io_int8 = tflite.check_int8(blobs[Precision.int8], Precision.int8.filename) if opts.int8 else None
    notes = []
    if io_int8 is not None:
        q = io_int8["input"]
        lo, hi = q.scale * (-128 - q.zero_point), q.scale * (127 - q.zero_point)
        if lo > 0.5 or hi < 254.5:
            notes.append(f"the int8 input covers pixel values {lo:.0f}-{hi:.0f} only (calibration images never used the full 0-255 range); others are clipped")
    for n in notes:
        warn(n)

    source = {
        "run_dir": str(run_dir.resolve()),
        "run_name": run_dir.resolve().name,
        "keras_model": "model.keras",
        "keras_sha256": sha256_file(run_dir / "model.keras"),
        "dataset_path": str(Path(next(iter(roots.values()))).resolve()),
        "dataset_sources": {k: str(Path(v).resolve()) for k, v in roots.items() if k},
        "dataset_fingerprint": meta.get("dataset", {}).get("fingerprint"),
        "split_sha256": sha256_file(run_dir / "split.csv"),
        "run_seed": meta.get("seed"),
    }
    export_dir = run_dir / EXPORT_DIR
    with staged_dir(export_dir, marker=Precision.float32.filename) as tmp:
        metas: dict[Precision, ModelMetadata] = {}
        for prec, data in blobs.items():
            path = write_bytes(tmp / prec.filename, data)
            q_in = q_out = None
            if prec is Precision.int8:
                q_in = Quantization(io_int8["input"].scale, io_int8["input"].zero_point)
                q_out = Quantization(io_int8["output"].scale, io_int8["output"].zero_point)
            src = dict(source)
            if prec is Precision.int8:
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
                temperature=temperature,
                edgecell_version=__version__,
                source=src,
                verification={"status": "pending"},
                lab_check=dict(meta.get("lab_check") or {}),
            )
            write_metadata(path, metas[prec])
        if cal is not None:
            cal_mod.write_manifest(tmp / CALIBRATION_MANIFEST, cal.items)

        # 4. parity, through the same Classifier the Pi uses
        results: dict[str, dict] = {}
        with progress(con, transient=True) as bar:
            for prec in blobs:
                task = bar.add_task(f"parity: {prec.value} TFLite on {len(x_test)} test images", total=len(x_test))
                probs, _ = parity.tflite_probs(
                    tmp / prec.filename, x_test, threads=opts.threads, on_progress=lambda d, task=task: bar.update(task, completed=d)
                )
                results[prec.value] = {"probs": probs, "size_bytes": len(blobs[prec]), "file": prec.filename, "sha256": metas[prec].sha256}
                if prec is Precision.float32:
                    parity.check_float32(keras_probs, probs, files, path=run_dir / EXPORT_DIR / prec.filename)
        report = parity.build_report(y_test, classes, keras_probs, results, opts.max_drop, parity.keras_size(run_dir))
        report["run_dir"] = str(run_dir.resolve())
        report["edgecell_version"] = __version__
        report["notes"] = notes
        if cal is not None:
            report["calibration"] = cal.summary(classes)
        if io_int8 is not None:
            report["int8_io"] = {r: {"dtype": "int8", "scale": io_int8[r].scale, "zero_point": io_int8[r].zero_point} for r in ("input", "output")}
        for prec, m in metas.items():
            m.verification = parity.verification(report, prec.value)
            write_metadata(tmp / prec.filename, m)
        write_json(tmp / PARITY_FILE, report)

    outputs = {p.value: str(export_dir / p.filename) for p in blobs}
    outputs["parity"] = str(export_dir / PARITY_FILE)
    if cal is not None:
        outputs["calibration_manifest"] = str(export_dir / CALIBRATION_MANIFEST)
        if opts.calibration_out:
            outputs["calibration_out"] = str(cal_mod.copy_selection(cal, opts.calibration_out))
    report["outputs"] = outputs
    return report


def _max_drop(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter("must be 0 or more percentage points")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option(
    "--int8",
    "int8",
    is_flag=True,
    help="Also write a full-integer int8 model (int8 weights, activations, input and output), calibrated on representative images.",
)
@click.option("--float16", "float16", is_flag=True, help="Also write a float16-weight model.")
@click.option(
    "--calibration",
    "calibration",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    default=None,
    help="Calibrate --int8 on this curated folder (manifest.csv with file,class[,sha256], class sub-folders, or a flat folder of images) instead of the run's training split.",
)
@click.option(
    "--calib-size",
    "calib_size",
    type=click.IntRange(1, 10000),
    default=None,
    help=f"Images per class picked (stratified, seeded) from the run's training split to calibrate --int8.  [default: {DEFAULT_PER_CLASS}]",
)
@click.option(
    "--calibration-out",
    "calibration_out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Also copy the calibration images used, with a manifest.csv, to this folder (a start for a curated --calibration folder).",
)
@click.option(
    "--max-drop",
    "max_drop",
    type=float,
    default=1.0,
    show_default=True,
    callback=_max_drop,
    help="Fail (exit 1) when a quantised model's test accuracy is more than this many percentage points below the Keras model's.",
)
@seed_option
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    default=None,
    help="Data folder (default: the one recorded in the run's metadata.json).",
)
@json_option
def convert(run_dir, int8, float16, calibration, calib_size, calibration_out, max_drop, seed, data_dir, json_out):
    """Convert a run's model to TFLite, verify it against Keras, and write RUN_DIR/export.

    Always writes model_float32.tflite; --int8 adds a full-integer model calibrated on 50
    training images per class (--calib-size), --float16 a float16 one. Each model gets a
    model_<precision>.json sidecar (classes, input size, preprocessing, quantisation, temperature,
    SHA-256, source), so copying the export folder to a Pi is enough to classify. Every model is
    then checked on the run's test split through the Pi's own runtime (parity.json): float32 must
    match Keras within 1e-4, and a quantised model may lose at most --max-drop accuracy points.

    \b
    Example:
      edgecell convert runs/cells --int8
      edgecell convert runs/cells --int8 --calib-size 100 --seed 7 --json parity.json
      edgecell convert runs/cells --int8 --calibration ~/cells/calib-lab2
    """
    from converters.parity import parity_table
    from edgecell.console import human
    from firmware_host.errors import EdgecellError

    if calibration and calib_size:
        raise click.UsageError("--calib-size picks images from the training split; it cannot be used with --calibration")
    if (calibration or calib_size or calibration_out) and not int8:
        raise click.UsageError("--calibration, --calib-size and --calibration-out only apply with --int8")
    con = human(json_out == "-")
    opts = ConvertOptions(
        run_dir=run_dir,
        int8=int8,
        float16=float16,
        calibration=calibration,
        calib_size=calib_size,
        calibration_out=calibration_out,
        max_drop=max_drop,
        seed=seed,
        data_dir=data_dir,
    )
    report = export_run(opts, con)
    con.print(parity_table(report))
    con.print(f"wrote {Path(run_dir) / EXPORT_DIR} ({', '.join(Path(p).name for k, p in report['outputs'].items() if k not in ('calibration_out',))})")
    if "calibration_out" in report["outputs"]:
        con.print(f"copied the calibration images to {report['outputs']['calibration_out']}")
    emit_json(json_out, report)
    failed = [k for k, m in report["models"].items() if m.get("status") == "failed"]
    if failed:
        k = failed[0]
        m = report["models"][k]
        raise EdgecellError(
            f"{k} accuracy {100 * m['accuracy']:.2f}% is {m['accuracy_drop_pp']:.2f} points below the Keras model's "
            f"{100 * report['models']['keras']['accuracy']:.2f}% (allowed: --max-drop {max_drop:g}); "
            f"the model was written but marked failed in its sidecar",
            Path(report["outputs"][k]),
        )
