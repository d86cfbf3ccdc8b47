"""``edgecell scan``: options and printing over :mod:`firmware_host.scan` (no TensorFlow).

Locating: :mod:`firmware_host.locate`. Results stream to --json / --csv as each field is done
(temporary files renamed into place at the end), and only counts stay in memory.
"""

from __future__ import annotations

import click

from edgecell.options import (
    INPUT_PATH,
    FiniteFloatRange,
    csv_option,
    json_option,
    model_option,
    other_threshold_option,
    precision_option,
    threshold_option,
    worker_threads_option,
)
from edgecell.views import classify as common
from edgecell.views import scan as view
from firmware_host.locate import AUTO, MAX_CELL_SIZE, MIN_CELL_SIZE
from firmware_host.scan import ScanJob, ScanOptions, ScanSummary


class CellSize(FiniteFloatRange):
    """``--cell-size``: a diameter in pixels from :data:`MIN_CELL_SIZE` to :data:`MAX_CELL_SIZE`, or ``auto``."""

    name = "px|auto"

    def __init__(self):
        super().__init__(MIN_CELL_SIZE, MAX_CELL_SIZE)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        return super().convert(value, param, ctx)


@click.command("scan", context_settings={"max_content_width": 100})
@model_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=INPUT_PATH)
@json_option
@csv_option
@click.option(
    "--annotate",
    "annotate_dir",
    type=click.Path(file_okay=False, path_type=str),
    metavar="DIR",
    default=None,
    help="Write each field as a PNG into DIR with its cells boxed, coloured by class and labelled (DIR is replaced whole; a folder of other files is refused).",
)
@click.option("--report", "report_out", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the HTML review page to FILE.")
@threshold_option("cells")
@other_threshold_option
@click.option(
    "--cell-size",
    type=CellSize(),
    default=None,
    metavar="PX|auto",
    help=(
        "Expected white-cell diameter in pixels, or auto: measured from each field's red cells (default: 0.3 of each "
        "field's shorter side, as in 640x480 fields at 100x)."
    ),
)
@worker_threads_option("fields")
@precision_option
@click.pass_context
def scan(ctx, model_path, paths, json_out, csv_out, annotate_dir, report_out, threshold, other_threshold, cell_size, threads, precision):
    """Find the white cells in photos of a blood smear (fields of view), classify each, count them.

    Prints one row per field (cells found, their classes, flags), the differential count over
    all fields, and the flagged cells. Cells cut by a field's border are classified and listed
    (edge) but not counted in the differential. A field with no white cell is a normal result;
    a field that cannot be read is listed and skipped, and the exit code is then 1.

    \b
    Example:
      edgecell scan --model run/export fields/ --json scan.json --annotate boxes/
      edgecell scan --model run/export 'smear1/*.jpg' --csv cells.csv
    """
    opts = ScanOptions(model_path, tuple(paths), json_out, csv_out, annotate_dir, report_out, threshold, cell_size, threads, precision, other_threshold)
    summary = run(opts)
    if summary.n_failed:
        ctx.exit(1)


def run(opts: ScanOptions) -> ScanSummary:
    """Scan, stream every field to --csv / --json / --annotate / --report, print the summary; return the tally."""
    with ScanJob(opts) as job:  # temporary files, renamed into place only if all goes well
        con, err = common.run_job(job, "fields", "locating and classifying", "Scanning", lambda res: None if res.error is None else f"{res.file}: {res.error}")
    view.print_summary(con, err, job.summary)
    return job.summary
