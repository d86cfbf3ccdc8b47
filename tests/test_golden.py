"""Golden files: ``edgecell`` output compared byte for byte with the files in tests/golden/.

tests/golden/ holds

* ``help/edgecell.txt`` and ``help/<command>.txt``: ``edgecell -h`` and ``edgecell <command> -h``
  at 100 columns;
* ``classify.json``: ``edgecell classify --json -`` with the seeded tiny float32 model of
  tests/_tflite_fixtures.py on 10 seeded images (2 per class folder) and one unreadable file.
  What depends on the machine is replaced by a placeholder (paths become ``<models>/...`` and
  ``<data>/...``; timings, the model's SHA-256 and size, the interpreter and its version) and
  every other float is rounded to 4 decimals;
* ``classify_other.json``: the same with the tiny six-class model (``other`` and a never-seen score), its sidecar given a
  nucleus check and a lab check, on those images and a blank one filed as ``other``: the paths of a cell sent to
  ``other`` (by its class, its score, its missing nucleus) and of the lab line;
* ``classify_header.csv``: the header row of ``edgecell classify --csv -``.

A difference fails with a diff. When the change is intended, regenerate the files and review
``git diff tests/golden`` before committing them with the change::

    python tests/regen_golden.py            # same as: pytest tests/test_golden.py --update-golden
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell.cli import COMMANDS, cli
from firmware_host.atomic import write_text
from firmware_host.runtime import OTHER_BY_NUCLEUS, OTHER_BY_SCORE
from tests._tflite_fixtures import build_models, copy_model, labelled_folder, reseal, save_jpeg

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = "python tests/regen_golden.py (or: pytest tests/test_golden.py --update-golden)"
WIDTH = 100
"""Terminal width of the help goldens."""
DECIMALS = 4
"""Floats in classify.json are rounded to this many decimals (float noise between interpreters)."""
HELP_FILES = {"edgecell": []} | {name: [name] for name in COMMANDS}
"""help/<key>.txt -> the arguments before ``-h``."""


def check_golden(name: str, actual: str, update: bool) -> None:
    """Compare ``actual`` with tests/golden/``name``; under --update-golden, rewrite the file instead."""
    path = GOLDEN / name
    if update:
        if not path.is_file() or path.read_text(encoding="utf-8") != actual:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, actual)
        return
    if not path.is_file():
        pytest.fail(f"tests/golden/{name}: golden file missing; create it with {REGENERATE}", pytrace=False)
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), f"tests/golden/{name}", "current output"))
        pytest.fail(
            f"tests/golden/{name}: the output differs from the golden file. If the change is intended, "
            f"regenerate with {REGENERATE} and commit the new file.\n{diff}",
            pytrace=False,
        )


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="edgecell", terminal_width=WIDTH)


# -- help -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HELP_FILES))
def test_help(name, update_golden):
    r = run(*HELP_FILES[name], "-h")
    assert r.exit_code == 0, r.output
    check_golden(f"help/{name}.txt", r.output, update_golden)


def test_no_stale_help_files(update_golden):
    """A removed or renamed command takes its golden file with it."""
    stale = sorted(p for p in (GOLDEN / "help").glob("*.txt") if p.stem not in HELP_FILES)
    if update_golden:
        for p in stale:
            p.unlink()
        return
    assert not stale, f"golden files for no command: {[p.name for p in stale]}; remove them with {REGENERATE}"


# -- classify ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny seeded models and a labelled folder of 10 seeded images plus one unreadable file."""
    models = build_models(tmp_path_factory)
    data = labelled_folder(tmp_path_factory.mktemp("golden") / "data", per_class=2)
    (data / "unreadable.jpg").write_bytes(b"not an image")
    return models, data


def _placeholder(root: Path, tag: str):
    real = os.path.realpath(root)

    def rel(p: str) -> str:
        rp = os.path.realpath(p)
        if os.path.commonpath([rp, real]) != real:
            return p  # not under root: left as it is, so the diff shows it
        return f"<{tag}>/" + Path(os.path.relpath(rp, real)).as_posix()

    return rel


def _round_floats(obj):
    if isinstance(obj, float):
        return round(obj, DECIMALS) + 0.0  # + 0.0: no "-0.0"
    if isinstance(obj, dict):
        return {k: _round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v) for v in obj]
    return obj


def normalise_report(rep: dict, models_root: Path, data_root: Path) -> dict:
    """``rep`` without what depends on the machine, the temporary folders or the clock.

    Placeholders keep every key, so a renamed or missing field still shows in the diff. A value is
    replaced only when it has the expected form (a timing is a number >= 0, ...).
    """
    in_models, in_data = _placeholder(models_root, "models"), _placeholder(data_root, "data")

    def replace(d: dict, key: str, tag: str, ok) -> None:
        if key in d and ok(d[key]):
            d[key] = tag

    def is_ms(v) -> bool:
        return isinstance(v, (int, float)) and v >= 0

    replace(rep, "edgecell_version", "<version>", lambda v: isinstance(v, str) and v)
    model = rep.get("model", {})
    if "path" in model:
        model["path"] = in_models(model["path"])
    replace(model, "sha256", "<sha256>", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v))
    replace(model, "size_bytes", "<bytes>", lambda v: isinstance(v, int) and v > 0)
    replace(model, "interpreter", "<interpreter>", lambda v: isinstance(v, str) and v)
    replace(model, "interpreter_version", "<version>", lambda v: isinstance(v, str) and v)
    for r in rep.get("results", []):
        r["path"] = in_data(r["path"])
        replace(r, "preprocess_ms", "<ms>", is_ms)
        replace(r, "inference_ms", "<ms>", is_ms)
    for f in rep.get("failed", []):
        f["path"] = in_data(f["path"])
    latency = rep.get("latency", {})
    for part in ("preprocess_ms", "inference_ms"):
        for key in list(latency.get(part) or {}):
            if key != "n":
                replace(latency[part], key, "<ms>", is_ms)
    replace(latency, "wall_s", "<s>", is_ms)
    replace(latency, "images_per_s", "<per_s>", is_ms)
    return _round_floats(rep)


def classify_json(models, data, export: Path | None = None, models_root: Path | None = None) -> str:
    r = run("classify", "--model", export or models.export, "--precision", "float32", "--threads", 1, data, "--json", "-")
    assert r.exit_code == 1, r.output  # the unreadable file
    rep = normalise_report(json.loads(r.stdout), models_root or models.root, data)
    return json.dumps(rep, indent=2, ensure_ascii=False) + "\n"


def test_classify_json(inputs, update_golden):
    check_golden("classify.json", classify_json(*inputs), update_golden)


NUCLEUS_MAX = 95.0
"""The nucleus check given to the six-class model's sidecar for classify_other.json (degrees; the runs' are 40-45, here some of the random images pass it)."""
LAB_CHECK = {"batch": 4, "max_median_score": 1.5, "min_mean_confidence": 0.5}
"""Its lab check: sets of 4 or more, a median never-seen score the random images' lies above."""


def test_classify_other_json(inputs, update_golden, tmp_path_factory):
    models, data = inputs
    root = tmp_path_factory.mktemp("golden_other")
    model = copy_model(models.root / "export_other" / "model_float32.tflite", root / "export")
    side = model.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["other_score"]["nucleus_max_offset"] = NUCLEUS_MAX
    meta["lab_check"] = LAB_CHECK
    side.write_text(json.dumps(meta))
    reseal(model)
    with_blank = shutil.copytree(data, root / "data")
    save_jpeg(with_blank / "other" / "blank.jpg", np.full((48, 48, 3), 225, dtype=np.uint8))  # a background: no nucleus
    out = classify_json(models, with_blank, root / "export", root)
    rep = json.loads(out)
    # what this golden is for: each way to `other`, and the lab line, appear in it
    reasons = {r["other_reason"] for r in rep["results"] if r["label"] == "other"}
    assert {OTHER_BY_SCORE, OTHER_BY_NUCLEUS} <= {part for why in reasons for part in why.split("; ")}, reasons
    assert any(r["label"] != "other" for r in rep["results"]), "every cell sent to other: nothing else pinned"
    assert rep["summary"]["lab_warning"], rep["summary"]
    check_golden("classify_other.json", out, update_golden)


def test_classify_json_is_stable(inputs, tmp_path):
    """The normalised report is the same for the same images elsewhere (other folder, second run)."""
    models, data = inputs
    other = shutil.copytree(data, tmp_path / "elsewhere" / "data")
    assert classify_json(models, other) == classify_json(models, data)


def test_classify_csv_header(inputs, update_golden):
    models, data = inputs
    r = run("classify", "--model", models.export, data / "myeloblast", "--csv", "-")
    assert r.exit_code == 0, r.output
    check_golden("classify_header.csv", r.stdout.splitlines()[0] + "\n", update_golden)
