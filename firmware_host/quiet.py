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
