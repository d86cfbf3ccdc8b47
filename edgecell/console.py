"""Rich consoles shared by every command.

Human-readable output goes to ``console`` (stdout) unless a command writes machine-readable
output to stdout (``--json -``), in which case it uses ``stderr_console`` so the JSON stays clean.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

MIN_WIDTH = 60
"""Narrower terminals (or ``COLUMNS=0``, which made rich print nothing at all) are laid out at this
width and wrapped by the terminal: nothing is dropped, errors always print."""


class _Console(Console):
    """rich's Console, except that a reader that went away is reported, not a silent exit 1, and
    that a terminal narrower than :data:`MIN_WIDTH` is treated as that wide."""

    @property
    def size(self):
        from rich.console import ConsoleDimensions

        size = Console.size.fget(self)
        return size if size.width >= MIN_WIDTH else ConsoleDimensions(MIN_WIDTH, size.height)

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)

    def on_broken_pipe(self) -> None:
        import os
        import sys

        from firmware_host.atomic import stdout_error

        self.quiet = True
        try:  # the interpreter's last flush must not fail a second time
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise stdout_error(BrokenPipeError())


console = _Console(highlight=False)
stderr_console = _Console(stderr=True, highlight=False)


def human(to_stdout_taken: bool = False) -> Console:
    """The console for tables and progress: stderr when stdout carries JSON/CSV."""
    return stderr_console if to_stdout_taken else console


def shown(text: object) -> str:
    """``text`` as rich prints it literally: control characters escaped (:func:`firmware_host.errors.printable`) and
    square brackets not read as markup (a source named ``lab[red]`` printed as ``lab``)."""
    from rich.markup import escape

    from firmware_host.errors import printable

    return escape(printable(str(text)))


def warn(message: str, con: Console | None = None) -> None:
    """Print one warning line (to stderr, so it never mixes into machine-readable output)."""
    (con or stderr_console).print(f"[yellow]warning:[/yellow] {shown(message)}", markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def steps(con: Console, total: int, description: str, show: bool = True) -> Iterator[Callable[[], None]]:
    """A transient progress bar of ``total`` steps on ``con`` (none unless ``show``); yields the
    function that advances it by one."""
    if not show:
        yield lambda: None
        return
    with progress(con, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def progress(con: Console | None = None, transient: bool = False) -> Progress:
    """A progress bar with count, elapsed and remaining time. A transient bar on a console that is not a terminal
    (a pipe, a file) is not drawn: it would leave a blank line in the output where it stood."""
    con = con or stderr_console
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=transient,
        disable=transient and not con.is_terminal,
    )


@contextlib.contextmanager
def status(con: Console, text: str):
    """A spinner that keeps turning while a converter's fds 1 and 2 point at /dev/null.

    On a terminal the spinner writes to a duplicate of the console's file descriptor, which
    :func:`edgecell.tfutil.quiet_fds` leaves alone; elsewhere (pipes, tests) it is the console itself.
    """
    own = None
    try:
        fd = con.file.fileno() if con.is_terminal else None
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd in (1, 2):
        own = Console(file=os.fdopen(os.dup(fd), "w"), force_terminal=True, highlight=False)
    try:
        with (own or con).status(text):
            yield
    finally:
        if own is not None:
            own.file.close()


class RichReporter:
    """A :class:`converters.export.Reporter` for people: spinners, transient progress bars, warnings."""

    def __init__(self, con: Console):
        self.con = con

    def status(self, text: str):
        return status(self.con, text)

    @contextlib.contextmanager
    def progress(self, text: str, total: int | None):
        with progress(self.con, transient=True) as bar:
            task = bar.add_task(text, total=total)
            yield lambda done, total=None: bar.update(task, completed=done, **({"total": total} if total is not None else {}))

    def info(self, text: str) -> None:
        self.con.print(text)

    def warn(self, text: str) -> None:
        warn(text)
