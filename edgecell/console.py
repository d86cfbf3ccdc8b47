"""Rich consoles shared by every command.

Human-readable output goes to ``console`` (stdout) unless a command writes machine-readable
output to stdout (``--json -``), in which case it uses ``stderr_console`` so the JSON stays clean.
"""

from __future__ import annotations

import contextlib
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)


def human(to_stdout_taken: bool = False) -> Console:
    """The console for tables and progress: stderr when stdout carries JSON/CSV."""
    return stderr_console if to_stdout_taken else console


def warn(message: str, con: Console | None = None) -> None:
    """Print one warning line (to stderr, so it never mixes into machine-readable output)."""
    (con or stderr_console).print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False, soft_wrap=True)


def progress(con: Console | None = None, transient: bool = False) -> Progress:
    """A progress bar with count, elapsed and remaining time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con or stderr_console,
        transient=transient,
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
