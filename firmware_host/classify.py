"""Classify a list of image files with a converted model and stream the results to CSV / JSON.

The library behind ``edgecell classify``, usable on its own on a Pi (no TensorFlow, no click,
no rich)::

    from firmware_host import classify_paths

    summary = classify_paths("export", ["slides/"], csv_out="results.csv")
    print(summary.differential, summary.n_flagged, summary.metrics())

Results stream: each image's row goes to the --csv / --json temporary file as soon as it is
classified, and only counts, two float32 latencies per image and a bounded number of table rows
stay in memory (:class:`ClassifySummary`), so memory does not grow with the number of images
(tests/test_soak.py classifies 20,000 in one process). The files are renamed into place only
when the whole run succeeded (:func:`text_output`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from firmware_host import atomic
from firmware_host.atomic import check_outputs, check_writable, csv_dict_writer, json_text
from firmware_host.decode import default_workers, use_processes
from firmware_host.errors import ImageError
from firmware_host.metadata import model_reads, report_head
from firmware_host.paths import OTHER_CLASS, expand_paths, label_for, left_out, path_list, path_reads
from firmware_host.runtime import (
    BLAST_CLASSES,
    DEFAULT_THRESHOLD,
    FLAG_OTHER,
    FLAG_REVIEW,
    FLAG_UNCERTAIN,
    REVIEW_CLASSES,
    Classifier,
    LabChecks,
    check_number,
    classification_metrics,
    differential_shares,
    has_no_nucleus,
    is_possible_blast,
    latency_summary,
    triage,
)

MANY = 50
"""Above this many images the table lists only flagged images (and a progress bar is shown)."""
MAX_TABLE_ROWS = 100
"""At most this many rows in the flagged-only table; every result is in --json/--csv."""


@dataclass
class ClassifyOptions:
    """What to classify and where the results go (the options of ``edgecell classify``).

    Attributes:
        model_path: a ``model_<precision>.tflite`` (with its ``.json`` beside it) or an export folder.
        paths: files, folders and glob patterns to classify.
        json_out: where to write the JSON report ('-' = stdout), or None.
        csv_out: where to write one CSV row per input ('-' = stdout), or None.
        threshold: predictions less confident than this are flagged as uncertain.
        threads: interpreter threads (None = all cores).
        precision: which model of an export folder to use (None = int8, else float32, else float16).
        report_out: where to write the review page (:mod:`firmware_host.report`), or None.
        allow_unverified: use a model whose sidecar records a failed parity check.
        other_threshold: the never-seen score above which a cell is labelled ``other``
            (None = the threshold in the model's sidecar; see :mod:`firmware_host.otherscore`).
    """

    model_path: str
    paths: tuple[str, ...]
    json_out: str | None = None
    csv_out: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    threads: int | None = None
    precision: str | None = None
    report_out: str | None = None
    allow_unverified: bool = False
    other_threshold: float | None = None


@dataclass(kw_only=True)
class FlagTally:
    """What classify's and scan's summaries count of the flags and the possible blasts (:func:`tally_flag`).

    Attributes:
        n_review: cells flagged for the haematologist: predictions of a review class (myeloblast, erythroblast), and
            ``other`` cells whose first choice was one (``n_review_other`` of them).
        n_uncertain: cells flagged as uncertain; ``n_other``, as not one of the five.
        n_blasts: possible blasts (:func:`firmware_host.runtime.is_possible_blast`); ``blast_files``, the first
            :data:`BLASTS_NAMED` of their images or fields (``n_blast_files`` in all); ``n_blasts_in_other``, those
            counted in the differential as ``other``.
        n_no_nucleus: cells counted as ``other`` with no whole stained nucleus (not white cells: the differential
            leaves them out).
    """

    n_review: int = 0
    n_review_other: int = 0
    n_uncertain: int = 0
    n_other: int = 0
    n_blasts: int = 0
    blast_files: list[str] = field(default_factory=list)
    n_blast_files: int = 0
    n_blasts_in_other: int = 0
    n_no_nucleus: int = 0

    @property
    def n_flagged(self) -> int:
        return self.n_review + self.n_uncertain + self.n_other


@dataclass
class ClassifySummary(FlagTally):
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
        predicted: images predicted as each class (the differential count); the flags: :class:`FlagTally`.
        confusion: ``confusion[i][j]`` = images in a folder named ``classes[i]`` predicted as ``classes[j]``.
        n_unlabelled: classified images that are not in a folder named after a class.
        preprocess_ms: per-image decode-and-resize time, float32, in input order.
        inference_ms: per-image interpreter time, float32, in input order.
        first_rows: the first :data:`MANY` results (the whole table when there are no more).
        flagged_rows: the first :data:`MAX_TABLE_ROWS` flagged results (the table when there are more).
        failed: every input that could not be classified, as ``{"path", "error"}``: the paths that name nothing to read
            (no such file, an empty path, a pattern that matches no image) first, then the files that could not be read, in
            order.
        left_out: paths not classified because they are links to, or copies of, a file listed already (each cell is
            counted once), as ``{"path", "same_as"}``: the JSON report's ``left_out``.
        wall_s: wall-clock time of the classification loop.
    """

    classes: list[str]
    threshold: float
    n_inputs: int = 0
    n_images: int = 0
    n_classified: int = 0
    predicted: list[int] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    n_unlabelled: int = 0
    preprocess_ms: array = field(default_factory=lambda: array("f"))
    inference_ms: array = field(default_factory=lambda: array("f"))
    first_rows: list[dict] = field(default_factory=list)
    flagged_rows: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    lab_check: dict = field(default_factory=dict)
    labs: LabChecks = field(default_factory=LabChecks)
    """What the lab check reads of the classified images (their top probabilities and never-seen scores), per slide
    folder (:func:`firmware_host.runtime.slide_folder`)."""
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
        self.n_classified += 1
        # the lab check was fitted on the top probability; a cell labelled other by its never-seen score keeps it
        top = max(row["probs"].values())
        self.labs.add(row["path"], row["true_label"] is not None, top, row.get("other_score"), has_no_nucleus(row.get("other_reason", "")))
        pred = self._index[row["label"]]
        self.predicted[pred] += 1
        self.n_no_nucleus += row["label"] == OTHER_CLASS and has_no_nucleus(row.get("other_reason", ""))
        self.n_blasts_in_other += row["label"] == OTHER_CLASS and is_possible_blast(row["label"], row["top3"])
        tally_flag(self, row, row["path"])
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
    def n_labelled(self) -> int:
        return self.n_classified - self.n_unlabelled

    @property
    def differential(self) -> dict[str, int]:
        return dict(zip(self.classes, self.predicted))

    def metrics(self) -> dict | None:
        """Accuracy, macro-F1 and the confusion matrix against folder labels (None if no image is labelled)."""
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
        return {
            "preprocess_ms": latency_summary(self.preprocess_ms),
            "inference_ms": latency_summary(self.inference_ms),
            "wall_s": self.wall_s,
            "images_per_s": (self.n_classified / self.wall_s) if self.wall_s > 0 and self.n_classified else None,
        }

    @property
    def lab_warning(self) -> str | None:
        """One line when these images look unlike the model's training labs (see ``runtime.lab_warning``)."""
        return self.labs.run.warning(self.lab_check)

    @property
    def folder_lab_warnings(self) -> list[dict]:
        """``{"folder", "n", "lab_warning"}`` for each slide folder of several whose images look unlike the model's
        training labs (:meth:`firmware_host.runtime.LabChecks.warnings`)."""
        return self.labs.warnings(self.lab_check)

    def to_dict(self) -> dict:
        """The ``summary`` section of the JSON report."""
        n_ok = self.n_classified
        return {
            "n_inputs": self.n_inputs,
            "n_images": self.n_images,
            "n_classified": n_ok,
            "n_failed": len(self.failed),
            "threshold": self.threshold,
            **differential_counts(self.differential, self.n_no_nucleus, self.n_blasts_in_other),
            "flagged": flagged_counts(self),
            "review_classes": sorted(REVIEW_CLASSES),
            "lab_warning": self.lab_warning,
            "folder_lab_warnings": self.folder_lab_warnings,
        }


def expand_and_check_outputs(opts):
    """Expand ``opts.paths`` and check ``--json``/``--csv``/``--report`` before any work (classify's and scan's).

    An output may not be an input image, the model, its sidecar or inside a folder being read, and must be
    writable, so results are never computed only to be lost. Returns the expanded paths.
    """
    expanded = expand_paths(opts.paths)
    outputs = {"--json": opts.json_out, "--csv": opts.csv_out, "--report": opts.report_out}
    check_outputs(outputs, model_reads(opts.model_path) + path_reads(opts.paths, expanded))
    annotate = getattr(opts, "annotate_dir", None)
    if annotate is not None:  # before check_writable makes the folders of the other outputs
        check_annotate_folder(annotate, opts.paths, outputs, expanded.paths)
    for dest in outputs.values():
        if dest and dest != "-":
            check_writable(dest)
    return expanded


def check_annotate_folder(folder, paths, outputs: dict, inputs: Sequence[str] = ()) -> None:
    """scan's ``--annotate``: not in a folder being scanned (its PNGs would be scanned and counted next time), not
    another output's path, holding none of the ``inputs``, and a folder scan may replace whole (new, empty, or one
    an earlier ``scan --annotate`` wrote, with nothing a person added); one line (exit 2 or 1) otherwise."""
    from firmware_host.scan import ANNOTATE_MARKER, annotated_files

    given = os.fspath(folder)
    if given == "":
        raise atomic.OutputRefused("--annotate is an empty path; give a folder name")
    real = os.path.realpath(given)
    for p in paths:
        if os.path.isdir(p) and atomic._inside(real, os.path.realpath(p)):
            raise atomic.OutputRefused(
                f"--annotate {given} is inside the folder being scanned ({os.fspath(p)}): its PNGs would be scanned next time; choose another folder"
            )
    for opt, dest in outputs.items():
        if not dest or dest == "-":
            continue
        if os.path.realpath(dest) == real:
            raise atomic.OutputRefused(f"--annotate and {opt} name the same path ({given}); give them different names")
        if atomic._inside(os.path.realpath(dest), real):
            raise atomic.OutputRefused(f"{opt} is inside --annotate, which this command replaces whole; write it elsewhere", dest)
    inside = [p for p in inputs if atomic._inside(os.path.realpath(p), real)]
    if inside:
        raise atomic.OutputRefused(
            f"--annotate {given} holds a field being scanned ({inside[0]}), which replacing the folder would delete; choose another folder"
        )
    atomic.check_stageable(given, ANNOTATE_MARKER, owned=annotated_files)


class ClassifyJob:
    """One classify run: the model loaded, the paths expanded, the outputs open; iterate to classify.

    ::

        with ClassifyJob(opts) as job:          # checks the outputs, loads and verifies the model
            for path, result in job:            # a row dict, or the ImageError of an unusable file
                ...
            job.summary                         # counts, latencies, metrics
        # leaving the block writes the JSON/CSV tails and renames the files into place

    Attributes:
        classifier: the loaded :class:`~firmware_host.runtime.Classifier`.
        paths: the image files found, in order; ``path_errors``: arguments that matched nothing.
        processes: whether ``workers`` worker processes classify (256+ files and no ``threads`` asked for).
        summary: the :class:`ClassifySummary` being tallied.
    """

    def __init__(self, opts: ClassifyOptions):
        opts = dataclasses.replace(opts, threshold=check_number("threshold", opts.threshold, 0.0, 1.0))
        expanded = expand_and_check_outputs(opts)
        self.opts = opts
        self.classifier = Classifier.load(
            opts.model_path, threads=opts.threads, precision=opts.precision, allow_unverified=opts.allow_unverified, other_threshold=opts.other_threshold
        )
        self.paths, self.path_errors = expanded.paths, expanded.errors
        self.links = expanded.links  # links to folders read already: their images counted once
        self.unread = expanded.unread  # pictures of a type a folder search does not read
        self.same_files = expanded.same_files  # links to, or copies of, files listed already: each cell counted once
        n = len(self.paths)
        self.summary = ClassifySummary(
            classes=list(self.classifier.classes),
            threshold=opts.threshold,
            n_inputs=n + len(self.path_errors),
            n_images=n,
            left_out=left_out(self.same_files),
            lab_check=dict(self.classifier.meta.lab_check),
        )
        for exc in self.path_errors:
            self.summary.add_failure(exc.path, exc.reason)
        # Long lists: one worker process per core, each decoding and classifying on 1 thread.
        # threads=N keeps the interpreter in this process, with the N threads asked for.
        self._processes = None if opts.threads is None else False
        self.workers = default_workers()
        self.processes = use_processes(self.paths, self.workers, self._processes)
        self._stack = contextlib.ExitStack()
        self._csv: CsvStream | None = None
        self._json: JsonStream | None = None
        self._report = None  # a firmware_host.report.ReportWriter with --report

    def __enter__(self) -> ClassifyJob:
        opts, classes = self.opts, self.classifier.classes
        with self._stack:
            if opts.csv_out:
                self._csv = CsvStream(self._stack.enter_context(text_output(opts.csv_out)), classes)
            if opts.json_out:
                head = report_head(JSON_FORMAT) | {"model": self.classifier.info(), "threshold": opts.threshold}
                indent = 2 if len(self.paths) <= JSON_INDENT_MAX_RESULTS else None
                self._json = JsonStream(self._stack.enter_context(text_output(opts.json_out)), head, indent=indent)
            if opts.report_out:
                from firmware_host.report import report_for

                self._report = self._stack.enter_context(report_for(self.classifier, opts.threshold, len(self.paths)))
            self._stack = self._stack.pop_all()
        return self

    def __iter__(self) -> Iterator[tuple[str, dict | ImageError]]:
        """Classify every path in order, tallying and streaming each result; yields ``(path, row or ImageError)``."""
        s, classes, t0 = self.summary, self.classifier.classes, time.perf_counter()
        try:
            thumbnails = self._report.thumb_px if self._report else 0
            for path, res in self.classifier.classify_many(self.paths, self.workers, processes=self._processes, thumbnails=thumbnails):
                if isinstance(res, ImageError):
                    s.add_failure(path, res.reason)
                    yield path, res
                    continue
                truth = label_for(path, classes)
                row = res.to_dict(classes)
                row.update(
                    flag=triage(res, self.opts.threshold),
                    possible_blast=is_possible_blast(res.label, res.top3),
                    true_label=truth,
                    correct=None if truth is None else truth == res.label,
                )
                s.add(row, res.preprocess_ms, res.inference_ms)
                for out in (self._csv, self._json):
                    if out:
                        out.add(row)
                if self._report:
                    self._report.add_row(row, res.thumbnail, res.sha256)
                yield path, row
        finally:
            s.wall_s = time.perf_counter() - t0

    def __exit__(self, *exc_info) -> bool | None:
        if exc_info[0] is not None:  # the temporary files are removed; nothing half-written is kept
            return self._stack.__exit__(*exc_info)
        with self._stack:
            s = self.summary
            if self._json:
                self._json.close(
                    {
                        "failed": s.failed,
                        "left_out": s.left_out,
                        "unread": [os.fspath(p) for p in self.unread],
                        "summary": s.to_dict(),
                        "metrics": s.metrics(),
                        "latency": s.latency(),
                    }
                )
            if self._csv:
                self._csv.close(s.failed, s.lab_warning, s.folder_lab_warnings)
            if self._report:
                self._report.header.n_failed = len(s.failed)
                self._report.header.failed = [(f["path"], f["error"]) for f in s.failed]
                self._report.header.lab_warning = s.lab_warning
                self._report.header.folder_lab_warnings = s.folder_lab_warnings
                self._report.write(self.opts.report_out)
        return None


def classify_paths(
    model: str | os.PathLike,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    csv_out: str | None = None,
    json_out: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
    on_result: Callable[[str, dict | ImageError], None] | None = None,
    report_out: str | None = None,
    allow_unverified: bool = False,
    other_threshold: float | None = None,
) -> ClassifySummary:
    """Classify files, folders and glob patterns with ``model`` (a ``.tflite`` or an export folder); ``paths`` is one
    path or a list of them.

    Writes every result to ``csv_out`` / ``json_out`` (file names, '-' for stdout) when given,
    writes the review page to ``report_out`` when given (:mod:`firmware_host.report`),
    calls ``on_result(path, row_or_error)`` per image, and returns the :class:`ClassifySummary`
    (differential count, flags, latencies, ``metrics()`` against folder labels, ``failed``).
    ``other_threshold`` replaces the never-seen score's threshold of the model's sidecar.
    """
    opts = ClassifyOptions(os.fspath(model), path_list(paths), json_out, csv_out, threshold, threads, precision, report_out, allow_unverified, other_threshold)
    with ClassifyJob(opts) as job:
        for path, result in job:
            if on_result:
                on_result(path, result)
    return job.summary


# ----------------------------------------------------------------------------------------------
# Streamed outputs


@contextlib.contextmanager
def text_output(dest: str) -> Iterator[IO[str]]:
    """A text file to stream machine-readable output into; nobody sees it until it is complete.

    A file name: a temporary file beside it (:func:`firmware_host.atomic.atomic_path`), fsynced
    and renamed onto it when the block ends without error, removed otherwise; a write error is
    one line naming ``dest``. '-': an anonymous temporary file, copied to stdout at the end, so
    stdout gets the whole report or nothing. File names that are not valid UTF-8 are written as
    the bytes they have on disk (surrogateescape), as :func:`firmware_host.atomic.write_text` does.
    """
    text = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    if dest == "-":
        with tempfile.TemporaryFile("w+", **text) as fh:
            yield fh
            fh.seek(0)
            while chunk := fh.read(1 << 16):
                atomic.write_stdout(chunk)  # a closed, broken or full stdout is one error line
        return
    # firmware_host.atomic's own ``open`` (the one its write_bytes uses) when it has one: every
    # artifact is written through the same call, which the reliability tests replace to simulate
    # a full disk.
    opener = getattr(atomic, "open", open)
    with atomic.atomic_path(dest) as tmp, opener(tmp, "w", **text) as fh:
        yield fh
        fh.flush()
        atomic.fsync(fh)  # a pipe or a device (written as a stream) cannot be synced


JSON_FORMAT = "edgecell-classify/2"
"""The first member of ``classify --json``'s report: what it is and the version of its layout, for a script to check."""

JSON_INDENT_MAX_RESULTS = 500
"""Reports with more results are written without indentation (Python's indenting encoder is slow)."""


class JsonStream:
    """Writes the JSON report ``json.dumps`` would write, with the results streamed in one by one.

    The report is ``{"format", "edgecell_version", "model", "threshold", "results": [...], "failed", "summary", "metrics",
    "latency"}``; the keys before ``results`` are known at the start, those after it at the end.
    Each member is written as :func:`firmware_host.atomic.json_text` writes it, indented to its
    depth (JSON strings hold no raw newlines, so re-indenting a dumped value is exact).
    """

    def __init__(self, fh: IO[str], head: dict, indent: int | None):
        self.fh, self.indent, self.n, self._members = fh, indent, 0, 0
        fh.write("{")
        for key, value in head.items():
            self._member(key, value)
        self._key("results")
        fh.write("[")

    def _newline(self, depth: int) -> str:
        return "\n" + " " * (self.indent * depth) if self.indent else ""

    def _value(self, obj, depth: int) -> str:
        text = json_text(obj, indent=self.indent)
        return text.replace("\n", self._newline(depth)) if self.indent else text

    def _key(self, key: str) -> None:
        comma = ("," if self.indent else ", ") if self._members else ""
        self.fh.write(comma + self._newline(1) + json.dumps(key) + ": ")
        self._members += 1

    def _member(self, key: str, value) -> None:
        self._key(key)
        self.fh.write(self._value(value, 1))

    def add(self, row: dict) -> None:
        comma = ("," if self.indent else ", ") if self.n else ""
        self.fh.write(comma + self._newline(2) + self._value(row, 2))
        self.n += 1

    def close(self, tail: dict) -> None:
        self.fh.write((self._newline(1) if self.n else "") + "]")
        for key, value in tail.items():
            self._member(key, value)
        self.fh.write(self._newline(0) + "}\n")


BLASTS_NAMED = 10
"""A summary names the images of this many possible blasts (each result in the JSON and CSV has its label and flag)."""


def tally_flag(summary: FlagTally, result: dict, name: str) -> None:
    """Count one result's flag in a summary (:class:`FlagTally`: classify's and scan's):
    ``n_review`` (and ``n_review_other``, those labelled ``other``), ``n_uncertain``, ``n_other``; and whether it is a
    possible blast (``n_blasts``; ``name``, its image's or field's, counted once in ``n_blast_files`` and named in
    ``blast_files`` while there are fewer than :data:`BLASTS_NAMED`)."""
    if is_possible_blast(result["label"], result["top3"]):
        summary.n_blasts += 1
        if not summary.blast_files or summary.blast_files[-1] != name:  # a field's cells come together
            summary.n_blast_files += 1
            if len(summary.blast_files) < BLASTS_NAMED:
                summary.blast_files.append(name)
    flag = result["flag"]
    summary.n_review += flag == FLAG_REVIEW
    summary.n_review_other += flag == FLAG_REVIEW and result["label"] == OTHER_CLASS
    summary.n_uncertain += flag == FLAG_UNCERTAIN
    summary.n_other += flag == FLAG_OTHER


def differential_counts(counts: dict[str, int], no_nucleus: int = 0, blasts_in_other: int = 0) -> dict:
    """The differential in a JSON summary (classify's and scan's): ``differential``, the cells counted per label;
    ``white_cells``, ``differential_pct`` (``other``'s: of its cells with a nucleus), ``per_100_white_cells`` and
    ``no_nucleus`` (cells labelled ``other`` with no whole stained nucleus, not white cells), as
    :func:`firmware_host.runtime.differential_shares` gives them; ``possible_blasts_in_other``, the possible blasts counted
    in ``other`` (a blast class's row reads 0 without them)."""
    shares = differential_shares(counts, no_nucleus)
    return {
        "differential": dict(counts),
        "white_cells": shares["white_cells"],
        "differential_pct": shares["pct"],
        "per_100_white_cells": shares["per_100_white_cells"],
        "no_nucleus": shares["no_nucleus"],
        "possible_blasts_in_other": blasts_in_other,
    }


def flagged_counts(summary) -> dict:
    """A summary's flag counts as its JSON gives them (``flagged``), for classify and scan alike."""
    return {
        "review": summary.n_review,
        "review_other": summary.n_review_other,
        "uncertain": summary.n_uncertain,
        "other": summary.n_other,
        "total": summary.n_flagged,
        "possible_blasts": summary.n_blasts,  # among the flagged (review, or review_other)
    }


def model_notes(clf: Classifier) -> list[str]:
    """What a person must know about the model before its results: thresholds set by hand, and what it cannot say."""
    notes = []
    if clf.other_threshold is not None and clf.other_threshold != clf.fitted_other_threshold:
        notes.append(
            f"cells are sent to other above a never-seen score of {clf.other_threshold:g} (--other-threshold), not this model's "
            f"{clf.fitted_other_threshold:g}, fitted so that {clf.other_score.share:.0%} of its validation cells of the five pass it"
        )
    if OTHER_CLASS not in clf.classes:
        notes.append(
            "this model has no `other` class: lymphocytes, eosinophils, platelets and other cells not of its classes are counted as "
            "one of them (train it with folders of those types, which teach `other`)"
        )
    if clf.meta.loosened:
        notes.append(f"this model: {clf.meta.loosened}")
    return notes


def review_note(n_other: int, classes: Iterable[str] = REVIEW_CLASSES) -> str:
    """What the summary line says after its count of cells for the haematologist: the review ``classes``, and how many
    of those cells are labelled ``other`` (``n_other``: :func:`firmware_host.runtime.triage`, the network's first
    choice was a review class). The printed lines and the review page say it alike."""
    names = ", ".join(sorted(classes))
    labelled = f"{n_other} of them labelled other, the model's first choice one of these" if n_other else ""
    inside = "; ".join(t for t in (names, labelled) if t)
    return f" ({inside})" if inside else ""


def blasts_line(n: int, files: Sequence[str], n_files: int | None = None, what: str = "image", edge: int = 0) -> str | None:
    """The line said before the rest of a run's results, and again last, when it holds a possible blast (``n`` of them;
    ``files``, the first of their images, or fields for scan: ``what``, of ``n_files`` in all, default ``len(files)``;
    ``edge`` of them cut by a field's border, so not in the differential); None for none."""
    if not n:
        return None
    more = (n_files if n_files is not None else len(files)) - len(files)
    named = ", ".join(files) + (f", and {more} more" if more > 0 else "")
    cut = f"; {edge} of them cut by a border, not counted" if edge else ""
    return (
        f"possible blast: {n} cell{'s' if n != 1 else ''} the model took for a {' or '.join(sorted(BLAST_CLASSES))} "
        f"({what}s: {named}{cut}): have a haematologist check {'them' if n != 1 else 'it'} before any count is reported"
    )


def alternatives(row: dict) -> list[dict]:
    """The model's two most probable classes other than the row's label (``top3`` without it): for a cell labelled
    ``other`` by its never-seen score or the nucleus check, the model's own first choice is one of them."""
    return [t for t in row["top3"] if t["label"] != row["label"]][:2]


CSV_BASE_COLUMNS = [
    "path",
    "label",
    "confidence",
    "flag",
    "possible_blast",
    "other_score",
    "nucleus_offset",
    "other_reason",
    "top2_label",
    "top2_prob",
    "top3_label",
    "top3_prob",
    "true_label",
    "correct",
    "preprocess_ms",
    "inference_ms",
]


def other_csv(r: dict) -> dict:
    """The CSV cells of what decided ``other`` (:meth:`firmware_host.runtime.Prediction.other_fields`), for classify and scan."""
    return {
        "other_score": "" if r.get("other_score") is None else f"{r['other_score']:.4f}",
        "nucleus_offset": "" if r.get("nucleus_offset") is None else f"{r['nucleus_offset']:.1f}",
        "other_reason": r.get("other_reason", ""),
    }


class CsvStream:
    """One CSV row per classified image as it comes, then one per input that could not be classified, then,
    when the set looks unlike the model's training labs, one row with only ``lab_warning`` (a judgement
    on the whole set, known only at its end), and one for each slide folder that does, its ``lab_warning`` naming
    the folder (:attr:`ClassifySummary.folder_lab_warnings`)."""

    def __init__(self, fh: IO[str], classes):
        self.classes = list(classes)
        # quotes a CR or LF in a file name, so every name reads back exactly
        self.w = csv_dict_writer(fh, CSV_BASE_COLUMNS + [f"p_{c}" for c in classes] + ["error", "lab_warning"])
        self.w.writeheader()

    def add(self, r: dict) -> None:
        top = [{}] + alternatives(r) + [{"label": "", "prob": ""}] * 2  # top[1], top[2]: the next two after the label
        row = {
            "path": r["path"],
            "label": r["label"],
            "confidence": f"{r['confidence']:.6f}",
            "flag": r["flag"],
            "possible_blast": int(r["possible_blast"]),
            **other_csv(r),
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

    def close(self, failed: list[dict], lab_warning: str | None = None, folder_warnings: Sequence[dict] = ()) -> None:
        for f in failed:
            self.w.writerow({"path": f["path"], "error": f["error"]})
        write_lab_warnings(self.w, lab_warning, folder_warnings)


def write_lab_warnings(writer, lab_warning: str | None, folder_warnings: Sequence[dict]) -> None:
    """The CSV's last rows (classify's and scan's), with only ``lab_warning`` filled, so that a row with a file's
    name is always an image's or a field's: the run's lab warning, then each slide folder's, as ``FOLDER: line``."""
    if lab_warning:
        writer.writerow({"lab_warning": lab_warning})
    for w in folder_warnings:
        writer.writerow({"lab_warning": f"{w['folder']}: {w['lab_warning']}"})
