"""``edgecell demo-data``: draw a synthetic blood-cell data set (numpy and Pillow, no TensorFlow)."""

from __future__ import annotations

import time

import click

from edgecell import options


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, dir_okay=True, path_type=str))
@click.option(
    "--per-class",
    type=click.IntRange(5, 100000),
    default=150,
    show_default=True,
    help="Images to draw per class.",
)
@options.seeded("the drawn cells")
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True, help="Image side in pixels (square).")
@click.option(
    "--others/--no-others",
    default=True,
    show_default=True,
    help="Also draw lymphocytes and eosinophils (class folders that train teaches as `other`).",
)
@click.option(
    "--objects",
    "objects_dir",
    type=click.Path(file_okay=False, dir_okay=True, path_type=str),
    default=None,
    help="Also draw non-cell images (blank background, red cells only, a pattern), --per-class of each, into this folder outside OUT: train never reads them; classify them to check `other`.",
)
@options.json_option
def demo_data(out: str, per_class: int, seed: int, size: int, others: bool, objects_dir: str | None, json_out: str | None) -> None:
    """Draw a synthetic demo data set (5 classes + 2 types taught as `other`) into OUT.

    OUT gets one sub-folder per class (the Kaggle layout) plus DEMO.md. The cells are drawn
    shapes, not real images: accuracy on them says nothing about real blood cells. The same
    --seed gives byte-identical files. OUT (and --objects) must be new, empty, or an earlier demo set.

    \b
    Example:
      edgecell demo-data demo/data --per-class 150
      edgecell demo-data demo/unseen --per-class 8 --seed 1 --objects demo/unseen_objects
      edgecell demo-data demo/small --per-class 20 --seed 7 --size 96 --no-others
    """
    from rich.table import Table

    from edgecell import CLASSES
    from edgecell.console import human, progress
    from edgecell.demo import check_target, generate

    con = human(json_out == "-")
    check_target(out, objects_dir)  # before the progress bar, so a refusal is one clean line
    options.check_outputs({"--json": json_out}, folders={"OUT": out, "--objects": objects_dir})  # no report inside the images
    start = time.perf_counter()
    with progress(con) as bar:
        task = bar.add_task("Drawing demo cells", total=None)
        summary = generate(
            out,
            per_class,
            seed=seed,
            size=size,
            others=others,
            objects_dir=objects_dir,
            progress_callback=lambda done, total: bar.update(task, completed=done, total=total),
        )
    seconds = time.perf_counter() - start

    table = Table(title=f"Synthetic demo data in {summary.out_dir}", title_justify="left")
    table.add_column("class folder")
    table.add_column("images", justify="right")
    table.add_column("taught as")
    for cls, n in summary.counts.items():
        table.add_row(cls, str(n), cls if cls in CLASSES else "other")
    for kind, n in summary.objects.items():
        table.add_row(f"{summary.objects_dir}/{kind}_*", str(n), "never (not a class)", style="dim")
    table.add_section()
    table.add_row("total", str(summary.total), style="bold")
    con.print(table)
    con.print(
        f"{summary.total} images of {size}x{size} px in {seconds:.1f} s, seed {seed}. Synthetic drawings: use them to try the pipeline, not to judge accuracy.",
        soft_wrap=True,
    )

    options.emit_json(json_out, summary.to_dict())
