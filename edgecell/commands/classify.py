"""``edgecell classify``: classify blood-cell images with a converted model, without TensorFlow.

Imports only click, rich, numpy, Pillow and the TFLite interpreter (via :mod:`firmware_host`).

Results stream: each image's row goes to the --csv / --json temporary file as soon as it is
classified, and only counts, two float32 latencies per image and a bounded number of table rows
stay in memory (:class:`ClassifySummary`), so memory does not grow with the number of images
(tests/test_soak.py classifies 20,000 in one process).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from edgecell.console import human, progress, stderr_console
from edgecell.options import csv_option, json_option
from firmware_host.metadata import Precision

MANY = 50
"""Above this many images the table lists only flagged images (and a progress bar is shown)."""
MAX_TABLE_ROWS = 100
"""At most this many rows in the flagged-only table; every result is in --json/--csv."""


@dataclass
class ClassifyOptions:
    """What ``edgecell classify`` was asked to do.

    Attributes:
        model_path: a ``model_<precision>.tflite`` (with its ``.json`` beside it) or an export folder.
        paths: files, folders and glob patterns to classify.
        json_out: where to write the JSON report ('-' = stdout), or None.
        csv_out: where to write one CSV row per input ('-' = stdout), or None.
        threshold: predictions less confident than this are flagged as uncertain.
        threads: interpreter threads (None = all cores).
        precision: which model of an export folder to use (None = int8, else float32, else float16).
    """

    model_path: str
    paths: tuple[str, ...]
    json_out: str | None = None
    csv_out: str | None = None
    threshold: float = 0.7
    threads: int | None = None
    precision: str | None = None


@dataclass
class ClassifySummary:
    """What a classify run keeps while the images stream past: counts, not per-image results.

    Every per-image result goes straight to --csv / --json; memory held here grows by 8 bytes
    per classified image (the two latencies, for exact percentiles) and by one small entry per
    input that could not be classified, and is otherwise bounded.

    Attributes:
        classes: the model's classes, the order of ``predicted`` and ``confusion``.
        threshold: confidence below which a prediction is flagged as uncertain.
        n_inputs: inputs given, after expanding folders and globs (images plus path errors).
        n_images: image files found.
        n_classified: images classified.
        predicted: images predicted as each class (the differential count).
        n_review: confident predictions of a review class (myeloblast, erythroblast).
        n_uncertain: predictions below ``threshold``.
        confusion: ``confusion[i][j]`` = images in a folder named ``classes[i]`` predicted as ``classes[j]``.
        n_unlabelled: classified images that are not in a folder named after a class.
        preprocess_ms: per-image decode-and-resize time, float32, in input order.
        inference_ms: per-image interpreter time, float32, in input order.
        first_rows: the first :data:`MANY` results (the whole table when there are no more).
        flagged_rows: the first :data:`MAX_TABLE_ROWS` flagged results (the table when there are more).
        failed: every input that could not be classified, as ``{"path", "error"}``, in order.
        wall_s: wall-clock time of the classification loop.
    """

    classes: list[str]
    threshold: float
    n_inputs: int = 0
    n_images: int = 0
    n_classified: int = 0
    predicted: list[int] = field(default_factory=list)
    n_review: int = 0
    n_uncertain: int = 0
    confusion: list[list[int]] = field(default_factory=list)
    n_unlabelled: int = 0
    preprocess_ms: array = field(default_factory=lambda: array("f"))
    inference_ms: array = field(default_factory=lambda: array("f"))
    first_rows: list[dict] = field(default_factory=list)
    flagged_rows: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    lab_check: dict = field(default_factory=dict)
    confidence_sum: float = 0.0
    _index: dict = field(default_factory=dict, init=False, repr=False)
    _root: str | None = field(default=None, init=False, repr=False)
    _last_dir: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        k = len(self.classes)
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.predicted = self.predicted or [0] * k
        self.confusion = self.confusion or [[0] * k for _ in range(k)]

    def add(self, row: dict, preprocess_ms: float, inference_ms: float) -> None:
        """Count one classified image; ``row`` is its result (``Prediction.to_dict`` plus flag and truth)."""
        from firmware_host.runtime import FLAG_REVIEW, FLAG_UNCERTAIN

        self.n_classified += 1
        self.confidence_sum += row["confidence"]
        pred = self._index[row["label"]]
        self.predicted[pred] += 1
        self.n_review += row["flag"] == FLAG_REVIEW
        self.n_uncertain += row["flag"] == FLAG_UNCERTAIN
        if row["true_label"] is None:
            self.n_unlabelled += 1
        else:
            self.confusion[self._index[row["true_label"]]][pred] += 1
        self.preprocess_ms.append(preprocess_ms)
        self.inference_ms.append(inference_ms)
        if len(self.first_rows) < MANY:
            self.first_rows.append(row)
        if row["flag"] and len(self.flagged_rows) < MAX_TABLE_ROWS:
            self.flagged_rows.append(row)
        self._note_folder(row["path"])

    def add_failure(self, path: str, reason: str) -> None:
        self.failed.append({"path": path, "error": reason})

    def _note_folder(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        if folder == self._last_dir:
            return
        self._last_dir = folder
        if self._root is None:
            self._root = folder
        elif self._root:
            try:
                self._root = os.path.commonpath([self._root, folder])
            except ValueError:  # different drives
                self._root = ""

    @property
    def root(self) -> str:
        """The folder all classified images share (shown once under the table), or ""."""
        return "" if self._root in (None, "", os.sep) else self._root

    @property
    def n_flagged(self) -> int:
        return self.n_review + self.n_uncertain

    @property
    def n_labelled(self) -> int:
        return self.n_classified - self.n_unlabelled

    @property
    def differential(self) -> dict[str, int]:
        return dict(zip(self.classes, self.predicted))

    def metrics(self) -> dict | None:
        """Accuracy, macro-F1 and the confusion matrix against folder labels (None if no image is labelled)."""
        from firmware_host.runtime import classification_metrics

        if not self.n_labelled:
            return None
        # classification_metrics takes label sequences; feed it the tallied matrix as two lazy,
        # aligned streams of labels instead of materialising one entry per image.
        cells = [(i, j, n) for i, row in enumerate(self.confusion) for j, n in enumerate(row) if n]
        y_true = (self.classes[i] for i, _, n in cells for _ in range(n))
        y_pred = (self.classes[j] for _, j, n in cells for _ in range(n))
        metrics = classification_metrics(y_true, y_pred, self.classes)
        metrics["n_unlabelled"] = self.n_unlabelled
        return metrics

    def latency(self) -> dict:
        from firmware_host.runtime import latency_summary

        return {
            "preprocess_ms": latency_summary(self.preprocess_ms),
            "inference_ms": latency_summary(self.inference_ms),
            "wall_s": self.wall_s,
            "images_per_s": (self.n_classified / self.wall_s) if self.wall_s > 0 and self.n_classified else None,
        }

    @property
    def lab_warning(self) -> str | None:
        """One line when these images look unlike the model's training labs (see ``runtime.lab_warning``)."""
        from firmware_host.runtime import lab_warning

        n = self.n_classified
        return lab_warning(self.confidence_sum / n, n, self.lab_check) if n else None

    def to_dict(self) -> dict:
        """The ``summary`` section of the JSON report."""
        from firmware_host.runtime import REVIEW_CLASSES

        n_ok = self.n_classified
        return {
            "n_inputs": self.n_inputs,
            "n_images": self.n_images,
            "n_classified": n_ok,
            "n_failed": len(self.failed),
            "threshold": self.threshold,
            "differential": self.differential,
            "differential_pct": {c: (100.0 * v / n_ok if n_ok else 0.0) for c, v in self.differential.items()},
            "flagged": {"review": self.n_review, "uncertain": self.n_uncertain, "total": self.n_flagged},
            "review_classes": sorted(REVIEW_CLASSES),
            "lab_warning": self.lab_warning,
        }


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


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
    opts = ClassifyOptions(
        model_path=model_path,
        paths=tuple(paths),
        json_out=json_out,
        csv_out=csv_out,
        threshold=threshold,
        threads=threads,
        precision=precision,
    )
    summary = run(opts)
    if summary.failed:
        ctx.exit(1)


def run(opts: ClassifyOptions) -> ClassifySummary:
    """Classify, stream every result to --csv / --json, print the summary for people; return the tally."""
    from firmware_host.atomic import check_writable
    from firmware_host.decode import default_workers, use_processes
    from firmware_host.paths import expand_paths, label_for
    from firmware_host.runtime import Classifier, triage

    if opts.json_out == "-" and opts.csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout ('-')")
    for dest in (opts.json_out, opts.csv_out):
        if dest and dest != "-":
            check_writable(dest)  # before the work, so results are never computed only to be lost
    con = human(opts.json_out == "-" or opts.csv_out == "-")
    err = stderr_console

    clf = Classifier.load(opts.model_path, threads=opts.threads, precision=opts.precision)
    classes = clf.classes
    info = clf.info()
    con.print(
        f"Model [bold]{escape(str(clf.path))}[/bold] ({clf.precision.value}, {clf.input_size}x{clf.input_size}, "
        f"{len(classes)} classes, SHA-256 verified) on {clf.backend.describe()}, {clf.threads} thread(s)",
        soft_wrap=True,
    )

    expanded = expand_paths(opts.paths)
    n = len(expanded.paths)
    summary = ClassifySummary(
        classes=list(classes), threshold=opts.threshold, n_inputs=n + len(expanded.errors), n_images=n, lab_check=dict(clf.meta.lab_check)
    )
    for exc in expanded.errors:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        summary.add_failure(exc.path, exc.reason)
    # Long lists: one worker process per core, each decoding and classifying on 1 thread.
    # --threads N keeps the interpreter in this process, with the N threads asked for.
    processes = None if opts.threads is None else False
    if use_processes(expanded.paths, default_workers(), processes):
        con.print(f"{n} images: {default_workers()} worker processes, each decoding and classifying on 1 interpreter thread")

    with contextlib.ExitStack() as outputs:  # temporary files, renamed into place only if all goes well
        csv_out = _CsvStream(outputs.enter_context(_text_output(opts.csv_out)), classes) if opts.csv_out else None
        json_out = (
            _JsonStream(
                outputs.enter_context(_text_output(opts.json_out)),
                {"model": info, "threshold": opts.threshold},
                indent=2 if n <= JSON_INDENT_MAX_RESULTS else None,
            )
            if opts.json_out
            else None
        )
        t0 = time.perf_counter()
        bar = progress(con, transient=True) if n > MANY else None
        task = bar.add_task("Classifying", total=n) if bar else None
        if bar:
            bar.start()
        try:
            for path, res in clf.classify_many(expanded.paths, processes=processes):
                if isinstance(res, Exception):
                    err.print(f"[red]error:[/red] {escape(str(res))}", soft_wrap=True, highlight=False)
                    summary.add_failure(path, res.reason)
                else:
                    truth = label_for(path, classes)
                    row = res.to_dict(classes)
                    row.update(flag=triage(res, opts.threshold), true_label=truth, correct=None if truth is None else truth == res.label)
                    summary.add(row, res.preprocess_ms, res.inference_ms)
                    if csv_out:
                        csv_out.add(row)
                    if json_out:
                        json_out.add(row)
                if bar:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
        summary.wall_s = time.perf_counter() - t0

        metrics = summary.metrics()
        latency = summary.latency()
        _print_summary(con, err, summary, metrics, latency, opts)
        if json_out:
            json_out.close({"failed": summary.failed, "summary": summary.to_dict(), "metrics": metrics, "latency": latency})
        if csv_out:
            csv_out.close(summary.failed)
    return summary


def _where_saved(opts: ClassifyOptions) -> str:
    """Where the full list of results is, for the note under a shortened table."""
    files = [d for d in (opts.csv_out, opts.json_out) if d and d != "-"]
    if opts.csv_out == "-" or opts.json_out == "-":
        files.append("the " + ("CSV" if opts.csv_out == "-" else "JSON") + " on stdout")
    if not files:
        return "add --csv FILE or --json FILE to save every result"
    return "every result is in " + " and ".join(escape(f) for f in files)


def _print_summary(con, err, s: ClassifySummary, metrics: dict | None, latency: dict, opts: ClassifyOptions) -> None:
    from firmware_host.runtime import REVIEW_CLASSES

    n_ok = s.n_classified
    if s.lab_warning:
        err.print(f"[bold yellow]warning:[/bold yellow] {escape(s.lab_warning)}")
    rows = s.first_rows
    note = None
    if n_ok > MANY:
        rows = s.flagged_rows
        shown = f"first {len(rows)} of the {s.n_flagged} flagged ones" if s.n_flagged > len(rows) else f"{s.n_flagged} flagged ones"
        note = f"{n_ok} images classified: the table lists only the {shown} ({n_ok - len(rows)} not shown); {_where_saved(opts)}."
    if rows:
        root = s.root
        table = Table(
            title="Flagged images" if note else "Results",
            title_justify="left",
            caption=f"files under {escape(root)}" if root else None,
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
        for c, count in s.differential.items():
            mark = " [red](review)[/red]" if c in REVIEW_CLASSES else ""
            diff.add_row(escape(c) + mark, str(count), f"{100.0 * count / n_ok:.1f}")
        diff.add_row("[bold]total[/bold]", f"[bold]{n_ok}[/bold]", "100.0")
        con.print(diff)
        con.print(
            f"Flagged: [bold]{s.n_flagged}[/bold] of {n_ok} - {s.n_review} for haematologist review "
            f"({', '.join(sorted(REVIEW_CLASSES))}), {s.n_uncertain} uncertain (confidence < {s.threshold:.2f}).",
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
    if s.failed:
        err.print(
            f"[red]{len(s.failed)} of {s.n_inputs} inputs could not be classified[/red] (listed above); {n_ok} classified.",
            soft_wrap=True,
        )
    elif not n_ok:
        err.print("no images classified", soft_wrap=True)


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


# ------------------------------------------------------------------------------ streamed outputs


@contextlib.contextmanager
def _text_output(dest: str) -> Iterator[IO[str]]:
    """A text file to stream machine-readable output into; nobody sees it until it is complete.

    A file name: a temporary file beside it (:func:`firmware_host.atomic.atomic_path`), fsynced
    and renamed onto it when the block ends without error, removed otherwise; a write error is
    one line naming ``dest``. '-': an anonymous temporary file, copied to stdout at the end, so
    stdout gets the whole report or nothing. File names that are not valid UTF-8 are written as
    the bytes they have on disk (surrogateescape), as :func:`firmware_host.atomic.write_text` does.
    """
    from firmware_host import atomic

    text = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    if dest == "-":
        with tempfile.TemporaryFile("w+", **text) as fh:
            yield fh
            fh.seek(0)
            while chunk := fh.read(1 << 16):
                click.echo(chunk, nl=False)
        return
    # firmware_host.atomic's own ``open`` (the one its write_bytes uses) when it has one: every
    # artifact is written through the same call, which the reliability tests replace to simulate
    # a full disk.
    opener = getattr(atomic, "open", open)
    with atomic.atomic_path(dest) as tmp, opener(tmp, "w", **text) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


JSON_INDENT_MAX_RESULTS = 500
"""Reports with more results are written without indentation (Python's indenting encoder is slow)."""


class _JsonStream:
    """Writes the JSON report ``json.dumps`` would write, with the results streamed in one by one.

    The report is ``{"model", "threshold", "results": [...], "failed", "summary", "metrics",
    "latency"}``; the keys before ``results`` are known at the start, those after it at the end.
    """

    _HOLE = "\x00edgecell results\x00"  # a string no model info or summary can contain

    def __init__(self, fh: IO[str], head: dict, indent: int | None):
        self.fh, self.indent, self.n = fh, indent, 0
        before, hole, _ = self._dump({**head, "results": self._HOLE}).rpartition(json.dumps(self._HOLE))
        assert hole
        fh.write(before + "[")

    def _dump(self, obj) -> str:
        from firmware_host.atomic import _json_default

        return json.dumps(obj, indent=self.indent, default=_json_default)

    def add(self, row: dict) -> None:
        item = self._dump(row)
        if self.indent:  # an item two levels deep; JSON strings hold no raw newlines
            pad = "\n" + " " * (2 * self.indent)
            self.fh.write(("," if self.n else "") + pad + item.replace("\n", pad))
        else:
            self.fh.write((", " if self.n else "") + item)
        self.n += 1

    def close(self, tail: dict) -> None:
        _, hole, after = self._dump({"results": self._HOLE, **tail}).partition(json.dumps(self._HOLE))
        assert hole
        self.fh.write(("\n" + " " * self.indent if self.indent and self.n else "") + "]" + after + "\n")


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


class _CsvStream:
    """One CSV row per classified image as it comes, then one per input that could not be classified."""

    def __init__(self, fh: IO[str], classes):
        self.classes = list(classes)
        self.w = csv.DictWriter(fh, fieldnames=CSV_BASE_COLUMNS + [f"p_{c}" for c in classes] + ["error"], lineterminator="\n")
        self.w.writeheader()

    def add(self, r: dict) -> None:
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
        row.update({f"p_{c}": f"{r['probs'][c]:.6f}" for c in self.classes})
        self.w.writerow(row)

    def close(self, failed: list[dict]) -> None:
        for f in failed:
            self.w.writerow({"path": f["path"], "error": f["error"]})
