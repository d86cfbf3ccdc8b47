"""What ``edgecell classify`` prints for people (rich), and what ``scan`` shares with it; the work is in :mod:`firmware_host.classify`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rich import box
from rich.table import Table

from edgecell.console import shown, warn
from firmware_host.classify import MANY, ClassifyJob, ClassifyOptions, ClassifySummary, alternatives, blasts_line, model_notes, review_note
from firmware_host.paths import OTHER_CLASS
from firmware_host.runtime import BLAST_CLASSES, REVIEW_CLASSES, TRIAGE_NOTE, differential_notes, differential_shares, label_text, prob_text, shown_reason


def print_warnings(err, job: ClassifyJob) -> None:
    """A model used despite a failed parity check; links to folders that were read already."""
    from edgecell.console import warn

    why = job.classifier.meta.unverified
    if why:
        warn(f"{job.classifier.path}: {why}; used anyway because of --allow-unverified", err)
    for link, target in job.links:
        warn(f"{link}: a link to {target}, which is read already; its images are classified once, under their own folder", err)
    if job.same_files:
        from firmware_host.atomic import some_of

        warn(
            f"{len(job.same_files)} path(s) are links to, or copies of, a file listed already "
            f"({some_of([f'{p} = {k}' for p, k in job.same_files])}); "
            "each file is classified once, so that no cell is counted twice",
            err,
        )
    if job.unread:
        from firmware_host.atomic import some_of
        from firmware_host.preprocess import IMAGE_SUFFIXES

        warn(
            f"{len(job.unread)} picture(s) in the folders given are not read, as edgecell reads {' '.join(IMAGE_SUFFIXES)} from folders "
            f"({some_of([str(p) for p in job.unread])}); rename or convert them to one of these (or give each by name to read it)",
            err,
        )


def print_header(con, job: ClassifyJob) -> None:
    """The model line; which worker processes will classify (for long lists)."""
    clf = job.classifier
    con.print(
        f"Model [bold]{shown(str(clf.path))}[/bold] ({clf.precision.value}, {clf.input_size}x{clf.input_size}, "
        f"{len(clf.classes)} classes, SHA-256 verified{', parity check FAILED' if clf.meta.unverified else ''}) on {clf.backend.describe()}, "
        f"{clf.threads} thread(s)",
        soft_wrap=True,
    )


def print_error(err, exc) -> None:
    err.print(f"[red]error:[/red] {shown(str(exc))}", soft_wrap=True, highlight=False)


def print_start(con, err, job, items: str, work: str) -> None:
    """Before a job (classify's or scan's) runs: the model line, warnings, the arguments that
    matched nothing, and for long lists the worker processes that do ``work`` on the ``items``."""
    print_header(con, job)
    for line in model_notes(job.classifier):
        warn(line, err)
    print_warnings(err, job)
    for exc in job.path_errors:
        print_error(err, exc)
    if job.processes:
        con.print(f"{len(job.paths)} {items}: {job.workers} worker processes, each {work} on 1 interpreter thread")


def run_job(job, items: str, work: str, description: str, error_of: Callable[[Any], object | None]):
    """Run an entered job (:class:`~firmware_host.classify.ClassifyJob`, :class:`~firmware_host.scan.ScanJob`)
    to its end for people: :func:`print_start`, then every result with a progress bar for long lists,
    each failure printed as it comes (``error_of(result)``: what to print, None for a success).
    Returns the consoles ``(con, err)`` for the summary (stderr only when stdout carries --json/--csv)."""
    from edgecell.console import human, stderr_console, steps

    con, err = human(job.opts.json_out == "-" or job.opts.csv_out == "-"), stderr_console
    print_start(con, err, job, items, work)
    with steps(con, len(job.paths), description, show=len(job.paths) > MANY) as step:
        for result in job:
            error = error_of(result)
            if error is not None:
                print_error(err, error)
            step()
    return con, err


def differential_table(title: str, counts: dict[str, int], no_nucleus: int = 0, blasts_in_other: int = 0) -> Table:
    """The differential count as a laboratory reads it (:func:`firmware_host.runtime.differential_shares`): each
    white-cell class's count and share of the white cells (``other`` among them, less its cells with no stained
    nucleus), their total, then each class that is not a white cell per 100 white cells, and the cells left out for
    want of a nucleus; review classes marked, and the first blast class's row says how many possible blasts ``other``
    holds (``blasts_in_other``: without it, a slide whose one blast the model sent to other read "myeloblast 0")."""
    shares = differential_shares(counts, no_nucleus)
    n = shares["white_cells"]
    diff = Table(title=title, title_justify="left")
    diff.add_column("class")
    diff.add_column("count", justify="right")
    diff.add_column("%", justify="right")

    def mark(c: str) -> str:
        return " [red](review)[/red]" if c in REVIEW_CLASSES else ""

    first_blast = next((c for c in shares["pct"] if c in BLAST_CLASSES), None)
    for c, pct in shares["pct"].items():
        also = f" [bold red](+{blasts_in_other} possible in {OTHER_CLASS})[/bold red]" if c == first_blast and blasts_in_other else ""
        diff.add_row(shown(c) + mark(c) + also, str(shares["white"][c]), "-" if pct is None else f"{pct:.1f}")
    diff.add_row("[bold]white cells[/bold]", f"[bold]{n}[/bold]", "100.0" if n else "-")
    for c, per in shares["per_100_white_cells"].items():
        diff.add_row(f"{shown(c)}{mark(c)}, per 100 white cells", str(counts[c]), "-" if per is None else f"{per:.1f}")
    if shares["no_nucleus"]:
        diff.add_row(f"{OTHER_CLASS}, no stained nucleus (not counted)", str(shares["no_nucleus"]), "-")
    return diff


def print_differential(con, title: str, counts: dict[str, int], blasts: str | None, no_nucleus: int = 0, blasts_in_other: int = 0) -> None:
    """The possible-blast line (:func:`firmware_host.classify.blasts_line`), the differential table and its notes
    (:func:`firmware_host.runtime.differential_notes`; classify's and scan's)."""
    if blasts:
        con.print(f"[bold red]{shown(blasts)}[/bold red]", soft_wrap=True, highlight=False)
    con.print(differential_table(title, counts, no_nucleus, blasts_in_other))
    for note in differential_notes(counts, no_nucleus):
        con.print(f"[dim]{shown(note)}[/dim]", soft_wrap=True, highlight=False)


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _flag_markup(flag: str) -> str:
    if not flag:
        return ""
    colour = "yellow" if flag.startswith("uncertain") else "red"
    return f"[{colour}]{shown(flag)}[/{colour}]"


def _where_saved(opts: ClassifyOptions) -> str:
    """Where the full list of results is, for the note under a shortened table."""
    files = [d for d in (opts.csv_out, opts.json_out) if d and d != "-"]
    if opts.csv_out == "-" or opts.json_out == "-":
        files.append("the " + ("CSV" if opts.csv_out == "-" else "JSON") + " on stdout")
    if not files:
        return "add --csv FILE or --json FILE to save every result"
    return "every result is in " + " and ".join(shown(f) for f in files)


FOLDER_WARNINGS_SHOWN = 10
"""At most this many slide folders' lab warnings are printed (every one is in the JSON and CSV)."""


def print_lab_warnings(err, lab_warning: str | None, folder_warnings) -> None:
    """The run's lab warning, then each slide folder's, naming it (the first :data:`FOLDER_WARNINGS_SHOWN`; classify's
    and scan's)."""
    if lab_warning:
        err.print(f"[bold yellow]warning:[/bold yellow] {shown(lab_warning)}", soft_wrap=True, highlight=False)
    for w in folder_warnings[:FOLDER_WARNINGS_SHOWN]:
        err.print(f"[bold yellow]warning:[/bold yellow] {shown(w['folder'])}: {shown(w['lab_warning'])}", soft_wrap=True, highlight=False)
    if len(folder_warnings) > FOLDER_WARNINGS_SHOWN:
        more = len(folder_warnings) - FOLDER_WARNINGS_SHOWN
        err.print(f"[bold yellow]warning:[/bold yellow] and {more} more folder(s) with a lab warning (all are in --json and --csv)", soft_wrap=True)


def print_summary(con, err, s: ClassifySummary, opts: ClassifyOptions) -> None:
    """The results table, differential count, flags, latency and (with folder labels) the metrics."""
    metrics, latency = s.metrics(), s.latency()
    blasts = None
    n_ok = s.n_classified
    print_lab_warnings(err, s.lab_warning, s.folder_lab_warnings)
    rows = s.first_rows
    note = None
    if n_ok > MANY:
        rows = s.flagged_rows
        listed = f"first {len(rows)} of the {s.n_flagged} flagged ones" if s.n_flagged > len(rows) else f"{s.n_flagged} flagged ones"
        hidden = [f"{k} {what}" for k, what in ((s.n_flagged - len(rows), "more flagged"), (n_ok - s.n_flagged, "not flagged")) if k]
        left_out = f" (not shown: {', '.join(hidden)})" if hidden else ""
        note = f"{n_ok} images classified: the table lists only the {listed}{left_out}; {_where_saved(opts)}."
    if rows and con.width < TABLE_MIN_WIDTH:
        _print_lines(con, s, rows, "Flagged images" if note else "Results")
    elif rows:
        root = s.root
        table = Table(
            title="Flagged images" if note else "Results",
            title_justify="left",
            caption=f"files under {shown(root)}" if root else None,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
        )
        show_truth = bool(s.n_labelled)
        table.add_column("file", overflow="fold", min_width=24)
        table.add_column("predicted", overflow="fold")
        table.add_column("conf", justify="right")
        table.add_column("top-3", overflow="fold", min_width=19)
        table.add_column("flag", overflow="fold")
        if show_truth:
            table.add_column("ok", justify="center")  # predicted == folder label (the folder is shown in "file")
        for r in rows:
            cells = [
                shown(os.path.relpath(r["path"], root) if root else r["path"]),
                shown(_predicted(r)),
                prob_text(r["confidence"]),
                "\n".join(f"{prob_text(t['prob'])} {shown(t['label'])}" for t in r["top3"]),
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
        named = [shown(os.path.relpath(f, s.root) if s.root else f) for f in s.blast_files]
        blasts = blasts_line(s.n_blasts, named, s.n_blast_files)
        print_differential(con, "Differential count", s.differential, blasts, s.n_no_nucleus, s.n_blasts_in_other)
        con.print(
            f"Flagged: [bold]{s.n_flagged}[/bold] of {n_ok} - {s.n_review} for haematologist review"
            f"{review_note(s.n_review_other)}, {s.n_uncertain} uncertain (confidence < {s.threshold:.2f}), "
            f"{s.n_other} not one of the five. {TRIAGE_NOTE}",
            soft_wrap=True,
        )
        pre, inf = latency["preprocess_ms"], latency["inference_ms"]
        con.print(
            f"Latency per image: preprocess p50 {_fmt_ms(pre['p50'])} ms, p95 {_fmt_ms(pre['p95'])} ms; "
            f"inference p50 {_fmt_ms(inf['p50'])} ms, p95 {_fmt_ms(inf['p95'])} ms. "
            f"{n_ok} images in {s.wall_s:.2f} s ({latency['images_per_s']:.1f} images/s end to end).",
            soft_wrap=True,
        )
    if metrics:
        _print_metrics(con, metrics, s.classes)
    if n_ok and blasts:  # said again last: the line before the table has scrolled away on a small screen (a review)
        con.print(f"[bold red]{shown(blasts)}[/bold red]", soft_wrap=True, highlight=False)
    if s.failed:
        err.print(
            f"[red]{len(s.failed)} of {s.n_inputs} inputs could not be classified[/red] (listed above); {n_ok} classified.",
            soft_wrap=True,
        )
    elif not n_ok:
        err.print("no images classified", soft_wrap=True)


TABLE_MIN_WIDTH = 90
"""Narrower than this, the results table would drop or cut columns (the flag first): one line per image instead."""


def _print_lines(con, s: ClassifySummary, rows: list[dict], title: str) -> None:
    """The results as one line per image (every field, wrapped by the terminal, never cut)."""
    root = s.root
    con.print(f"[bold]{title}[/bold]" + (f" (files under {shown(root)})" if root else ""), soft_wrap=True)
    for r in rows:
        name = shown(os.path.relpath(r["path"], root) if root else r["path"])
        top = ", ".join(f"{shown(t['label'])} {prob_text(t['prob'])}" for t in alternatives(r))
        ok = "" if r["true_label"] is None else ("  [green]ok[/green]" if r["correct"] else f"  [red]wrong (folder: {shown(r['true_label'])})[/red]")
        flag = f"  {_flag_markup(r['flag'])}" if r["flag"] else ""
        flag += POSSIBLE_BLAST_MARK if r.get("possible_blast") and r["label"] not in BLAST_CLASSES else ""
        con.print(
            f"{name}: {shown(label_text(r['label'], r['confidence'], r.get('other_reason', '')))}{flag}{ok}" + (f"  (then {top})" if top else ""),
            soft_wrap=True,
        )


def _predicted(r: dict) -> str:
    """The table's label: for a cell labelled ``other`` by its never-seen score or the nucleus check, with why (its
    probability of ``other``, beside it, is then low: "other 0.04" read as 4 % sure; a review)."""
    why = shown_reason(r["label"], r.get("other_reason", ""))
    blast = POSSIBLE_BLAST_MARK if r.get("possible_blast") and r["label"] not in BLAST_CLASSES else ""
    return (f"{r['label']} ({why})" if why else r["label"]) + blast


POSSIBLE_BLAST_MARK = " [bold red](possible blast)[/bold red]"
"""Beside a cell labelled ``other`` that the model took for a blast (its label does not say it), in the printed results."""


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
        cm.add_column(shown(c), justify="right")
    cm.add_column("recall", justify="right")
    for i, c in enumerate(classes):
        row = metrics["confusion_matrix"][i]
        if not sum(row):
            continue
        cells = [f"[bold]{v}[/bold]" if j == i else str(v) for j, v in enumerate(row)]
        cm.add_row(shown(c), *cells, f"{metrics['per_class'][c]['recall']:.2f}")
    con.print(cm)
