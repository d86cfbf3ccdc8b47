"""``edgecell classify``: classify blood-cell images with a converted model, without TensorFlow.

Imports only click, rich, numpy, Pillow and the TFLite interpreter (via :mod:`firmware_host`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from edgecell.console import human, progress, stderr_console
from edgecell.options import csv_option, json_option, threads_option
from firmware_host.metadata import Precision

MANY = 50
"""Above this many images the table lists only flagged images (and a progress bar is shown)."""
MAX_TABLE_ROWS = 100
"""At most this many rows in the flagged-only table; every result is in --json/--csv."""


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _common_root(paths: list[str]) -> str:
    """The folder all ``paths`` share (shown once under the table instead of on every row), or ""."""
    try:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    except ValueError:  # different drives
        return ""
    return "" if root in ("", os.sep) else root


def _flag_markup(flag: str) -> str:
    if not flag:
        return ""
    colour = "yellow" if flag.startswith("uncertain") else "red"
    return f"[{colour}]{escape(flag)}[/{colour}]"


@click.command("classify", context_settings={"max_content_width": 100})
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
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.7,
    show_default=True,
    help="Flag predictions whose confidence is below this as 'uncertain - refer'.",
)
@threads_option
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=None,
    help="Which model of an export folder to use (default: int8, else float32, else float16).",
)
@click.pass_context
def classify(ctx, model_path, paths, json_out, csv_out, threshold, threads, precision):
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
    """
    from firmware_host.paths import expand_paths, label_for
    from firmware_host.runtime import (
        FLAG_REVIEW,
        FLAG_UNCERTAIN,
        REVIEW_CLASSES,
        Classifier,
        classification_metrics,
        latency_summary,
        triage,
    )

    if json_out == "-" and csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout ('-')")
    from firmware_host.atomic import check_writable

    for dest in (json_out, csv_out):
        if dest and dest != "-":
            check_writable(dest)  # before the work, so results are never computed only to be lost
    con = human(json_out == "-" or csv_out == "-")
    err = stderr_console

    clf = Classifier.load(model_path, threads=threads, precision=precision)
    classes = clf.classes
    info = clf.info()
    con.print(
        f"Model [bold]{escape(str(clf.path))}[/bold] ({clf.precision.value}, {clf.input_size}x{clf.input_size}, "
        f"{len(classes)} classes, SHA-256 verified) on {clf.backend.describe()}, {clf.threads} thread(s)",
        soft_wrap=True,
    )

    expanded = expand_paths(paths)
    failed: list[dict] = []
    for exc in expanded.errors:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        failed.append({"path": exc.path, "error": exc.reason})

    n = len(expanded.paths)
    results: list[dict] = []
    preds = []
    t0 = time.perf_counter()
    bar = progress(con, transient=True) if n > MANY else None
    task = bar.add_task("Classifying", total=n) if bar else None
    if bar:
        bar.start()
    try:
        for path, res in clf.classify_many(expanded.paths):
            if isinstance(res, Exception):
                err.print(f"[red]error:[/red] {escape(str(res))}", soft_wrap=True, highlight=False)
                failed.append({"path": path, "error": res.reason})
            else:
                flag = triage(res, threshold)
                truth = label_for(path, classes)
                row = res.to_dict(classes)
                row.update(flag=flag, true_label=truth, correct=None if truth is None else truth == res.label)
                results.append(row)
                preds.append(res)
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    wall = time.perf_counter() - t0

    # -- summary numbers -------------------------------------------------------------------------
    counts = Counter(r["label"] for r in results)
    n_ok = len(results)
    differential = {c: counts.get(c, 0) for c in classes}
    n_review = sum(r["flag"] == FLAG_REVIEW for r in results)
    n_uncertain = sum(r["flag"] == FLAG_UNCERTAIN for r in results)
    labelled = [r for r in results if r["true_label"] is not None]
    metrics = None
    if labelled:
        metrics = classification_metrics([r["true_label"] for r in labelled], [r["label"] for r in labelled], classes)
        metrics["n_unlabelled"] = n_ok - len(labelled)
    pre = latency_summary([p.preprocess_ms for p in preds])
    inf = latency_summary([p.inference_ms for p in preds])
    latency = {
        "preprocess_ms": pre,
        "inference_ms": inf,
        "wall_s": wall,
        "images_per_s": (n_ok / wall) if wall > 0 and n_ok else None,
    }
    summary = {
        "n_inputs": n + len(expanded.errors),
        "n_images": n,
        "n_classified": n_ok,
        "n_failed": len(failed),
        "threshold": threshold,
        "differential": differential,
        "differential_pct": {c: (100.0 * v / n_ok if n_ok else 0.0) for c, v in differential.items()},
        "flagged": {"review": n_review, "uncertain": n_uncertain, "total": n_review + n_uncertain},
        "review_classes": sorted(REVIEW_CLASSES),
    }

    # -- human output ----------------------------------------------------------------------------
    show_truth = bool(labelled)
    rows = results
    note = None
    if n_ok > MANY:
        flagged_rows = [r for r in results if r["flag"]]
        rows = flagged_rows[:MAX_TABLE_ROWS]
        more = len(flagged_rows) - len(rows)
        note = (
            f"{n_ok} images classified: the table lists only the {len(flagged_rows)} flagged ones"
            + (f" (first {MAX_TABLE_ROWS}; {more} more)" if more > 0 else "")
            + "; every result is in --json / --csv."
        )
    if rows:
        root = _common_root([r["path"] for r in results])
        table = Table(
            title="Flagged images" if note else "Results",
            title_justify="left",
            caption=f"files under {escape(root)}" if root else None,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
        )
        table.add_column("file", overflow="fold", min_width=24)
        table.add_column("predicted", overflow="fold")
        table.add_column("conf", justify="right")
        table.add_column("top-3", overflow="fold", min_width=19)
        table.add_column("flag", overflow="fold")
        if show_truth:
            table.add_column("ok", justify="center")  # predicted == folder label (the folder is shown in "file")
        for r in rows:
            cells = [
                escape(os.path.relpath(r["path"], root) if root else r["path"]),
                escape(r["label"]),
                f"{r['confidence']:.2f}",
                escape("\n".join(f"{t['prob']:.2f} {t['label']}" for t in r["top3"])),
                _flag_markup(r["flag"]),
            ]
            if show_truth:
                t = r["true_label"]
                cells.append("" if t is None else ("[green]yes[/green]" if r["correct"] else "[red]no[/red]"))
            table.add_row(*cells)
        con.print(table)
    if note:
        con.print(note, soft_wrap=True)

    if n_ok:
        diff = Table(title="Differential count", title_justify="left")
        diff.add_column("class")
        diff.add_column("count", justify="right")
        diff.add_column("%", justify="right")
        for c in classes:
            mark = " [red](review)[/red]" if c in REVIEW_CLASSES else ""
            diff.add_row(escape(c) + mark, str(differential[c]), f"{summary['differential_pct'][c]:.1f}")
        diff.add_row("[bold]total[/bold]", f"[bold]{n_ok}[/bold]", "100.0")
        con.print(diff)
        con.print(
            f"Flagged: [bold]{n_review + n_uncertain}[/bold] of {n_ok} - {n_review} for haematologist review "
            f"({', '.join(sorted(REVIEW_CLASSES))}), {n_uncertain} uncertain (confidence < {threshold:.2f}).",
            soft_wrap=True,
        )
        con.print(
            f"Latency per image: preprocess p50 {_fmt_ms(pre['p50'])} ms, p95 {_fmt_ms(pre['p95'])} ms; "
            f"inference p50 {_fmt_ms(inf['p50'])} ms, p95 {_fmt_ms(inf['p95'])} ms. "
            f"{n_ok} images in {wall:.2f} s ({latency['images_per_s']:.1f} images/s end to end).",
            soft_wrap=True,
        )
    if metrics:
        _print_metrics(con, metrics, classes)
    if failed:
        err.print(
            f"[red]{len(failed)} of {summary['n_inputs']} inputs could not be classified[/red] (listed above); "
            f"{n_ok} classified.",
            soft_wrap=True,
        )
    elif not n_ok:
        err.print("no images classified", soft_wrap=True)

    # -- machine-readable output -------------------------------------------------------------------
    report = {
        "model": info,
        "threshold": threshold,
        "results": results,
        "failed": failed,
        "summary": summary,
        "metrics": metrics,
        "latency": latency,
    }
    if json_out:
        _write_json(json_out, report)
    if csv_out:
        _write_csv(csv_out, results, failed, classes)

    if failed:
        ctx.exit(1)


def _print_metrics(con, metrics: dict, classes) -> None:
    extra = f" ({metrics['n_unlabelled']} images not in a class folder were left out)" if metrics.get("n_unlabelled") else ""
    con.print(
        f"Against folder labels ({metrics['n']} images): accuracy [bold]{metrics['accuracy']:.3f}[/bold], "
        f"macro-F1 [bold]{metrics['macro_f1']:.3f}[/bold]{extra}",
        soft_wrap=True,
    )
    cm = Table(title="Confusion matrix (rows: folder label, columns: predicted)", title_justify="left")
    cm.add_column("")
    for c in classes:
        cm.add_column(escape(c), justify="right")
    cm.add_column("recall", justify="right")
    for i, c in enumerate(classes):
        row = metrics["confusion_matrix"][i]
        if not sum(row):
            continue
        cells = [f"[bold]{v}[/bold]" if j == i else str(v) for j, v in enumerate(row)]
        cm.add_row(escape(c), *cells, f"{metrics['per_class'][c]['recall']:.2f}")
    con.print(cm)


JSON_INDENT_MAX_RESULTS = 500
"""Reports with more results are written without indentation (Python's indenting encoder is slow)."""


def _write_json(dest: str, report: dict) -> None:
    from firmware_host.atomic import _json_default, write_text

    indent = 2 if len(report["results"]) <= JSON_INDENT_MAX_RESULTS else None
    text = json.dumps(report, indent=indent, default=_json_default) + "\n"
    if dest == "-":
        click.echo(text, nl=False)
    else:
        write_text(dest, text)


CSV_BASE_COLUMNS = [
    "path",
    "label",
    "confidence",
    "flag",
    "top2_label",
    "top2_prob",
    "top3_label",
    "top3_prob",
    "true_label",
    "correct",
    "preprocess_ms",
    "inference_ms",
]


def _write_csv(dest: str, results: list[dict], failed: list[dict], classes) -> None:
    from firmware_host.atomic import write_text

    cols = CSV_BASE_COLUMNS + [f"p_{c}" for c in classes] + ["error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in results:
        top = r["top3"] + [{"label": "", "prob": ""}] * 3
        row = {
            "path": r["path"],
            "label": r["label"],
            "confidence": f"{r['confidence']:.6f}",
            "flag": r["flag"],
            "top2_label": top[1]["label"],
            "top2_prob": "" if top[1]["prob"] == "" else f"{top[1]['prob']:.6f}",
            "top3_label": top[2]["label"],
            "top3_prob": "" if top[2]["prob"] == "" else f"{top[2]['prob']:.6f}",
            "true_label": r["true_label"] or "",
            "correct": "" if r["correct"] is None else int(r["correct"]),
            "preprocess_ms": f"{r['preprocess_ms']:.3f}",
            "inference_ms": f"{r['inference_ms']:.3f}",
            "error": "",
        }
        row.update({f"p_{c}": f"{r['probs'][c]:.6f}" for c in classes})
        w.writerow(row)
    for f in failed:
        w.writerow({"path": f["path"], "error": f["error"]})
    text = buf.getvalue()
    if dest == "-":
        click.echo(text, nl=False)
    else:
        write_text(dest, text)

