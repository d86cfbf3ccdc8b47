"""What ``edgecell bench`` prints for people (rich); the timing is in :mod:`firmware_host.bench`."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from edgecell.bench import KERAS_BATCH
from edgecell.console import shown
from firmware_host.bench import speedups
from firmware_host.metadata import Precision


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _labels(paths: list[str]) -> dict[str, str]:
    """Short names that tell the paths apart: the last part, then as many parts more as it takes (every run's export
    folder is called ``export``: ``run_a/export`` and ``run_b/export``, not two rows of ``export``)."""
    parts = {p: Path(p).absolute().parts for p in paths}  # as typed (a link keeps its own name), not resolved
    for depth in range(1, max((len(v) for v in parts.values()), default=1) + 1):
        names = {p: str(Path(*v[-depth:])) for p, v in parts.items()}
        if len(set(names.values())) == len(set(parts.values())):
            return names
    return {p: str(p) for p in paths}


def _folder(model: str) -> str:
    """What a row's model is: the export folder for a model in one, or the file for a lone file."""
    p = Path(model)
    return str(p.parent) if p.name in {x.filename for x in Precision} else str(p)


def print_report(con, rows, keras_result, with_e2e: bool) -> None:
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
        # numbers never wrap (a figure split over two lines reads as two figures); a narrow terminal shortens names
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", min_width=4 if name == "model" else None)
    if with_e2e:
        table.add_column("e2e/s", justify="right", no_wrap=True)
    table.add_column("+RSS", justify="right", no_wrap=True)  # MB, as the note under the table says
    table.add_column("peak", justify="right", no_wrap=True)
    label = _labels(sorted({_folder(r["model"]) for r in rows} | {s["folder"] for s in speedups(rows)}))
    for r in rows:
        lat = r["latency_ms"]
        cells = [
            shown(label[_folder(r["model"])]),
            r["precision"],
            str(r["threads"]),
            f"{r['size_bytes'] / 1024:.0f}",
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
    for r in rows:
        if r.get("unverified") and r["threads"] == rows[0]["threads"]:  # once per model
            con.print(
                f"[yellow]warning:[/yellow] {shown(r['model'])}: {shown(r['unverified'])}; timed all the same, "
                "but classify refuses it without --allow-unverified",
                soft_wrap=True,
            )
    e2e = next((r["end_to_end"] for r in rows if r.get("end_to_end")), None)
    if e2e and e2e["classified"] < e2e["images"]:  # the e2e rate counts the images classified, not those that failed
        con.print(
            f"[yellow]warning:[/yellow] {e2e['images'] - e2e['classified']} of {e2e['images']} images could not be classified "
            f"and are left out of e2e/s (first: {shown(e2e['first_failure'] or '?')})",
            soft_wrap=True,
        )
    if rows:
        con.print(
            f"Interpreter: {shown(rows[0]['interpreter'])}. Latency: quantise + invoke + dequantise, decoding excluded; "
            "img/s = 1000 / mean latency; +RSS MB = resident memory this model added (load + timed runs); "
            "peak MB = the whole process's peak RSS so far (only rises, so later rows include earlier ones).",
            soft_wrap=True,
        )
    for s in speedups(rows):
        sp = s["speedup"]
        verdict = f"{sp:.2f}x faster" if sp >= 1 else f"{1 / sp:.2f}x slower"
        con.print(
            f"int8 vs float32 ({shown(label[s['folder']])}, {s['threads']} thread(s)): p50 {s['p50_int8_ms']:.3g} ms vs "
            f"{s['p50_float32_ms']:.3g} ms - int8 is {verdict}, {s['size_ratio']:.1f}x smaller",
            soft_wrap=True,
        )
    if keras_result:
        k = keras_result
        con.print(
            f"Keras ({shown(Path(k['model']).name)}, TF {k['tensorflow_version']}): predict on 1 image p50 "
            f"{k['predict_one']['latency_ms']['p50']:.2f} ms; predict_on_batch({KERAS_BATCH}) "
            f"p50 {k['predict_on_batch']['p50_per_image_ms']:.3f} ms/image ({k['predict_on_batch']['images_per_s']:.0f} img/s at the mean); "
            f"RSS added by the model {_f(k['model_rss_mb'], '{:.1f}')} MB (process peak {_f(k['process_peak_rss_mb'], '{:.0f}')} MB, TensorFlow included)",
            soft_wrap=True,
        )
