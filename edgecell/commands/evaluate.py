"""edgecell evaluate"""

from __future__ import annotations

import click

from edgecell.options import DEFAULT_SEED, SEED, check_outputs, data_option, emit_json, json_option, other_threshold_option, threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, path_type=str))
@data_option(required=False, help="Data folder(s), as train --data (default: the run's). With --split all, every image in them.")
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),
    default="test",
    show_default=True,
    help="Which images: a split of the run's manifest, or every image in --data.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Folder for the JSON and PNGs (default: RUN_DIR/evaluation; never inside the data folder).",
)
@click.option(
    "--stain-shift",
    "stain",
    is_flag=True,
    help="Also re-run the split under hue, saturation, brightness, grayscale and background-tint shifts (another lab's slides).",
)
@click.option("--seed", type=SEED, default=DEFAULT_SEED, show_default=True, help="Seed of the random member of the stain-shift family.")
@other_threshold_option
@threads_option
@json_option
def evaluate(model, data_dir, split, out_dir, stain, seed, other_threshold, threads, json_out):
    """Measure a model's accuracy, F1, confusion matrix, calibration and risk-coverage.

    MODEL is a run folder, its model.keras, an exported .tflite, or an export folder. The test
    split is the one written at training time, so no training image is ever tested on. The
    risk-coverage table shows, for each `classify --threshold`, the share of images classify
    refers (every flag: below the threshold on calibrated confidence, review, other) and the
    accuracy of those it keeps. Per source and cell type: the share caught as 'other' and the
    share of the five wrongly sent there, with a curve of both against --other-threshold (PNG
    and JSON). Each image's label, flag and scores, beside its folder's class, go to a JSON
    Lines file: which cells were wrong.

    \b
    Example:
      edgecell evaluate runs/cells
      edgecell evaluate runs/cells --stain-shift
      edgecell evaluate runs/no-bccd --data ../shared/more_cells/bccd --split all
      edgecell evaluate runs/cells/export/model_int8.tflite --data ../shared/bloodcells --data ../shared/more_cells --stain-shift
    """
    from rich.markup import escape

    from edgecell.console import human
    from edgecell.evaluate import blast_line, other_table, reads, resolve, risk_coverage_table, source_table, stain_table
    from edgecell.evaluate import evaluate as run_eval
    from edgecell.metrics import confusion_table, metrics_table
    from edgecell.tfutil import require_train_extra
    from firmware_host.runtime import DEFAULT_THRESHOLD

    require_train_extra("evaluate")
    con = human(json_out == "-")
    target = resolve(model)
    check_outputs({"--json": json_out}, reads(target, data_dir), folders={"--out": out_dir}, whole=False)  # --out: written file by file
    m = run_eval(target, data_dir, split, con, out_dir, threads, stain=stain, seed=seed, other_threshold=other_threshold)
    con.print(metrics_table(m, title=f"{target.kind} model, {split} split (n={m['n']})"))
    con.print(confusion_table(m))
    con.print(f"expected calibration error: {m['ece']:.4f} (with temperature {m['temperature']:.2f}: {m['ece_calibrated']:.4f})")
    con.print(risk_coverage_table(m["risk_coverage"], m["n"], DEFAULT_THRESHOLD))
    con.print(source_table(m["sources"]))
    if blast_line(m["blasts"]):
        con.print(blast_line(m["blasts"]), soft_wrap=True, highlight=False)
    for source, g in m["sources"]["by_source"].items():
        if g.get("lab_warning"):
            con.print(f"[bold yellow]lab check, {escape(source)}:[/bold yellow] {escape(g['lab_warning'])}", soft_wrap=True, highlight=False)
    if m["other"]:
        con.print(other_table(m["other"]))
    if stain:
        s = m["stain_shift"]
        con.print(stain_table(s, title=f"{target.kind} model under stain shift, {split} split"))
        w = s["worst"]
        con.print(f"worst case: {w['name']}, accuracy {w['accuracy']:.4f} ({w['drop_points']:.1f} points of drop from clean {s['clean']['accuracy']:.4f})")
    con.print("wrote " + ", ".join(m["outputs"].values()))
    emit_json(json_out, m)
