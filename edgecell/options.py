"""Options shared by several commands, as reusable decorators (sqlite-utils style)."""

from __future__ import annotations

import click

from edgecell.runfolder import INPUT_SIZES
from firmware_host.interpreter import MAX_THREADS
from firmware_host.paths import EMPTY_PATH

DEFAULT_SEED = 42
DEFAULT_IMG_SIZE = 40
"""The model's input side, pixels. 40, not 64: at 64 px a crop keeps how sharp each lab's camera is, and the model read
that (Barcelona's neutrophils, held out, called monocyte); docs/design.md, "Input size"."""
MAX_SEED = 2**32 - 1
"""Seeds go to NumPy, Python and TensorFlow; every one of them takes 0 to 2**32 - 1."""


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and infinities (nan compares false with every bound, so passes them)."""

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class InputPath(click.ParamType):
    """A file, folder or glob pattern to read; an empty string is refused (it is not "the current folder")."""

    name = "path"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value == "":
            self.fail(f"'' is {EMPTY_PATH}", param, ctx)
        return value


INPUT_PATH = InputPath()


class NamedFolder(str):
    """A data folder's path (a ``str``, so it goes wherever a path goes) and, given as ``--data NAME=FOLDER``, the name
    of its source (``source_name``; None: the folder's own name). Read by :func:`edgecell.data.discover_sources`."""

    source_name: str | None

    def __new__(cls, folder: str, source_name: str | None = None):
        obj = super().__new__(cls, folder)
        obj.source_name = source_name
        return obj


class DataFolder(click.ParamType):
    """``FOLDER`` or ``NAME=FOLDER``: an existing folder, and the name of its source when two labs' folders share a
    name (``clinicA=exports/images``). A folder whose own name holds ``=`` is a folder, not a name."""

    name = "[NAME=]FOLDER"

    def convert(self, value, param, ctx):
        import os

        if isinstance(value, NamedFolder):
            return value
        text = str(value)
        name, folder = (None, text) if os.path.isdir(text) or "=" not in text else text.split("=", 1)
        if name is not None and ("/" in name or os.sep in name):  # data/lab=1/images: a path holding '=', not a name
            name, folder = None, text
        if name is not None:
            name = name.strip()
            if not name or not name.isprintable() or name in (".", ".."):
                self.fail(f"{text!r}: the name before '=' names a source: it cannot be empty or hold control characters", param, ctx)
            if not folder:
                self.fail(f"{text!r}: no folder after '='", param, ctx)
        folder = os.path.expanduser(folder)  # --data=~/x and north=~/x: no shell expands a '~' after '='
        if not os.path.isdir(folder):
            self.fail(f"Directory {folder!r} does not exist." if not os.path.exists(folder) else f"{folder!r} is not a folder.", param, ctx)
        return NamedFolder(folder, name)


DATA_FOLDER = DataFolder()
PROBABILITY = FiniteFloatRange(0.0, 1.0)
"""The type of every probability-like option (--threshold): a finite number from 0 to 1."""
PERCENTAGE_POINTS = FiniteFloatRange(0.0, 100.0)
"""The type of every option in percentage points (--max-drop, --margin)."""
SEED = click.IntRange(0, MAX_SEED)


# the names of firmware_host.paths.OTHER_TYPES (not imported here: it would load numpy and Pillow at start-up; a test
# checks that every one of them is named)
DATA_HELP = (
    "Data folder: one sub-folder of images per class, or one sub-folder per source (lab) holding class folders. "
    "Repeat for several sources; class folders lymphocyte, eosinophil, platelet, ig, smudge (and other) teach 'other'. "
    "NAME=FOLDER names a folder's source (two labs' folders of one name)."
)


def data_option(required: bool = True, help: str = DATA_HELP, sources: bool = True):
    """``--data``, repeatable: a tuple of folders (empty when not given); with ``sources``, each may be ``NAME=FOLDER``
    (:class:`DataFolder`), else a plain folder of images."""
    return click.option(
        "--data",
        "data_dir",
        type=DATA_FOLDER if sources else click.Path(exists=True, file_okay=False, dir_okay=True, path_type=str),
        required=required,
        multiple=True,
        help=help,
    )


exclude_option = click.option(
    "--exclude",
    multiple=True,
    metavar="SOURCE[/TYPE]",
    help="Leave a source, or one class folder of a source, out of the data (repeatable): to test on a lab the model never saw.",
)


def seeded(what: str):
    """``--seed``, saying what it seeds in this command (``seeded("the split and augmentation")``)."""
    return click.option("--seed", type=SEED, default=DEFAULT_SEED, show_default=True, help=f"Random seed of {what}.")


seed_option = seeded("the split, augmentation and shuffling")
img_size_option = click.option(
    "--img-size", type=click.IntRange(*INPUT_SIZES), default=DEFAULT_IMG_SIZE, show_default=True, help="Model input size in pixels (square)."
)
OUTPUT_FILE = click.Path(dir_okay=False, allow_dash=True, path_type=str)
"""The type of every output-file option. Where an output may go (never onto an input, a model or
inside a folder being read; ``-`` is stdout) is checked by :func:`firmware_host.atomic.check_outputs`,
which every command calls with all its outputs and inputs before it starts (see :func:`check_outputs`)."""


def output_option(flag: str, dest: str, help: str):
    """An option naming an output file ('-' for stdout), of type :data:`OUTPUT_FILE`."""
    return click.option(flag, dest, type=OUTPUT_FILE, default=None, metavar="FILE", help=help)


json_option = output_option("--json", "json_out", "Also write the result as JSON to FILE ('-' for stdout).")
csv_option = output_option("--csv", "csv_out", "Also write the result as CSV to FILE ('-' for stdout).")


def data_reads(data_dir) -> list[tuple[str, str]]:
    """The data folder(s) of ``--data`` (one, or a repeated option's tuple) as :func:`check_outputs` reads."""
    folders = (data_dir,) if isinstance(data_dir, str) else tuple(data_dir or ())
    return [(d, "the data folder being read") for d in folders]


def check_outputs(files: dict, reads=(), folders: dict | None = None, whole: bool = True) -> None:
    """Refuse outputs that would overwrite an input, a model, a file inside a folder being read, or each other.

    A thin alias of :func:`firmware_host.atomic.check_outputs` (one line, exit 2), so commands import
    their shared options and this rule from one place.
    """
    from firmware_host.atomic import check_outputs as check

    check(files, reads, folders, whole)


allow_unverified_option = click.option(
    "--allow-unverified",
    is_flag=True,
    help="Use a model whose own parity check failed at conversion (refused otherwise).",
)


class IntList(click.ParamType):
    """A comma-separated list of whole numbers, each within [low, high] (``--widths 32,64,128``)."""

    name = "integers"

    def __init__(self, low: int, high: int, what: str, example: str, unique: bool = False):
        self.low, self.high, self.what, self.example, self.unique = low, high, what, example, unique

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple | list):
            return tuple(value)
        try:
            v = tuple(int(x) for x in str(value).replace(" ", "").split(","))  # an empty item (4,,8) is a typo, not skipped
        except ValueError:
            self.fail(f"expected comma-separated integers such as {self.example}, got {value!r}", param, ctx)
        if not v or any(x < self.low or x > self.high for x in v):
            self.fail(f"each {self.what} must be between {self.low} and {self.high}", param, ctx)
        return tuple(dict.fromkeys(v)) if self.unique else v


report_option = click.option(
    "--report",
    "report_out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE.html",
    help="Also write the review page: one self-contained HTML file (thumbnails embedded) where a person checks the cells and downloads corrections.",
)
threads_option = click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Interpreter threads (default: all cores).")

MODEL_HELP = "A model_<precision>.tflite (with its .json beside it) or an export folder."
model_option = click.option("--model", "model_path", type=click.Path(exists=True, path_type=str), required=True, help=MODEL_HELP)
"""``--model`` of the commands that run a converted model (classify, scan)."""


def precision_option(f):
    """``--precision``: which model of an export folder to use."""
    from firmware_host.metadata import Precision

    return click.option(
        "--precision",
        type=click.Choice([p.value for p in Precision]),
        default=None,
        help="Which model of an export folder to use (default: int8, else float32, else float16).",
    )(f)


def threshold_option(what: str):
    """``--threshold``: ``what`` (predictions, cells) less confident than this are flagged as uncertain."""
    from firmware_host.runtime import DEFAULT_THRESHOLD

    return click.option(
        "--threshold",
        type=PROBABILITY,
        default=DEFAULT_THRESHOLD,
        show_default=True,
        help=f"Flag {what} whose confidence is below this as 'uncertain - refer'.",
    )


other_threshold_option = click.option(
    "--other-threshold",
    type=FiniteFloatRange(min=0.0),
    default=None,
    help="Label a cell 'other' when its never-seen score (distance of its features from every trained class) is above this "
    "(default: the threshold fitted at training, in the model's metadata; evaluate draws the curve to choose from).",
)


def worker_threads_option(items: str):
    """``--threads`` of a command that moves to worker processes for long lists of ``items`` (images, fields)."""
    from firmware_host.decode import PROCESS_MIN_FILES

    return click.option(
        "--threads",
        type=click.IntRange(1, MAX_THREADS),
        default=None,
        help=f"Interpreter threads, in this process (default: all cores; {PROCESS_MIN_FILES} {items} or more: one worker process per core, 1 thread each).",
    )


def emit_json(json_out: str | None, payload) -> None:
    """Write ``payload`` as JSON to ``json_out`` ('-' = stdout), atomically for files."""
    if not json_out:
        return
    from firmware_host.atomic import json_text, write_json, write_stdout

    if json_out == "-":
        write_stdout(json_text(payload) + "\n")  # a closed, broken or full stdout is one error line
    else:
        write_json(json_out, payload)
