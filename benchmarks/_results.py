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
