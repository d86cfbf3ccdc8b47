"""The ``edgecell`` command line: one click group whose commands load lazily.

Each command lives in its own module under :mod:`edgecell.commands` and imports TensorFlow (if
at all) inside its function body, so ``edgecell classify --help`` on a Pi imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import click

from edgecell import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
HELP_ERRORS = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""click 8.2+ reports a group called without a command as a usage error whose message is the help."""
SUMMARY_LIMIT = 1000
"""Longest command summary shown whole in ``edgecell --help`` (click's own limit is the line width)."""

# name -> "module:attribute"; the order is the order of ``edgecell --help``.
COMMANDS = {
    "demo-data": "edgecell.commands.demo:demo_data",
    "inspect": "edgecell.commands.inspect:inspect_cmd",
    "train": "edgecell.commands.train:train",
    "evaluate": "edgecell.commands.evaluate:evaluate",
    "audit": "edgecell.commands.audit:audit",
    "adapt": "edgecell.commands.adapt:adapt",
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

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # an option of ``edgecell`` itself, before any command
            raise _usage_line(exc) from None

    def invoke(self, ctx):
        from firmware_host.atomic import Terminated, signals_as_interrupts, some_of, written_whole
        from firmware_host.errors import EdgecellError, first_line
        from firmware_host.quiet import warning_lines

        debug = ctx.params.get("debug") or os.environ.get("EDGECELL_DEBUG") == "1"
        _lenient_output()
        written_whole(forget=True)  # this command's outputs only (one process may run several: tests, scripts)
        try:
            with signals_as_interrupts(), warning_lines():  # kill and a closed terminal clean up as Ctrl-C does
                return super().invoke(ctx)
        except EdgecellError as exc:
            if debug:
                raise
            raise _one_line(str(exc), getattr(exc, "exit_code", 1)) from None
        except RecursionError:  # input nested beyond any real use (a folder or file thousands of levels deep)
            if debug:
                raise
            raise _one_line("input is nested too deeply to be read (thousands of levels of folders or brackets)", 1) from None
        except OSError as exc:  # writing the human-readable output to a closed pipe or a full disk
            if debug or not _stdout_failed(exc):
                if debug:
                    raise
                raise click.ClickException(
                    f"unexpected error: {type(exc).__name__}: {first_line(exc)} (re-run with --debug for the traceback, and report it)"
                ) from None
            from firmware_host.atomic import stdout_error

            _silence_stdout()
            raise _one_line(str(stdout_error(exc)), 1) from None
        except KeyboardInterrupt as exc:
            if debug:
                raise
            by = f" by {exc.name}" if isinstance(exc, Terminated) else ""
            done, total = written_whole()
            if done:  # the new results are in place: "earlier results are intact" would be untrue (a review)
                names = some_of([str(p) for p in done], total=total)
                said = f"nothing half-written was kept; {names} {'was' if total == 1 else 'were'} written in full before it (replacing any earlier)"
            else:
                said = "nothing half-written was kept; earlier results are intact"
            with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                click.echo(f"Interrupted{by}: {said}.", err=True)
            ctx.exit(128 + exc.signum if isinstance(exc, Terminated) else 130)
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug, not a user error: still one line unless --debug
            if debug:
                raise
            raise click.ClickException(
                f"unexpected error: {type(exc).__name__}: {first_line(exc, '')} (re-run with --debug for the traceback, and report it)"
            ) from None


def _one_line(message: str, exit_code: int) -> click.ClickException:
    from firmware_host.errors import printable

    exc = click.ClickException(printable(message))  # a file name's control characters, escaped
    exc.exit_code = exit_code
    return exc


def _usage_line(exc: click.UsageError) -> click.ClickException:
    """A mistyped command line as one line: what is wrong and where the help is, not click's usage block."""
    if isinstance(exc, HELP_ERRORS):  # a group given no command: its help is the answer, shown whole
        return exc
    path = exc.ctx.command_path if exc.ctx is not None else "edgecell"
    if isinstance(exc, click.NoSuchOption) and exc.option_name == "--debug" and path != "edgecell":
        return _one_line(f"--debug is an option of edgecell itself: it goes before the command ('edgecell --debug {path.split()[-1]} ...')", exc.exit_code)
    return _one_line(f"{exc.format_message()} (see '{path} --help')", exc.exit_code)


def _stdout_failed(exc: OSError) -> bool:
    """Whether ``exc`` came from writing the console (a broken pipe, a full disk, a closed stream).

    An error about a named file carries its name. One without a name is the console's if it is a
    broken pipe, or a full-disk/IO error raised from inside rich's or click's printing.
    """
    import errno
    import traceback

    if getattr(exc, "filename", None) is not None:
        return False
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return True
    if exc.errno not in (errno.ENOSPC, errno.EIO, errno.EBADF, errno.EDQUOT, errno.EFBIG):
        return False
    printing = (os.path.join("rich", "console.py"), os.path.join("click", "utils.py"))
    return any(f.filename.endswith(printing) for f in traceback.extract_tb(exc.__traceback__))


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's final flush of a broken stdout is not a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


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
    try:
        cli(prog_name="edgecell")
    finally:
        # Output still buffered for stdout must not fail after the command has reported (a reader
        # that went away): that would print a second, Python-level error and change the exit code.
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            _silence_stdout()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
