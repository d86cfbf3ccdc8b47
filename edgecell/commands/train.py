"""edgecell train"""

from __future__ import annotations

import click

from edgecell.options import IntList, check_outputs, data_option, data_reads, emit_json, exclude_option, img_size_option, json_option, seed_option
from edgecell.train import TrainOptions as _Defaults  # no TensorFlow at import time
from firmware_host.mirrors import VIEW_CHOICES

_widths = IntList(1, 1024, "width", ",".join(map(str, _Defaults.widths)))
_depths = IntList(1, 8, "depth", ",".join(map(str, _Defaults.depths)))


def _folds(ctx, param, k: int) -> int:
    if k == 1:  # scikit-learn's KFold needs two, and said so only after every image was read
        raise click.BadParameter("1 fold is no cross-validation: 0 (off) or 2 to 20")
    return k


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_option()
@exclude_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    required=True,
    help="Run folder to write (an earlier run there is replaced only when this one finishes).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 1000),
    default=_Defaults.epochs,
    show_default=True,
    help="Maximum epochs; early stopping on validation loss usually ends sooner.",
)
@img_size_option
@seed_option
@click.option(
    "--cv",
    type=click.IntRange(0, 20),
    default=0,
    show_default=True,
    callback=_folds,
    help="Also run K-fold cross-validation on train+val (0 = off).",
)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=_Defaults.batch_size, show_default=True, help="Images per step.")
@click.option("--patience", type=click.IntRange(1, 1000), default=_Defaults.patience, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--widths", type=_widths, default=None, help=f"Conv2D filters per block [default: {','.join(map(str, _Defaults.widths))}].")
@click.option(
    "--depths",
    type=_depths,
    default=None,
    help=f"Conv2D layers per block, one per width [default: {','.join(map(str, _Defaults.depths))}; 1 per block with --widths of another length].",
)
@click.option(
    "--views",
    type=click.Choice([str(v) for v in VIEW_CHOICES]),
    default=str(_Defaults.views),
    show_default=True,
    help="Mirrored views of each image whose outputs the model averages when it classifies (1: the image alone).",
)
@click.option("--no-augment", is_flag=True, help="Turn off geometric and stain/colour augmentation.")
@json_option
def train(data_dir, exclude, out_dir, epochs, img_size, seed, cv, batch_size, patience, widths, depths, views, no_augment, json_out):
    """Train the blood-cell CNN and write a run folder with metrics and plots.

    Splits the data 70/15/15 (stratified, seeded, duplicates grouped), trains with
    augmentation and early stopping, and evaluates on the test split.

    \b
    Example:
      edgecell train --data ../shared/bloodcells --data ../shared/more_cells --out runs/cells
      edgecell train --data ../shared/bloodcells --data ../shared/more_cells --exclude bccd --out runs/no-bccd
      edgecell train --data demo/data --out demo/run --epochs 15 --cv 5
    """
    from edgecell.console import human
    from edgecell.metrics import confusion_table, four_places, metrics_table
    from edgecell.train import TrainOptions, run

    con = human(json_out == "-")
    check_outputs({"--json": json_out}, data_reads(data_dir), folders={"--out": out_dir})
    opts = TrainOptions(
        data_dir=data_dir,
        exclude=exclude,
        out_dir=out_dir,
        epochs=epochs,
        img_size=img_size,
        seed=seed,
        cv=cv,
        batch_size=batch_size,
        patience=patience,
        views=int(views),
        augment=not no_augment,
    )
    if widths:
        opts.widths = widths
        if depths is None and len(widths) != len(_Defaults.depths):
            depths = (1,) * len(widths)  # a new shape of network: one convolution per block unless told
    if depths:
        opts.depths = depths
    if len(opts.depths) != len(opts.widths):
        raise click.BadParameter(f"{len(opts.depths)} depths for {len(opts.widths)} widths; give one depth per width", param_hint="'--depths'")
    res = run(opts, con)
    con.print(metrics_table(res.test_metrics, title=f"Test split (n={res.test_metrics['n']})"))
    con.print(confusion_table(res.test_metrics))
    from rich.table import Table

    t = Table(title="Training summary")
    t.add_column("")
    t.add_column("", justify="right")
    t.add_row("run folder", str(res.run_dir))
    t.add_row("epochs run (best)", f"{res.epochs_run} ({res.best_epoch})")
    t.add_row("training time", f"{res.seconds:.1f} s ({res.images_per_second:.0f} images/s)")
    t.add_row("test accuracy", four_places(res.test_metrics["accuracy"]))
    t.add_row("test macro-F1", four_places(res.test_metrics["macro_f1"]))
    t.add_row("temperature (val)", f"{res.temperature:.3f}")
    if res.cv:
        t.add_row(f"{res.cv['k']}-fold CV macro-F1 (argmax alone)", f"{res.cv['macro_f1_mean']:.4f} ± {res.cv['macro_f1_std']:.4f}")
    if res.skipped:
        t.add_row("files skipped", str(res.skipped))
    con.print(t)
    if json_out:
        payload = {
            "run_dir": str(res.run_dir),
            "test": res.test_metrics,
            "epochs_run": res.epochs_run,
            "best_epoch": res.best_epoch,
            "seconds": res.seconds,
            "images_per_second": res.images_per_second,
            "temperature": res.temperature,
            "cv": res.cv,
            "skipped": res.skipped,
        }
        emit_json(json_out, payload)
