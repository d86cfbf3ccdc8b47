"""The one error family edgecell raises for problems a user can fix.

Every message names the file it is about and what is wrong with it, in one line. The CLI turns
these into ``click.ClickException`` (one line, exit code 1); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import warnings


class EdgecellError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


def os_reason(exc: BaseException) -> str:
    """What the operating system said, for a one-line message: ``strerror`` ("Permission denied"); for an
    exception without one (a bad encoding, bad JSON), its first line (:func:`first_line`)."""
    return getattr(exc, "strerror", None) or first_line(exc)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\r``, ``\\n``, ``\\x1b``...), safe to print on a terminal.

    A file name may hold a carriage return, a line feed or a terminal escape sequence; printed
    raw, it would rewrite the line, split it, or drive the terminal. Everything else is kept,
    including non-ASCII letters and the surrogate escapes of names that are not valid UTF-8.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o < 0xA0 or ch in "\u2028\u2029":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"))
        else:
            out.append(ch)
    return "".join(out)


class ImageWarning(UserWarning):
    """Something about an image that was used anyway (only its first page, its colour profile dropped)."""


class OutputNote(UserWarning):
    """Something about where outputs go that a person at the command line should know (``note:``); the Python API
    is silent about it (ignored unless a filter asks for it)."""


class FolderCreated(OutputNote):
    """An output's folder did not exist and was made: a path that misses (a USB stick not mounted at
    ``/media/usb``) would otherwise fill the SD card unseen."""


class LeftOver(OutputNote):
    """A staging folder or temporary file beside an output, left by a run that was killed or lost its power before it
    could clean up (a run ended by Ctrl-C or an error removes its own): it may hold gigabytes, or the previous results."""


warnings.filterwarnings("ignore", category=OutputNote)


class ImageError(EdgecellError):
    """An image that cannot be read, decoded or preprocessed."""


class ModelError(EdgecellError):
    """A model file, or its metadata, that cannot be used."""


class DataError(EdgecellError):
    """A data folder or manifest that cannot be used (too few classes, images, ...)."""


class RuntimeMissingError(EdgecellError):
    """No TFLite interpreter is installed."""


def first_line(exc: BaseException, empty: str | None = None) -> str:
    """The first non-blank line of an exception's message, for a one-line error.

    An exception with no message gives ``empty``, or its type's name when ``empty`` is None.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines:
        return lines[0]
    return type(exc).__name__ if empty is None else empty


def read_regular(path: str | os.PathLike, limit: int, error: type[EdgecellError], what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (``what`` names it: "image file").

    Anything else is an ``error`` naming ``path`` before a byte is read: a folder; a pipe, socket or device (reading
    one would block for ever or never end: a sidecar that is a link to ``/dev/zero``); a file over ``limit`` (checked
    again after reading, in case it grew). The file is opened without blocking and then inspected, so a path swapped
    for a pipe between a check and the read cannot block either. OS errors (no such file, permission) propagate for
    the caller to word.
    """
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"is a directory, not {'an' if what[0] in 'aeiou' else 'a'} {what}", path)
        if not stat.S_ISREG(st.st_mode):
            raise error("is not a regular file (a pipe, socket or device); not read", path)
        if st.st_size > limit:
            size, most = _amount(st.st_size), _amount(limit)
            if size == most:  # just over: rounded, the two would read the same
                size, most = f"{st.st_size:,} bytes", f"{limit:,}-byte"
            raise error(f"{what} is {size}, over the {most} limit (not read)", path)
        fh, fd = os.fdopen(fd, "rb"), -1  # a regular file now: the file object owns (and closes) the descriptor
        with fh:
            data = fh.read(st.st_size + 1)  # one more byte than it had: notice a file that grew
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > st.st_size:
        raise error(f"{what} grew while it was read (still being written?); not used", path)
    return data


def _amount(n: int) -> str:
    """A file size for a message: bytes under a mebibyte, else mebibytes to one decimal, without a trailing ".0"."""
    if n < 2**20:
        return f"{n:,} bytes"
    return f"{n / 2**20:,.1f}".removesuffix(".0") + " MiB"
