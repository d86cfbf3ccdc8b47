"""Importing TensorFlow quietly, in one place, only when a command needs it."""

from __future__ import annotations

import contextlib
import os
import sys


def import_tf():
    """Import TensorFlow with its log noise turned down; a missing install is one clear error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        with quiet_fds():
            import tensorflow as tf  # noqa: PLC0415 - lazy by design
    except ImportError:
        from firmware_host.errors import EdgecellError

        raise EdgecellError('TensorFlow is not installed; this command needs the training extra: pip install "edgecell[train]"') from None
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    tf.get_logger().setLevel("ERROR")
    return tf


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
