"""Rich consoles shared by every command.

Human-readable output goes to ``console`` (stdout) unless a command writes machine-readable
output to stdout (``--json -``), in which case it uses ``stderr_console`` so the JSON stays clean.
"""

from __future__ import annotations

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
