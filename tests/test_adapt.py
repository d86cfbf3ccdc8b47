"""edgecell adapt: fitting a run to a clinic's few labelled cells, by prototypes or fine-tuning (issue #19).

The parent is the session's tiny model, trained on the Kaggle set's two labs; the "clinic" is a third
lab, BCCD (``../shared/more_cells/bccd``), whose monocytes the parent calls myeloblasts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell import data as data_mod
from edgecell.adapt import MIN_PER_CLASS, holdout, replay_pick
from edgecell.cli import cli
from edgecell.runfolder import RUN_OWNED
from firmware_host.atomic import foreign_files

pytest.importorskip("tensorflow")

PER_CLASS = 20
LOCAL_TYPE = "monocyte"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> Path:
    """A third lab: 20 of BCCD's monocytes (links), in a source folder named clinic."""
    from tests._realdata import more_cells_or_skip

    src = more_cells_or_skip() / "bccd" / LOCAL_TYPE
    out = tmp_path_factory.mktemp("local") / "clinic"
    (out / LOCAL_TYPE).mkdir(parents=True)
    for f in sorted(src.iterdir())[:PER_CLASS]:
        (out / LOCAL_TYPE / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="module")
def adapted(tiny_run, clinic, tmp_path_factory):
    """The tiny run fine-tuned to the clinic through the CLI; (new run, JSON report, parent digest before)."""
    before = _tree_digest(tiny_run)
    out = tmp_path_factory.mktemp("adapted") / "clinic-run"
    js = out.parent / "adapt.json"
    args = ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(out), "--method", "fine-tune", "--epochs", "10", "--replay", "20", "--json", str(js)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out, json.loads(js.read_text()), before, res.output


def test_adapt_learns_the_new_lab_and_reports_before_and_after(adapted):
    _, rep, _, output = adapted
    hold = rep["local_holdout"]
    assert hold["before"]["n"] == hold["after"]["n"] == rep["local"]["held_out"] > 0
    # the parent calls BCCD's monocytes myeloblasts (measured: 0 or 1 of 5 right); 15 labelled ones teach it (3 to 5 of 5)
    n = hold["after"]["n"]
    assert round(hold["after"]["accuracy"] * n) >= round(hold["before"]["accuracy"] * n) + 2
    assert rep["original_test"]["before"]["n"] == rep["original_test"]["after"]["n"] > 0
    for key in ("accuracy", "macro_f1", "flagged", "wrong_unflagged"):
        assert key in hold["after"] and key in rep["original_test"]["before"]
    assert "Before and after adapting" in output and "local, held out" in output
    assert f"with {n} local held-out cells, each cell moves a share of them by {100 / n:.1f} points" in " ".join(output.split())
    said = "".join(output.split())  # where the held-out cells are listed, and what was adapted (a review found neither said)
    assert f"{n}heldout(listedin" in said and "split.csv,splittest)" in said and "(from" in said
    # what the parent called the clinic's cells before adapting is in the report (said when it names most one other class)
    assert isinstance(rep["label_check"], list)
    for c in rep["label_check"]:
        assert c["named"] != c["label"] and "before adapting, the model named" in " ".join(output.split())
    # what it does worse than the parent, if anything, is said too (report_warnings), each on a line of its own
    assert isinstance(rep["warnings"], list)
    for w in rep["warnings"]:
        assert f"warning: {w}" in " ".join(output.split())


def test_label_check_names_a_folder_the_parent_calls_something_else():
    """25 neutrophils filed as basophils were adapted to without a word (a review): a type most of whose cells the
    parent names one other class, confidently, is said; a type it names right, a doubtful majority, or too few, not."""
    from edgecell.adapt import LABEL_CHECK_MIN, label_check, label_note

    classes = ["basophil", "monocyte", "other", "seg_neutrophil"]

    def probs(k: int, p: float, n: int) -> np.ndarray:
        a = np.full((n, len(classes)), (1 - p) / (len(classes) - 1))
        a[:, k] = p
        return a

    samples = [data_mod.Sample(f"b{i}.png", "basophil", f"{i:064x}", "clinic", "basophil") for i in range(25)]
    samples += [data_mod.Sample(f"m{i}.png", "monocyte", f"{100 + i:064x}", "clinic", "monocyte") for i in range(10)]
    samples += [data_mod.Sample(f"l{i}.png", "other", f"{200 + i:064x}", "clinic", "lymphocyte") for i in range(10)]
    samples += [data_mod.Sample(f"e{i}.png", "other", f"{300 + i:064x}", "clinic", "eosinophil") for i in range(LABEL_CHECK_MIN - 1)]
    p = np.concatenate(
        [
            np.concatenate([probs(3, 0.95, 22), probs(0, 0.9, 3)]),  # basophils called neutrophils, confidently
            np.concatenate([probs(3, 0.6, 6), probs(1, 0.9, 4)]),  # monocytes: a doubtful majority
            probs(2, 0.9, 10),  # lymphocytes named other: right
            probs(0, 0.99, LABEL_CHECK_MIN - 1),  # too few to say
        ]
    )
    found = label_check(p, samples, classes)
    assert found == [
        {"type": "basophil", "label": "basophil", "n": 25, "named": "seg_neutrophil", "count": 22, "mean_confidence": 0.95, "unflags_review": False}
    ]
    assert label_note(found[0]).startswith("before adapting, the model named 22 of your 25 basophil cells seg_neutrophil (mean confidence 0.95)")
    assert "haematologist" not in label_note(found[0])


def test_label_check_warns_when_a_review_class_would_be_taught_away():
    """24 myeloblasts filed as monocytes were adapted to with a note alone, and the adapted model called fresh
    myeloblasts monocyte, a class no one reviews (a review): cells the parent names a review class, filed under a
    class that is not one, are a warning that asks for a haematologist; filed under a review class, a note."""
    from edgecell.adapt import label_check, label_note

    classes = ["erythroblast", "monocyte", "myeloblast", "other"]
    samples = [data_mod.Sample(f"m{i}.png", "monocyte", f"{i:064x}", "clinic", "monocyte") for i in range(24)]
    samples += [data_mod.Sample(f"e{i}.png", "erythroblast", f"{100 + i:064x}", "clinic", "erythroblast") for i in range(10)]
    p = np.zeros((34, 4))
    p[:24, 2] = 0.9  # "monocytes" the parent calls myeloblast
    p[:24, 1] = 0.1
    p[24:, 2] = 0.85  # erythroblasts it calls myeloblast: both review classes, still flagged after adapting
    p[24:, 0] = 0.15
    found = {c["type"]: c for c in label_check(p, samples, classes)}
    assert found["monocyte"]["unflags_review"] is True
    assert found["erythroblast"]["unflags_review"] is False
    assert label_note(found["monocyte"]).endswith(
        "; myeloblast is flagged for a haematologist's review and monocyte is not, so the adapted model will stop flagging "
        "cells like these: have a haematologist confirm the labels before it is used"
    )
    assert "haematologist" not in label_note(found["erythroblast"])


def _sets(local: tuple, original: tuple) -> dict:
    """A before/after report of (n, accuracy before, after, wrong unflagged before, after) for each set."""

    def one(n, acc_b, acc_a, wu_b, wu_a):
        return {"before": {"n": n, "accuracy": acc_b, "wrong_unflagged": wu_b}, "after": {"n": n, "accuracy": acc_a, "wrong_unflagged": wu_a}}

    return {"local_holdout": one(*local), "original_test": one(*original)}


def test_adapting_with_nothing_held_out_reports_no_local_figures_and_no_warning_about_them(tiny_run, clinic, tmp_path):
    """--holdout-share 0 (as the adapt benchmark runs it) leaves the local figures empty (None): the warnings read the
    run's own test split alone (a first version of them failed there on None), and say that nothing measured the lab."""
    js = tmp_path / "a.json"
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(tmp_path / "new"), "--holdout-share", "0", "--json", str(js)])
    assert res.exit_code == 0, res.output
    rep = json.loads(js.read_text())
    assert rep["local_holdout"]["after"]["n"] == 0 and rep["local_holdout"]["after"]["accuracy"] is None
    assert all("held-out cells" not in w for w in rep["warnings"])
    assert rep["warnings"][0].startswith("no local cell was held out (--holdout-share 0): nothing here measures") and "no local cell" in res.output


def test_report_warnings_say_when_the_adapted_model_does_worse_than_its_parent():
    """A fine-tuned model worse on the clinic's held-out cells was written with "adapted run written" alone (a
    review): fewer held-out cells right, more than a point lost on the run's own labs, or more cells wrong and not
    flagged are each one line; as good or better, or a rise of one cell, says nothing."""
    from edgecell.adapt import report_warnings

    assert report_warnings(_sets((21, 0.80, 0.90, 0.05, 0.0), (900, 0.90, 0.895, 0.010, 0.011))) == []
    assert [w[:35] for w in report_warnings(_sets((0, None, None, None, None), (900, 0.90, 0.90, 0.01, 0.01)))] == ["no local cell was held out (--holdo"]
    assert report_warnings(_sets((84, 0.90, 0.90, 2 / 84, 3 / 84), (0, 0.0, 0.0, 0.0, 0.0))) == []  # one cell more: not a trend
    assert report_warnings(_sets((21, 19 / 21, 18 / 21, 0.0, 0.0), (900, 0.90, 0.90, 0.01, 0.01))) == [
        "on your 21 held-out cells the adapted model is right less often than the run it came from (85.7% against 90.5%): "
        "keep that run, or label more cells and adapt it again"
    ]
    assert report_warnings(_sets((21, 0.9, 0.9, 0.0, 0.0), (900, 0.90, 0.885, 0.01, 0.01))) == [
        "on the run's own test split (900 cells of the labs it was trained on) the adapted model is right on 1.5 points "
        "fewer (88.5% against 90.0%; more than 1): it reads those labs worse"
    ]
    assert report_warnings(_sets((21, 0.9, 0.9, 0.0, 0.0), (900, 0.90, 0.90, 0.010, 0.020))) == [
        "on the run's own test split (900 cells) the share wrong and not flagged rose from 1.0% to 2.0% (9 more cells): errors no one would be asked to check"
    ]


def test_adapted_run_has_a_run_layout_and_its_lineage(adapted, tiny_run, clinic):
    out, rep, parent_digest, _ = adapted
    for name in ("model.keras", "metadata.json", "split.csv", "metrics.json", "history.json", "adapt.json", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert foreign_files(out, RUN_OWNED) == []  # what adapt writes is what it may replace next time
    meta = json.loads((out / "metadata.json").read_text())
    parent = json.loads((tiny_run / "metadata.json").read_text())
    assert meta["classes"] == parent["classes"] and meta["input_size"] == parent["input_size"]
    lineage = meta["adapted_from"]
    assert lineage["run"] == str(tiny_run.resolve())
    assert lineage["model_sha256"] == hashlib.sha256((tiny_run / "model.keras").read_bytes()).hexdigest()
    assert lineage["local_counts"] == {LOCAL_TYPE: PER_CLASS} and lineage["learning_rate"] > 0
    assert lineage["local_fingerprint"] == data_mod.scan(clinic, classes=[LOCAL_TYPE]).fingerprint()
    assert meta["dataset"]["sources"]["clinic"] == str(clinic.resolve())
    assert meta["temperature"] > 0 and meta["lab_check"]["adapted_to"] == {"sources": ["clinic"], "cells": PER_CLASS - rep["local"]["held_out"]}
    # the split: the parent's rows unchanged, plus every local image (held out = test)
    rows = data_mod.read_manifest(out / "split.csv")
    parent_rows = data_mod.read_manifest(tiny_run / "split.csv")
    local = [r for r in rows if r.source == "clinic"]
    assert len(rows) == len(parent_rows) + PER_CLASS
    assert {(r.file, r.split) for r in rows if r.source != "clinic"} == {(r.file, r.split) for r in parent_rows}
    assert sum(r.split == "test" for r in local) == rep["local"]["held_out"]
    assert {r.split for r in local} == {"train", "test"}
    assert meta["dataset"]["fingerprint"] == data_mod.rows_fingerprint(rows)
    # the parent run is never touched
    assert _tree_digest(tiny_run) == parent_digest


def test_adapted_run_evaluates_and_converts_unchanged(adapted, tmp_path):
    out, _, _, _ = adapted
    res = CliRunner().invoke(cli, ["evaluate", str(out), "--split", "test", "--json", str(tmp_path / "ev.json"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert ev["n"] == metrics["n"] and ev["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert "clinic" in ev["sources"]["by_source"]
    res = CliRunner().invoke(cli, ["convert", str(out), "--int8", "--max-drop", "100", "--json", str(tmp_path / "conv.json")])
    assert res.exit_code == 0, res.output
    assert (out / "export" / "model_int8.tflite").is_file()


def test_too_few_to_hold_out_is_refused_with_how_many_to_label(tiny_run, clinic, tmp_path):
    small = tmp_path / "few"
    for c in ("monocyte", "basophil"):
        (small / c).mkdir(parents=True)
    files = sorted((clinic / LOCAL_TYPE).iterdir())
    for f in files[:5]:
        (small / "monocyte" / f.name).symlink_to(f)
    (small / "basophil" / files[5].name).symlink_to(files[5])
    out = tmp_path / "new"
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(small), "--out", str(out)])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "too few labelled cells to hold any out (basophil: 1; copies of one image count once)" in lines[0]
    assert f"each class needs {MIN_PER_CLASS} or more different cells of one type" in lines[0]
    assert not out.exists()
    # with the scan's cells in a second folder: the folder named is the one that holds the single basophil (a review:
    # the first --data folder was named, whichever it was)
    first = tmp_path / "clinic2" / "monocyte"
    first.mkdir(parents=True)
    for f in files[6:11]:
        (first / f.name).symlink_to(f)
    for order in ((first.parent, small), (small, first.parent)):
        res = CliRunner().invoke(cli, ["adapt", str(tiny_run), *(a for d in order for a in ("--data", str(d))), "--out", str(out)])
        assert res.exit_code == 1 and f"{small / 'basophil'}: too few labelled cells to hold any out (basophil: 1;" in res.output, res.output
        assert "move the folder of such a class out of --data" in res.output


def test_out_onto_the_parent_run_is_refused(tiny_run, clinic):
    before = _tree_digest(tiny_run)
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(tiny_run)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "the run being adapted" in res.output
    assert _tree_digest(tiny_run) == before


def test_a_corrupt_parent_model_is_named_before_any_image_is_read(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metadata.json", "split.csv"):
        (run / name).write_bytes((tiny_run / name).read_bytes())
    (run / "model.keras").write_bytes((tiny_run / "model.keras").read_bytes()[:300])
    (tmp_path / "lab" / "band_cell").mkdir(parents=True)  # a local folder the model does not know: found only after the model
    res = CliRunner().invoke(cli, ["adapt", str(run), "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: {run / 'model.keras'}: is not a Keras model file") and len(res.output.splitlines()) == 1


def test_a_folder_the_model_does_not_know_is_one_line(tiny_run, tmp_path):
    (tmp_path / "lab" / "band_cell").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1
    assert "class folder(s) the model does not know: band_cell" in res.output and "Traceback" not in res.output


def test_a_misspelt_class_folder_is_named_with_the_class_it_likely_means(tiny_run, tmp_path):
    """A review's `neutrofil` folder got the list of names alone (`Basophil` got a rename): a name close to a class,
    or to its last word (`seg_neutrophil`'s `neutrophil`), is named with it."""
    from edgecell.data import close_name

    (tmp_path / "lab" / "neutrofil").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(tmp_path / "lab"), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1 and "rename neutrofil -> seg_neutrophil?" in " ".join(res.output.split())
    classes = ["basophil", "monocyte", "other", "seg_neutrophil", "lymphocyte"]
    assert [close_name(n, classes) for n in ("Neutrophils", "basofil", "Lymphocytes", "band_cell", "mono")] == [
        ["seg_neutrophil"],
        ["basophil"],
        ["lymphocyte"],
        [],
        [],
    ]


def _samples(spec: dict[tuple[str, str], int]) -> list[data_mod.Sample]:
    out = []
    for (label, typ), n in spec.items():
        out += [data_mod.Sample(f"{typ}/{i}.jpg", label, f"{typ}-{i}", "clinic", typ) for i in range(n)]
    return out


def test_holdout_is_seeded_stratified_and_never_all_of_a_stratum():
    s = _samples({("seg_neutrophil", "seg_neutrophil"): 20, ("other", "lymphocyte"): 10, ("other", "eosinophil"): 3, ("monocyte", "monocyte"): 1})
    a, b, c = holdout(s, 0.25, 1), holdout(s, 0.25, 1), holdout(s, 0.25, 2)
    assert (a == b).all() and not (a == c).all()
    by = lambda typ: a[[i for i, x in enumerate(s) if x.type == typ]]  # noqa: E731
    assert by("seg_neutrophil").sum() == 5 and by("lymphocyte").sum() == 2 and by("eosinophil").sum() == 1
    assert by("monocyte").sum() == 0  # fewer than MIN_PER_CLASS: it trains
    assert MIN_PER_CLASS == 2
    assert not holdout(s, 0.0, 1).any()


def test_holdout_keeps_copies_of_one_image_together():
    s = _samples({("basophil", "basophil"): 8})
    for x in s[:4]:
        x.sha256 = "same"
    held = holdout(s, 0.5, 0)
    assert len(set(held[:4].tolist())) == 1


def test_replay_pick_is_seeded_and_per_class():
    rows = [data_mod.ManifestRow(f"{c}/{i}.jpg", c, "train", f"{c}{i}", "lab", c) for c in ("a", "b") for i in range(30)]
    rows += [data_mod.ManifestRow("c/0.jpg", "c", "train", "c0", "lab", "c")]
    pick = replay_pick(rows, 10, 5)
    assert [r.file for r in pick] == [r.file for r in replay_pick(list(reversed(rows)), 10, 5)]  # listing order does not matter
    counts = {c: sum(r.label == c for r in pick) for c in "abc"}
    assert counts == {"a": 10, "b": 10, "c": 1}
    assert [r.file for r in pick] != [r.file for r in replay_pick(rows, 10, 6)]
    assert len({r.file for r in pick}) == len(pick) and np.all([r.split == "train" for r in pick])


def test_missing_parent_data_names_parent_data(tiny_run, clinic, tmp_path):
    """A run copied to a laptop without its training data: the one line says which option gives it."""
    import shutil

    moved = tmp_path / "moved-run"
    shutil.copytree(tiny_run, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    meta["dataset"]["sources"] = {name: str(tmp_path / "gone") for name in meta["dataset"]["sources"]}
    meta["dataset"]["path"] = str(tmp_path / "gone")
    (moved / "metadata.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(cli, ["adapt", str(moved), "--data", str(clinic), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "pass --parent-data DIR" in res.output and len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_outcomes_count_the_labels_the_runtime_gives():
    """adapt's report counts what the runtime would say (the never-seen score may relabel a cell other), not the argmax."""
    from edgecell.evaluate import outcomes

    classes = ["basophil", "other"]
    probs = np.array([[0.9, 0.1], [0.95, 0.05]])
    y = np.array([0, 1])
    assert outcomes(y, probs, classes, 0.7)["accuracy"] == 0.5
    relabelled = outcomes(y, probs, classes, 0.7, pred=np.array([0, 1]))
    assert relabelled["accuracy"] == 1.0 and relabelled["wrong_unflagged"] == 0.0


# --------------------------------------------------------------------------- --method prototypes


def test_fit_prototypes_scores_minus_half_the_mahalanobis_distance():
    """Each output of the head is minus half the squared distance to one prototype (plus a term the same for all),
    under the parent images' within-type covariance, shrunk (which the whitening turns into the identity); the
    local types come after the parent's."""
    from edgecell.adapt import fit_prototypes

    rng = np.random.default_rng(0)
    types = np.repeat(["b", "a", "c"], 100)
    f = rng.normal(size=(300, 4)) * [1.0, 2.0, 3.0, 0.5] + (types == "b")[:, None] * 5.0
    local = rng.normal(size=(10, 4)) + 20.0
    head = fit_prototypes(f, types, local, ["a"] * 10, shrink=0.2)
    assert head.names == ["a", "b", "c", "a"]
    means = np.stack([f[types == t].mean(axis=0) for t in ("a", "b", "c")] + [local.mean(axis=0)])
    within = f - np.stack([f[types == t].mean(axis=0) for t in types])
    cov = np.cov(within, rowvar=False)
    cov = 0.8 * cov + 0.2 * np.eye(4) * np.trace(cov) / 4
    q = rng.normal(size=(50, 4)) * 6
    d2 = np.einsum("nkd,de,nke->nk", q[:, None] - means, np.linalg.inv(cov), q[:, None] - means)
    diff = head.logits(q) - (-0.5 * d2)
    assert np.allclose(diff - diff[:, :1], 0.0, atol=1e-8)
    assert np.allclose(head.whitening.T @ cov @ head.whitening, np.eye(4), atol=1e-8)


def test_fit_prototypes_whitens_along_the_prototypes_span_only():
    """With more features than prototypes the whitening keeps one column per prototype, and every output is still
    minus half the full Mahalanobis distance (up to a term the same for all)."""
    from edgecell.adapt import fit_prototypes

    rng = np.random.default_rng(3)
    types = np.repeat(["a", "b"], 150)
    f = rng.normal(size=(300, 12)) * np.linspace(0.5, 3.0, 12) + (types == "b")[:, None] * 2.0
    local = rng.normal(size=(8, 12)) + 4.0
    head = fit_prototypes(f, types, local, ["c"] * 8, shrink=0.0)
    assert head.whitening.shape == (12, 3) and head.means.shape == (3, 3)
    means = np.stack([f[types == t].mean(axis=0) for t in ("a", "b")] + [local.mean(axis=0)])
    within = f - np.stack([f[types == t].mean(axis=0) for t in types])
    inv = np.linalg.inv(np.cov(within, rowvar=False))
    q = rng.normal(size=(40, 12)) * 3
    d2 = np.einsum("nkd,de,nke->nk", q[:, None] - means, inv, q[:, None] - means)
    diff = head.logits(q) - (-0.5 * d2)
    assert np.allclose(diff - diff[:, :1], 0.0, atol=1e-7)


def test_fit_prototypes_keeps_one_prototype_per_group_and_type():
    """A lab fitted by an earlier adapt (its own group) keeps a prototype of its own beside the parent labs' one of the
    same type, and the within-type covariance is taken about each group's mean, not the type's."""
    from edgecell.adapt import fit_prototypes

    rng = np.random.default_rng(2)
    types = np.array(["a"] * 200 + ["b"] * 100 + ["a"] * 20)
    groups = np.array([""] * 300 + ["clinic"] * 20)
    f = rng.normal(size=(320, 3)) + (groups == "clinic")[:, None] * 8.0 + (types == "b")[:, None] * [0.0, 4.0, 0.0]
    head = fit_prototypes(f, types, np.zeros((0, 3)), [], shrink=0.0, groups=groups)
    assert head.names == ["a", "b", "a"]
    means = np.stack([f[:200].mean(axis=0), f[200:300].mean(axis=0), f[300:].mean(axis=0)])
    assert np.allclose(head.means, head.whiten(means))
    within = f - means[[0] * 200 + [1] * 100 + [2] * 20]
    assert np.allclose(head.whitening.T @ np.cov(within, rowvar=False) @ head.whitening, np.eye(3), atol=1e-8)
    # one group for all: the type's pooled mean, as before
    assert fit_prototypes(f, types, np.zeros((0, 3)), []).names == ["a", "b"]


def test_fit_scale_sharpens_a_head_that_is_right_and_softens_one_that_guesses():
    from edgecell.adapt import SCALE_GRID, fit_scale

    rng = np.random.default_rng(1)
    logits, merge = rng.normal(size=(300, 3)), np.eye(3)
    assert fit_scale(logits, merge, logits.argmax(axis=1)) == SCALE_GRID[-1]
    assert fit_scale(logits, merge, rng.integers(0, 3, 300)) < 0.2
    # the logits of mirrored views: their probabilities are averaged, as the model averages them
    y = rng.integers(0, 3, 300)
    assert fit_scale(np.stack([logits, logits]), merge, y) == fit_scale(logits, merge, y)
    right = np.eye(3)[y] * 4.0
    assert fit_scale(np.stack([right, logits]), merge, y) > fit_scale(logits, merge, y)  # one view that is right lifts it


@pytest.fixture(scope="module")
def by_prototypes(tiny_run, clinic, tmp_path_factory):
    out = tmp_path_factory.mktemp("prototypes") / "clinic-run"
    js = out.parent / "adapt.json"
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(out), "--replay", "20", "--json", str(js)])  # the default method
    assert res.exit_code == 0, res.output
    return out, json.loads(js.read_text()), res.output


def test_prototypes_learn_the_new_lab_without_touching_the_network(by_prototypes, tiny_run):
    from edgecell.model import PROTOTYPE_HEAD, learnt_outputs
    from edgecell.runfolder import RunFolder

    out, rep, output = by_prototypes
    hold = rep["local_holdout"]
    # the parent calls BCCD's monocytes myeloblasts; a monocyte prototype of the clinic's own cells names them
    assert hold["after"]["accuracy"] >= hold["before"]["accuracy"] + 0.4
    assert rep["method"] == "prototypes" and rep["epochs"] == 0 and "prototypes" in output
    parent, child = RunFolder.read(tiny_run), RunFolder.read(out)
    assert child.learnt_as == parent.learnt_as + [LOCAL_TYPE]
    assert child.extra["adapted_from"]["method"] == "prototypes" and child.extra["adapted_from"]["learning_rate"] is None
    p_net, c_net = learnt_outputs(parent.load_keras()), learnt_outputs(child.load_keras())
    assert c_net.get_layer(PROTOTYPE_HEAD).output.shape[-1] == len(child.learnt_as)
    convs = [layer.name for layer in p_net.layers if layer.name.startswith(("conv", "bn"))]
    assert convs and all(all(np.array_equal(a, b) for a, b in zip(p_net.get_layer(n).get_weights(), c_net.get_layer(n).get_weights())) for n in convs)


def test_adapting_an_adapted_run_keeps_the_first_labs_prototypes(by_prototypes, tmp_path):
    """A run adapted by prototypes, adapted again to a second lab: every labelled cell of the first lab is replayed,
    its monocytes keep a prototype of their own (not merged into the training labs'), and the lab check's advice
    names both labs and all the cells fitted."""
    from edgecell.runfolder import RunFolder
    from tests._realdata import more_cells_or_skip

    first, first_rep, _ = by_prototypes
    ward = tmp_path / "ward"
    (ward / "seg_neutrophil").mkdir(parents=True)
    for f in sorted((more_cells_or_skip() / "bccd" / "seg_neutrophil").iterdir())[:12]:
        (ward / "seg_neutrophil" / f.name).symlink_to(f)
    out, js = tmp_path / "ward-run", tmp_path / "adapt.json"
    res = CliRunner().invoke(cli, ["adapt", str(first), "--data", str(ward), "--out", str(out), "--replay", "20", "--json", str(js)])
    assert res.exit_code == 0, res.output
    rep = json.loads(js.read_text())
    first_cells = first_rep["local"]["trained"]
    assert rep["replay"]["images"] == first_rep["replay"]["images"] + first_cells
    parent, child = RunFolder.read(first), RunFolder.read(out)
    assert child.learnt_as == parent.learnt_as + ["seg_neutrophil"]  # the first lab's monocyte prototype is still its own
    assert child.extra["lab_check"]["adapted_to"] == {"sources": ["clinic", "ward"], "cells": first_cells + rep["local"]["trained"]}


def test_adapting_an_adapted_run_to_its_own_lab_again_is_refused_with_what_to_do(by_prototypes, clinic, tiny_run, tmp_path):
    first, _, _ = by_prototypes
    res = CliRunner().invoke(cli, ["adapt", str(first), "--data", str(clinic), "--out", str(tmp_path / "again")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = " ".join(res.output.split())
    assert f"this run was already adapted to 'clinic'; adapt {tiny_run.resolve()} again with all of clinic's labelled cells" in line
    assert not (tmp_path / "again").exists()


def test_local_images_already_in_the_runs_split_are_refused(by_prototypes, clinic, tmp_path):
    """The clinic's cells under another name: one of them trained on before and held out now would make the
    before/after a test on training cells."""
    first, _, _ = by_prototypes
    renamed = tmp_path / "clinic_more"
    (renamed / LOCAL_TYPE).mkdir(parents=True)
    for f in (clinic / LOCAL_TYPE).iterdir():
        (renamed / LOCAL_TYPE / f.name).symlink_to(f.resolve())
    res = CliRunner().invoke(cli, ["adapt", str(first), "--data", str(renamed), "--out", str(tmp_path / "again")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{PER_CLASS} local image(s) are already in the run's split" in " ".join(res.output.split())


def test_adapted_sources_reads_the_lineage_and_replay_keeps_their_rows_whole():
    from types import SimpleNamespace

    from edgecell.adapt import adapted_sources, replay_rows_of

    assert adapted_sources(SimpleNamespace(extra={})) == []
    old = SimpleNamespace(extra={"adapted_from": {"local_counts_by_type": {"ward": {}, "clinic": {}}}})  # adapted before the list was kept
    assert adapted_sources(old) == ["clinic", "ward"]
    new = SimpleNamespace(extra={"adapted_from": {"adapted_sources": ["clinic", "ward"], "local_counts_by_type": {"ward": {}}}})
    assert adapted_sources(new) == ["clinic", "ward"]
    rows = [data_mod.ManifestRow(f"k{i}.png", "monocyte", "train", f"k{i}", "kaggle", "monocyte") for i in range(50)]
    rows += [data_mod.ManifestRow(f"c{i}.png", "monocyte", "train", f"c{i}", "clinic", "monocyte") for i in range(7)]
    rows += [data_mod.ManifestRow("v.png", "monocyte", "val", "v", "clinic", "monocyte")]
    picked = replay_rows_of(rows, 10, 0, ["clinic"])
    assert sum(r.source == "kaggle" for r in picked) == 10
    assert sorted(r.file for r in picked if r.source == "clinic") == sorted(f"c{i}.png" for i in range(7))  # all, training rows only
    assert sum(r.source == "clinic" for r in replay_rows_of(rows, 10, 0)) <= 10  # without the lineage: one pool


def test_the_prototype_head_is_fitted_over_the_views_the_model_averages(tiny_run):
    """The head's whitening is the one fitted on every mirrored view of the replay and local images (the Pi
    averages the head over them), not on the images alone."""
    from edgecell.adapt import _add_prototypes, fit_prototypes, view_features
    from edgecell.model import PROTOTYPE_WHITEN, learnt_outputs, pooled_features, views_of
    from edgecell.runfolder import RunFolder

    run = RunFolder.read(tiny_run)
    model = run.load_keras()
    views = views_of(model)
    assert views > 1
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, run.input_size, run.input_size, 3), dtype=np.uint8)
    types = ["basophil"] * 12 + ["monocyte"] * 12
    y_val = np.array([run.classes.index("monocyte")] * 6)
    adapted, _, _ = _add_prototypes(model, run.classes, x[:24], types, [""] * 24, x[24:28], ["monocyte"] * 4, x[24:], y_val)
    net = pooled_features(model)
    f_rep, f_loc = view_features(net, x[:24], views), view_features(net, x[24:28], views)
    assert not np.allclose(f_rep[0], f_rep[1])  # the views are different images to the network
    expected = fit_prototypes(f_rep.reshape(-1, f_rep.shape[-1]), types * views, f_loc.reshape(-1, f_loc.shape[-1]), ["monocyte"] * 4 * views)
    kernel = learnt_outputs(adapted).get_layer(PROTOTYPE_WHITEN).get_weights()[0]
    assert kernel.shape == expected.whitening.shape and np.allclose(kernel, expected.whitening, rtol=1e-4, atol=1e-6)


def test_a_prototype_run_converts_to_tflite_that_agrees_with_keras(by_prototypes, tmp_path):
    """The head (large weights and biases: squared distances) survives conversion, int8 included."""
    out, _, _ = by_prototypes
    res = CliRunner().invoke(cli, ["convert", str(out), "--int8", "--max-drop", "100", "--json", str(tmp_path / "conv.json")])
    assert res.exit_code == 0, res.output
    models = json.loads((tmp_path / "conv.json").read_text())["models"]
    assert models["float32"]["agreement_with_keras"] == 1.0
    assert abs(models["int8"]["accuracy"] - models["keras"]["accuracy"]) <= 0.05


def test_an_unknown_method_is_one_line(tiny_run, clinic, tmp_path):
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(tmp_path / "x"), "--method", "magic"])
    assert res.exit_code == 2 and "magic" in res.output and "Traceback" not in res.output


def test_out_inside_the_parents_training_data_is_refused(tiny_run, real_slice, clinic):
    """The next train or adapt on that data would read the new run's files as cells."""
    out = real_slice / "newrun"
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "the parent run's training data" in " ".join(res.output.split())
    assert not out.exists()


def test_a_replay_too_small_to_give_a_spread_is_refused(tiny_run, clinic, tmp_path):
    from edgecell.adapt import MIN_REPLAY_PER_CLASS, AdaptOptions, adapt
    from firmware_host.errors import EdgecellError

    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(tmp_path / "x"), "--replay", "1"])
    assert res.exit_code == 2 and "--replay" in res.output and "Traceback" not in res.output
    with pytest.raises(EdgecellError, match=f"at least {MIN_REPLAY_PER_CLASS}"):
        adapt(AdaptOptions(str(tiny_run), (str(clinic),), str(tmp_path / "y"), replay_per_class=MIN_REPLAY_PER_CLASS - 1))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fine_tuning_a_run_adapted_by_prototypes_is_refused_with_what_to_do(by_prototypes, tiny_run, tmp_path):
    """Its outputs are prototypes (two of a type once a lab has been added); fine-tuning would train the lab's
    cells towards the training labs' prototype of their type."""
    first, _, _ = by_prototypes
    ward = tmp_path / "ward"
    (ward / "seg_neutrophil").mkdir(parents=True)  # no images needed: refused before they are read
    res = CliRunner().invoke(cli, ["adapt", str(first), "--data", str(ward), "--out", str(tmp_path / "ft"), "--method", "fine-tune"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = " ".join(res.output.split())
    assert "adapted by prototypes" in line and str(tiny_run.resolve()) in line
    assert not (tmp_path / "ft").exists()


def test_fine_tune_then_prototypes_trains_the_network_and_puts_the_prototype_head_on_it(tiny_run, clinic, tmp_path):
    from edgecell.model import PROTOTYPE_HEAD, learnt_outputs
    from edgecell.runfolder import RunFolder

    out, js = tmp_path / "both", tmp_path / "adapt.json"
    args = ["adapt", str(tiny_run), "--data", str(clinic), "--out", str(out), "--method", "fine-tune+prototypes", "--epochs", "2", "--replay", "20"]
    res = CliRunner().invoke(cli, [*args, "--json", str(js)])
    assert res.exit_code == 0, res.output
    rep = json.loads(js.read_text())
    assert rep["method"] == "fine-tune+prototypes" and rep["epochs"] == 2
    parent, child = RunFolder.read(tiny_run), RunFolder.read(out)
    assert child.extra["adapted_from"]["method"] == "fine-tune+prototypes" and child.extra["adapted_from"]["learning_rate"] is not None
    assert child.learnt_as == parent.learnt_as + [LOCAL_TYPE]
    p_net, c_net = learnt_outputs(parent.load_keras()), learnt_outputs(child.load_keras())
    assert c_net.get_layer(PROTOTYPE_HEAD).output.shape[-1] == len(child.learnt_as)
    convs = [layer.name for layer in p_net.layers if layer.name.startswith("conv")]
    assert any(not np.array_equal(p_net.get_layer(n).get_weights()[0], c_net.get_layer(n).get_weights()[0]) for n in convs)  # trained
    ward = tmp_path / "ward"
    (ward / "seg_neutrophil").mkdir(parents=True)  # its head is prototypes: fine-tuning it again is refused
    res = CliRunner().invoke(cli, ["adapt", str(out), "--data", str(ward), "--out", str(tmp_path / "ft"), "--method", "fine-tune"])
    assert res.exit_code == 1 and "adapted by prototypes" in " ".join(res.output.split())


def test_the_parents_own_images_given_as_local_cells_are_refused_as_such(tiny_run, real_slice, tmp_path):
    """Not "give the folder its own name", which would only lead to the next refusal."""
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(real_slice), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "already in the run's split" in " ".join(res.output.split())


def test_parent_data_that_is_not_the_parents_data_is_one_true_line(tiny_run, clinic, tmp_path):
    """The one folder given stands for the run's one source; its images are not there, which is what is said (not
    that the local folder has the name of one of the parent's sources)."""
    res = CliRunner().invoke(cli, ["adapt", str(tiny_run), "--data", str(clinic), "--parent-data", str(clinic), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = " ".join(res.output.split())
    assert "listed in the split manifest" in line and "has the name of" not in line
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_a_manifest_source_no_data_folder_holds_says_how_sources_are_named(tmp_path):
    from edgecell import data as data_mod
    from firmware_host.errors import DataError

    rows = [data_mod.ManifestRow("basophil/b.jpg", "basophil", "train", "s", "labA"), data_mod.ManifestRow("basophil/c.jpg", "basophil", "train", "t", "labB")]
    with pytest.raises(
        DataError,
        match=r"names source\(s\) labB that the data folders do not hold \(they hold: labA\); give each folder under its source's name at training \(NAME=FOLDER",
    ):
        data_mod.load_cells_from_manifest({"labA": tmp_path}, rows, 16, ["basophil"])


def test_run_before_walks_the_lineage_to_the_run_before_the_lab(monkeypatch, tmp_path):
    """run -> a1 (adapted to clinic) -> a2 (adapted to ward): clinic is adapted again from run, then ward again."""
    from types import SimpleNamespace

    from edgecell import adapt as adapt_mod
    from firmware_host.errors import EdgecellError

    def lineage(parent, step, labs):
        return {"adapted_from": {"run": parent, "local_counts_by_type": {s: {} for s in step}, "adapted_sources": labs}}

    runs = {
        "run": SimpleNamespace(path=Path("run"), extra={}),
        "a1": SimpleNamespace(path=Path("a1"), extra=lineage("run", ["clinic"], ["clinic"])),
        "a2": SimpleNamespace(path=Path("a2"), extra=lineage("a1", ["ward"], ["clinic", "ward"])),
    }

    def read(path):
        if str(path) not in runs:
            raise EdgecellError("not a run folder", path)
        return runs[str(path)]

    monkeypatch.setattr(adapt_mod.RunFolder, "read", staticmethod(read))
    assert adapt_mod.run_before(runs["a2"], "clinic") == ("run", ["ward"])
    assert adapt_mod.run_before(runs["a2"], "ward") == ("a1", [])
    assert adapt_mod.run_before(runs["a1"], "clinic") == ("run", [])
    # fine-tuning starts before any run adapted by prototypes (a1 and a2 both were)
    for name in ("a1", "a2"):
        runs[name].extra["adapted_from"]["method"] = "prototypes"
    assert adapt_mod.walk_back(runs["a2"], adapt_mod.adapted_by_prototypes) == ("run", [runs["a2"], runs["a1"]])
    del runs["run"]  # moved away: the last run found on the way is named
    assert adapt_mod.run_before(runs["a2"], "clinic") == ("run", ["ward"])


def test_a_lineage_that_leads_back_to_itself_ends(monkeypatch, tmp_path):
    """R, then A adapted from R, then R replaced by a run adapted from A: R's record names A, A's names R. Walking back
    followed the two for ever (memory growing); a recorded parent whose model is not the recorded one is gone."""
    from types import SimpleNamespace

    from edgecell import adapt as adapt_mod
    from firmware_host.metadata import sha256_file

    models = {}
    for name, content in (("R", b"the new R"), ("A", b"A")):
        (tmp_path / name).mkdir()
        models[name] = tmp_path / name / "model.keras"
        models[name].write_bytes(content)
    old_r = "the old R's model"  # what A recorded: R's model before R was replaced
    runs = {
        "R": SimpleNamespace(
            path=tmp_path / "R", keras_path=models["R"], extra={"adapted_from": {"run": "A", "model_sha256": sha256_file(models["A"]), "method": "prototypes"}}
        ),
        "A": SimpleNamespace(path=tmp_path / "A", keras_path=models["A"], extra={"adapted_from": {"run": "R", "model_sha256": old_r, "method": "prototypes"}}),
    }
    monkeypatch.setattr(adapt_mod.RunFolder, "read", staticmethod(lambda path: runs[str(path)]))
    assert adapt_mod.walk_back(runs["R"], adapt_mod.adapted_by_prototypes) == ("R", [runs["R"], runs["A"]])
    runs["A"].extra["adapted_from"]["model_sha256"] = sha256_file(models["R"])  # even were the records to agree: no loop
    assert adapt_mod.walk_back(runs["R"], adapt_mod.adapted_by_prototypes) == ("R", [runs["R"], runs["A"]])


def test_advice_counts_each_cell_type_that_teaches_other():
    """Lymphocytes and eosinophils are both `other`, and each gets a prototype of its own: 12 of each is short."""
    from edgecell import data as data_mod
    from edgecell.adapt import check_local

    samples = [
        data_mod.Sample(f"{t}/{i}.png", label, f"{t}{i}", "clinic", t)
        for t, label, n in (("monocyte", "monocyte", 25), ("lymphocyte", "other", 12), ("eosinophil", "other", 12))
        for i in range(n)
    ]
    ds = data_mod.Dataset(root=Path("clinic"), classes=["monocyte", "other"], samples=samples)
    assert check_local(ds, np.zeros(len(samples), bool), 0.0) == [
        "eosinophil: 12 labelled; 8 more would help",
        "lymphocyte: 12 labelled; 8 more would help",
    ]
