"""Importing TensorFlow quietly, in one place, only when a command needs it."""

from __future__ import annotations

import os

from firmware_host.quiet import quiet_fds

TRAIN_EXTRA_INSTALL = 'in edgecell\'s folder, pip install ".[train]"'
"""How to install TensorFlow for edgecell. It is not on PyPI: a hint naming ``edgecell[train]`` would install
whatever took that name there."""


def import_tf():
    """Import TensorFlow with its log noise turned down; a missing install is one clear error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        with quiet_fds():
            import tensorflow as tf
    except ImportError:
        from firmware_host.errors import EdgecellError

        raise EdgecellError(f"TensorFlow is not installed; this command needs the training extra: {TRAIN_EXTRA_INSTALL}") from None
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    tf.get_logger().setLevel("ERROR")
    return tf
