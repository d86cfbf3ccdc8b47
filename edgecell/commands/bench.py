"""``edgecell bench``: latency, throughput, memory and size of converted models, side by side.

TensorFlow is imported only for ``--keras`` (and only if it is installed).
"""

from __future__ import annotations

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
    help="A .keras model or training run folder: also time Keras predict (needs TensorFlow).",
)
def bench(models, runs, warmup, threads_list, data_dir, limit, json_out, keras_path):
    """Benchmark TFLite models (files or export folders): latency, throughput, memory, size.

    For each model and thread count: inference latency (min/p50/p95/p99, quantise + invoke +
    dequantise on one preprocessed image), single-stream throughput, end-to-end throughput
    on real images from --data (decode + resize + inference, decoding in a thread pool as
    `edgecell classify` does), the process's peak RSS so far and the model size. An export
    folder contributes every precision it holds, so float32 and int8 appear side by side.

    \b
    Example:
      edgecell bench run/export --threads 1,2,4 --data data/ --json bench.json
      edgecell bench run/export --keras run/ --runs 100
    """
    import numpy as np

    from firmware_host.paths import expand_paths
    from firmware_host.preprocess import load_image
    from firmware_host.runtime import Classifier, latency_summary, models_in

    if json_out and json_out != "-":
        from firmware_host.atomic import check_writable

        check_writable(json_out)  # before minutes of timing, not after
    con = human(json_out == "-")
    files = [f for m in models for f in models_in(m)]
    images = expand_paths([data_dir]).paths[:limit] if data_dir else []
    if data_dir and not images:
        warn(f"{data_dir}: no images found; end-to-end throughput skipped", con)

    rows = []
    sample_cache: dict[int, np.ndarray] = {}
    for f in files:
        for t in threads_list:
            clf = Classifier.load(f, threads=t)
            s = clf.input_size
            if s not in sample_cache:
                sample_cache[s] = _sample_image(images, s, load_image)
            x = sample_cache[s]
            for _ in range(warmup):
                clf.predict_array(x)
            lat = []
            for _ in range(runs):
                t0 = time.perf_counter()
                clf.predict_array(x)
                lat.append((time.perf_counter() - t0) * 1000.0)
            summ = latency_summary(lat)
            e2e = None
            if images:
                for _ in clf.classify_many(images[: min(len(images), 20)]):  # warm the file cache and the pool
                    pass
                t0 = time.perf_counter()
                ok = sum(1 for _, r in clf.classify_many(images) if not isinstance(r, Exception))
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
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
            del clf

    keras_result = None
    if keras_path:
        keras_result = _bench_keras(keras_path, runs, warmup, con)

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
            "peak_rss_mb = peak resident memory of the whole process so far (monotonic across rows)",
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
        raise ModelError("no .keras model in this folder", p)
    return found[0]


def _bench_keras(path: str, runs: int, warmup: int, con) -> dict | None:
    try:
        import tensorflow as tf  # noqa: F401  (only here: the TFLite rows never need it)
        import keras
    except ImportError:
        warn('--keras: TensorFlow is not installed here (pip install "edgecell[train]"); Keras timing skipped', con)
        return None
    import numpy as np

    from firmware_host.errors import ModelError
    from firmware_host.runtime import latency_summary

    kpath = _find_keras(path)
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
        "peak_rss_mb": peak_rss_mb(),
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
    table.add_column("RSS MB", justify="right")
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
        cells.append(_f(r["peak_rss_mb"], "{:.0f}"))
        table.add_row(*cells)
    con.print(table)
    if rows:
        con.print(
            f"Interpreter: {escape(rows[0]['interpreter'])}. Latency: quantise + invoke + dequantise, decoding excluded; "
            "img/s = 1000 / mean latency; RSS MB = the process's peak so far.",
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
            f"peak RSS {_f(k['peak_rss_mb'], '{:.0f}')} MB",
            soft_wrap=True,
        )
