"""``edgecell scan``: find the white cells in photos of a smear, classify each, give the differential count.

A thin layer over :mod:`firmware_host.scan` (locating: :mod:`firmware_host.locate`); imports only
click, rich, numpy, Pillow and the TFLite interpreter, so it runs on the Pi without TensorFlow.
Results stream to --json / --csv as each field is done (temporary files renamed into place at
the end), and only counts stay in memory.
"""

from __future__ import annotations

import contextlib

import click
from rich.markup import escape
from rich.table import Table

from edgecell.console import human, progress, stderr_console
from edgecell.options import csv_option, json_option
from firmware_host.classify import MANY
from firmware_host.metadata import Precision
from firmware_host.runtime import DEFAULT_THRESHOLD
from firmware_host.scan import ScanJob, ScanOptions, ScanSummary

MAX_FIELD_ROWS = 50
"""At most this many fields are listed in the table (every field is in --json / --csv)."""


@click.command("scan", context_settings={"max_content_width": 100})
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, path_type=str),
    required=True,
    help="A model_<precision>.tflite (with its .json beside it) or an export folder.",
)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@json_option
@csv_option
@click.option(
    "--annotate",
    "annotate_dir",
    type=click.Path(file_okay=False, path_type=str),
    metavar="DIR",
    default=None,
    help="Write each field as a PNG into DIR with its cells boxed, coloured by class and labelled.",
)
@click.option("--report", "report_out", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the HTML review page to FILE.")
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Flag cells whose confidence is below this as 'uncertain - refer'.",
)
@click.option(
    "--cell-size",
    type=click.FloatRange(8.0, None),
    default=None,
    help="Expected white-cell diameter in pixels (default: 0.3 of each field's shorter side, as in 640x480 fields at 100x).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=None,
    help="Interpreter threads, in this process (default: all cores; 256 fields or more: one worker process per core, 1 thread each).",
)
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=None,
    help="Which model of an export folder to use (default: int8, else float32, else float16).",
)
@click.pass_context
def scan(ctx, model_path, paths, json_out, csv_out, annotate_dir, report_out, threshold, cell_size, threads, precision):
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
    opts = ScanOptions(
        model_path=model_path,
        paths=tuple(paths),
        json_out=json_out,
        csv_out=csv_out,
        annotate_dir=annotate_dir,
        report_out=report_out,
        threshold=threshold,
        cell_size=cell_size,
        threads=threads,
        precision=precision,
    )
    summary = run(opts)
    if summary.n_failed:
        ctx.exit(1)


def run(opts: ScanOptions) -> ScanSummary:
    """Scan, stream every field to --csv / --json / --annotate / --report, print the summary; return the tally."""
    if opts.json_out == "-" and opts.csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout ('-')")
    job = ScanJob(opts)
    con, err = human(opts.json_out == "-" or opts.csv_out == "-"), stderr_console
    clf = job.classifier
    con.print(
        f"Model [bold]{escape(str(clf.path))}[/bold] ({clf.precision.value}, {clf.input_size}x{clf.input_size}, "
        f"{len(clf.classes)} classes, SHA-256 verified) on {clf.backend.describe()}, {clf.threads} thread(s)",
        soft_wrap=True,
    )
    for exc in job.path_errors:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    n = len(job.paths)
    if job.processes:
        con.print(f"{n} fields: {job.workers} worker processes, each locating and classifying on 1 interpreter thread")
    rows: list[tuple[str, list[dict]]] = []
    with job:  # temporary files, renamed into place only if all goes well
        bar = progress(con, transient=True) if n > MANY else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("Scanning", total=n) if bar else None
            for res in job:
                if res.error is not None:
                    err.print(f"[red]error:[/red] {escape(res.file)}: {escape(res.error)}", soft_wrap=True, highlight=False)
                elif len(rows) < MAX_FIELD_ROWS:
                    rows.append((res.file, res.cells))
                if bar:
                    bar.advance(task)
    _print_summary(con, err, job.summary, rows, n)
    return job.summary


def _print_summary(con, err, s: ScanSummary, rows, n: int) -> None:
    from firmware_host.runtime import REVIEW_CLASSES

    if rows:
        table = Table(title="Fields" if n <= MAX_FIELD_ROWS else f"First {len(rows)} fields", title_justify="left")
        table.add_column("field", overflow="fold")
        table.add_column("cells", justify="right")
        table.add_column("found", overflow="fold")
        for file, cells in rows:
            found = ", ".join(f"{c['label']} {c['confidence']:.2f}" + (" (edge)" if c["edge"] else "") + (" !" if c["flag"] else "") for c in cells)
            table.add_row(escape(file), str(len(cells)), escape(found) or "[dim]no white cell[/dim]")
        con.print(table)
    d = s.to_dict()
    if s.n_cells:
        diff = Table(title="Differential count (cells cut by a field's border left out)", title_justify="left")
        diff.add_column("class")
        diff.add_column("count", justify="right")
        diff.add_column("%", justify="right")
        for c, count in s.predicted.items():
            mark = " [red](review)[/red]" if c in REVIEW_CLASSES else ""
            diff.add_row(escape(c) + mark, str(count), f"{d['differential_pct'][c]:.1f}")
        diff.add_row("[bold]total[/bold]", f"[bold]{s.n_counted}[/bold]", "100.0" if s.n_counted else "-")
        con.print(diff)
    con.print(
        f"{s.n_fields} fields scanned, {s.n_cells} white cells found ({s.n_edge} cut by the border), "
        f"{s.n_empty} without one. Flagged: [bold]{s.n_review + s.n_uncertain}[/bold] - {s.n_review} for haematologist review, "
        f"{s.n_uncertain} uncertain (confidence < {s.threshold:.2f}).",
        soft_wrap=True,
    )
    if s.n_fields:
        loc = d["locate_ms_per_field"]
        cls = d["classify_ms_per_cell"]
        con.print(
            f"Locating {loc:.1f} ms per field" + (f", classifying {cls:.1f} ms per cell" if cls is not None else "") + f"; {s.wall_s:.2f} s in all.",
            soft_wrap=True,
        )
    if s.n_failed:
        err.print(f"[red]{s.n_failed} input(s) could not be scanned[/red] (listed above).", soft_wrap=True)
