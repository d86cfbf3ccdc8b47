"""``edgecell corrections apply``: the review page's corrections CSV -> a labelled folder for ``train --data``."""

from __future__ import annotations

import click

from edgecell.console import console, shown, stderr_console

PROBLEMS_SHOWN = 50
"""The problems of a CSV printed one line each; the rest are counted (200,000 lines took 38 s to print)."""


@click.group("corrections", context_settings={"max_content_width": 100})
def corrections() -> None:
    """Use the corrections a reviewer downloaded from a review page (classify --report).

    \b
    Example:
      edgecell corrections apply ~/Downloads/corrections.csv --out corrected/
    """


@corrections.command("apply")
@click.argument("csv_paths", metavar="CSV...", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), required=True, help="Folder to build: one sub-folder per class.")
@click.option(
    "--link",
    "mode",
    type=click.Choice(["copy", "hard", "sym"]),
    default="copy",
    show_default=True,
    help="Copy the images, or hard-link or symlink them (the images themselves are never moved or changed).",
)
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    default=None,
    help="Folder the CSV's relative file names are relative to (default: the current folder, where classify ran).",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, path_type=str),
    default=None,
    help="Take the allowed classes from this model (file or export folder) instead of edgecell's cell types; 'other' is always allowed.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace an earlier OUT even when it holds cells these CSVs do not list (dropped); without it, give every CSV OUT was built from.",
)
@click.pass_context
def apply_cmd(ctx, csv_paths, out_dir, mode, base, model_path, replace):
    """Turn corrections CSVs into a labelled folder for train --data.

    A CSV is the review page's download (file,predicted,corrected,sha256: a file replaced since it was reviewed is
    refused); give several (a week of reviews) to build one folder of them all: a cell in two with the same class is
    kept once, with different classes refused. OUT gets one sub-folder per corrected class, OUT/<class>/<image>.
    Every row is checked first; unknown files, unknown classes, duplicate or conflicting rows and a malformed CSV are
    listed one line each, and nothing is written. OUT is built beside itself and
    renamed into place when complete; an existing OUT is replaced only if this command made it, and only with
    every cell it holds (give the earlier CSVs too) unless --replace.

    \b
    Example:
      edgecell corrections apply ~/Downloads/corrections.csv --out corrected/
      edgecell corrections apply monday.csv tuesday.csv --out corrected/
      edgecell train --data corrected/ --data ../shared/bloodcells --out run2
    """
    from edgecell.corrections import CorrectionsError, apply_corrections, model_classes

    classes = model_classes(model_path) if model_path else None
    try:
        done = apply_corrections(csv_paths, out_dir, classes=classes, base=base, mode=mode, replace=replace)
    except CorrectionsError as exc:
        if len(exc.problems) == 1:  # one line, as every other error
            hint = f"; {exc.hint}" if exc.hint else ""
            stderr_console.print(f"[red]Error:[/red] {shown(exc.problems[0] + hint)}; nothing was written.", soft_wrap=True, highlight=False)
            ctx.exit(1)
        for line in exc.problems[:PROBLEMS_SHOWN]:
            stderr_console.print(f"[red]error:[/red] {shown(line)}", soft_wrap=True, highlight=False)  # a name may hold a line break
        if len(exc.problems) > PROBLEMS_SHOWN:
            stderr_console.print(f"... and {len(exc.problems) - PROBLEMS_SHOWN:,} more like them (not shown).", soft_wrap=True, highlight=False)
        if exc.hint:
            stderr_console.print(shown(exc.hint), soft_wrap=True, highlight=False)
        stderr_console.print(f"{len(exc.problems):,} problem(s); nothing was written.", soft_wrap=True)
        ctx.exit(1)
    per_class = ", ".join(f"{shown(c)} {n}" for c, n in sorted(done.counts.items()))
    verb = {"copy": "copied", "hard": "hard-linked", "sym": "symlinked"}[done.mode.value]
    what = [f"{done.n - done.cut} image(s) {verb}"] if done.n > done.cut else []
    what += [f"{done.cut} cell(s) cut out of their fields"] if done.cut else []
    console.print(f"{' and '.join(what)} into [bold]{shown(done.out)}[/bold] ({per_class}).", soft_wrap=True)
    if done.again:
        console.print(f"[yellow]note:[/yellow] {done.again} row(s) named a cell an earlier CSV gave the same class; used once.", soft_wrap=True)
    if done.replaced is not None:
        gone = f"; {done.gone} of them are not in this CSV and are no longer there" if done.gone else ""
        console.print(f"[yellow]note:[/yellow] replaced the earlier folder, which held {done.replaced} image(s){gone}.", soft_wrap=True)
