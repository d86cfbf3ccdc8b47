"""The ``edgecell`` command line: one click group whose commands load lazily.

Each command lives in its own module under :mod:`edgecell.commands` and imports TensorFlow (if
at all) inside its function body, so ``edgecell classify --help`` on a Pi imports no TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from edgecell import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SUMMARY_LIMIT = 1000
"""Longest command summary shown whole in ``edgecell --help`` (click's own limit is the line width)."""

# name -> "module:attribute"; the order is the order of ``edgecell --help``.
COMMANDS = {
    "demo-data": "edgecell.commands.demo:demo_data",
    "inspect": "edgecell.commands.inspect:inspect_cmd",
    "train": "edgecell.commands.train:train",
    "evaluate": "edgecell.commands.evaluate:evaluate",
    "audit": "edgecell.commands.audit:audit",
    "convert": "edgecell.commands.convert:convert",
    "classify": "edgecell.commands.classify:classify",
    "corrections": "edgecell.commands.corrections:corrections",
    "scan": "edgecell.commands.scan:scan",
    "bench": "edgecell.commands.bench:bench",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is needed."""

    def list_commands(self, ctx):
        return [name for name, target in COMMANDS.items() if _module_exists(target)]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _module_exists(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        """List each command with its whole one-line summary, wrapped rather than cut with "...".

        click shortens summaries to fit one line (``edgecell -h`` at 80 columns cut 6 of 8); a
        summary is a single sentence, so it is shown in full and wrapped by the formatter.
        """
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=SUMMARY_LIMIT)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        from firmware_host.errors import EdgecellError, first_line

        debug = ctx.params.get("debug") or os.environ.get("EDGECELL_DEBUG") == "1"
        _lenient_output()
        try:
            return super().invoke(ctx)
        except EdgecellError as exc:
            if debug:
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted: nothing half-written was kept; earlier results are intact.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug, not a user error: still one line unless --debug
            if debug:
                raise
            raise click.ClickException(
                f"unexpected error: {type(exc).__name__}: {first_line(exc, '')} (re-run with --debug for the traceback, and report it)"
            ) from None


def _lenient_output() -> None:
    """Never fail on printing a file name.

    A name that is not valid UTF-8 (e.g. Latin-1 bytes from an old camera's memory card) reaches
    Python as lone surrogates, which a strict UTF-8 terminal (the usual en_GB.UTF-8 locale)
    refuses to encode. Such bytes are written back as they are (``surrogateescape``), like ``ls``
    does; on a terminal that is not UTF-8, unencodable characters are shown as escapes.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            utf8 = (stream.encoding or "").replace("-", "").lower() == "utf8"
            stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (captured, closed, ...)
            pass


def _module_exists(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="edgecell")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Blood-cell classification for Raspberry Pi-class devices.

    Train a small CNN, convert it to int8 TFLite, classify on the Pi without TensorFlow.

    \b
    Example, end to end on synthetic demo data:
      edgecell demo-data demo/data --per-class 150
      edgecell train --data demo/data --out demo/run
      edgecell convert demo/run --int8
      edgecell classify --model demo/run/export demo/data/myeloblast
    """


def main() -> None:
    cli(prog_name="edgecell")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
