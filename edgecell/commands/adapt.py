"""edgecell adapt"""

from __future__ import annotations

import click

from edgecell import adapt as _defaults  # no TensorFlow at import time
from edgecell.options import DATA_FOLDER, FiniteFloatRange, check_outputs, data_option, data_reads, emit_json, json_option, seeded
from edgecell.runfolder import recorded_data_reads
from firmware_host.metadata import SPLIT_FILE


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=str))
@data_option(help="The clinic's labelled images: one sub-folder per class (lymphocyte, eosinophil, ... teach 'other'), or per source. Repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), required=True, help="The new run folder (the parent run is never changed).")
@click.option(
    "--method",
    type=click.Choice(_defaults.METHODS),
    default=_defaults.DEFAULT_METHOD,
    show_default=True,
    help=(
        "prototypes: keep the network, add the local cell types as prototypes (seconds). fine-tune: train the network on the local cells "
        "and a replay (minutes). fine-tune+prototypes: both, which keeps the training labs' figures best (minutes)."
    ),
)
@click.option("--epochs", type=click.IntRange(1, 500), default=_defaults.DEFAULT_EPOCHS, show_default=True, help="Fine-tuning epochs (the fine-tune methods).")
@click.option(
    "--learning-rate",
    type=FiniteFloatRange(1e-6, 1.0),
    default=_defaults.DEFAULT_LEARNING_RATE,
    show_default=True,
    help="Initial fine-tuning learning rate, cosine decay (the fine-tune methods).",
)
@click.option(
    "--holdout-share",
    type=FiniteFloatRange(0.0, 0.9),
    default=_defaults.DEFAULT_HOLDOUT_SHARE,
    show_default=True,
    help="Share of each local class held out to measure before and after (0: train on all, no local check).",
)
@click.option(
    "--replay",
    "replay_per_class",
    type=click.IntRange(_defaults.MIN_REPLAY_PER_CLASS, 100000),
    default=_defaults.DEFAULT_REPLAY_PER_CLASS,
    show_default=True,
    help="Images per class replayed from the parent's training split, so its labs are not forgotten.",
)
@click.option(
    "--parent-data",
    multiple=True,
    type=DATA_FOLDER,
    help="Where the parent run's training data is, if it has moved since training (repeatable, as train's --data; NAME=FOLDER for a source whose folder was renamed).",
)
@seeded("the hold-out, the replay pick and fine-tuning")
@json_option
def adapt(json_out, **options):
    """Fit a trained run to this clinic's microscope from a few dozen labelled cells.

    Adds the labelled cell types as prototypes beside those of RUN's own training data (or, with
    --method fine-tune, trains RUN's model on them and a replay of that data; fine-tune+prototypes
    does both, in that order), re-fits its calibration, and writes a new run folder that `edgecell convert` takes as it is. Reports
    accuracy, macro-F1, flagged and wrong-and-not-flagged shares before and after, on held-out local
    cells and on RUN's test split.

    \b
    Example:
      edgecell adapt runs/cells --data clinic/labelled --out runs/clinic
      edgecell convert runs/clinic --int8
    """
    from edgecell.adapt import AdaptOptions, adapt, report_table
    from edgecell.console import human

    con = human(json_out == "-")
    opts = AdaptOptions(**options)  # every option but --json is a field of AdaptOptions, by the same name
    reads = [
        (opts.run_dir, "the run being adapted"),
        *data_reads(opts.data_dir),
        *data_reads(opts.parent_data),
        *recorded_data_reads(opts.run_dir, "the parent run's training data"),
    ]
    check_outputs({"--json": json_out}, reads, folders={"--out": opts.out_dir})
    res = adapt(opts, con)
    con.print(report_table(res.report))
    local = res.report["local"]
    con.print(
        f"adapted run written to [bold]{res.run_dir}[/bold] (from {opts.run_dir}): {local['trained']} local images trained on, {local['held_out']} held out"
        + (f" (listed in {res.run_dir / SPLIT_FILE}, split test)" if local["held_out"] else "")
        + f"; {res.report['method']} {res.seconds:.0f} s"
    )
    for line in res.report["warnings"]:
        con.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True, highlight=False)
    for line in res.advice:
        con.print(f"[yellow]advice:[/yellow] {line}")
    emit_json(json_out, {"run_dir": str(res.run_dir), **res.report})
