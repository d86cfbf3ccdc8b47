"""What every benchmark script does with its figures: ``NAME.json`` and ``NAME.md`` in a results
folder (each written whole or not at all, :mod:`firmware_host.atomic`), and the Markdown printed."""

from __future__ import annotations

from pathlib import Path


def publish(folder: str | Path, name: str, result: dict, markdown: str) -> None:
    """Write ``folder/name.json`` (``result``) and ``folder/name.md`` (``markdown``), then print the Markdown."""
    from firmware_host.atomic import write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{name}.json", result)
    write_text(folder / f"{name}.md", markdown)
    print(markdown)


def common_options(ap, work: Path, results: Path, shared: Path, reuse_help: str) -> None:
    """The options every benchmark that trains on ``../shared`` takes: ``--shared``, ``--reuse``, ``--work``, ``--results``."""
    ap.add_argument("--shared", default=str(shared), help="folder holding bloodcells/ and more_cells/ (default ../shared)")
    ap.add_argument("--reuse", action="store_true", help=reuse_help)
    ap.add_argument("--work", default=str(work))
    ap.add_argument("--results", default=str(results))


def shared_data(args) -> list[Path]:
    """The default model's data folders under ``--shared``: the Kaggle set and the other labs."""
    shared = Path(args.shared)
    return [shared / "bloodcells", shared / "more_cells"]
