"""Options shared by several commands, as reusable decorators (sqlite-utils style)."""

from __future__ import annotations

import click

DEFAULT_SEED = 42
DEFAULT_IMG_SIZE = 64


DATA_HELP = (
    "Data folder: one sub-folder of images per class, or one sub-folder per source (lab) holding class folders. "
    "Repeat for several sources; class folders lymphocyte, eosinophil, platelet, ig teach 'other'."
)


def data_option(required: bool = True, help: str = DATA_HELP):
    """``--data``, repeatable: a tuple of folders (empty when not given)."""
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=str),
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


seed_option = click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Random seed (split, augmentation, selection).")
img_size_option = click.option(
    "--img-size", type=click.IntRange(32, 512), default=DEFAULT_IMG_SIZE, show_default=True, help="Model input size in pixels (square)."
)
json_option = click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default=None,
    help="Also write the result as JSON to FILE ('-' for stdout).",
)
csv_option = click.option(
    "--csv",
    "csv_out",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default=None,
    help="Also write the result as CSV to FILE ('-' for stdout).",
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
            v = tuple(int(x) for x in str(value).replace(" ", "").split(",") if x)
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
threads_option = click.option("--threads", type=click.IntRange(1, 64), default=None, help="Interpreter threads (default: all cores).")


def emit_json(json_out: str | None, payload) -> None:
    """Write ``payload`` as JSON to ``json_out`` ('-' = stdout), atomically for files."""
    if not json_out:
        return
    from firmware_host.atomic import json_text, write_json

    if json_out == "-":
        click.echo(json_text(payload))
    else:
        write_json(json_out, payload)
