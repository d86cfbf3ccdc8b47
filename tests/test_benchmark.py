"""benchmarks/run.py end to end on a tiny run: every step runs, every bar is judged, the files are written.

The figures of a tiny model mean nothing; what is tested is that the script a user runs for the
README's table works, and that its bar verdicts follow from its own figures.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def bench_result(tiny_run, real_slice, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    run = work / "run"
    shutil.copytree(tiny_run, run)  # the benchmark converts into run/export; keep the shared fixture as it was
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--data",
        str(real_slice),
        "--run",
        str(run),
        "--rounds",
        "2",
        "--per-round",
        "5",
        "--keras-per-round",
        "2",
        "--no-tflite-runtime",
        "--work",
        str(work / "w"),
        "--results",
        str(work / "results"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((work / "results" / "latest.json").read_text()), (work / "results" / "latest.md").read_text()


def test_every_issue_bar_is_judged_from_the_figures(bench_result):
    r, _ = bench_result
    bars = r["bars"]
    assert {b["issue"] for b in bars} == {3, 4, 5, 6, 8}
    by = {b["bar"]: b for b in bars}
    int8_ms = by["int8 inference, 1 thread, ms per image"]
    assert int8_ms["value"] == pytest.approx(r["speed"]["litert_int8_1t_ms"]["median"])
    assert int8_ms["met"] is (int8_ms["value"] <= 1.0)
    size = by["int8 file, KB"]
    assert size["value"] == pytest.approx(r["sizes_bytes"]["int8"] / 1024)
    assert size["met"] is (r["sizes_bytes"]["int8"] <= 300 * 1024)
    # not measured in this run (no training, no tflite-runtime): judged n/a, never passed
    assert by["training with defaults, minutes (wall clock, whole command)"]["met"] is None
    assert by["tflite-runtime 2.14 / LiteRT time, int8, same file"]["met"] is None
    for b in bars:  # judged only when measured, and then shown with its figure
        assert (b["met"] is None) == (b["value"] is None) and (b["shown"] == "n/a") == (b["value"] is None)


def test_speed_figures_are_medians_of_rounds_with_ratios_to_int8(bench_result):
    r, _ = bench_result
    ref = r["speed"]["litert_int8_1t_ms"]["median"]
    for name, v in r["speed"].items():
        assert len(v["rounds"]) == 2
        assert v["median"] == pytest.approx(statistics.median(v["rounds"]))
        if name.endswith("_ms"):
            assert v["times_int8_litert_1t"] == pytest.approx(v["median"] / ref)


def test_trust_section_has_stain_shift_calibration_and_audit(bench_result):
    r, md = bench_result
    t = r["trust"]
    assert set(t["stain_shift"]) == {"keras", "float32", "int8"}
    for v in t["stain_shift"].values():
        assert "grayscale" in v["per_perturbation"] and "background swap" in v["per_perturbation"]
        assert v["worst"]["accuracy"] == min(v["per_perturbation"].values())
    assert t["audit"]["shuffled_control"]["chance"] == pytest.approx(0.2, abs=0.05)
    shifted = t["audit"]["under_stain_shift"]["colour histogram"]
    assert shifted["worst"] <= min(shifted["grayscale"], shifted["background swap"])
    assert "| issue | bar | measured | target | met |" in md
    assert "test accuracy under stain shift" in md and "shortcut audit" in md
