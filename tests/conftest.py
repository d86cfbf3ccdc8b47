"""Shared fixtures: the tiny committed models, the real data set (skipped with a reason when absent), small slices of it and runs
trained on them, and the --update-golden option."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests._realdata import make_slice, real_data_or_skip

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A run started in the background of a non-interactive shell inherits SIGINT ignored (POSIX), and so would every
# process a test starts: the Ctrl-C tests would fail for a reason that is not edgecell's. Python's own handler
# again (a process started from here then gets the default action, as from a terminal).
signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """The committed tiny .tflite models (tests/fixtures), copied once per session; no TensorFlow."""
    from tests._tflite_fixtures import build_models

    return build_models(tmp_path_factory)


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_or_skip()


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


@pytest.fixture(scope="session")
def converted(real_data, tmp_path_factory) -> Path:
    """A tiny run on clean real data with float32 and int8 exports: the 'previous results' that tests
    of interrupted and failing commands must leave intact (they work on copies or check digests)."""
    pytest.importorskip("tensorflow")
    from click.testing import CliRunner

    from edgecell.cli import cli

    root = tmp_path_factory.mktemp("converted")
    data = make_slice(real_data, root / "data", 8, offset=200)
    run = root / "run"
    for args in (
        ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--img-size", "32", "--widths", "4,8", "--seed", "5"],
        ["convert", str(run), "--int8", "--max-drop", "100"],
    ):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
    return run
