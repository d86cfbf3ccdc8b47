"""Latency, throughput, memory and size of converted models, side by side (no TensorFlow).

The library behind ``edgecell bench``::

    from firmware_host.bench import bench_models

    report = bench_models(["export"], threads=(1, 2), images=["cells/a.jpg", ...])

Memory is reported two ways, because they answer different questions:

* ``model_rss_mb``: how much the resident set grew while loading this model and running its
  warm-up and timed inferences (current RSS from ``/proc/self/statm`` just before ``load`` minus
  just after the runs; the interpreter library is imported before the first row, and memory the
  previous row freed is handed back to the OS first where glibc allows, so rows do not inherit
  each other's memory). Linux only (None elsewhere).
* ``process_peak_rss_mb``: the whole process's peak RSS so far (``getrusage``). It only ever
  rises, so a later row includes every earlier row's peak; it is the figure to size a device
  for, not a per-model figure.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from firmware_host.errors import DataError, ImageError, os_reason
from firmware_host.interpreter import MAX_THREADS, find_backend
from firmware_host.metadata import read_metadata
from firmware_host.paths import path_list
from firmware_host.preprocess import decode_rgb, load_image, read_bytes
from firmware_host.runtime import Classifier, check_number, latency_summary, models_in

DEFAULT_RUNS = 200
"""Timed inferences per model and thread count."""
DEFAULT_WARMUP = 20
"""Untimed inferences before the timed ones."""
DEFAULT_THREADS = (1, 2)
"""Interpreter thread counts tried."""
MAX_RUNS = 1_000_000
"""Most timed inferences per model and thread count (``--runs``)."""
MAX_WARMUP = 100_000
"""Most untimed inferences first (``--warmup``)."""
DEFAULT_LIMIT = 400
"""At most this many images for the end-to-end pass."""
E2E_WARM_IMAGES = 20
"""Images classified once before the end-to-end pass (file cache, worker pool)."""

NOTES = [
    "latency = quantise + invoke + dequantise for one preprocessed image (decode excluded)",
    "end_to_end = decode + resize + inference over --data images, decoding in a thread pool",
    "model_rss_mb = resident memory added by loading the model and running its warm-up and timed inferences "
    "(current RSS from /proc/self/statm after the runs minus just before loading; end-to-end pass excluded; None off Linux)",
    "process_peak_rss_mb = peak resident memory of the whole process so far (getrusage); it only rises, so each row includes every earlier row's peak",
]


def current_rss_mb() -> float | None:
    """Resident memory of this process right now (``/proc/self/statm``), in MiB; None off Linux."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            resident_pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def release_freed_memory() -> None:
    """Collect garbage and ask glibc to return freed heap to the OS (``malloc_trim``), so the next
    RSS reading is not flattered by memory an earlier model left in the allocator's free lists."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...): RSS readings are just less tight
            pass


def rss_added(before: float | None) -> float | None:
    """RSS now minus ``before`` (a :func:`current_rss_mb` reading), at least 0; None when either is unknown."""
    after = current_rss_mb()
    return None if before is None or after is None else max(0.0, after - before)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (``resource.getrusage``), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def sample_image(images: Sequence, size: int) -> np.ndarray:
    """The first decodable image of the first 20, else a seeded random one: what latency is timed on."""
    for p in images[:20]:
        try:
            return load_image(p, size)
        except ImageError:
            continue
    return np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def check_some_readable(images: Sequence) -> None:
    """A :class:`DataError` when not one of ``images`` can be decoded: an end-to-end figure of 0 images per second, and
    a latency timed on noise, would look like a result."""
    first = None
    for p in images:
        try:
            decode_rgb(read_bytes(p), path=p)
            return
        except (ImageError, OSError) as exc:
            first = first or (p, getattr(exc, "reason", None) or os_reason(exc))
    others = f"nor can the other {len(images) - 1} image(s) given" if len(images) > 1 else "the only image given"
    raise DataError(f"{first[1]}; {others}, so there is nothing to time end to end", first[0])


def bench_one(path: str | os.PathLike, threads: int, x: np.ndarray, runs: int, warmup: int, images: Sequence = ()) -> dict:
    """One row: load ``path`` on ``threads`` threads, time ``runs`` inferences on ``x``, then the end-to-end pass."""
    release_freed_memory()
    rss_before = current_rss_mb()
    clf = Classifier.load(path, threads=threads, allow_unverified=True)  # timing only
    for _ in range(warmup):
        clf.predict_array(x)
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.predict_array(x)
        lat.append((time.perf_counter() - t0) * 1000.0)
    model_rss = rss_added(rss_before)  # before the end-to-end pass: decoding buffers are not the model's
    summ = latency_summary(lat)
    e2e = None
    if images:
        for _ in clf.classify_many(images[: min(len(images), E2E_WARM_IMAGES)]):  # warm the file cache and the pool
            pass
        t0 = time.perf_counter()
        failed = [(f, r) for f, r in clf.classify_many(images) if isinstance(r, Exception)]  # in-process: this thread count
        wall = time.perf_counter() - t0
        ok = len(images) - len(failed)
        e2e = {"images": len(images), "classified": ok, "seconds": wall, "images_per_s": ok / wall if wall > 0 else None}
        e2e["first_failure"] = f"{failed[0][0]}: {getattr(failed[0][1], 'reason', failed[0][1])}" if failed else None
    return {
        "model": str(path),
        "precision": clf.precision.value,
        "input_size": clf.input_size,
        "threads": threads,
        "interpreter": clf.backend.describe(),
        "size_bytes": clf.size_bytes,
        "unverified": clf.meta.unverified,  # timed all the same; classify refuses it without --allow-unverified
        "latency_ms": summ,
        "throughput_per_s": 1000.0 / summ["mean"] if summ["mean"] else None,
        "end_to_end": e2e,
        "model_rss_mb": model_rss,
        "process_peak_rss_mb": peak_rss_mb(),
    }


def bench_models(
    models: str | os.PathLike | Sequence[str | os.PathLike],
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    threads: Sequence[int] = DEFAULT_THREADS,
    images: Sequence = (),
) -> list[dict]:
    """One row per model file (export folders contribute every precision they hold) and thread count; ``models`` is
    one model or folder, or a list of them; ``threads`` one count or several; ``images`` (for end-to-end timing and
    the sample) image files, or one folder, file or pattern, expanded as ``edgecell bench --data`` expands it."""
    from firmware_host.paths import expand_paths

    runs = int(check_number("runs", runs, 1, MAX_RUNS, whole=True))  # none timed gave rows of None (a review)
    warmup = int(check_number("warmup", warmup, 0, MAX_WARMUP, whole=True))
    threads = [threads] if isinstance(threads, int) else list(threads)
    if not threads:
        raise ValueError("threads must hold at least one thread count (got none)")
    threads = [int(check_number("threads", t, 1, MAX_THREADS, whole=True)) for t in threads]
    files = [f for m in path_list(models) for f in models_in(m)]
    if isinstance(images, (str, os.PathLike)):  # one folder, file or pattern (read one character at a time before)
        expanded = expand_paths([images])
        if not expanded.paths and expanded.errors:
            raise DataError(expanded.errors[0].reason, expanded.errors[0].path)
        images = expanded.paths
    images = list(images)
    if images:
        check_some_readable(images)
    rows = []
    sample_cache: dict[int, np.ndarray] = {}
    find_backend()  # import the interpreter library now, so the first row's RSS is the model's, not the library's
    for f in files:
        for t in threads:
            s = read_metadata(f).input_size
            if s not in sample_cache:  # decoded before measuring: Pillow's first decode is not the model's memory
                sample_cache[s] = sample_image(images, s)
            rows.append(bench_one(f, t, sample_cache[s], runs, warmup, images))
    return rows


def speedups(rows: Sequence[dict]) -> list[dict]:
    """int8 vs float32 p50 speed-up for models of one folder at the same thread count."""
    by = {}
    for r in rows:
        by[(str(Path(r["model"]).parent), r["threads"], r["precision"])] = r
    out = []
    for (folder, t, prec), r in by.items():
        if prec != "int8":
            continue
        f = by.get((folder, t, "float32"))
        if f:
            out.append(
                {
                    "folder": folder,
                    "threads": t,
                    "p50_float32_ms": f["latency_ms"]["p50"],
                    "p50_int8_ms": r["latency_ms"]["p50"],
                    "speedup": f["latency_ms"]["p50"] / r["latency_ms"]["p50"] if r["latency_ms"]["p50"] else None,
                    "size_ratio": f["size_bytes"] / r["size_bytes"],
                }
            )
    return out


def report(rows: list[dict], *, runs: int, warmup: int, threads: Sequence[int], data: str | None, keras: dict | None = None) -> dict:
    """The JSON report of ``edgecell bench``."""
    return {
        "runs": runs,
        "warmup": warmup,
        "threads": list(threads),
        "data": data,
        "cpu_count": os.cpu_count(),
        "results": rows,
        "speedup_int8_vs_float32": speedups(rows),
        "keras": keras,
        "notes": NOTES,
    }
