"""``edgecell classify``: options and printing over :mod:`firmware_host.classify` (no TensorFlow)."""

from __future__ import annotations

import click

from edgecell.options import (
    INPUT_PATH,
    allow_unverified_option,
    csv_option,
    json_option,
    model_option,
    other_threshold_option,
    precision_option,
    report_option,
    threshold_option,
    worker_threads_option,
)
from edgecell.views import classify as view
from firmware_host.classify import ClassifyJob, ClassifyOptions, ClassifySummary
from firmware_host.errors import ImageError


@click.command("classify", context_settings={"max_content_width": 100})
@model_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=INPUT_PATH)
@json_option
@csv_option
@report_option
@threshold_option("predictions")
@other_threshold_option
@worker_threads_option("images")
@precision_option
@allow_unverified_option
@click.pass_context
def classify(ctx, model_path, paths, json_out, csv_out, report_out, threshold, other_threshold, threads, precision, allow_unverified):
    """Classify cell images (files, folders, glob patterns) and flag those a person should see.

    Prints one row per image (predicted class, confidence, top-3, flag), the differential count
    per class, latency, and - when images sit in folders named after classes - accuracy,
    macro-F1 and the confusion matrix. Myeloblasts and erythroblasts are always flagged for a
    haematologist; predictions below --threshold are flagged as uncertain. Cells of no type the
    model knows (by class, or by a never-seen score above --other-threshold) are labelled 'other'
    and counted in a row of their own. Unreadable images are listed and skipped; the exit code is then 1.

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
        other_threshold=other_threshold,
    )
    summary = run(opts)
    if summary.failed:
        ctx.exit(1)


def run(opts: ClassifyOptions) -> ClassifySummary:
    """Classify, stream every result to --csv / --json, print the summary for people; return the tally."""
    with ClassifyJob(opts) as job:  # temporary files, renamed into place only if all goes well
        con, err = view.run_job(job, "images", "decoding and classifying", "Classifying", lambda item: item[1] if isinstance(item[1], ImageError) else None)
        view.print_summary(con, err, job.summary, opts)
    return job.summary
