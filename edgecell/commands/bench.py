"""``edgecell bench``: latency, throughput, memory and size of converted models, side by side.

TensorFlow is imported only for ``--keras``; without ``--keras`` it is never imported. Asking for
``--keras`` where TensorFlow is not installed, or with a folder holding no ``.keras`` model, is a
one-line error (exit 1) before any timing starts.

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
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from edgecell.console import human, warn
from edgecell.options import json_option

KERAS_BATCH = 32


def _parse_threads(ctx, param, value: str) -> list[int]:
    try:
        out = [int(x) for x in str(value).replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter("give thread counts separated by commas, e.g. 1,2,4") from None
    if not out or any(t < 1 or t > 64 for t in out):
        raise click.BadParameter("thread counts must be between 1 and 64, e.g. 1,2,4")
    return list(dict.fromkeys(out))


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


def _rss_added(before: float | None) -> float | None:
    after = current_rss_mb()
    return None if before is None or after is None else max(0.0, after - before)


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported, found without importing it (bench stays TF-free)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"] is not None  # None: import blocked
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (``resource.getrusage``), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@click.command("bench", context_settings={"max_content_width": 100})
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=str), metavar="MODEL...")
@click.option("--runs", type=click.IntRange(1, 1_000_000), default=200, show_default=True, help="Timed inferences per model and thread count.")
@click.option("--warmup", type=click.IntRange(0, 100_000), default=20, show_default=True, help="Untimed inferences first.")
@click.option("--threads", "threads_list", default="1,2", show_default=True, callback=_parse_threads, help="Interpreter thread counts to try, comma-separated.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    default=None,
    help="Folder of real images: adds end-to-end throughput (JPEG decode + resize + inference).",
)
@click.option("--limit", type=click.IntRange(1), default=400, show_default=True, help="At most this many images from --data.")
@json_option
@click.option(
    "--keras",
    "keras_path",
    type=click.Path(exists=True, path_type=str),
    default=None,
    help="A .keras model or training run folder: also time Keras predict. Needs TensorFlow; without it, or with no .keras model there, bench stops with an error before timing anything.",
)
def bench(models, runs, warmup, threads_list, data_dir, limit, json_out, keras_path):
    """Benchmark TFLite models (files or export folders): latency, throughput, memory, size.

    For each model and thread count: inference latency (min/p50/p95/p99, quantise + invoke +
    dequantise on one preprocessed image), single-stream throughput, end-to-end throughput
    on real images from --data (decode + resize + inference, decoding in a thread pool as
    `edgecell classify` does), the model size, and memory: the RSS the model added (resident
    memory after loading it and running the timed inferences, minus just before loading;
    Linux) and, separately, the process's peak RSS so far (it only rises, so later rows
    include earlier ones). An export folder contributes every precision it holds, so float32
    and int8 appear side by side.

    \b
    Example:
      edgecell bench run/export --threads 1,2,4 --data data/ --json bench.json
      edgecell bench run/export --keras run/ --runs 100
    """
    import numpy as np

    from firmware_host.interpreter import find_backend
    from firmware_host.metadata import read_metadata
    from firmware_host.paths import expand_paths
    from firmware_host.preprocess import load_image
    from firmware_host.runtime import Classifier, latency_summary, models_in

    if json_out and json_out != "-":
        from firmware_host.atomic import check_writable

        check_writable(json_out)  # before minutes of timing, not after
    keras_file = _check_keras(keras_path) if keras_path else None  # likewise: refuse before timing
    con = human(json_out == "-")
    files = [f for m in models for f in models_in(m)]
    images = expand_paths([data_dir]).paths[:limit] if data_dir else []
    if data_dir and not images:
        warn(f"{data_dir}: no images found; end-to-end throughput skipped", con)

    rows = []
    sample_cache: dict[int, np.ndarray] = {}
    find_backend()  # import the interpreter library now, so the first row's RSS is the model's, not the library's
    for f in files:
        for t in threads_list:
            s = read_metadata(f).input_size
            if s not in sample_cache:  # decoded before measuring: Pillow's first decode is not the model's memory
                sample_cache[s] = _sample_image(images, s, load_image)
            x = sample_cache[s]
            release_freed_memory()
            rss_before = current_rss_mb()
            clf = Classifier.load(f, threads=t)
            for _ in range(warmup):
                clf.predict_array(x)
            lat = []
            for _ in range(runs):
                t0 = time.perf_counter()
                clf.predict_array(x)
                lat.append((time.perf_counter() - t0) * 1000.0)
            model_rss = _rss_added(rss_before)  # before the end-to-end pass: decoding buffers are not the model's
            summ = latency_summary(lat)
            e2e = None
            if images:
                for _ in clf.classify_many(images[: min(len(images), 20)]):  # warm the file cache and the pool
                    pass
                t0 = time.perf_counter()
                ok = sum(1 for _, r in clf.classify_many(images) if not isinstance(r, Exception))  # in-process: this thread count
                wall = time.perf_counter() - t0
                e2e = {"images": len(images), "classified": ok, "seconds": wall, "images_per_s": ok / wall if wall > 0 else None}
            rows.append(
                {
                    "model": str(f),
                    "precision": clf.precision.value,
                    "input_size": s,
                    "threads": t,
                    "interpreter": clf.backend.describe(),
                    "size_bytes": clf.size_bytes,
                    "latency_ms": summ,
                    "throughput_per_s": 1000.0 / summ["mean"] if summ["mean"] else None,
                    "end_to_end": e2e,
                    "model_rss_mb": model_rss,
                    "process_peak_rss_mb": peak_rss_mb(),
                }
            )
            del clf

    keras_result = _bench_keras(keras_file, runs, warmup) if keras_file else None

    _print(con, rows, keras_result, bool(images))
    report = {
        "runs": runs,
        "warmup": warmup,
        "threads": threads_list,
        "data": data_dir,
        "cpu_count": os.cpu_count(),
        "results": rows,
        "speedup_int8_vs_float32": _speedups(rows),
        "keras": keras_result,
        "notes": [
            "latency = quantise + invoke + dequantise for one preprocessed image (decode excluded)",
            "end_to_end = decode + resize + inference over --data images, decoding in a thread pool",
            "model_rss_mb = resident memory added by loading the model and running its warm-up and timed inferences "
            "(current RSS from /proc/self/statm after the runs minus just before loading; end-to-end pass excluded; None off Linux)",
            "process_peak_rss_mb = peak resident memory of the whole process so far (getrusage); it only rises, so each row includes every earlier row's peak",
        ],
    }
    if json_out:
        from firmware_host.atomic import _json_default, write_text

        text = json.dumps(report, indent=2, default=_json_default) + "\n"
        if json_out == "-":
            click.echo(text, nl=False)
        else:
            write_text(json_out, text)


def _sample_image(images, size: int, load_image):
    import numpy as np

    from firmware_host.errors import ImageError

    for p in images[:20]:
        try:
            return load_image(p, size)
        except ImageError:
            continue
    return np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _speedups(rows) -> list[dict]:
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


def _find_keras(path: str) -> Path:
    from firmware_host.errors import ModelError

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


def _check_keras(path: str) -> Path:
    """The .keras file ``--keras`` names, checked before any timing: TensorFlow must be installed
    (looked up, not imported) and a model must be there; otherwise a one-line error, exit 1."""
    from firmware_host.errors import EdgecellError

    kpath = _find_keras(path)
    if not tensorflow_installed():
        raise EdgecellError(
            '--keras needs TensorFlow, which is not installed here (pip install "edgecell[train]"); leave out --keras to bench the TFLite models alone'
        )
    return kpath


def _bench_keras(kpath: Path, runs: int, warmup: int) -> dict:
    from edgecell.tfutil import import_tf

    tf = import_tf()  # only here: the TFLite rows never need it
    import keras
    import numpy as np

    from firmware_host.errors import ModelError
    from firmware_host.runtime import latency_summary

    release_freed_memory()
    rss_before = current_rss_mb()  # after importing TensorFlow: the figure is the model's, not the library's
    try:
        model = keras.models.load_model(kpath, compile=False)
    except Exception as exc:
        raise ModelError(f"Keras cannot load this model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", kpath) from None
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
    model_rss = _rss_added(rss_before)
    return {
        "model": str(kpath),
        "tensorflow_version": tf.__version__,
        "predict_one": {"runs": n_one, "latency_ms": latency_summary(lat)},
        "predict_on_batch": {
            "batch": KERAS_BATCH,
            "runs": n_batch,
            "latency_ms": bs,
            "per_image_ms": bs["p50"] / KERAS_BATCH,
            "images_per_s": 1000.0 * KERAS_BATCH / bs["mean"],
        },
        "model_rss_mb": model_rss,
        "process_peak_rss_mb": peak_rss_mb(),
    }


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _label(model: str) -> str:
    """Short name of a row's model: the export folder's name, or the file name for a lone file."""
    p = Path(model)
    from firmware_host.metadata import Precision

    return p.parent.name if p.name in {x.filename for x in Precision} else p.name


def _print(con, rows, keras_result, with_e2e: bool) -> None:
    table = Table(title="TFLite inference (latency in ms)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in [
        ("model", "left"),
        ("prec", "left"),
        ("thr", "right"),
        ("KB", "right"),
        ("min", "right"),
        ("p50", "right"),
        ("p95", "right"),
        ("p99", "right"),
        ("img/s", "right"),
    ]:
        table.add_column(name, justify=justify, overflow="fold")
    if with_e2e:
        table.add_column("e2e/s", justify="right")
    table.add_column("+RSS MB", justify="right")
    table.add_column("peak MB", justify="right")
    for r in rows:
        lat = r["latency_ms"]
        cells = [
            escape(_label(r["model"])),
            r["precision"],
            str(r["threads"]),
            f"{r['size_bytes'] / 1024:.1f}",
            _f(lat["min"], "{:.3g}"),
            _f(lat["p50"], "{:.3g}"),
            _f(lat["p95"], "{:.3g}"),
            _f(lat["p99"], "{:.3g}"),
            _f(r["throughput_per_s"], "{:.0f}"),
        ]
        if with_e2e:
            e = r["end_to_end"]
            cells.append(_f(e and e["images_per_s"], "{:.0f}"))
        cells.append(_f(r["model_rss_mb"], "{:.1f}"))
        cells.append(_f(r["process_peak_rss_mb"], "{:.0f}"))
        table.add_row(*cells)
    con.print(table)
    if rows:
        con.print(
            f"Interpreter: {escape(rows[0]['interpreter'])}. Latency: quantise + invoke + dequantise, decoding excluded; "
            "img/s = 1000 / mean latency; +RSS MB = resident memory this model added (load + timed runs); "
            "peak MB = the whole process's peak RSS so far (only rises, so later rows include earlier ones).",
            soft_wrap=True,
        )
    for s in _speedups(rows):
        sp = s["speedup"]
        verdict = f"{sp:.2f}x faster" if sp >= 1 else f"{1 / sp:.2f}x slower"
        con.print(
            f"int8 vs float32 ({escape(Path(s['folder']).name)}, {s['threads']} thread(s)): p50 {s['p50_int8_ms']:.3g} ms vs "
            f"{s['p50_float32_ms']:.3g} ms - int8 is {verdict}, {s['size_ratio']:.1f}x smaller",
            soft_wrap=True,
        )
    if keras_result:
        k = keras_result
        con.print(
            f"Keras ({escape(Path(k['model']).name)}, TF {k['tensorflow_version']}): predict on 1 image p50 "
            f"{k['predict_one']['latency_ms']['p50']:.2f} ms; predict_on_batch({KERAS_BATCH}) "
            f"{k['predict_on_batch']['per_image_ms']:.3f} ms/image ({k['predict_on_batch']['images_per_s']:.0f} img/s); "
            f"RSS added by the model {_f(k['model_rss_mb'], '{:.1f}')} MB (process peak {_f(k['process_peak_rss_mb'], '{:.0f}')} MB, TensorFlow included)",
            soft_wrap=True,
        )
