"""Silencing C++ log lines (TensorFlow, LiteRT) that bypass Python's logging."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_fds(stdout: bool = True, stderr: bool = True):
    """Silence C++ log lines by pointing file descriptors 1/2 at /dev/null for the duration.

    Python-level output is flushed first. Errors still propagate as exceptions.
    """
    if os.environ.get("EDGECELL_DEBUG") == "1":
        yield
        return
    targets = ([1] if stdout else []) + ([2] if stderr else [])
    saved = []
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # pragma: no cover
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        for fd in targets:
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


@contextlib.contextmanager
def warning_lines():
    """For the duration, every Python warning is one line on stderr, ``warning: PATH: message``.

    PATH is the image being decoded in the thread that raised it
    (:func:`firmware_host.preprocess.decoding_path`); a warning about something else keeps its
    category instead. Warnings about images are shown every time, not once per source line.
    """
    import warnings

    with warnings.catch_warnings():
        install_warning_lines()
        yield


def install_warning_lines() -> None:
    """Make every later warning in this process one line (see :func:`warning_lines`); for worker processes."""
    import warnings

    from firmware_host.errors import ImageWarning, OutputNote

    warnings.showwarning = _show_warning
    warnings.filterwarnings("always", category=ImageWarning)
    warnings.filterwarnings("always", category=OutputNote)
    # UserWarning only: Pillow's DecompressionBombWarning (a RuntimeWarning) must stay an error
    warnings.filterwarnings("always", category=UserWarning, module=r"(PIL|firmware_host)(\..*)?$")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from firmware_host.errors import ImageWarning, OutputNote, printable
    from firmware_host.preprocess import decoding_path

    text = str(message).strip()
    text = text.splitlines()[0] if text else category.__name__
    path = decoding_path()
    kind = "warning"
    if issubclass(category, OutputNote):
        kind = "note"  # it names its folder itself
    elif path is not None:
        text = f"{path}: {text}"
    elif not issubclass(category, ImageWarning):
        text = f"{text} ({category.__name__})"
    stream = file or sys.stderr
    try:
        stream.write(f"{kind}: {printable(text)}\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):  # nowhere to print it: a warning never stops the work
        pass
