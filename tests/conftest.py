"""Shared fixtures: the real data set (skipped with a reason when absent), small slices of it, and the --update-golden option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA = Path(os.environ.get("EDGECELL_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "bloodcells"))
CLASSES = ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil")


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite tests/golden/ from the current output instead of comparing with it (see tests/test_golden.py).",
    )


@pytest.fixture
def update_golden(request) -> bool:
    """True under ``--update-golden``: golden tests rewrite their files instead of comparing."""
    return bool(request.config.getoption("--update-golden"))


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "MANIFEST.csv").is_file():
        pytest.skip(f"real data set not found at {REAL_DATA} (CI has it at ../shared/bloodcells; set EDGECELL_REAL_DATA to point elsewhere)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_or_skip()


def make_slice(src: Path, dst: Path, per_class: int, offset: int = 0) -> Path:
    """Symlink ``per_class`` images of each class (sorted, from ``offset``) into ``dst``; nothing is copied."""
    for c in CLASSES:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / c).iterdir())[offset : offset + per_class]:
            (dst / c / f.name).symlink_to(f)
    return dst


@pytest.fixture(scope="session")
def real_slice(real_data, tmp_path_factory) -> Path:
    """40 real images per class (symlinks), enough for a tiny model to learn in seconds."""
    return make_slice(real_data, tmp_path_factory.mktemp("slice40"), 40)


@pytest.fixture(scope="session")
def tiny_run(real_slice, tmp_path_factory) -> Path:
    """A tiny model trained on ``real_slice`` through the CLI, once per test session."""
    pytest.importorskip("tensorflow")
    from click.testing import CliRunner

    from edgecell.cli import cli

    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(real_slice),
            "--out",
            str(out),
            "--epochs",
            "20",
            "--img-size",
            "48",
            "--widths",
            "16,32,64",
            "--patience",
            "20",
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    return out
