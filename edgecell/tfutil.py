"""Importing TensorFlow quietly, in one place, only when a command needs it."""

from __future__ import annotations

import os

from firmware_host.quiet import quiet_fds

TRAIN_EXTRA_INSTALL = 'in edgecell\'s folder, pip install ".[train]"'
"""How to install TensorFlow for edgecell. It is not on PyPI: a hint naming ``edgecell[train]`` would install
whatever took that name there."""


TRAIN_EXTRA_MODULES = ("sklearn", "matplotlib")
"""What the training extra brings beside TensorFlow, and ``evaluate`` and ``audit`` need even for a TFLite model
(scikit-learn's calibration bins and baselines, matplotlib's plots)."""


def require_train_extra(command: str, modules: tuple[str, ...] = TRAIN_EXTRA_MODULES) -> None:
    """One clear line, before any work, when ``modules`` cannot be imported (a Pi's ``.[pi]`` install: ``evaluate``
    classified a whole set, then ended as an unexpected ``ModuleNotFoundError``)."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append({"sklearn": "scikit-learn"}.get(name, name))
    if missing:
        from firmware_host.errors import EdgecellError

        raise EdgecellError(f"{command} needs {' and '.join(missing)}, which this install lacks; this command needs the training extra: {TRAIN_EXTRA_INSTALL}")


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
