"""benchmarks/adapt.py: the seeded pick and the figures it reports (no training here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.adapt import EXPERIMENTS, link_pick, method_of, rest_figures, scaled_pick, summary


def _lab(root: Path, counts: dict[str, int]) -> Path:
    for typ, n in counts.items():
        (root / typ).mkdir(parents=True)
        for i in range(n):
            (root / typ / f"{typ}_{i:03d}.jpg").write_bytes(b"x")
    return root


def test_pick_is_seeded_and_the_rest_is_everything_else(tmp_path):
    lab = _lab(tmp_path / "lab", {"seg_neutrophil": 40, "monocyte": 4, "basophil": 3})
    pick, rest = link_pick(lab, {"seg_neutrophil": 20, "monocyte": 10}, 1, tmp_path / "w1")
    names = lambda d: {p.relative_to(d).as_posix() for p in d.rglob("*.jpg")}  # noqa: E731
    assert len(list((pick / "seg_neutrophil").iterdir())) == 20
    assert len(list((pick / "monocyte").iterdir())) == 2  # at most half of a type: the rest is the test
    assert not (pick / "basophil").exists() and len(list((rest / "basophil").iterdir())) == 3
    assert names(pick) | names(rest) == names(lab) and not names(pick) & names(rest)
    again, _ = link_pick(lab, {"seg_neutrophil": 20, "monocyte": 10}, 1, tmp_path / "w2")
    other, _ = link_pick(lab, {"seg_neutrophil": 20, "monocyte": 10}, 2, tmp_path / "w3")
    assert names(again) == names(pick) and names(other) != names(pick)


def test_a_scaled_pick_multiplies_the_issues_counts_and_keeps_half_of_a_type_to_test(tmp_path):
    assert scaled_pick("bccd", 1) == EXPERIMENTS["bccd"][2]
    assert scaled_pick("bccd", 4) == {t: 4 * n for t, n in EXPERIMENTS["bccd"][2].items()}
    lab = _lab(tmp_path / "lab", {"seg_neutrophil": 207, "monocyte": 20})
    pick, rest = link_pick(lab, scaled_pick("bccd", 4), 1, tmp_path / "w")
    assert len(list((pick / "seg_neutrophil").iterdir())) == 80 and len(list((rest / "seg_neutrophil").iterdir())) == 127
    assert len(list((pick / "monocyte").iterdir())) == 10 and len(list((rest / "monocyte").iterdir())) == 10


def test_rest_figures_weight_types_by_their_counts():
    m = {
        "sources": {
            "by_type": {
                "clinic/a": {"n": 30, "accuracy": 1.0, "flagged": 0.0, "wrong_unflagged": 0.0, "called": {}},
                "clinic/b": {"n": 10, "accuracy": 0.0, "flagged": 1.0, "wrong_unflagged": 0.0, "called": {}},
            },
            "by_source": {"clinic": {"lab_warning": "these 40 images look unlike the labs this model was trained on (...)"}},
        }
    }
    f = rest_figures(m)
    assert f["n"] == 40 and f["accuracy"] == 0.75 and f["flagged"] == 0.25 and f["lab_warning"] is True
    quiet = rest_figures({"sources": {**m["sources"], "by_source": {"clinic": {"lab_warning": None}}}})
    assert quiet["lab_warning"] is False
    pick = {"rest": {"before": f, "after": quiet}, "original_drop_points": 2.0, "adapt_wall_seconds": 120.0, "load_average": 3.0}
    s = summary({"1": pick, "2": {**pick, "original_drop_points": 4.0}})
    assert s["original_drop_points"]["mean"] == 3.0 and s["original_drop_points"]["max"] == 4.0 and s["adapt_minutes"]["mean"] == 2.0
    assert s["lab_warning_before"] == 2 and s["lab_warning_after"] == 0


def test_results_are_named_by_the_method_the_options_name():
    from edgecell.adapt import DEFAULT_METHOD

    assert method_of([]) == DEFAULT_METHOD and method_of(["--epochs", "3"]) == DEFAULT_METHOD
    assert method_of(["--method", "fine-tune", "--epochs", "3"]) == "fine-tune"
    assert method_of(["--epochs", "3", "--method"]) == DEFAULT_METHOD  # no value: adapt itself will refuse it
