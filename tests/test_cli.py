"""The command line itself: help, version, every command documented with an example."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgecell import __version__
from edgecell.cli import COMMANDS, cli


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"edgecell, version {__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_group_help_lists_every_command(flag):
    res = CliRunner().invoke(cli, [flag])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_summary_and_example(name):
    res = CliRunner().invoke(cli, [name, "-h"])
    assert res.exit_code == 0, res.output
    cmd = cli.get_command(None, name)
    summary = cmd.help.strip().split("\n\n")[0]
    assert "\n" not in summary and summary.endswith("."), f"one-line summary expected, got {summary!r}"
    assert len(summary) <= 100
    assert summary.split()[0] in res.output
    assert "Example" in res.output and f"edgecell {name}" in res.output


def test_group_help_shows_whole_summaries_at_80_columns():
    res = CliRunner().invoke(cli, ["-h"], prog_name="edgecell", terminal_width=80)
    assert res.exit_code == 0, res.output
    listing = res.output.split("\nCommands:\n", 1)[1]
    assert "..." not in listing, listing
    assert max(len(line) for line in res.output.splitlines()) <= 80
    flat = " ".join(listing.split())  # summaries are wrapped onto several lines
    for name in COMMANDS:
        summary = " ".join(cli.get_command(None, name).help.strip().split("\n\n")[0].split())
        assert f"{name} {summary}" in flat, (name, summary, listing)


def test_unknown_command_is_a_usage_error():
    res = CliRunner().invoke(cli, ["frobnicate"])
    assert res.exit_code == 2
    assert "No such command" in res.output


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["frobnicate"], "Error: No such command 'frobnicate'. (see 'edgecell --help')"),
        (["--frob"], "Error: No such option '--frob'. (see 'edgecell --help')"),
        (["classify"], "Error: Missing argument 'PATH...'. (see 'edgecell classify --help')"),
        (["train", "--epochs", "x"], "Error: Invalid value for '--epochs': 'x' is not a valid integer range. (see 'edgecell train --help')"),
        (["corrections", "apply", "--frob"], "Error: No such option '--frob'. (see 'edgecell corrections apply --help')"),
        (["classify", "--debug", "x"], "Error: --debug is an option of edgecell itself: it goes before the command ('edgecell --debug classify ...')"),
    ],
)
def test_a_mistyped_command_line_is_one_line(args, line):
    res = CliRunner().invoke(cli, args, prog_name="edgecell")
    assert (res.exit_code, res.output) == (2, line + "\n")


def test_a_group_without_its_command_shows_its_help():
    res = CliRunner().invoke(cli, ["corrections"])
    assert "Commands:" in res.output and "apply" in res.output


def test_start_up_imports_no_tensorflow():
    code = (
        "import sys; from click.testing import CliRunner; from edgecell.cli import cli;"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output;"
        "[CliRunner().invoke(cli, [c, '--help']) for c in ('classify', 'bench', 'train', 'convert', 'evaluate', 'audit', 'inspect', 'demo-data')];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_data_help_names_every_type_that_teaches_other():
    """--data's help lists them by hand (importing firmware_host.paths would load numpy at start-up)."""
    from edgecell.options import DATA_HELP
    from firmware_host.paths import OTHER_TYPES

    assert all(t in DATA_HELP for t in OTHER_TYPES)


def test_an_empty_item_in_a_list_of_widths_is_refused(tmp_path):
    from edgecell.cli import cli

    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--widths", "4,,8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "expected comma-separated integers such as" in res.output


def test_one_fold_of_cross_validation_is_a_usage_error(tmp_path):
    """scikit-learn's KFold said so as an 'unexpected error', after every image was read."""
    from edgecell.cli import cli

    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--cv", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Invalid value for '--cv': 1 fold is no cross-validation: 0 (off) or 2 to 20" in res.output
