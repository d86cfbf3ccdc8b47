"""The real data set (../shared/bloodcells), for tests that read it: a plain module tests import.

(pytest advises against importing from conftest.py; the fixtures there use these.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(os.environ.get("EDGECELL_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "bloodcells"))
CLASSES = ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil")


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "MANIFEST.csv").is_file():
        pytest.skip(f"real data set not found at {REAL_DATA} (CI has it at ../shared/bloodcells; set EDGECELL_REAL_DATA to point elsewhere)")
    return REAL_DATA


def make_slice(src: Path, dst: Path, per_class: int, offset: int = 0) -> Path:
    """Symlink ``per_class`` images of each class (sorted, from ``offset``) into ``dst``; nothing is copied."""
    for c in CLASSES:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / c).iterdir())[offset : offset + per_class]:
            (dst / c / f.name).symlink_to(f)
    return dst


MORE_CELLS = REAL_DATA.parent / "more_cells"


def more_cells_or_skip() -> Path:
    """``../shared/more_cells`` (the other labs, see its SOURCE.md), or a skip saying where it was looked for."""
    if not (MORE_CELLS / "MANIFEST.csv").is_file():
        pytest.skip(f"more_cells not found at {MORE_CELLS} (CI has it at ../shared/more_cells, beside bloodcells)")
    return MORE_CELLS
