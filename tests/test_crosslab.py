"""Issue #12 pieces that need no TensorFlow: the cell-centred crop, several sources, `other`, per-source figures."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgecell import data
from firmware_host.errors import DataError
from firmware_host.preprocess import CELL_SCALE, WHITE_LEVEL, locate_cell, prepare


def draw_cell(size: tuple[int, int], centre: tuple[float, float], radius: float, bg=(235, 206, 189), nucleus=(90, 40, 130), rbc: int = 6, seed: int = 0):
    """A field like a lab's single-cell image: tinted background, pink red cells, one violet nucleus in a pale cell."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    for _ in range(rbc):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        r = radius * 0.9
        d.ellipse((x - r, y - r, x + r, y + r), fill=(215, 160, 165))
    cx, cy = centre
    d.ellipse((cx - 1.5 * radius, cy - 1.5 * radius, cx + 1.5 * radius, cy + 1.5 * radius), fill=(215, 190, 215))
    d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=nucleus)
    return np.asarray(img)


@pytest.mark.parametrize("shape,centre,radius", [((360, 363), (180, 181), 40), ((400, 400), (230, 170), 70), ((160, 200), (70, 100), 25)])
def test_locate_finds_the_nucleus(shape, centre, radius):
    rgb = draw_cell((shape[1], shape[0]), centre, radius)
    loc = locate_cell(rgb)
    assert loc.found
    assert abs(loc.cx - centre[0]) < 0.15 * radius and abs(loc.cy - centre[1]) < 0.15 * radius
    assert 0.7 * radius < loc.radius < 1.3 * radius


def test_same_cell_at_two_magnifications_fills_the_input_alike():
    """A camera with twice the magnification must not give the model a twice-as-large cell."""
    small = prepare(draw_cell((360, 363), (180, 181), 30, rbc=0), 64)
    large = prepare(draw_cell((400, 400), (200, 200), 60, rbc=0, bg=(225, 210, 218)), 64)

    def nucleus_share(a):
        return float((a.mean(axis=2) < 130).mean())  # the nucleus is the only dark thing

    assert nucleus_share(small) == pytest.approx(nucleus_share(large), abs=0.03)
    expected = np.pi / (CELL_SCALE / 2) ** 2 / 4  # a disc of radius r in a square of side CELL_SCALE * r
    assert nucleus_share(small) == pytest.approx(expected, abs=0.06)


def test_background_tint_is_neutralised():
    peach = prepare(draw_cell((360, 363), (180, 181), 40, bg=(235, 206, 189)), 64)
    lavender = prepare(draw_cell((360, 363), (180, 181), 40, bg=(225, 210, 218)), 64)
    corners = [a[:4, :4].reshape(-1, 3).mean(axis=0) for a in (peach, lavender)]
    raw = np.array([235, 206, 189]) - np.array([225, 210, 218])
    assert np.abs(corners[0] - corners[1]).max() < np.abs(raw).max() / 2  # the labs' tints differ far less after
    for c in corners:
        assert abs(c.mean() - WHITE_LEVEL) < 15


def test_blank_image_falls_back_to_whole_image():
    loc = locate_cell(np.full((100, 120, 3), 230, np.uint8))
    assert not loc.found
    assert prepare(np.full((100, 120, 3), 230, np.uint8), 32).shape == (32, 32, 3)


def _img(path, colour=(200, 100, 150)):
    """A small cell image whose pixels differ for every path (no two files are duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = zlib.crc32(str(path.relative_to(path.parents[2])).encode())
    a = draw_cell((48, 48), (24, 24), 8, nucleus=colour, seed=seed).copy()
    a[0, :4, 0] = np.frombuffer(seed.to_bytes(4, "little"), np.uint8)  # a unique fingerprint in the corner
    Image.fromarray(a).save(path)


def _tree(root, layout: dict[str, dict[str, int]]):
    for src, types in layout.items():
        for typ, n in types.items():
            for i in range(n):
                _img(root / src / typ / f"{src}_{typ}_{i}.png", colour=(60 + 10 * i % 100, 40, 130))
    return root


def test_sources_other_and_exclude(tmp_path):
    flat = _tree(tmp_path / "kaggle", {"": {"basophil": 6, "monocyte": 6}})
    multi = _tree(tmp_path / "more", {"labA": {"monocyte": 6, "lymphocyte": 5, "eosinophil": 3}, "labB": {"basophil": 5}})
    (tmp_path / "more" / "fields" / "JPEGImages").mkdir(parents=True)
    _img(tmp_path / "more" / "fields" / "JPEGImages" / "f.png")
    sources, notes = data.discover_sources([flat, multi])
    assert [s.name for s in sources] == ["kaggle", "labA", "labB"]
    assert len(notes) == 1 and "fields" in notes[0]
    ds = data.scan([flat, multi])
    assert ds.classes == ["basophil", "monocyte", "other"]
    assert ds.counts() == {"basophil": 11, "monocyte": 12, "other": 8}
    assert {s.type for s in ds.samples if s.label == "other"} == {"lymphocyte", "eosinophil"}
    assert ds.counts_by_source()["labA"] == {"eosinophil": 3, "lymphocyte": 5, "monocyte": 6}
    held = data.scan([flat, multi], exclude=["labA/monocyte", "labB"])
    assert {s.source for s in held.samples} == {"kaggle", "labA"} and held.counts()["monocyte"] == 6
    with pytest.raises(DataError, match="--exclude labC"):
        data.scan([flat, multi], exclude=["labC"])


def test_split_keeps_every_source_in_every_split_and_manifest_roundtrips(tmp_path):
    flat = _tree(tmp_path / "kaggle", {"": {"basophil": 10, "monocyte": 10}})
    multi = _tree(tmp_path / "more", {"labA": {"monocyte": 10, "basophil": 3}})
    ds = data.scan([flat, multi])
    splits = data.make_split(ds, 7)
    per = {(s.source, s.label, sp) for s, sp in zip(ds.samples, splits)}
    for sp in data.SPLITS:
        assert ("kaggle", "monocyte", sp) in per and ("labA", "monocyte", sp) in per
    assert {sp for s, sp in zip(ds.samples, splits) if (s.source, s.label) == ("labA", "basophil")} == {"train"}  # too small to split
    assert data.make_split(ds, 7) == splits
    data.write_manifest(tmp_path / "split.csv", ds, splits)
    rows = data.read_manifest(tmp_path / "split.csv")
    assert {r.source for r in rows} == {"kaggle", "labA"}
    roots = data.run_sources({"sources": {k: str(v) for k, v in ds.sources.items()}})
    x, y, _ = data.load_from_manifest(roots, [r for r in rows if r.split == "test"], 32, ds.classes)
    assert len(x) == len(y) == splits.count("test") and x.shape[1:] == (32, 32, 3)


def test_confounding_warnings(tmp_path):
    kaggle = data.scan(_tree(tmp_path / "k", {"": {"basophil": 5, "monocyte": 5}}))
    assert any("one source" in w for w in kaggle.confounding())
    two = data.scan([tmp_path / "k", _tree(tmp_path / "m", {"labA": {"monocyte": 5, "lymphocyte": 5}})])
    warnings = two.confounding()
    assert any("basophil comes from one source only (k)" in w for w in warnings)
    assert not any("monocyte" in w for w in warnings)


def test_by_source_counts_wrong_and_unflagged():
    pytest.importorskip("sklearn")
    from edgecell.evaluate import by_source

    classes = ["basophil", "myeloblast", "other", "seg_neutrophil"]
    probs = np.array(
        [
            [0.0, 0.0, 0.0, 1.0],  # neutrophil, right
            [0.0, 0.9, 0.0, 0.1],  # neutrophil called myeloblast: wrong but flagged for review
            [0.95, 0.0, 0.0, 0.05],  # neutrophil called basophil, confident: wrong and NOT flagged
            [0.0, 0.0, 1.0, 0.0],  # lymphocyte -> other: right, flagged
        ]
    )
    y = np.array([3, 3, 3, 2])
    rep = by_source(y, probs, classes, ["bccd"] * 4, ["seg_neutrophil"] * 3 + ["lymphocyte"], threshold=0.7)
    g = rep["by_type"]["bccd/seg_neutrophil"]
    assert g["n"] == 3 and g["accuracy"] == pytest.approx(1 / 3)
    assert g["wrong_unflagged"] == pytest.approx(1 / 3) and g["flagged"] == pytest.approx(1 / 3)
    assert g["called"] == {"basophil": 1, "myeloblast": 1, "seg_neutrophil": 1}
    assert rep["by_source"]["bccd"]["flagged"] == pytest.approx(0.5)


def test_lab_check_fires_on_a_less_confident_slide_only():
    from edgecell.metrics import fit_lab_check
    from firmware_host.runtime import lab_warning

    rng = np.random.default_rng(0)
    val_conf = np.clip(rng.normal(0.93, 0.08, 900), 0.2, 1.0)
    probs = np.stack([val_conf, 1 - val_conf], axis=1)
    check = fit_lab_check(probs)
    assert 0.85 < check["min_mean_confidence"] < 0.93 and check["batch"] == 20
    assert lab_warning(float(val_conf[:100].mean()), 100, check) is None  # the training labs' own images
    msg = lab_warning(0.62, 200, check)
    assert msg is not None and "unlike the labs" in msg and "edgecell adapt" in msg
    assert lab_warning(0.62, 5, check) is None  # too few images to say
    assert lab_warning(0.62, 200, {}) is None  # a model without a check
    assert "(mean confidence 0.62, below 0.91)" in lab_warning(0.62, 200, {"min_mean_confidence": 0.91})
    # figures that round alike get the digits that tell them apart
    assert "(mean confidence 0.2051, below 0.2054)" in lab_warning(0.2051, 200, {"min_mean_confidence": 0.2054})


def test_crosslab_bars_follow_the_held_out_figures():
    from benchmarks.crosslab import bars

    def loso(per_type):
        return {"mean": {"per_type": {k: {"accuracy": v} for k, v in per_type.items()}}}

    r = {"loso": {"no-barcelona-lymphocytes-eosinophils": loso({"lymphocyte": 0.95, "eosinophil": 0.40})}}
    got = {b["bar"]: (b["measured"], b["met"]) for b in bars(r)}
    assert got == {
        "held-out Barcelona lymphocyte (learnt from BCCD's) caught as other": ("95.0%", True),
        "held-out Barcelona eosinophil (learnt from BCCD's) caught as other": ("40.0%", False),
    }
