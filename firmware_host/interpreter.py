"""The one place that chooses a TFLite interpreter.

Order of preference (the pattern of TensorFlow's Raspberry Pi examples, with LiteRT first):

1. ``ai_edge_litert.interpreter.Interpreter`` - LiteRT, the maintained successor of
   tflite-runtime (``pip install ai-edge-litert``, or ``pip install ".[pi]"`` in edgecell's folder);
2. ``tflite_runtime.interpreter.Interpreter`` - the older stand-alone runtime, still found on
   many Pis;
3. ``tensorflow.lite.Interpreter`` - last resort, on a training machine.

Set ``EDGECELL_INTERPRETER=ai_edge_litert|tflite_runtime|tensorflow`` to force one backend
(benchmarks, tests). TensorFlow is imported only when it is the backend actually used.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from firmware_host.errors import ModelError, RuntimeMissingError, first_line
from firmware_host.quiet import quiet_fds

MAX_THREADS = 64
"""Interpreter threads at most (``--threads``'s range; far above any Pi's cores)."""

ENV_VAR = "EDGECELL_INTERPRETER"
"""Environment variable that forces one backend."""

BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow")
"""Backends, in order of preference."""

INSTALL_HINT = 'pip install ai-edge-litert (or, in edgecell\'s folder, pip install ".[pi]")'

# backend -> (module to import, attribute path to the Interpreter class, distributions for the version)
_SPECS = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "Interpreter", ("ai-edge-litert", "ai-edge-litert-nightly")),
    "tflite_runtime": ("tflite_runtime.interpreter", "Interpreter", ("tflite-runtime", "tflite-runtime-nightly")),
    "tensorflow": ("tensorflow", "lite.Interpreter", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
}


@dataclass(frozen=True)
class Backend:
    """An importable interpreter implementation."""

    name: str
    version: str
    interpreter_class: Any

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def _version(module_name: str, distributions: tuple[str, ...], module: Any) -> str:
    from importlib import metadata

    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    top = importlib.import_module(module_name.split(".")[0])
    return str(getattr(top, "__version__", getattr(module, "__version__", "unknown")))


def _try_import(name: str) -> Backend | None:
    module_name, attr, dists = _SPECS[name]
    try:
        module = importlib.import_module(module_name)
        cls = module
        for part in attr.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        return None
    except Exception:  # a broken install (e.g. numpy ABI mismatch) counts as "not available"
        return None
    return Backend(name=name, version=_version(module_name, dists, module), interpreter_class=cls)


def find_backend(force: str | None = None) -> Backend:
    """Return the first available backend, or the one named by ``force`` / ``$EDGECELL_INTERPRETER``.

    Raises :class:`RuntimeMissingError` (one line) when none is installed or the forced one is missing.
    """
    given = "backend" if force else ENV_VAR  # what to name in a message: the caller's argument or the environment
    force = force or os.environ.get(ENV_VAR) or None
    if force:
        force = force.strip().lower().replace("-", "_")
        if force not in _SPECS:
            raise RuntimeMissingError(f"{given}={force!r} is not one of {', '.join(BACKENDS)}")
        backend = _try_import(force)
        if backend is None:
            raise RuntimeMissingError(f"interpreter {force!r} was requested ({given}) but cannot be imported")
        return backend
    for name in BACKENDS:
        backend = _try_import(name)
        if backend is not None:
            return backend
    raise RuntimeMissingError(f"no TFLite interpreter installed (tried {', '.join(BACKENDS)}); install one with: {INSTALL_HINT}")


def load_interpreter(
    model_path: str | os.PathLike | None = None,
    model_content: bytes | None = None,
    num_threads: int | None = None,
    *,
    name: str | os.PathLike | None = None,
    backend: str | None = None,
) -> tuple[Any, Backend]:
    """Create an interpreter for a model file or bytes and allocate its tensors.

    Returns ``(interpreter, backend)``. ``num_threads`` defaults to all cores. ``name`` is the
    file named in error messages when ``model_content`` is given. Any failure of the interpreter
    to read the model (not a flatbuffer, truncated, unsupported op) becomes a one-line
    :class:`ModelError` naming the file.
    """
    if (model_path is None) == (model_content is None):
        raise ValueError("give exactly one of model_path and model_content")
    label = os.fspath(name if name is not None else (model_path if model_path is not None else "<model bytes>"))
    chosen = find_backend(backend)
    threads = int(num_threads) if num_threads else (os.cpu_count() or 1)
    kwargs: dict[str, Any] = {"num_threads": threads}
    if model_path is not None:
        kwargs["model_path"] = os.fspath(model_path)
    else:
        if not model_content:
            raise ModelError("model file is empty (0 bytes)", label)
        kwargs["model_content"] = bytes(model_content)
    try:
        with quiet_fds(stdout=False):  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
            interpreter = chosen.interpreter_class(**kwargs)
            interpreter.allocate_tensors()
    except MemoryError:
        raise ModelError("not enough memory to load this model", label) from None
    except Exception as exc:  # ValueError/RuntimeError from the C++ side: all "cannot use this file"
        raise ModelError(f"not a usable TFLite model ({chosen.name}: {first_line(exc)})", label) from None
    return interpreter, chosen
