"""edgecell audit"""

from __future__ import annotations

import click

from edgecell.options import PERCENTAGE_POINTS, check_outputs, data_option, data_reads, emit_json, json_option, seeded


@click.command("audit", context_settings={"help_option_names": ["-h", "--help"]})
@data_option(required=False, help="Data folder: one sub-folder of images per class (default: the run's, when RUN_DIR is given).")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@seeded("the split (without a run), the baselines and the stain shifts")
@click.option(
    "--margin",
    type=PERCENTAGE_POINTS,
    default=3.0,
    show_default=True,
    help="Warn when a baseline's test accuracy is within this many percentage points of the CNN's.",
)
@click.option(
    "--no-stain-shift",
    "no_stain_shift",
    is_flag=True,
    help="Skip scoring the baselines under the stain shifts (which reads the test images a second time: about a third of the run time).",
)
@json_option
def audit(data_dir, run_dir, seed, margin, no_stain_shift, json_out):
    """Check whether image size or colour alone can do the CNN's job (a shortcut audit).

    Fits simple scikit-learn models on features that carry no cell shape (image size, mean
    colour, background-corner colour, colour histograms, an 8x8 thumbnail) on the same
    train/test split as the CNN, plus a shuffled-label control that must land at chance.
    With RUN_DIR the run's split.csv is used and the CNN's test accuracy is shown beside
    the baselines; without it the split is made with --seed, as `train` would. A run of several
    sources is audited one source at a time (--data, default its first), on the run's classes that
    source has, without the CNN's figures, which are over every source (`edgecell evaluate` gives
    them per source).

    Each baseline, fit on the clean training images, is also scored on the test images
    under the stain shifts of `evaluate --stain-shift` (hue, saturation, brightness,
    grayscale, background swap, random mix), beside the CNN's figures from
    RUN_DIR/evaluation/keras_test_metrics.json when `edgecell evaluate RUN_DIR
    --stain-shift` has written them. A model that reads the lab falls under these shifts.

    \b
    Example:
      edgecell audit --data ../shared/bloodcells runs/cells
      edgecell audit --data ../shared/bloodcells --seed 42 --json audit.json
    """
    from pathlib import Path

    from edgecell import audit as audit_mod
    from edgecell import data as data_mod
    from edgecell.console import human, progress, warn
    from edgecell.runfolder import RunFolder, recorded_data_reads
    from edgecell.tfutil import require_train_extra
    from firmware_host.errors import DataError

    require_train_extra("audit")
    con = human(json_out == "-")
    if len(data_dir) > 1:
        raise DataError("audit compares baselines on one data folder at a time; give --data once", data_dir[1])
    data_dir = data_dir[0] if data_dir else None
    given_none = data_dir is None
    classes = None
    run = None
    if run_dir is not None:
        run = RunFolder.read(run_dir)
        classes = run.classes
        if not data_dir:  # the run's first data folder (its first source, of a folder of sources), under its source's name
            folders = data_mod.recorded_folders(run.dataset)
            first = [f for f in folders if Path(f) == Path(run.dataset_path or "")]
            data_dir = (first or folders or [run.dataset_path])[0]
        run.require_split()
    if not data_dir or not Path(data_dir).is_dir():
        raise DataError("no data folder: pass --data DIR" + (" (the run's data folder is not there)" if run_dir else ""), data_dir or "--data")
    check_outputs({"--json": json_out}, data_reads(data_dir) + ([(run_dir, "the run folder being read"), *recorded_data_reads(run_dir)] if run_dir else []))
    n_sources = len(data_mod.recorded_folders(run.dataset)) if run is not None else 1
    several = n_sources > 1
    if several:  # one lab of a run of several: the run's classes that this lab has folders for
        present = set(data_mod.find_images(data_dir).classes)
        classes = [c for c in run.classes if c in present]
        left = [c for c in run.classes if c not in present]
        if not classes:
            raise DataError(f"has no class folder of the run's classes ({', '.join(run.classes)})", data_dir)
        if left:
            warn(f"{data_dir} has no folder for {', '.join(left)}; the audit compares the baselines on {', '.join(classes)}")

    with progress(con, transient=True) as bar:
        task = bar.add_task("reading images", total=None)
        fs = audit_mod.load_features(data_dir, classes, on_progress=lambda d, n: bar.update(task, completed=d, total=n))
    for s in fs.skipped:
        warn(f"skipped {s.path}: {s.reason}")
    splits, split_source = audit_mod.split_for(fs, seed if run is None or run.seed is None else int(run.seed), run_dir)
    if run_dir is not None:
        # files the run never saw (added after training) take no part in the audit
        keep = splits != ""
        if not keep.all():
            warn(f"{int((~keep).sum())} image(s) in {data_dir} are not in the run's split and are left out")
    groups = audit_mod.lab_groups(fs)
    cnn = audit_mod.read_cnn(run_dir, groups, fs.classes) if run_dir and not several else None
    if several:
        warn(
            f"the run was trained on {n_sources} sources, so its test figures are not {data_dir}'s alone "
            f"(the source audited{', its first: --data names another' if given_none else ''}): "
            "the CNN is left out of the comparison (edgecell evaluate RUN reports it per source)"
        )
    shifted, cnn_shift, cnn_note = None, None, None
    if not no_stain_shift:
        import numpy as np

        test_idx = np.flatnonzero(splits == "test")
        with progress(con, transient=True) as bar:
            task = bar.add_task("stain shifts (test images)", total=len(test_idx))
            shifted = audit_mod.shifted_features(fs, test_idx, seed, on_progress=lambda d, n: bar.update(task, completed=d, total=n))
        cnn_shift, cnn_note = audit_mod.read_cnn_stain_shift(run_dir) if not several else (None, None)  # all sources' too
    with con.status("fitting baselines", spinner="dots"):
        result = audit_mod.audit(fs, splits, seed, cnn, margin, groups, shifted=shifted, cnn_shift=cnn_shift, cnn_shift_note=cnn_note)
    result["split_source"] = split_source
    result["run_dir"] = run_dir
    con.print(audit_mod.table(result))
    if groups:
        con.print("lab groups (by most common image size): " + "; ".join(f"{g['size']}: {', '.join(g['classes'])}" for g in groups))
    if cnn is not None:
        best = next(r for r in result["baselines"] if r["name"] == result["best_baseline"])
        con.print(
            f"CNN test accuracy {cnn['accuracy']:.1%}; best morphology-free baseline '{best['name']}' {best['accuracy']:.1%} "
            f"(CNN lead {result['cnn_lead_points']:+.1f} points)"
        )
    elif not several:  # a run of several sources said why above
        con.print(
            "no CNN to compare with" + (f" ({run_dir} has no metrics.json)" if run_dir else "; pass a RUN_DIR to set its test accuracy beside the baselines")
        )
    if result["stain_shift"] is not None:
        con.print(audit_mod.stain_table(result))
        for line in audit_mod.stain_summary(result):
            con.print(line, highlight=False)
    for w in result["warnings"]:
        warn(w)
    emit_json(json_out, result)
