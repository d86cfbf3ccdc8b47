"""``edgecell convert``: options and printing over :func:`converters.export.export_run`."""

from __future__ import annotations

from pathlib import Path

import click

from converters.calibration import DEFAULT_PER_CLASS, MAX_PER_CLASS
from converters.export import EXPORT_DIR
from edgecell.options import PERCENTAGE_POINTS, check_outputs, data_option, emit_json, json_option, seeded
from firmware_host.metadata import DEFAULT_MAX_DROP


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
    type=click.IntRange(1, MAX_PER_CLASS),
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
    type=PERCENTAGE_POINTS,
    default=DEFAULT_MAX_DROP,
    show_default=True,
    help="Fail (exit 1) when a quantised model's test accuracy is more than this many percentage points below the Keras model's.",
)
@seeded("the calibration pick")
@data_option(required=False, help="Data folder (default: the one recorded in the run's metadata.json).")
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
    from converters.export import ExportOptions, export_run, reads
    from converters.parity import parity_table
    from edgecell.console import RichReporter, human
    from firmware_host.atomic import private_tempdir
    from firmware_host.errors import EdgecellError

    if calibration and calib_size:
        raise click.UsageError("--calib-size picks images from the training split; it cannot be used with --calibration")
    if (calibration or calib_size or calibration_out) and not int8:
        raise click.UsageError("--calibration, --calib-size and --calibration-out only apply with --int8")
    con = human(json_out == "-")
    check_outputs({"--json": json_out}, reads(run_dir, calibration, data_dir), folders={"--calibration-out": calibration_out})
    opts = ExportOptions(
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
    with private_tempdir():  # TensorFlow's SavedModel and autograph files, removed however convert ends
        report = export_run(opts, RichReporter(con))
    con.print(parity_table(report))
    con.print(f"wrote {Path(run_dir) / EXPORT_DIR} ({', '.join(Path(p).name for k, p in report['outputs'].items() if k not in ('calibration_out',))})")
    if "calibration_out" in report["outputs"]:
        con.print(f"copied the calibration images to {report['outputs']['calibration_out']}")
    emit_json(json_out, report)
    failed = [k for k, m in report["models"].items() if m.get("status") == "failed"]
    if failed:
        from converters.parity import failure_reason

        k = failed[0]
        raise EdgecellError(
            f"{failure_reason(report, k)}; the model was written but marked failed in its sidecar",
            Path(report["outputs"][k]),
        )
