"""``edgecell scan``: find the white cells in photos of a smear, classify each, give the differential count.

A thin layer over :mod:`firmware_host.scan` (locating: :mod:`firmware_host.locate`); imports only
click, rich, numpy, Pillow and the TFLite interpreter, so it runs on the Pi without TensorFlow.
Results stream to --json / --csv as each field is done (temporary files renamed into place at
the end), and only counts stay in memory.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click
from rich.markup import escape
from rich.table import Table

from edgecell.commands.classify import JSON_INDENT_MAX_RESULTS, MANY, _JsonStream, _text_output
from edgecell.console import human, progress, stderr_console
from edgecell.options import csv_option, json_option
from firmware_host.metadata import Precision
from firmware_host.runtime import DEFAULT_THRESHOLD

MAX_FIELD_ROWS = 50
"""At most this many fields are listed in the table (every field is in --json / --csv)."""


@dataclass
class ScanOptions:
    """What ``edgecell scan`` was asked to do.

    Attributes:
        model_path: a ``model_<precision>.tflite`` (with its ``.json``) or an export folder.
        paths: field-of-view images: files, folders, glob patterns.
        json_out: JSON report destination ('-' = stdout) or None.
        csv_out: one CSV row per cell ('-' = stdout) or None.
        annotate_dir: folder for PNGs of the fields with their boxes, or None.
        report_out: the HTML review page, or None.
        threshold: cells classified less confidently than this are flagged as uncertain.
        cell_size: expected white-cell diameter in pixels (None: a fraction of each field's shorter side).
        threads: interpreter threads (None: all cores; long lists use worker processes instead).
        precision: which model of an export folder to use.
    """

    model_path: str
    paths: tuple[str, ...]
    json_out: str | None = None
    csv_out: str | None = None
    annotate_dir: str | None = None
    report_out: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    cell_size: float | None = None
    threads: int | None = None
    precision: str | None = None


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


def run(opts: ScanOptions):
    """Scan, stream every field to --csv / --json / --annotate, print the summary; return the :class:`ScanSummary`."""
    from firmware_host.atomic import check_writable
    from firmware_host.decode import default_workers, use_processes
    from firmware_host.paths import expand_paths
    from firmware_host.runtime import Classifier
    from firmware_host.scan import ScanSummary, scan_many

    if opts.json_out == "-" and opts.csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout ('-')")
    for dest in (opts.json_out, opts.csv_out, opts.report_out):
        if dest and dest != "-":
            check_writable(dest)
    report = _report_writer(opts) if opts.report_out else None
    con = human(opts.json_out == "-" or opts.csv_out == "-")
    err = stderr_console

    clf = Classifier.load(opts.model_path, threads=opts.threads, precision=opts.precision)
    classes = clf.classes
    con.print(
        f"Model [bold]{escape(str(clf.path))}[/bold] ({clf.precision.value}, {clf.input_size}x{clf.input_size}, "
        f"{len(classes)} classes, SHA-256 verified) on {clf.backend.describe()}, {clf.threads} thread(s)",
        soft_wrap=True,
    )
    expanded = expand_paths(opts.paths)
    n = len(expanded.paths)
    summary = ScanSummary(classes=list(classes), threshold=opts.threshold)
    for exc in expanded.errors:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        summary.failed.append({"file": exc.path, "error": exc.reason})
        summary.n_failed += 1
    processes = None if opts.threads is None else False
    if use_processes(expanded.paths, default_workers(), processes):
        con.print(f"{n} fields: {default_workers()} worker processes, each locating and classifying on 1 interpreter thread")
    annotator = _Annotator(opts.annotate_dir, expanded.paths, classes) if opts.annotate_dir else None
    if report is not None:
        report.start(clf, n)

    rows: list[tuple[str, list[dict]]] = []
    with contextlib.ExitStack() as outputs:
        csv_out = _CellCsv(outputs.enter_context(_text_output(opts.csv_out))) if opts.csv_out else None
        json_out = (
            _JsonStream(
                outputs.enter_context(_text_output(opts.json_out)),
                {"model": clf.info(), "threshold": opts.threshold, "cell_size": opts.cell_size},
                indent=2 if n <= JSON_INDENT_MAX_RESULTS else None,
            )
            if opts.json_out
            else None
        )
        t0 = time.perf_counter()
        bar = progress(con, transient=True) if n > MANY else None
        task = bar.add_task("Scanning", total=n) if bar else None
        if bar:
            bar.start()
        try:
            for res in scan_many(clf, expanded.paths, opts.threshold, opts.cell_size, processes=processes):
                summary.add(res)
                if res.error is not None:
                    err.print(f"[red]error:[/red] {escape(res.file)}: {escape(res.error)}", soft_wrap=True, highlight=False)
                else:
                    if len(rows) < MAX_FIELD_ROWS:
                        rows.append((res.file, res.cells))
                    if json_out:
                        json_out.add(res.to_dict())
                    if annotator or report is not None:
                        _pictures(res, annotator, report, classes)
                if csv_out:
                    csv_out.add(res)
                if bar:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
        summary.wall_s = time.perf_counter() - t0
        if json_out:
            json_out.close({"failed": summary.failed, "summary": summary.to_dict()})
    if report is not None:
        report.finish(summary)
    _print_summary(con, err, summary, rows, n, opts)
    return summary


def _pictures(res, annotator, report, classes) -> None:
    """The field's pixels again (in this process: worker processes return only results) for --annotate / --report."""
    from firmware_host.errors import ImageError
    from firmware_host.preprocess import read_bytes
    from firmware_host.scan import decode_field

    try:
        rgb = decode_field(read_bytes(res.file), res.file)
    except ImageError as exc:  # changed or removed since it was scanned
        stderr_console.print(f"[yellow]warning:[/yellow] {escape(str(exc))} (no picture written)", soft_wrap=True)
        return
    if annotator:
        annotator.write(res, rgb)
    if report is not None:
        report.add(res, rgb)


class _Annotator:
    """Writes ``<stem>.png`` per field into a folder, never over an input and never twice in one run."""

    def __init__(self, folder: str, inputs, classes):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.classes = list(classes)
        self.inputs = {os.path.realpath(p) for p in inputs}
        self.used: set[str] = set()

    def target(self, file: str) -> Path:
        stem = Path(file).stem or "field"
        name, k = f"{stem}.png", 1
        while name in self.used or os.path.realpath(self.folder / name) in self.inputs:
            name, k = f"{stem}-{k}.png", k + 1
        self.used.add(name)
        return self.folder / name

    def write(self, res, rgb) -> None:
        import io

        from firmware_host.atomic import write_bytes
        from firmware_host.scan import annotate

        buf = io.BytesIO()
        annotate(rgb, res.cells, self.classes).save(buf, format="PNG")
        write_bytes(self.target(res.file), buf.getvalue())


class _ReportHook:
    """``--report``: the review page of :mod:`firmware_host.report`, in scan mode."""

    def __init__(self, dest: str, module):
        self.dest, self.mod, self.writer = dest, module, None

    def start(self, clf, n: int) -> None:
        from edgecell import __version__
        from firmware_host.runtime import REVIEW_CLASSES

        header = self.mod.header_for(
            clf.info(),
            classes=clf.classes,
            threshold=0.0,
            n_images=n,
            edgecell_version=__version__,
            mode="scan",
            review_classes=sorted(REVIEW_CLASSES),
        )
        self.writer = self.mod.ReportWriter(header)

    def add(self, res, rgb) -> None:
        from firmware_host.scan import cell_region

        k = self.writer.add_field(res.file, rgb)
        for c in res.cells:
            x0, y0, x1, y1 = cell_region(c["box"], res.width, res.height)
            thumb = self.mod.thumbnail_jpeg(rgb[y0:y1, x0:x1])
            self.writer.add_cell(res.file, c["label"], c["confidence"], c["flag"], None, thumb, field=k, box=self.mod.Box(*c["box"]))

    def finish(self, summary) -> None:
        self.writer.header.threshold = summary.threshold
        self.writer.header.n_failed = summary.n_failed
        try:
            self.writer.write(self.dest)
        finally:
            self.writer.close()


def _report_writer(opts: ScanOptions) -> _ReportHook:
    import importlib.util

    if importlib.util.find_spec("firmware_host.report") is None:
        raise click.UsageError("--report needs the review page (firmware_host.report), which this edgecell does not have yet")
    import importlib

    return _ReportHook(opts.report_out, importlib.import_module("firmware_host.report"))


CSV_COLUMNS = ["file", "width", "height", "cell", "x0", "y0", "x1", "y1", "label", "confidence", "flag", "edge", "error"]


class _CellCsv:
    """One CSV row per cell; a field with no cell gets one row with an empty ``cell``; a failed field its error."""

    def __init__(self, fh: IO[str]):
        self.w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        self.w.writeheader()

    def add(self, res) -> None:
        if res.error is not None:
            self.w.writerow({"file": res.file, "error": res.error})
            return
        if not res.cells:
            self.w.writerow({"file": res.file, "width": res.width, "height": res.height})
        for i, c in enumerate(res.cells):
            x0, y0, x1, y1 = c["box"]
            self.w.writerow(
                {
                    "file": res.file,
                    "width": res.width,
                    "height": res.height,
                    "cell": i,
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                    "label": c["label"],
                    "confidence": f"{c['confidence']:.6f}",
                    "flag": c["flag"],
                    "edge": int(c["edge"]),
                    "error": "",
                }
            )


def _print_summary(con, err, s, rows, n: int, opts: ScanOptions) -> None:
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
