"""The real data set (../shared/bloodcells), for tests that read it: a plain module tests import.

(pytest advises against importing from conftest.py; the fixtures there use these.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(os.environ.get("EDGECELL_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "bloodcells"))
CLASSES = ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil")


REQUIRED = os.environ.get("EDGECELL_REQUIRE_REAL_DATA") == "1"
"""CI sets it: a test that needs ``../shared`` fails where the data is missing instead of skipping, so the tests of the
int8 parity gate and adapt's refusal (which need real cells) never silently stop running."""


def missing(reason: str) -> None:
    """Skip the test for want of real data, or fail it under :data:`REQUIRED`."""
    if REQUIRED:
        pytest.fail(f"{reason}; EDGECELL_REQUIRE_REAL_DATA=1 makes that a failure")
    pytest.skip(reason)


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "MANIFEST.csv").is_file():
        missing(f"real data set not found at {REAL_DATA} (CI has it at ../shared/bloodcells; set EDGECELL_REAL_DATA to point elsewhere)")
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
        missing(f"more_cells not found at {MORE_CELLS} (CI has it at ../shared/more_cells, beside bloodcells)")
    return MORE_CELLS
