#!/usr/bin/env python3
"""One benchmark run, side by side: edgecell against what a user would run instead.

    python benchmarks/run.py [--data ../shared/bloodcells] [--run RUN_DIR] [--rounds 7]

1. Trains with defaults (timed) or reuses ``--run``, converts to float32 and int8 (``--int8``).
2. Measures on the same test-split images, interleaved round by round so machine drift hits
   every method alike:
   - Keras ``model.predict`` on one image, ``predict_on_batch`` on one image, a ``tf.function``;
   - float32 and int8 TFLite through ai-edge-litert at 1 and 2 threads (edgecell's runtime);
   - the same .tflite files through tflite-runtime 2.14 in its own virtual environment with
     numpy<2 (when it installs);
   - end-to-end classify throughput (decode + preprocess + inference, as classify runs it: 2 worker processes) and decode +
     preprocess alone (the ceiling classify can approach).
3. Reports accuracy and macro-F1 of each model on the test split, file sizes, and for every speed
   figure the median over rounds and its ratio to the int8 LiteRT figure. Writes
   ``benchmarks/results/latest.json`` and ``benchmarks/results/latest.md``.

Figures are from the machine this runs on (see the ``machine`` field); they are x86 figures,
not Raspberry Pi figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "bloodcells"
WORK = HERE / "work"
RESULTS = HERE / "results"

TFLITE_RUNTIME_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from tflite_runtime.interpreter import Interpreter
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, spec["root"])
    from firmware_host.mirrors import view  # numpy only: the runtime's mirrored views, one invocation each
    x = np.load(spec["images"])
    out = {}
    for name, path in spec["models"].items():
        try:
            it = Interpreter(model_path=path, num_threads=1)
            it.allocate_tensors()
        except Exception as exc:
            out[name] = {"error": str(exc).splitlines()[0]}
            continue
        i = it.get_input_details()[0]; o = it.get_output_details()[0]
        scale, zp = i["quantization"]
        def feed(img):
            if i["dtype"] == np.float32:
                return img[None].astype(np.float32)
            q = np.clip(np.round(img.astype(np.float32) / scale + zp), -128, 127)
            return q.astype(i["dtype"])[None]
        for img in x[:20]:
            it.set_tensor(i["index"], feed(img)); it.invoke()
        times = []
        for img in x[: spec["n"]]:
            t0 = time.perf_counter()
            for k in range(spec["views"]):
                it.set_tensor(i["index"], feed(view(img, k))); it.invoke(); r = it.get_tensor(o["index"])
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"ms": float(np.median(times))}
    print(json.dumps(out))
    """
)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def edgecell_cmd() -> list[str]:
    return [sys.executable, "-m", "edgecell"]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(), "system": platform.system()}


def tflite_runtime_python() -> str | None:
    """A venv with tflite-runtime 2.14 and numpy<2, or None when it cannot be installed."""
    venv = HERE / "work" / "venv-tflite-runtime"  # a cache shared by every --work folder
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import tflite_runtime"], capture_output=True).returncode == 0:
        return str(py)
    try:
        sh([sys.executable, "-m", "venv", venv])
        sh([py, "-m", "pip", "install", "--quiet", "tflite-runtime==2.14.0", "numpy<2"], timeout=600)
        return str(py)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"tflite-runtime 2.14 could not be installed ({exc}); its column is left out", flush=True)
        return None


def trust(run: Path, data: str) -> dict:
    """Stain shift (Keras, float32 and int8 TFLite), calibration and the shortcut audit, through the CLI."""
    out: dict = {"stain_shift": {}, "calibration": {}}
    export = run / "export"
    targets = {"keras": run, "float32": export / "model_float32.tflite", "int8": export / "model_int8.tflite"}
    t0 = time.perf_counter()
    for name, target in targets.items():
        js = WORK / f"evaluate_{name}.json"
        sh(
            edgecell_cmd() + ["evaluate", target, "--data", data, "--stain-shift", "--json", js],  # into RUN/evaluation, where audit reads it
            stdout=subprocess.DEVNULL,
        )
        m = json.loads(js.read_text())
        s = m["stain_shift"]
        out["stain_shift"][name] = {
            "clean_accuracy": s["clean"]["accuracy"],
            "worst": s["worst"],
            "per_perturbation": {r["name"]: r["accuracy"] for r in s["perturbations"]},
        }
        out["calibration"][name] = {"temperature": m["temperature"], "ece": m["ece"], "ece_calibrated": m["ece_calibrated"]}
    out["evaluate_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    js = WORK / "audit.json"
    sh(edgecell_cmd() + ["audit", run, "--data", data, "--json", js], stdout=subprocess.DEVNULL)
    a = json.loads(js.read_text())
    out["audit"] = {
        "baselines": {r["name"]: r["accuracy"] for r in a["baselines"]},
        "best_baseline": a["best_baseline"],
        "cnn_accuracy": a["cnn"]["accuracy"],
        "cnn_lead_points": a["cnn_lead_points"],
        "shuffled_control": {k: a["shuffled_control"][k] for k in ("accuracy", "chance", "at_chance")},
        "under_stain_shift": audit_shift(a),
    }
    out["audit_seconds"] = time.perf_counter() - t0
    return out


def audit_shift(a: dict) -> dict | None:
    """Per model (baselines and the CNN): accuracy under grayscale, background swap, and the worst shift."""
    ss = a.get("stain_shift")
    if not ss:
        return None
    models = dict(ss["baselines"])
    if ss.get("cnn"):
        models["CNN"] = ss["cnn"]
    out = {}
    for name, m in models.items():
        shifted = m["shifted"]
        worst = min(shifted, key=shifted.get)
        out[name] = {
            "clean": m["clean"],
            "grayscale": shifted.get("grayscale"),
            "background swap": shifted.get("background swap"),
            "worst": shifted[worst],
            "worst_name": worst,
        }
    return out


def bars(r: dict) -> list[dict]:
    """Each issue's bar, the figure measured for it and whether it is met (None: not measured in this run)."""
    p = r["parity"]["models"]
    s = {k: v["median"] for k, v in r["speed"].items()}
    ratios = r["ratios"]
    rows = []

    def bar(issue, what, value, target, ok, fmt="{:.4f}"):
        rows.append(
            {
                "issue": issue,
                "bar": what,
                "value": value,
                "target": target,
                "shown": "n/a" if value is None else fmt.format(value),
                "met": None if value is None else bool(ok),
            }
        )

    kt = r["keras_test_metrics"]
    bar(3, "test macro-F1 of the float model", kt["macro_f1"], ">= 0.985", kt["macro_f1"] >= 0.985)
    tw = r.get("train_wall_seconds")
    bar(3, "training with defaults, minutes (wall clock, whole command)", None if tw is None else tw / 60, "<= 15", tw is not None and tw <= 900, "{:.1f}")
    drop = p["int8"]["accuracy_drop_pp"]
    bar(4, "int8 accuracy drop vs the float (Keras) model, points", drop, "<= 0.5", drop <= 0.5, "{:+.2f}")
    agree = p["int8"].get("agreement_with_float32")
    bar(4, "top-1 agreement int8 vs float32, %", None if agree is None else 100 * agree, ">= 99.5", agree is not None and agree >= 0.995, "{:.2f}")
    sz = r["sizes_bytes"]
    bar(4, "int8 file, KB", sz["int8"] / 1024, "<= 300", sz["int8"] <= 300 * 1024, "{:.0f}")
    bar(4, "int8 file as share of float32, %", 100 * sz["int8"] / sz["float32"], "<= 30", sz["int8"] <= 0.3 * sz["float32"], "{:.1f}")
    bar(5, "int8 inference, 1 thread, ms per image", s["litert_int8_1t_ms"], "<= 1.0", s["litert_int8_1t_ms"] <= 1.0, "{:.3f}")
    bar(5, "float32 / int8 LiteRT time, 1 thread", ratios["float32_over_int8_litert_1t"], ">= 1.5", ratios["float32_over_int8_litert_1t"] >= 1.5, "{:.2f}x")
    bar(5, "Keras predict (1 image) / int8 LiteRT time", ratios["keras_predict_over_int8"], ">= 30", ratios["keras_predict_over_int8"] >= 30, "{:.0f}x")
    e2e = s["e2e_classify_images_per_s"]
    bar(5, "end-to-end classify, 2 workers, images/s", e2e, ">= 150", e2e >= 150, "{:.0f}")
    trt = ratios.get("tflite_runtime_int8_over_litert_int8")
    bar(6, "tflite-runtime 2.14 / LiteRT time, int8, same file", trt, "> 1", trt is not None and trt > 1, "{:.2f}x")
    share, how = max(
        (ratios["e2e_share_of_decode_ceiling"], "classify's default, 2 worker processes"), (ratios["e2e_interp_1t_share_of_decode_ceiling"], "--threads 1")
    )
    bar(6, f"end-to-end classify as share of decode+preprocess ceiling, % ({how})", 100 * share, ">= 70", share >= 0.7, "{:.0f}")
    tot = r.get("total_seconds")
    bar(6, "whole benchmark run, minutes", None if tot is None else tot / 60, "<= 25", tot is not None and tot <= 1500, "{:.1f}")
    t = r.get("trust")
    if t:
        w = t["stain_shift"]["int8"]
        d = 100 * (w["clean_accuracy"] - w["worst"]["accuracy"])
        bar(8, f"int8 worst stain-shift drop, points ({w['worst']['name']})", d, "<= 5", d <= 5, "{:.1f}")
        lead = t["audit"]["cnn_lead_points"]
        bar(8, f"CNN lead over best morphology-free baseline ({t['audit']['best_baseline']}), points", lead, ">= 3", lead >= 3, "{:+.1f}")
        ece = t["calibration"]["int8"]["ece_calibrated"]
        bar(8, "ECE after temperature scaling, int8, test split", ece, "<= 0.02", ece <= 0.02, "{:.4f}")
        ece_k = t["calibration"]["keras"]["ece_calibrated"]
        bar(8, "ECE after temperature scaling, Keras, test split", ece_k, "<= 0.02", ece_k <= 0.02, "{:.4f}")
    return rows


def time_calls(fn, inputs, warmup: int = 5) -> float:
    """Median milliseconds of ``fn(x)`` over ``inputs`` (after a warm-up)."""
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    global WORK, RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="data folder (default ../shared/bloodcells)")
    ap.add_argument("--run", default=None, help="reuse this trained run folder instead of training")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds (median taken)")
    ap.add_argument("--per-round", type=int, default=100, help="single-image calls per method per round")
    ap.add_argument("--keras-per-round", type=int, default=20, help="Keras predict() calls per round (slow)")
    ap.add_argument("--no-tflite-runtime", action="store_true", help="skip the tflite-runtime 2.14 comparison")
    ap.add_argument("--no-trust", action="store_true", help="skip stain shift, calibration and the shortcut audit")
    ap.add_argument("--work", default=str(WORK), help="scratch folder (run folder, JSON of each step; default benchmarks/work)")
    ap.add_argument("--results", default=str(RESULTS), help="where latest.json and latest.md go (default benchmarks/results)")
    ap.add_argument("--render-only", action="store_true", help="rewrite latest.md from latest.json (and the same run's audit.json in --work) without measuring")
    args = ap.parse_args(argv)
    WORK, RESULTS = Path(args.work), Path(args.results)
    if args.render_only:
        from benchmarks._results import publish

        result = json.loads((RESULTS / "latest.json").read_text())
        audit_json = WORK / "audit.json"
        if result.get("trust") and audit_json.is_file():
            result["trust"]["audit"]["under_stain_shift"] = audit_shift(json.loads(audit_json.read_text()))
        publish(RESULTS, "latest", result, markdown(result))
        return 0

    t_start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "data": args.data}

    # 1. train (timed) and convert -------------------------------------------------------------
    if args.run:
        run = Path(args.run)
    else:
        run = WORK / "run-default"
        t0 = time.perf_counter()
        sh(edgecell_cmd() + ["train", "--data", args.data, "--out", run, "--json", WORK / "train.json"])
        result["train_wall_seconds"] = time.perf_counter() - t0
    from edgecell.runfolder import RunFolder

    run_meta = RunFolder.read(run)
    result["training"] = run_meta.extra["training"]
    result["model"] = run_meta.extra["model"]
    result["input_size"] = run_meta.input_size
    result["keras_test_metrics"] = {
        k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k in ("accuracy", "macro_f1", "n", "ece", "ece_calibrated")
    }
    t0 = time.perf_counter()
    # --max-drop 100: the benchmark measures the int8 drop (see the bars) rather than stopping at the gate
    sh(edgecell_cmd() + ["convert", run, "--int8", "--data", args.data, "--max-drop", "100", "--json", WORK / "convert.json"])
    result["convert_wall_seconds"] = time.perf_counter() - t0
    parity = json.loads((run / "export" / "parity.json").read_text())
    result["parity"] = parity
    if not args.no_trust:
        result["trust"] = trust(run, args.data)

    # 2. speed, interleaved ---------------------------------------------------------------------
    from edgecell import data as data_mod
    from edgecell.model import load_model
    from edgecell.tfutil import import_tf
    from firmware_host.decode import decode_many
    from firmware_host.runtime import Classifier

    classes, size = run_meta.classes, run_meta.input_size
    rows = [r for r in data_mod.read_manifest(run / "split.csv") if r.split == "test"]
    files = [Path(args.data) / r.file for r in rows]
    x, _y, _ = data_mod.load_from_manifest(args.data, rows, size, classes)
    sample = x[: args.per_round]
    np.save(WORK / "images.npy", sample)

    tf = import_tf()
    keras_model = load_model(run / "model.keras")
    tf_fn = tf.function(lambda t: keras_model(t, training=False))
    export = run / "export"
    lite = {}
    for prec in ("float32", "int8"):
        for threads in (1, 2):
            lite[f"litert_{prec}_{threads}t"] = Classifier.load(export / f"model_{prec}.tflite", threads=threads, backend="ai_edge_litert")

    def keras_predict(img):
        keras_model.predict(img[None].astype(np.float32), verbose=0)

    def keras_batch(img):
        keras_model.predict_on_batch(img[None].astype(np.float32))

    def keras_tf_function(img):
        tf_fn(tf.constant(img[None].astype(np.float32)))

    def e2e(interpreter: str, processes: bool | None, workers: int = 2) -> float:
        clf = lite[interpreter]
        t0 = time.perf_counter()
        n = sum(1 for _ in clf.classify_many(files, workers=workers, processes=processes))
        return n / (time.perf_counter() - t0)

    def decode_only(workers: int = 2) -> float:
        # the same decoding machinery as classify (worker processes for this many files), without inference
        t0 = time.perf_counter()
        n = sum(1 for _ in decode_many(files, size, workers=workers, processes=None))
        return n / (time.perf_counter() - t0)

    trt_py = None if args.no_tflite_runtime else tflite_runtime_python()
    samples: dict[str, list[float]] = {}

    def record(name, value):
        samples.setdefault(name, []).append(value)

    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        ksample = sample[: args.keras_per_round]
        record("keras_predict_ms", time_calls(keras_predict, ksample, warmup=3))
        record("keras_predict_on_batch_ms", time_calls(keras_batch, sample))
        record("keras_tf_function_ms", time_calls(keras_tf_function, sample))
        for name, clf in lite.items():
            record(f"{name}_ms", time_calls(clf.predict_array, sample, warmup=20))
        if trt_py:
            spec = {"images": str(WORK / "images.npy"), "n": args.per_round, "root": str(ROOT), "views": lite["litert_int8_1t"].views}
            spec["models"] = {p: str(export / f"model_{p}.tflite") for p in ("float32", "int8")}
            proc = subprocess.run([trt_py, "-c", TFLITE_RUNTIME_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
            if proc.returncode == 0:
                for p, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                    if "ms" in v:
                        record(f"tflite_runtime_{p}_1t_ms", v["ms"])
                    else:
                        result.setdefault("tflite_runtime_errors", {})[p] = v["error"]
            else:
                result["tflite_runtime_errors"] = {"all": proc.stderr.strip().splitlines()[-1:]}
        # classify's default for this many files: 2 worker processes, each decoding and running int8 on 1 thread
        record("e2e_classify_images_per_s", e2e("litert_int8_1t", None))
        # `classify --threads 1`: the interpreter in this process, 2 decode threads
        record("e2e_classify_interp_1t_images_per_s", e2e("litert_int8_1t", False))
        record("decode_preprocess_images_per_s", decode_only())

    med = {k: float(statistics.median(v)) for k, v in samples.items()}
    ref = med["litert_int8_1t_ms"]
    speed = {}
    for k, v in med.items():
        if k.endswith("_ms"):
            speed[k] = {"median": v, "rounds": samples[k], "times_int8_litert_1t": v / ref}
        else:
            speed[k] = {"median": v, "rounds": samples[k]}
    result["speed"] = speed
    result["ratios"] = {
        "keras_predict_over_int8": med["keras_predict_ms"] / ref,
        "float32_over_int8_litert_1t": med["litert_float32_1t_ms"] / ref,
        "tflite_runtime_int8_over_litert_int8": (med["tflite_runtime_int8_1t_ms"] / ref) if "tflite_runtime_int8_1t_ms" in med else None,
        "e2e_share_of_decode_ceiling": med["e2e_classify_images_per_s"] / med["decode_preprocess_images_per_s"],
        "e2e_interp_1t_share_of_decode_ceiling": med["e2e_classify_interp_1t_images_per_s"] / med["decode_preprocess_images_per_s"],
    }
    sizes = {p: (export / f"model_{p}.tflite").stat().st_size for p in ("float32", "int8")}
    result["sizes_bytes"] = {"keras": (run / "model.keras").stat().st_size, **sizes}
    result["total_seconds"] = time.perf_counter() - t_start
    result["bars"] = bars(result)

    # 3. write ----------------------------------------------------------------------------------
    from benchmarks._results import publish

    publish(RESULTS, "latest", result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    p = r["parity"]
    s = r["speed"]
    m = r["machine"]

    def pm(key):
        v = s.get(key)
        return "n/a" if v is None else f"{v['median']:.3f} ms | {v['times_int8_litert_1t']:.1f}x"

    models = p.get("models", {})

    def acc(name):
        mm = models.get(name, {})
        return f"{mm.get('accuracy', float('nan')) * 100:.2f} % | {mm.get('macro_f1', float('nan')):.4f}"

    lines = [
        f"Measured {r['date']} on {m['cpu']} ({m['cores']} cores, {m['machine']}, Python {m['python']}); "
        f"input {r['input_size']}x{r['input_size']}, {r['model']['params']:,} parameters, {r['model']['macs'] / 1e6:.1f} M multiply-accumulates per image.",
        "",
        "| model | test accuracy | macro-F1 | file size |",
        "|---|---|---|---|",
        f"| Keras (float32) | {acc('keras').replace(' | ', ' | ')} | {r['sizes_bytes']['keras'] / 1024:.0f} KB (.keras) |",
        f"| TFLite float32 | {acc('float32')} | {r['sizes_bytes']['float32'] / 1024:.0f} KB |",
        f"| TFLite int8 | {acc('int8')} | {r['sizes_bytes']['int8'] / 1024:.0f} KB |",
        "",
        "| per-image latency, 1 image (median of rounds) | time | x int8 LiteRT |",
        "|---|---|---|",
        f"| Keras `model.predict` | {pm('keras_predict_ms')} |",
        f"| Keras `predict_on_batch` | {pm('keras_predict_on_batch_ms')} |",
        f"| Keras `tf.function` | {pm('keras_tf_function_ms')} |",
        f"| TFLite float32, ai-edge-litert, 1 thread | {pm('litert_float32_1t_ms')} |",
        f"| TFLite float32, ai-edge-litert, 2 threads | {pm('litert_float32_2t_ms')} |",
        f"| **TFLite int8, ai-edge-litert, 1 thread** | {pm('litert_int8_1t_ms')} |",
        f"| TFLite int8, ai-edge-litert, 2 threads | {pm('litert_int8_2t_ms')} |",
        f"| TFLite float32, tflite-runtime 2.14, 1 thread | {pm('tflite_runtime_float32_1t_ms')} |",
        f"| TFLite int8, tflite-runtime 2.14, 1 thread | {pm('tflite_runtime_int8_1t_ms')} |",
        "",
        "| throughput on the test-split JPEGs (600 files), 2 workers | images/s |",
        "|---|---|",
        f"| decode + preprocess alone, 2 worker processes (ceiling) | {s['decode_preprocess_images_per_s']['median']:.0f} |",
        f"| end-to-end classify, int8 (decode + preprocess + inference): 2 worker processes with 1 interpreter thread each (the default) | {s['e2e_classify_images_per_s']['median']:.0f} "
        f"({r['ratios']['e2e_share_of_decode_ceiling'] * 100:.0f} % of the ceiling) |",
        f"| end-to-end classify, int8, `--threads 1`: interpreter in the main process, 2 decode threads | {s['e2e_classify_interp_1t_images_per_s']['median']:.0f} "
        f"({r['ratios']['e2e_interp_1t_share_of_decode_ceiling'] * 100:.0f} % of the ceiling) |",
    ]
    t = r.get("trust")
    if t:
        fam = list(t["stain_shift"]["keras"]["per_perturbation"])
        lines += ["", "| test accuracy under stain shift | " + " | ".join(["clean"] + fam) + " | worst drop |", "|---|" + "---|" * (len(fam) + 2)]
        for name, label in (("keras", "Keras"), ("float32", "TFLite float32"), ("int8", "TFLite int8")):
            v = t["stain_shift"][name]
            cells = [f"{v['clean_accuracy'] * 100:.1f}"] + [f"{v['per_perturbation'][f] * 100:.1f}" for f in fam]
            drop = 100 * (v["clean_accuracy"] - v["worst"]["accuracy"])
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {drop:.1f} points ({v['worst']['name']}) |")
        c = t["calibration"]
        lines += ["", "| calibration (test split) | temperature | ECE before | ECE after |", "|---|---|---|---|"]
        for name, label in (("keras", "Keras"), ("int8", "TFLite int8")):
            lines.append(f"| {label} | {c[name]['temperature']:.2f} | {c[name]['ece']:.4f} | {c[name]['ece_calibrated']:.4f} |")
        a = t["audit"]
        us = a.get("under_stain_shift") or {}  # the CNN's row comes from RUN/evaluation, written by evaluate --stain-shift

        def shifted(name):
            v = us.get(name)
            if not v:
                return " | | |"
            return f" | {v['grayscale'] * 100:.1f} | {v['background swap'] * 100:.1f} | {v['worst'] * 100:.1f} ({v['worst_name']}) |"

        lines += [
            "",
            "| shortcut audit: test accuracy, % | clean | grayscale | background swap | worst shift |",
            "|---|---|---|---|---|",
            f"| **CNN (Keras)** | {a['cnn_accuracy'] * 100:.1f}" + shifted("CNN"),
        ]
        lines += [f"| {name} (no morphology) | {acc * 100:.1f}" + shifted(name) for name, acc in a["baselines"].items()]
        sc = a["shuffled_control"]
        lines.append(f"| shuffled-label control (chance {sc['chance'] * 100:.1f}) | {sc['accuracy'] * 100:.1f} | | | |")
    if r.get("bars"):
        lines += ["", "| issue | bar | measured | target | met |", "|---|---|---|---|---|"]
        for b in r["bars"]:
            met = "n/a" if b["met"] is None else ("yes" if b["met"] else "**no**")
            lines.append(f"| #{b['issue']} | {b['bar']} | {b['shown']} | {b['target']} | {met} |")
    if r.get("train_wall_seconds"):
        lines += [
            "",
            f"Training with defaults took {r['train_wall_seconds'] / 60:.1f} min wall-clock "
            f"({r['training']['epochs_run']} epochs, best {r['training']['best_epoch']}); the whole benchmark {r['total_seconds'] / 60:.1f} min.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
