"""``edgecell bench``: options and printing over :mod:`firmware_host.bench` (TensorFlow only for ``--keras``)."""

from __future__ import annotations

import click

from edgecell.console import human, warn
from edgecell.options import IntList, check_outputs, data_option, emit_json, json_option
from firmware_host.bench import DEFAULT_LIMIT, DEFAULT_RUNS, DEFAULT_THREADS, DEFAULT_WARMUP, MAX_RUNS, MAX_WARMUP
from firmware_host.interpreter import MAX_THREADS


@click.command("bench", context_settings={"max_content_width": 100})
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=str), metavar="MODEL...")
@click.option("--runs", type=click.IntRange(1, MAX_RUNS), default=DEFAULT_RUNS, show_default=True, help="Timed inferences per model and thread count.")
@click.option("--warmup", type=click.IntRange(0, MAX_WARMUP), default=DEFAULT_WARMUP, show_default=True, help="Untimed inferences first.")
@click.option(
    "--threads",
    "threads_list",
    type=IntList(1, MAX_THREADS, "thread count", "1,2,4", unique=True),
    default=",".join(map(str, DEFAULT_THREADS)),
    show_default=True,
    help="Interpreter thread counts to try, comma-separated.",
)
@data_option(required=False, help="Folder(s) of real images: adds end-to-end throughput (decode + preprocess + inference).", sources=False)
@click.option("--limit", type=click.IntRange(1), default=DEFAULT_LIMIT, show_default=True, help="At most this many images from --data.")
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
    on real images from --data (decode + preprocess + inference, decoding in a thread pool
    as `edgecell classify` does for fewer than 256 images or with --threads), the model
    size, and memory: the RSS the model added (resident memory after loading it and running
    the timed inferences, minus just before loading; Linux) and, separately, the process's
    peak RSS so far (it only rises, so later rows include earlier ones). An export folder contributes every precision it holds, so float32
    and int8 appear side by side.

    \b
    Example:
      edgecell bench run/export --threads 1,2,4 --data data/ --json bench.json
      edgecell bench run/export --keras run/ --runs 100
    """
    from edgecell.bench import bench_keras, check_keras
    from edgecell.views.bench import print_report
    from firmware_host import bench as lib
    from firmware_host.atomic import check_writable
    from firmware_host.metadata import model_reads
    from firmware_host.paths import expand_paths

    reads = [r for m in models for r in model_reads(m)] + [(data_dir, "the data folder being read"), (keras_path, "the Keras model")]
    check_outputs({"--json": json_out}, reads)  # never onto a model, its sidecar or into the data folder
    if json_out and json_out != "-":
        check_writable(json_out)  # before minutes of timing, not after
    keras_file = check_keras(keras_path) if keras_path else None  # likewise: refuse before timing
    con = human(json_out == "-")
    images = expand_paths(data_dir).paths[:limit] if data_dir else []
    if data_dir and not images:
        warn(f"{', '.join(data_dir)}: no images found; end-to-end throughput skipped", con)
    rows = lib.bench_models(models, runs, warmup, threads_list, images)
    keras_result = bench_keras(keras_file, runs, warmup) if keras_file else None
    print_report(con, rows, keras_result, bool(images))
    emit_json(json_out, lib.report(rows, runs=runs, warmup=warmup, threads=threads_list, data=list(data_dir) or None, keras=keras_result))
