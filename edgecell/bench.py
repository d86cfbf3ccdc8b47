"""Keras timing for ``edgecell bench --keras`` (TensorFlow imported only when a Keras model is timed).

Asking for ``--keras`` where TensorFlow is not installed, or with a folder holding no ``.keras``
model, is a one-line error before any timing starts (:func:`check_keras`).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from edgecell.tfutil import TRAIN_EXTRA_INSTALL
from firmware_host.bench import current_rss_mb, peak_rss_mb, release_freed_memory, rss_added
from firmware_host.errors import EdgecellError, ModelError, first_line
from firmware_host.runtime import latency_summary

KERAS_BATCH = 32
"""Batch size of the ``predict_on_batch`` timing."""


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported, found without importing it (bench stays TF-free)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"] is not None  # None: import blocked
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def find_keras(path: str) -> Path:
    p = Path(path)
    if p.is_file():
        if p.suffix != ".keras":
            raise ModelError("--keras wants a .keras file or a run folder holding one", p)
        return p
    for name in ("model.keras", "best.keras", "final.keras"):
        if (p / name).is_file():
            return p / name
    found = sorted(p.rglob("*.keras"))
    if not found:
        raise ModelError("--keras: no .keras model in this folder (give a training run folder or its model.keras)", p)
    return found[0]


def check_keras(path: str) -> Path:
    """The .keras file ``--keras`` names, checked before any timing: TensorFlow must be installed
    (looked up, not imported) and a model must be there; otherwise a one-line error, exit 1."""
    from edgecell.runfolder import check_keras_file

    kpath = find_keras(path)
    if not tensorflow_installed():
        raise EdgecellError(
            f"--keras needs TensorFlow, which is not installed here ({TRAIN_EXTRA_INSTALL}); leave out --keras to bench the TFLite models alone"
        )
    check_keras_file(kpath)
    return kpath


def bench_keras(kpath: Path, runs: int, warmup: int) -> dict:
    from edgecell.tfutil import import_tf

    tf = import_tf()  # only here: the TFLite rows never need it
    import numpy as np

    from edgecell.model import load_model

    release_freed_memory()
    rss_before = current_rss_mb()  # after importing TensorFlow: the figure is the model's, not the library's
    try:
        model = load_model(kpath)
    except Exception as exc:
        raise ModelError(f"Keras cannot load this model ({type(exc).__name__}: {first_line(exc, '')})", kpath) from None
    shape = tuple(int(d) for d in model.input_shape[1:])
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, size=(1, *shape)).astype(np.float32)
    batch = rng.integers(0, 256, size=(KERAS_BATCH, *shape)).astype(np.float32)
    n_one = max(1, min(runs, 50))
    n_batch = max(1, min(runs // 10, 20))
    for _ in range(max(1, min(warmup, 5))):
        model.predict(one, verbose=0)
        model.predict_on_batch(batch)
    lat = []
    for _ in range(n_one):
        t0 = time.perf_counter()
        model.predict(one, verbose=0)
        lat.append((time.perf_counter() - t0) * 1000.0)
    blat = []
    for _ in range(n_batch):
        t0 = time.perf_counter()
        model.predict_on_batch(batch)
        blat.append((time.perf_counter() - t0) * 1000.0)
    bs = latency_summary(blat)
    model_rss = rss_added(rss_before)
    return {
        "model": str(kpath),
        "tensorflow_version": tf.__version__,
        "predict_one": {"runs": n_one, "latency_ms": latency_summary(lat)},
        "predict_on_batch": {
            "batch": KERAS_BATCH,
            "runs": n_batch,
            "latency_ms": bs,
            "p50_per_image_ms": bs["p50"] / KERAS_BATCH,
            "images_per_s": 1000.0 * KERAS_BATCH / bs["mean"],
        },
        "model_rss_mb": model_rss,
        "process_peak_rss_mb": peak_rss_mb(),
    }
