"""``edgecell classify``: options and printing over :mod:`firmware_host.classify` (no TensorFlow)."""

from __future__ import annotations

import contextlib

import click

from edgecell.console import human, progress, stderr_console
from edgecell.options import INPUT_PATH, PROBABILITY, allow_unverified_option, csv_option, json_option, report_option
from edgecell.views import classify as view
from firmware_host.classify import MANY, ClassifyJob, ClassifyOptions, ClassifySummary
from firmware_host.errors import ImageError
from firmware_host.metadata import Precision
from firmware_host.runtime import DEFAULT_THRESHOLD


@click.command("classify", context_settings={"max_content_width": 100})
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, path_type=str),
    required=True,
    help="A model_<precision>.tflite (with its .json beside it) or an export folder.",
)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=INPUT_PATH)
@json_option
@csv_option
@report_option
@click.option(
    "--threshold",
    type=PROBABILITY,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Flag predictions whose confidence is below this as 'uncertain - refer'.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=None,
    help="Interpreter threads, in this process (default: all cores; 256 images or more: one worker process per core, 1 thread each).",
)
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=None,
    help="Which model of an export folder to use (default: int8, else float32, else float16).",
)
@allow_unverified_option
@click.pass_context
def classify(ctx, model_path, paths, json_out, csv_out, report_out, threshold, threads, precision, allow_unverified):
    """Classify cell images (files, folders, glob patterns) and flag those a person should see.

    Prints one row per image (predicted class, confidence, top-3, flag), the differential count
    per class, latency, and - when images sit in folders named after classes - accuracy,
    macro-F1 and the confusion matrix. Myeloblasts and erythroblasts are always flagged for a
    haematologist; predictions below --threshold are flagged as uncertain. Unreadable images are
    listed and skipped; the exit code is then 1.

    \b
    Example:
      edgecell classify --model run/export images/
      edgecell classify --model run/export/model_int8.tflite 'slides/**/*.jpg' --csv results.csv
      edgecell classify --model run/export data/ --json - > results.json
      edgecell classify --model run/export slide7/ --report slide7.html
    """
    opts = ClassifyOptions(
        model_path=model_path,
        paths=tuple(paths),
        json_out=json_out,
        csv_out=csv_out,
        threshold=threshold,
        threads=threads,
        precision=precision,
        report_out=report_out,
        allow_unverified=allow_unverified,
    )
    summary = run(opts)
    if summary.failed:
        ctx.exit(1)


def run(opts: ClassifyOptions) -> ClassifySummary:
    """Classify, stream every result to --csv / --json, print the summary for people; return the tally."""
    job = ClassifyJob(opts)
    con, err = human(opts.json_out == "-" or opts.csv_out == "-"), stderr_console
    view.print_header(con, job)
    view.print_warnings(err, job)
    for exc in job.path_errors:
        view.print_error(err, exc)
    if job.processes:
        con.print(f"{len(job.paths)} images: {job.workers} worker processes, each decoding and classifying on 1 interpreter thread")
    with job:  # temporary files, renamed into place only if all goes well
        bar = progress(con, transient=True) if len(job.paths) > MANY else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("Classifying", total=len(job.paths)) if bar else None
            for _, result in job:
                if isinstance(result, ImageError):
                    view.print_error(err, result)
                if bar:
                    bar.advance(task)
        view.print_summary(con, err, job.summary, opts)
    return job.summary
