"""edgecell evaluate"""

from __future__ import annotations

import click

from edgecell.options import data_option, emit_json, json_option, threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, path_type=str))
@data_option(required=False, help="Data folder (default: the one the run was trained on).")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True, help="Which images: a split of the run's manifest, or every image in --data.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None, help="Folder for the JSON and PNGs (default: RUN_DIR/evaluation).")
@threads_option
@json_option
def evaluate(model, data_dir, split, out_dir, threads, json_out):
    """Measure a model's accuracy, precision, recall, F1 and confusion matrix.

    MODEL is a run folder, its model.keras, an exported .tflite, or an export folder. The test
    split is the one written at training time, so no training image is ever tested on.

    \b
    Example:
      edgecell evaluate runs/cells
      edgecell evaluate runs/cells/export/model_int8.tflite --data ../shared/bloodcells
    """
    from edgecell.console import human
    from edgecell.evaluate import evaluate as run_eval
    from edgecell.evaluate import resolve
    from edgecell.metrics import confusion_table, metrics_table

    con = human(json_out == "-")
    target = resolve(model)
    m = run_eval(target, data_dir, split, con, out_dir, threads)
    con.print(metrics_table(m, title=f"{target.kind} model, {split} split (n={m['n']})"))
    con.print(confusion_table(m))
    con.print(f"expected calibration error: {m['ece']:.4f} (with temperature {m['temperature']:.2f}: {m['ece_calibrated']:.4f})")
    con.print(f"wrote {m['outputs']['metrics']}, {m['outputs']['confusion_matrix']}, {m['outputs']['reliability']}")
    emit_json(json_out, m)
