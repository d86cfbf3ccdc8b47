"""``edgecell scan`` and the white-cell locator, on synthetic fields of view drawn here.

A field is a light background with pink red cells, small purple platelets and white cells (a
pale cytoplasm disc with a dark purple, optionally lobed, nucleus) at known places; the tests
check the boxes :func:`firmware_host.locate.locate` finds against the drawn cells. Real BCCD
fields are measured by benchmarks/scan.py, not here.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecell.cli import cli
from firmware_host.locate import Cell, label, label_image, locate, red_cell_size
from firmware_host.preprocess import otsu_threshold, prepare
from firmware_host.scan import ScanSummary, annotate, cell_region, scan_array, scan_many
from tests._fields import CELL, RBC_GRID, H, W, _away, at_half, draw_field

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too


def cell_box(cx, cy, d=CELL):
    return (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_found(cells: list[Cell], expected: list[tuple], min_iou: float = 0.5) -> None:
    """Each expected cell box is matched by exactly one found cell with IoU >= min_iou, and nothing else is found."""
    assert len(cells) == len(expected), [c.box for c in cells]
    for e in expected:
        best = max(iou(c.box, e) for c in cells)
        assert best >= min_iou, (e, [c.box for c in cells])


# ----------------------------------------------------------------------------------------------
# Connected components and threshold


def _bfs_labels(mask: np.ndarray, eight: bool) -> np.ndarray:
    h, w = mask.shape
    out = np.full((h, w), -1)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if eight else [])
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and out[y, x] < 0:
                out[y, x] = n
                q = deque([(y, x)])
                while q:
                    a, b = q.popleft()
                    for dy, dx in steps:
                        u, v = a + dy, b + dx
                        if 0 <= u < h and 0 <= v < w and mask[u, v] and out[u, v] < 0:
                            out[u, v] = n
                            q.append((u, v))
                n += 1
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_matches_flood_fill(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(60):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.uniform(0.1, 0.8)
        got, n = label_image(mask, connectivity)
        ref = _bfs_labels(mask, connectivity == 8)
        assert n == ref.max() + 1
        assert (got >= 0).sum() == mask.sum() and ((got >= 0) == mask).all()
        # the same partition, numbered in raster order of first pixel: identical labels
        assert np.array_equal(got, ref)


def test_label_diagonal_touch_depends_on_connectivity():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    assert label(mask, 8)[4] == 1
    assert label(mask, 4)[4] == 2
    assert label(np.zeros((3, 3), bool))[4] == 0


def test_otsu_splits_two_groups():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 0.05, 5000), rng.normal(1.0, 0.05, 300)
    t = otsu_threshold(np.concatenate([a, b]))
    assert (a > t).mean() < 0.01 and (b <= t).mean() < 0.01


# ----------------------------------------------------------------------------------------------
# The locator on synthetic fields


def test_cells_at_known_places():
    wbcs = [(150, 140), (470, 330)]
    field = draw_field(wbcs, _away(RBC_GRID, wbcs), platelets=[(330, 60), (560, 80)])
    cells = locate(field)
    assert_found(cells, [cell_box(*w) for w in wbcs])
    assert not any(c.edge for c in cells)
    for c, w in zip(sorted(cells, key=lambda c: c.box[0]), wbcs):
        x0, y0, x1, y1 = c.box
        assert x0 < w[0] < x1 and y0 < w[1] < y1


def test_lobed_nucleus_is_one_cell():
    wbcs = [(320, 240)]
    cells = locate(draw_field(wbcs, _away(RBC_GRID, wbcs), lobes=True))
    assert_found(cells, [cell_box(*wbcs[0])], min_iou=0.4)


def test_touching_cells_are_separated():
    # cytoplasm discs overlap (centres 0.9 diameters apart): two cells, two boxes
    wbcs = [(250, 240), (250 + 0.9 * CELL, 240)]
    cells = locate(draw_field(wbcs, _away(RBC_GRID, wbcs)))
    assert_found(cells, [cell_box(*w) for w in wbcs], min_iou=0.4)


def test_cells_pressed_together_are_split():
    # nuclei merge into one blob (centres 0.6 diameters apart): split into two
    wbcs = [(260, 240), (260 + 0.62 * CELL, 240)]
    cells = locate(draw_field(wbcs, _away(RBC_GRID, wbcs)))
    assert len(cells) == 2, [c.box for c in cells]
    xs = sorted((c.box[0] + c.box[2]) / 2 for c in cells)
    assert abs(xs[0] - wbcs[0][0]) < 0.2 * CELL and abs(xs[1] - wbcs[1][0]) < 0.2 * CELL


def test_cell_cut_by_the_edge_is_marked():
    wbcs = [(15, 200), (400, 250)]
    cells = locate(draw_field(wbcs, _away(RBC_GRID, wbcs)))
    assert len(cells) == 2
    edge = [c for c in cells if c.edge]
    inner = [c for c in cells if not c.edge]
    assert len(edge) == 1 and len(inner) == 1
    assert edge[0].box[0] == 0
    assert iou(inner[0].box, cell_box(*wbcs[1])) >= 0.5


def _eyepiece(field: np.ndarray, radius: float = 235) -> np.ndarray:
    """The field as photographed through an eyepiece: black outside a circle."""
    yy, xx = np.indices(field.shape[:2])
    out = field.copy()
    out[(xx - field.shape[1] / 2) ** 2 + (yy - field.shape[0] / 2) ** 2 > radius**2] = 8
    return out


def test_a_cell_cut_by_an_eyepiece_frame_is_marked_edge():
    from firmware_host.locate import dark_frame

    wbcs = [(320, 240), (320 + 235, 240)]  # the second sits on the circle's edge
    framed = _eyepiece(draw_field(wbcs, _away(RBC_GRID, wbcs)))
    cells = sorted(locate(framed), key=lambda c: c.box[0])
    assert [c.edge for c in cells] == [False, True]
    frame = dark_frame(framed)
    assert frame.shape == framed.shape[:2] and frame[0, 0] and not frame[240, 320]
    plain = draw_field(wbcs[:1], _away(RBC_GRID, wbcs[:1]))
    assert dark_frame(plain) is None
    blot = plain.copy()
    blot[200:260, 40:100] = 8  # dark debris inside the field: not a frame
    assert dark_frame(blot) is None and [c.edge for c in locate(blot)] == [False]


def test_scan_paints_the_eyepiece_frame_white_in_what_it_classifies(models):
    """A cell near the frame is classified on a region where the frame is the field's white, as past the image's edge."""
    from firmware_host.runtime import Classifier

    clf = Classifier.load(models.export)
    seen = []
    original = clf.classify_rgb
    clf.classify_rgb = lambda path, region: seen.append(region.copy()) or original(path, region)
    from firmware_host.locate import dark_frame

    wbcs = [(320 + 150, 240)]
    framed = _eyepiece(draw_field(wbcs, _away(RBC_GRID, wbcs)))
    res = scan_array(clf, framed, threshold=0.5, path="f")
    assert [c["edge"] for c in res.cells] == [False]
    [region] = seen
    assert (region.reshape(-1, 3).max(axis=1) > 60).all()  # no black frame left in it
    x0, y0, x1, y1 = cell_region(res.cells[0]["box"], W, H)
    frame = dark_frame(framed)[y0:y1, x0:x1]
    assert frame.mean() > 0.05 and (np.abs(region[frame].astype(int) - region[frame][0]) <= 0).all()  # one colour:
    assert (region[frame][0] > 200).all()  # the field's white


def test_field_with_no_white_cell():
    field = draw_field((), RBC_GRID, platelets=[(100, 100), (300, 200), (500, 400), (250, 420)])
    assert locate(field) == []
    assert locate(np.full((100, 120, 3), 230, np.uint8)) == []


def test_platelets_and_red_cells_left_out_next_to_a_white_cell():
    wbcs = [(320, 240)]
    plts = [(100, 60), (520, 70), (120, 420), (560, 420), (230, 300)]
    cells = locate(draw_field(wbcs, RBC_GRID[::2], platelets=plts))
    assert_found(cells, [cell_box(*wbcs[0])], min_iou=0.4)


def test_white_balance_and_stain_strength_do_not_matter():
    """Another camera (colour cast, exposure) and a paler stain: the same cells."""
    wbcs = [(180, 170), (480, 320)]
    field = draw_field(wbcs, _away(RBC_GRID, wbcs)).astype(np.float64)
    base = locate(field.astype(np.uint8))
    assert_found(base, [cell_box(*w) for w in wbcs])
    pale = 255 - 0.7 * (255 - field)  # a weaker stain: every absorbance 30 % lower
    cast = np.clip(pale * np.array([0.85, 1.0, 1.1]) * 0.9, 0, 255).astype(np.uint8)
    assert_found(locate(cast), [cell_box(*w) for w in wbcs])


def test_magnification_follows_cell_size():
    wbcs = [(200, 200)]
    small = draw_field(wbcs, _away(RBC_GRID, wbcs))
    big = np.asarray(Image.fromarray(small).resize((2 * W, 2 * H), Image.Resampling.BILINEAR))
    a = locate(small)
    b = locate(big, cell_size=2 * 0.3 * H)
    assert len(a) == len(b) == 1
    assert iou([2 * v for v in a[0].box], b[0].box) > 0.8


def test_locate_refuses_other_arrays():
    with pytest.raises(ValueError):
        locate(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        locate(np.zeros((10, 10, 3), np.float32))


def test_cell_region_is_a_generous_square_clipped_to_the_image():
    assert cell_region((100, 100, 200, 180), 640, 480) == (75, 65, 225, 215)
    x0, y0, x1, y1 = cell_region((0, 0, 60, 80), 640, 480)
    assert (x0, y0) == (0, 0) and x1 <= 640 and y1 <= 480


# ----------------------------------------------------------------------------------------------
# Classification of the cells and the command


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    d = tmp_path_factory.mktemp("fields")
    two = [(150, 140), (470, 330)]
    Image.fromarray(draw_field(two, _away(RBC_GRID, two), platelets=[(330, 60)])).save(d / "two.jpg", quality=92)
    Image.fromarray(draw_field((), RBC_GRID, platelets=[(330, 60)], seed=1)).save(d / "none.png")
    edge = [(15, 200)]
    Image.fromarray(draw_field(edge, _away(RBC_GRID, edge), seed=2)).save(d / "edge.jpg", quality=92)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def test_classify_rgb_is_prepare_then_classify_array(models):
    from firmware_host.runtime import Classifier

    clf = Classifier.load(models.export, threads=1)
    rgb = draw_field([(60, 60, 100)], size=(130, 110))
    a = clf.classify_rgb("x", rgb)
    b = clf.classify_array("x", prepare(rgb, clf.input_size))
    assert a.label == b.label and np.array_equal(a.probs, b.probs)
    with pytest.raises(Exception, match="expected"):
        clf.classify_rgb("x", rgb[..., 0])


def test_scan_array_and_summary(models):
    from firmware_host.runtime import Classifier

    clf = Classifier.load(models.export, threads=1)
    wbcs = [(150, 140), (15, 300)]
    res = scan_array(clf, draw_field(wbcs, _away(RBC_GRID, wbcs)), threshold=0.5, path="f")
    assert (res.width, res.height) == (W, H) and len(res.cells) == 2
    assert sorted(c["edge"] for c in res.cells) == [False, True]
    for c in res.cells:  # the confidence is the top class's calibrated probability, as classify reports it
        assert c["label"] == c["top3"][0]["label"] and c["confidence"] == c["top3"][0]["prob"] >= c["top3"][1]["prob"]
    s = ScanSummary(classes=clf.classes, threshold=0.5)
    s.add(res)
    d = s.to_dict()
    assert d["cells"] == 2 and d["edge_cells"] == 1 and d["counted_cells"] == 1 and sum(d["differential"].values()) == 1
    flags = [c["flag"] for c in res.cells]
    assert d["flagged"]["total"] == sum(bool(f) for f in flags) == s.n_flagged  # `other` cells too
    assert d["flagged"]["other"] == flags.count("not one of the five - refer")
    img = annotate(draw_field(wbcs), res.cells, clf.classes)
    assert img.size == (W, H)


def test_a_scanned_cell_applied_as_a_correction_is_classified_as_scan_classified_it(models, tmp_path):
    """A reviewer's corrections of scan cells become training images (``corrections apply``); each must be the region
    scan classified, or a lab is adapted on cells framed unlike those the Pi sees (a review found 9 of 107 BCCD cells
    changing class: the bare box was cut)."""
    from edgecell.corrections import apply_corrections
    from firmware_host.report import Box, cell_name
    from firmware_host.runtime import Classifier

    clf = Classifier.load(models.export, threads=1)
    wbcs = [(150, 140), (60, 420)]
    fields = tmp_path / "fields"
    fields.mkdir()
    Image.fromarray(draw_field(wbcs, _away(RBC_GRID, wbcs))).save(fields / "f.png")
    res = scan_array(clf, np.asarray(Image.open(fields / "f.png").convert("RGB")), threshold=0.5, path="f.png")
    assert len(res.cells) == 2
    rows = [[cell_name("f.png", Box(*c["box"])), c["label"], "other"] for c in res.cells]
    with open(tmp_path / "c.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "predicted", "corrected"], *rows])
    apply_corrections(tmp_path / "c.csv", tmp_path / "out", base=fields)
    for c in res.cells:
        x0, y0, x1, y1 = c["box"]
        again = clf.classify(tmp_path / "out" / "other" / f"f_{x0}_{y0}_{x1}_{y1}.png")
        assert again.label == c["label"] and again.confidence == pytest.approx(c["confidence"], abs=1e-9)


def test_scan_many_worker_processes_match_in_process(models, fields):
    from firmware_host.runtime import Classifier

    clf = Classifier.load(models.export, threads=1)
    paths = sorted(str(p) for p in fields.iterdir())
    a = [r.to_dict() for r in scan_many(clf, paths, 0.5, processes=False)]
    b = [r.to_dict() for r in scan_many(clf, paths, 0.5, processes=True, workers=2)]
    assert a == b
    assert [("error" in r) for r in a] == [p.endswith("broken.jpg") for p in paths]


def test_cli_scan_json_csv_annotate(models, fields, tmp_path):
    out = tmp_path / "scan.json"
    csv_path = tmp_path / "cells.csv"
    ann = tmp_path / "ann"
    res = CliRunner().invoke(
        cli,
        ["scan", "--model", str(models.export), str(fields), "--json", str(out), "--csv", str(csv_path), "--annotate", str(ann), "--threads", "1"],
    )
    assert res.exit_code == 1, res.output  # broken.jpg is reported and skipped
    assert "broken.jpg" in res.output
    res_first = res.output
    report = json.loads(out.read_text())
    assert list(report)[:2] == ["format", "edgecell_version"] and report["format"] == "edgecell-scan/2"
    edge_flagged = sum(bool(c["flag"]) for f in report["results"] for c in f.get("cells", []) if c["edge"])
    assert report["summary"]["flagged_edge_cells"] == edge_flagged  # flagged, and not in the differential count
    assert (f"({edge_flagged} of them cut by a border)" in " ".join(res.output.split())) == bool(edge_flagged)
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in report["results"]}
    assert set(by_name) == {"two.jpg", "none.png", "edge.jpg"}
    assert by_name["none.png"]["cells"] == []
    assert len(by_name["two.jpg"]["cells"]) == 2 and (by_name["two.jpg"]["width"], by_name["two.jpg"]["height"]) == (W, H)
    assert [c["edge"] for c in by_name["edge.jpg"]["cells"]] == [True]
    for c in by_name["two.jpg"]["cells"]:
        assert set(c) >= {"box", "label", "confidence", "flag", "edge"}
        assert max(iou(c["box"], cell_box(*w)) for w in [(150, 140), (470, 330)]) >= 0.5
    assert [f["file"].rsplit("/", 1)[-1] for f in report["failed"]] == ["broken.jpg"]
    s = report["summary"]
    assert s["fields"] == 3 and s["fields_failed"] == 1 and s["cells"] == 3 and s["edge_cells"] == 1 and s["fields_without_cells"] == 1
    assert sum(s["differential"].values()) == 2
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + 3 + 1 + 1  # header, three cells, the empty field, the failed field
    # an argument that matches nothing is in the CSV as it is in the JSON's failed list
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(fields / "none.png"), str(fields / "missing.jpg"), "--csv", str(csv_path)])
    assert res.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(), newline="")))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows if r["error"]] == ["missing.jpg"]
    assert sorted(p.name for p in ann.iterdir()) == ["annotated.json", "edge.png", "none.png", "two.png"]
    assert Image.open(ann / "two.png").size == (W, H)
    # each box in its class's colour, the review page's (one palette: a magenta box was a myeloblast in one and a
    # neutrophil in the other; a review)
    from firmware_host.report import class_rgb

    drawn = np.asarray(Image.open(ann / "two.png").convert("RGB"))
    for c in by_name["two.jpg"]["cells"]:
        x0, y0, _, y1 = c["box"]
        assert tuple(drawn[(y0 + y1) // 2, x0]) == class_rgb(c["label"], report["model"]["classes"]), c
    # the blasts and the white cells, as the summary line and the JSON give them (edge cells' blasts too)
    from firmware_host.runtime import is_possible_blast

    cells = [c for f in report["results"] for c in f.get("cells", [])]
    blasts = sum(is_possible_blast(c["label"], c["top3"]) for c in cells)
    assert s["flagged"]["possible_blasts"] == blasts and (f"possible blast: {blasts} cell" in res_first) == bool(blasts)
    assert s["white_cells"] == sum(n for k, n in s["differential"].items() if k != "erythroblast") - s["no_nucleus"]
    index = json.loads((ann / "annotated.json").read_text())["fields"]
    assert {(f["field"].rsplit("/", 1)[-1], f["png"], f["cells"]) for f in index} == {
        ("two.jpg", "two.png", 2),
        ("none.png", "none.png", 0),
        ("edge.jpg", "edge.png", 1),
    }


def test_cli_scan_annotate_replaces_only_its_own_folder(models, fields, tmp_path):
    """--annotate DIR is scan's folder, built aside and swapped in whole: into a folder of a person's files (where a
    field's PNG could be written over a photo of the same name) it refuses; its own earlier folder it replaces."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "none.png").write_bytes(b"a photo of the same name")
    field = str(fields / "none.png")
    cases = [
        (tmp_path / "photos", "exists, is not empty and is not an edgecell folder (no annotated.json)"),
        (fields, "holds a field being scanned"),
    ]
    for folder, says in cases:
        before = sorted(p.name for p in folder.iterdir())
        res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), field, "--annotate", str(folder), "--threads", "1"])
        assert res.exit_code != 0 and says in " ".join(res.output.split()) and len(res.output.strip().splitlines()) == 1, res.output
        assert sorted(p.name for p in folder.iterdir()) == before
    assert (tmp_path / "photos" / "none.png").read_bytes() == b"a photo of the same name"
    ann = tmp_path / "ann"
    for paths in ([field, str(fields / "two.jpg")], [field]):
        res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), *paths, "--annotate", str(ann), "--threads", "1"])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ann.iterdir()) == ["annotated.json", "none.png"]  # the second scan's folder, whole
    # scan's own pictures given back to scan (their boxes change the answers): refused in one line, as a folder or a file
    for given in (ann, ann / "none.png"):
        res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(given), "--threads", "1"])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert f"{ann / 'none.png'}: is a picture scan --annotate drew (boxes and labels on the field), not a field" in " ".join(res.output.split())
    (ann / "mine.txt").write_text("notes")
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), field, "--annotate", str(ann), "--threads", "1"])
    assert res.exit_code == 1 and "holds a file this command does not write (mine.txt)" in " ".join(res.output.split()), res.output


def test_cli_scan_annotate_edge_cases(models, fields, tmp_path, monkeypatch):
    """An output inside it, a scan that pictures no field, a link to the folder, the folder scan runs in."""
    field = str(fields / "none.png")
    scan = ["scan", "--model", str(models.export), "--threads", "1"]
    res = CliRunner().invoke(cli, [*scan, field, "--annotate", str(tmp_path / "ann"), "--json", str(tmp_path / "ann" / "s.json")])
    assert res.exit_code == 2 and "--json is inside --annotate, which this command replaces whole" in " ".join(res.output.split())
    assert not (tmp_path / "ann").exists()
    assert CliRunner().invoke(cli, [*scan, field, "--annotate", str(tmp_path / "ann")]).exit_code == 0
    res = CliRunner().invoke(cli, [*scan, str(fields / "typo.png"), "--annotate", str(tmp_path / "ann")])
    assert res.exit_code == 1 and sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["annotated.json", "none.png"]  # kept
    (tmp_path / "usb").mkdir()
    (tmp_path / "boxes").symlink_to(tmp_path / "usb")
    assert CliRunner().invoke(cli, [*scan, field, "--annotate", str(tmp_path / "boxes")]).exit_code == 0
    assert (tmp_path / "boxes").is_symlink() and (tmp_path / "usb" / "none.png").is_file()  # written through the link
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    res = CliRunner().invoke(cli, [*scan, field, "--annotate", "."])
    assert res.exit_code == 1 and "is the folder this command runs in" in " ".join(res.output.split()) and not list(Path(".").iterdir())


def test_an_interrupted_scan_leaves_no_annotate_folder(models, fields, tmp_path, monkeypatch):
    """Stopped part-way (Ctrl-C, a crash), the annotate folder is as it was: none of this scan's PNGs."""
    from firmware_host import scan as scan_mod

    calls = {"n": 0}
    real = scan_mod.Annotator.write

    def write_then_stop(self, res, rgb):
        real(self, res, rgb)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_mod.Annotator, "write", write_then_stop)
    ann = tmp_path / "ann"
    res = CliRunner().invoke(
        cli, ["scan", "--model", str(models.export), str(fields / "none.png"), str(fields / "two.jpg"), "--annotate", str(ann), "--threads", "1"]
    )
    assert calls["n"] == 1 and res.exit_code == 130, res.output
    assert not ann.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ann")]


def test_cli_scan_annotate_checked_before_any_work(models, fields, tmp_path):
    """--annotate inside the folder scanned (its PNGs would be scanned next time), on another output's path, or
    under a file: one line each, nothing written."""
    before = sorted(p.name for p in fields.iterdir())
    (tmp_path / "c.csv").write_text("not a folder")
    cases = [
        ([str(fields), "--annotate", str(fields / "ann")], 2, "inside the folder being scanned"),
        ([str(fields / "none.png"), "--annotate", str(tmp_path / "x"), "--csv", str(tmp_path / "x")], 2, "name the same path"),
        ([str(fields / "none.png"), "--annotate", str(tmp_path / "c.csv" / "sub")], 1, "c.csv"),
        ([str(fields / "none.png"), "--annotate", ""], 2, "empty path"),
    ]
    for args, code, says in cases:
        res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), *args, "--threads", "1"])
        assert res.exit_code == code and says in " ".join(res.output.split()) and "Traceback" not in res.output, (args, res.output)
        assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output
    assert sorted(p.name for p in fields.iterdir()) == before and not (tmp_path / "x").exists()


@pytest.mark.parametrize("target", ["field", "model", "sidecar"])
def test_cli_scan_refuses_an_output_over_an_input(models, fields, tmp_path, target):
    """--json/--csv/--report may not name an input field, the model or its sidecar: one line, exit 2, nothing replaced."""
    model = models.export / "model_int8.tflite"
    dest = {"field": fields / "two.jpg", "model": model, "sidecar": model.with_suffix(".json")}[target]
    before = dest.read_bytes()
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(fields / "two.jpg"), "--json", str(dest), "--threads", "1"])
    assert res.exit_code == 2, res.output
    assert dest.read_bytes() == before
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1 and str(dest) in res.output


def test_cli_scan_json_to_stdout_is_clean(models, fields):
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(fields / "two.jpg"), "--json", "-", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["cells"] == 2


def test_cli_scan_missing_path_one_line(models, tmp_path):
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(tmp_path / "nothing*.jpg")])
    assert res.exit_code == 1
    assert "Traceback" not in res.output


def test_scan_paths_is_the_library_behind_the_command(models, fields, tmp_path):
    from firmware_host import scan_paths

    out = tmp_path / "s.json"
    s = scan_paths(models.export, [fields / "two.jpg", fields / "none.png"], json_out=str(out), threads=1)
    assert (s.n_fields, s.n_cells, s.n_empty, s.n_failed) == (2, 2, 1, 0)
    assert json.loads(out.read_text())["summary"]["cells"] == 2


def test_cli_scan_report(models, fields, tmp_path):
    """--report writes the review page; its cells are numbered within their field as the CSV numbers them."""
    from firmware_host.report import short_sha
    from tests.test_report import _page_data

    page, table = tmp_path / "review.html", tmp_path / "s.csv"
    res = CliRunner().invoke(
        cli, ["scan", "--model", str(models.export), str(fields / "two.jpg"), "--report", str(page), "--csv", str(table), "--threads", "1"]
    )
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert html.count("two.jpg#") >= 2  # both cells, named FIELD#x0,y0,x1,y1
    assert {c[3] for c in _page_data(page)["cells"]} == {short_sha((fields / "two.jpg").read_bytes())}  # the field's
    rows = [r for r in csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"), newline="")) if r["cell"] != ""]
    assert [r["cell"] for r in rows] == ["1", "2"]
    assert sorted(re.findall(r'<span class="tag">field (\d+), cell (\d+)</span>', html)) == [("1", "1"), ("1", "2")]  # cards in review order
    assert "field 1: <span" in html


def _cell(score: float, prob: float = 0.9, edge: bool = False) -> dict:
    return {"label": "basophil", "flag": "", "edge": edge, "other_score": score, "top3": [{"label": "basophil", "prob": prob}]}


def test_scan_summary_lab_check_reads_the_counted_cells():
    """The lab check over a scan: the median never-seen score of the cells counted (not those cut by the border)."""
    from firmware_host.scan import FieldResult

    check = {"min_mean_confidence": 0.5, "batch": 3, "max_median_score": 10.0}
    s = ScanSummary(classes=["basophil", "other"], threshold=0.5, lab_check=check)
    s.add(FieldResult(file="a", width=10, height=10, cells=[_cell(20.0), _cell(21.0), _cell(1.0, edge=True)]))
    assert s.lab_warning is None  # two cells counted: fewer than a set
    s.add(FieldResult(file="b", width=10, height=10, cells=[_cell(5.0)]))
    msg = s.to_dict()["lab_warning"]
    assert msg.startswith("these 3 cells look unlike") and "(median never-seen score 20.00, above 10.00)" in msg
    s.add(FieldResult(file="c", width=10, height=10, cells=[_cell(4.0), _cell(3.0)]))
    assert s.lab_warning is None  # median of 20, 21, 5, 4, 3 is 5
    assert ScanSummary(classes=["basophil", "other"], threshold=0.5).lab_warning is None  # a model without a check


def test_scan_summary_checks_each_folder_of_fields():
    """Fields of several slides: the folder whose counted cells look unlike is named; its CSV row names it in the
    lab_warning cell, and leaves the file column empty (a row with a file is a field's)."""
    import io

    from firmware_host.scan import CellCsv, FieldResult

    check = {"min_mean_confidence": 0.0, "batch": 3, "max_median_score": 10.0}
    s = ScanSummary(classes=["basophil", "other"], threshold=0.5, lab_check=check)
    for k in range(3):
        s.add(FieldResult(file=f"day/A/f{k}.jpg", width=10, height=10, cells=[_cell(2.0), _cell(3.0)]))
    for k in range(2):
        s.add(FieldResult(file=f"day/B/f{k}.jpg", width=10, height=10, cells=[_cell(20.0), _cell(30.0, edge=k == 1)]))
    s.add(FieldResult(file="day/B/basophil/f.jpg", width=10, height=10, cells=[_cell(25.0)]))  # a class folder: B's
    assert s.lab_warning is None  # the day's median of 2, 3 (three times), 20, 30, 20, 25 (the edge cell not counted): 3
    [b] = s.to_dict()["folder_lab_warnings"]
    assert b["folder"] == "day/B" and b["n"] == 4 and b["lab_warning"].startswith("these 4 cells look unlike")
    out = io.StringIO()
    csv_out = CellCsv(out)
    csv_out.close([], s.lab_warning, s.folder_lab_warnings)
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["file"] == "" and row["lab_warning"] == f"day/B: {b['lab_warning']}"


def test_cli_scan_says_when_the_fields_look_unlike_the_training_labs(models, fields, tmp_path):
    """The warning is printed, in the JSON summary and on the review page."""
    import importlib.util

    from firmware_host.metadata import read_metadata, write_metadata
    from tests._tflite_fixtures import copy_model

    model = copy_model(models.export / "model_int8.tflite", tmp_path / "export")
    meta = read_metadata(model)
    meta.lab_check = {"min_mean_confidence": 1.0, "batch": 2}  # no set of cells is that confident
    write_metadata(model, meta)
    out, page = tmp_path / "s.json", tmp_path / "review.html"
    cells = tmp_path / "s.csv"
    args = ["scan", "--model", str(model), str(fields / "two.jpg"), "--json", str(out), "--csv", str(cells), "--threads", "1"]
    review = importlib.util.find_spec("firmware_host.report") is not None
    res = CliRunner().invoke(cli, args + (["--report", str(page)] if review else []))
    assert res.exit_code == 0, res.output
    warning = json.loads(out.read_text())["summary"]["lab_warning"]
    assert warning.startswith("these 2 cells look unlike the labs this model was trained on (mean confidence ")
    assert "look unlike the labs" in " ".join(res.output.split())
    last = list(csv.DictReader(io.StringIO(cells.read_text(), newline="")))[-1]  # the CSV's last row, as classify's
    assert last["lab_warning"] == warning and not last["file"]
    if review:
        assert 'id="lab-warning"' in page.read_text()


def test_cli_scan_warns_about_a_link_to_a_folder_read_already(models, fields, tmp_path):
    """The start lines scan shares with classify: a link to a folder given already is read once, with a warning."""
    given = tmp_path / "given"
    given.mkdir()
    (given / "two.jpg").write_bytes((fields / "two.jpg").read_bytes())
    (given / "again").symlink_to(given, target_is_directory=True)
    out = tmp_path / "scan.json"
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(given), "--json", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert [r["file"].rsplit("/", 1)[-1] for r in json.loads(out.read_text())["results"]] == ["two.jpg"]
    warned = [ln for ln in res.stderr.splitlines() if "warning:" in ln and "again" in ln]
    assert len(warned) == 1 and "read already" in warned[0], res.stderr


def test_pieces_are_those_of_one_pass_per_piece():
    """split_component's grouping in one sort (a noise-like field holds thousands of pieces; one pass over the
    image per piece took 7 s on an 800x600 noise field, against 0.25 s): the same arrays in the same order."""
    from firmware_host.locate import _pieces

    rng = np.random.default_rng(0)
    for shape, k in (((50, 70), 5), ((300, 400), 40), ((7, 3), 1), ((4, 4), 3)):
        lab = rng.integers(-1, k, size=shape).astype(np.int32)
        lab[lab == k - 1] = -1 if k > 2 else lab[lab == k - 1]  # a piece with no pixel left
        want = [np.nonzero(lab == i) for i in range(k)]
        got = _pieces(lab, k)
        assert len(got) == k
        for (wy, wx), (gy, gx) in zip(want, got):
            assert np.array_equal(wy, gy) and np.array_equal(wx, gx)


def test_a_field_too_large_for_its_cells_is_searched_reduced_or_refused():
    """Cells of 30 px in an 8000x6000 photo took 1.8 GB at full size: the search now works on at most 8 megapixels."""
    from firmware_host.locate import MAX_WORK_PIXELS, FieldTooFine

    wbcs = [(200, 200)]
    small = draw_field(wbcs, _away(RBC_GRID, wbcs))
    big = np.asarray(Image.fromarray(small).resize((6 * W, 6 * H), Image.Resampling.BILINEAR))  # 11 megapixels
    assert big.shape[0] * big.shape[1] > MAX_WORK_PIXELS
    found = locate(big, cell_size=6 * 0.3 * H)
    assert len(found) == 1 and iou([6 * v for v in locate(small)[0].box], found[0].box) > 0.8
    with pytest.raises(FieldTooFine, match="white cells of 8 px are too small to search for in a 3840x2880 field"):
        locate(big, cell_size=8)
    # a small image is not refused for its megapixels (a review found that advice given for a 20x15 image)
    with pytest.raises(
        FieldTooFine, match=r"^a 20x15 image is too small to be a field of view: its white cells would be 4.5 px across .* use edgecell classify$"
    ):
        locate(small[:15, :20].copy())
    with pytest.raises(FieldTooFine, match=r"^white cells of 5 px are too small to find .* check --cell-size$"):
        locate(small, cell_size=5)


def test_cli_scan_auto_on_a_field_too_small_is_one_line(models, fields, tmp_path):
    """--cell-size auto measures the red cells before the search: a picture too small to be a field is still refused
    in one line naming it (the measure raised past scan's handler before), and the other fields are scanned."""
    Image.fromarray(draw_field([(320, 240)])[:15, :20].copy()).save(tmp_path / "tiny.png")
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(tmp_path / "tiny.png"), str(fields / "two.jpg"), "--cell-size", "auto"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "unexpected error" not in res.output
    assert f"{tmp_path / 'tiny.png'}: a 20x15 image is too small to be a field of view" in " ".join(res.output.split())


def test_a_field_that_cannot_be_searched_fails_and_an_empty_one_says_why(models, fields, tmp_path):
    """A grey field and a --cell-size larger than the field cannot be searched: they are failed fields (listed with
    the reason in the JSON, the CSV's error column and the page; exit 1), not fields "without a white cell" (a review
    found them counted as empty, exit 0, the reason on stderr only). A large field at the default size may be empty:
    its note travels with its record."""
    one = [(320, 240)]
    colour = draw_field(one, _away(RBC_GRID, one))
    Image.fromarray(colour).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(np.full((1200, 1600, 3), (230, 200, 210), np.uint8)).save(tmp_path / "wide.png")
    out = tmp_path / "s.json"
    res = CliRunner().invoke(
        cli,
        ["scan", "--model", str(models.export), str(tmp_path / "grey.png"), str(tmp_path / "wide.png"), str(fields / "two.jpg"), "--cell-size", "1300"]
        + ["--json", str(out), "--csv", str(tmp_path / "s.csv")],
    )
    assert res.exit_code == 1, res.output
    grey = (
        "has no colour (a blank or unstained picture, or a monochrome camera?): white cells are found by their stain's colour, so none can be searched for here"
    )
    wide = "--cell-size 1300 is larger than this 1600x1200 field: give the white cells' diameter in its pixels"
    two = "--cell-size 1300 is larger than this 640x480 field: give the white cells' diameter in its pixels"
    text = " ".join(res.output.split())
    for file, why in [(tmp_path / "grey.png", grey), (tmp_path / "wide.png", wide), (fields / "two.jpg", two)]:
        assert f"error: {file}: {why}" in text
    doc = json.loads(out.read_text())
    assert doc["results"] == [] and doc["summary"]["fields"] == 0 and doc["summary"]["fields_without_cells"] == 0
    assert [f["error"] for f in doc["failed"]] == [grey, wide, two]
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["error"] for r in rows] == [grey, wide, two]
    # the same grey field is refused under --cell-size auto (it measured a "cell size" from no red cells before)
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(tmp_path / "grey.png"), "--cell-size", "auto"])
    assert res.exit_code == 1 and grey in " ".join(res.output.split())
    # a large field at the default size: an empty result with its note, on stderr, in the JSON, the CSV and the page
    page = tmp_path / "p.html"
    res = CliRunner().invoke(
        cli, ["scan", "--model", str(models.export), str(tmp_path / "wide.png"), "--json", str(out), "--csv", str(tmp_path / "s.csv"), "--report", str(page)]
    )
    assert res.exit_code == 0, res.output
    note = "no white cell of about 360 px across (the default, 0.3 of the shorter side, as in 640x480 fields at 100x): if this camera's cells are smaller, give --cell-size PX"
    assert note in " ".join(res.output.split())
    doc = json.loads(out.read_text())
    assert doc["results"][0]["note"] == note and doc["results"][0]["cells"] == [] and doc["summary"]["fields_without_cells"] == 1
    assert [r["note"] for r in csv.DictReader((tmp_path / "s.csv").open())] == [note]
    assert html.escape(note) in page.read_text()
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(fields / "two.jpg"), "--cell-size", "1e12"])
    assert res.exit_code == 2 and "is not in the range 8.0<=x<=10000.0" in res.output


def test_size_warning_reads_the_median_nucleus_over_enough_cells():
    from firmware_host.locate import MIN_CELLS_SIZED, TYPICAL_NUCLEUS, size_warning

    n = MIN_CELLS_SIZED
    assert size_warning([3.0] * (n - 1), [144.0] * (n - 1), False) is None  # too few cells to judge
    assert size_warning([1.0] * n, [144.0] * n, False) is None
    big = size_warning([2.0] * (n // 2) + [1.0] * (n - n // 2), [144.0] * n, False)
    assert big is None  # the median, not the largest: half the cells at twice the size is a mixed slide
    big = size_warning([2.0] * n, [144.0] * n, False)
    assert big.startswith(f"the {n} white cells found look {2.0 / TYPICAL_NUCLEUS:.1f} times larger than expected")
    assert "(cells of 144 px assumed, the default, 0.3 of the shorter side)" in big
    assert big.endswith(f"give --cell-size {2.0 * 144 / TYPICAL_NUCLEUS:.0f}")
    small = size_warning([0.3] * n, [50.0] * n, True)
    assert small.startswith(f"the {n} white cells found look {TYPICAL_NUCLEUS / 0.3:.1f} times smaller than expected")
    assert "(cells of 50 px assumed, --cell-size)" in small and small.endswith(f"give --cell-size {0.3 * 50 / TYPICAL_NUCLEUS:.0f}")


def _fields_with_one_cell(n: int, seed: int = 0) -> list[np.ndarray]:
    wbcs = [(320, 240)]
    return [draw_field(wbcs, _away(RBC_GRID, wbcs), seed=seed + k) for k in range(n)]


def test_red_cell_size_follows_the_magnification():
    from firmware_host.locate import TYPICAL_RED_CELL

    same = _fields_with_one_cell(4)
    full = [red_cell_size(f) for f in same]
    # drawn red cells are 0.72 of a cell across; the ruler reads about three quarters of that, as on BCCD's fields
    assert all(0.85 * TYPICAL_RED_CELL <= r / (0.3 * H) <= 1.25 * TYPICAL_RED_CELL for r in full), full
    half = red_cell_size(at_half(same))
    assert 0.4 <= half / np.median(full) <= 0.6
    assert red_cell_size(draw_field([(320, 240)])) is None  # no red cells: nothing to measure
    assert red_cell_size(np.full((480, 640, 3), (214, 150, 160), np.uint8)) is None  # all red: nothing round
    assert red_cell_size(np.zeros((5, 5, 3), np.uint8), cell_size=8) is None


def test_red_cell_size_abstains_or_holds_where_a_ruler_could_mislead():
    """Found by a hunt for misleading advice: touching red cells filling the field, a round eyepiece's dark frame, red
    cells mostly cut by the edge (high magnification), and a --cell-size far too small."""
    field = _fields_with_one_cell(1)[0]
    plain = red_cell_size(field)
    packed = draw_field(rbcs=[(x, y) for x in range(0, W + 100, 100) for y in range(0, H + 100, 100)])
    assert red_cell_size(packed) is None  # nothing round: not a ruler, not "4.9 times larger"
    yy, xx = np.indices((H, W))
    framed = field.copy()
    framed[(xx - W / 2) ** 2 + (yy - H / 2) ** 2 > 235**2] = 8
    assert red_cell_size(framed) == pytest.approx(plain, rel=0.2)  # the frame is not a red cell, nor what it encloses
    window = np.asarray(Image.fromarray(field[120:360, 160:480]).resize((W, H), Image.Resampling.BILINEAR))
    assert red_cell_size(window, cell_size=2 * 0.3 * H) is None  # a red cell or two whole: no ruler
    assert red_cell_size(field, cell_size=16) == pytest.approx(plain, rel=0.2)  # measured again, reduced more


def test_size_warning_reads_the_red_cells_when_the_nuclei_cannot_tell():
    from firmware_host.locate import MIN_CELLS_SIZED, MIN_FIELDS_SIZED, RED_CELL_RANGE, TYPICAL_RED_CELL, size_warning

    m, n = MIN_FIELDS_SIZED, MIN_CELLS_SIZED
    low, high = 0.5 * TYPICAL_RED_CELL, 2.0 * TYPICAL_RED_CELL
    warned = size_warning([], [], False, [(low, 144.0)] * m)
    assert warned.startswith(f"the red cells of the {m} fields look 2.0 times smaller than expected: at a lower magnification")
    assert warned.endswith(f"give --cell-size {low * 144 / TYPICAL_RED_CELL:.0f}")
    assert size_warning([], [], False, [(low, 144.0)] * (m - 1)) is None  # too few fields
    for edge in RED_CELL_RANGE:  # the range's ends are inside it
        assert size_warning([], [], False, [(edge * TYPICAL_RED_CELL, 144.0)] * m) is None
    assert size_warning([0.6] * n, [144.0] * n, False, [(low, 144.0)] * m) == warned  # nuclei in their (wide) range
    assert size_warning([1.2], [144.0], False, [(low, 144.0)] * m) is None  # the nuclei found are larger than usual
    bigger = size_warning([1.9] * 3, [144.0] * 3, True, [(high, 144.0)] * m)  # a few fields, too few cells to judge
    assert bigger.startswith(f"the red cells of the {m} fields look 2.0 times larger than expected")
    assert "(cells of 144 px assumed, --cell-size)" in bigger
    assert size_warning([0.9], [144.0], False, [(high, 144.0)] * m) is None  # the nuclei found are smaller than usual
    nan, inf = float("nan"), float("inf")
    assert size_warning([0.0, nan, -1.0, inf], [144.0] * 4, False, [(0.0, 144.0), (nan, 144.0), (low, 0.0)] * m) is None  # no measure
    assert size_warning([], [], False, [(low, 144.0)] * m + [(nan, 144.0)] * m) == warned  # only the measures are read
    # enough nuclei out of their range speak first
    assert size_warning([2.0] * n, [144.0] * n, False, [(low, 144.0)] * m).startswith(f"the {n} white cells found look")


def test_cli_scan_says_when_the_fields_are_at_a_lower_magnification(models, tmp_path):
    """Fields at half the magnification the default assumes: their white cells are too small to be found, and the
    red cells say so; given the --cell-size named, the cells are found and the warning goes."""
    from firmware_host.locate import MIN_FIELDS_SIZED

    d = tmp_path / "wide"
    d.mkdir()
    for k in range(MIN_FIELDS_SIZED):
        Image.fromarray(at_half(_fields_with_one_cell(4, seed=4 * k))).save(d / f"f{k:02d}.png")
    out = tmp_path / "s.json"
    args = ["scan", "--model", str(models.export), str(d), "--json", str(out), "--threads", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["counted_cells"] < 4 * MIN_FIELDS_SIZED  # white cells missed at the size assumed
    warning = summary["size_warning"]
    assert warning.startswith(f"the red cells of the {MIN_FIELDS_SIZED} fields look ") and "smaller than expected" in warning
    assert "warning: " + warning in " ".join(res.output.split())
    res = CliRunner().invoke(cli, args + ["--cell-size", warning.rsplit(" ", 1)[1]])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["size_warning"] is None
    assert summary["counted_cells"] == 4 * MIN_FIELDS_SIZED
    res = CliRunner().invoke(cli, args + ["--cell-size", "AUTO"])  # measured from each field's red cells
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["cell_size"] == "auto" and report["summary"]["size_warning"] is None
    spread = report["summary"]["cell_size"]
    assert f"Cell size measured from each field's red cells: median {spread['median']:.0f} px" in " ".join(res.output.split())
    assert report["summary"]["counted_cells"] == 4 * MIN_FIELDS_SIZED
    assert all(0.4 * CELL <= f["cell_size"] <= 0.7 * CELL for f in report["results"])  # drawn at CELL / 2
    assert {f["cell_size_from"] for f in report["results"]} == {"red cells"}
    # a field without red cells falls back to the default, and its record says so (a review: it did not)
    Image.fromarray(draw_field([(320, 240)])).save(d / "no_red.png")
    res = CliRunner().invoke(cli, args + ["--cell-size", "auto"])
    records = {Path(f["file"]).name: f for f in json.loads(out.read_text())["results"]}
    assert records["no_red.png"]["cell_size_from"] == "default" and records["no_red.png"]["cell_size"] == pytest.approx(0.3 * H, abs=0.1)
    assert records["f00.png"]["cell_size_from"] == "red cells"
    res = CliRunner().invoke(cli, args)
    assert all("cell_size_from" not in f for f in json.loads(out.read_text())["results"])  # only under auto


def test_measured_cell_size_follows_the_red_cells():
    from firmware_host.locate import TYPICAL_RED_CELL, measured_cell_size

    field = _fields_with_one_cell(1)[0]
    assert measured_cell_size(field) == pytest.approx(red_cell_size(field) / TYPICAL_RED_CELL)
    assert 0.85 * CELL <= measured_cell_size(field) <= 1.25 * CELL
    assert measured_cell_size(draw_field([(320, 240)])) is None  # no red cells: the default is used
    quarter = at_half([at_half(_fields_with_one_cell(4, seed=4 * k)) for k in range(4)])
    assert 0.15 * CELL <= measured_cell_size(quarter) <= 0.4 * CELL  # drawn at CELL / 4


def test_cli_scan_says_when_the_cells_are_far_larger_than_the_cell_size(models, tmp_path):
    """Fields at about three times the magnification the default assumes: one line, in the JSON and on the page, naming
    the --cell-size to give; given it, none."""
    import importlib.util

    from firmware_host.locate import MIN_CELLS_SIZED

    d = tmp_path / "zoomed"
    d.mkdir()
    for k in range(MIN_CELLS_SIZED):
        Image.fromarray(draw_field([(320, 240, 3 * CELL)], seed=k)).save(d / f"f{k:02d}.jpg", quality=92)
    out, page = tmp_path / "s.json", tmp_path / "r.html"
    review = importlib.util.find_spec("firmware_host.report") is not None
    args = ["scan", "--model", str(models.export), str(d), "--json", str(out), "--threads", "1"]
    res = CliRunner().invoke(cli, args + (["--report", str(page)] if review else []))
    assert res.exit_code == 0, res.output
    warning = json.loads(out.read_text())["summary"]["size_warning"]
    assert warning.startswith(f"the {MIN_CELLS_SIZED} white cells found look ") and "larger than expected" in warning
    assert "warning: " + warning in " ".join(res.output.split())
    if review:
        assert 'id="size-warning"' in page.read_text()
    suggested = warning.rsplit(" ", 1)[1]
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(d), "--json", str(out), "--threads", "1", "--cell-size", suggested])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["summary"]["size_warning"] is None
    assert json.loads(out.read_text())["summary"]["counted_cells"] == MIN_CELLS_SIZED


def test_the_fields_table_boxes_and_page_say_why_a_cell_is_other_rather_than_its_low_probability(tmp_path):
    """A cell labelled `other` by its never-seen score has a low probability of `other` ("other 0.04" read as 4 % sure):
    the table and the page's box give the reason, the annotated box the label alone (a review found "other 0.01" on
    both); a cell whose most probable class is `other` keeps its probability."""
    from firmware_host.report import Box, ReportWriter, cell_name
    from firmware_host.runtime import OTHER_BY_CLASS, OTHER_BY_SCORE, label_text
    from tests.test_report import SIX, _header, _thumb

    assert label_text("other", 0.04, OTHER_BY_SCORE) == f"other ({OTHER_BY_SCORE})"
    assert label_text("other", 0.04, OTHER_BY_SCORE, reason=False) == "other"
    assert label_text("other", 0.93, f"{OTHER_BY_CLASS}; {OTHER_BY_SCORE}") == "other 0.93"
    assert label_text("monocyte", 0.91, "") == "monocyte 0.91"
    with ReportWriter(_header(SIX, n_images=1, mode="scan")) as w:
        k = w.add_field("f.jpg", np.full((60, 80, 3), 200, np.uint8))
        w.add_cell(
            cell_name("f.jpg", Box(1, 1, 30, 30)),
            "other",
            0.01,
            "not one of the five - refer",
            None,
            _thumb(0),
            field=k,
            box=Box(1, 1, 30, 30),
            why=OTHER_BY_SCORE,
        )
        text = w.write(tmp_path / "s.html").read_text(encoding="utf-8")
    assert f"<title>other ({OTHER_BY_SCORE})</title>" in text and "<title>other 0.01</title>" not in text


def test_one_field_at_a_lower_magnification_says_cells_may_be_missed(models, tmp_path):
    """One photo at a quarter of the magnification, its white cells found (some of them, or merged): said on that field
    (a review: a phone's photo of nine fields gave "1 white cell found" and nothing else, one field being too few for
    the run-wide size check); a field at the right magnification says nothing."""
    from firmware_host.locate import small_cells_reason

    right = draw_field([(150, 140), (470, 330)], _away(RBC_GRID, [(150, 140), (470, 330)]))
    quarter = at_half([at_half([right] * 4)] * 4).copy()  # sixteen fields, each cell a quarter as large: none found
    quarter[170:330, 240:400] = right[60:220, 70:230]  # and one white cell of the assumed size, which is found
    assert len(locate(quarter)) == 1
    assert small_cells_reason(W, H, None, red_cell_size(right)) is None
    for name, rgb in (("quarter.png", quarter), ("right.png", right)):
        Image.fromarray(rgb).save(tmp_path / name)
    out, csv_out = tmp_path / "s.json", tmp_path / "s.csv"
    res = CliRunner().invoke(
        cli, ["scan", "--model", str(models.export), str(tmp_path / "quarter.png"), str(tmp_path / "right.png"), "--json", str(out), "--csv", str(csv_out)]
    )
    assert res.exit_code == 0, res.output
    notes = {Path(f["file"]).name: f.get("note") for f in json.loads(out.read_text())["results"]}
    assert notes["right.png"] is None
    assert notes["quarter.png"].startswith("the red cells here are as at a lower magnification") and "--cell-size auto" in notes["quarter.png"]
    said = " ".join(res.output.split())
    assert f"{tmp_path / 'quarter.png'}: the red cells here are as at a lower magnification" in said
    rows = [r for r in csv.DictReader(io.StringIO(csv_out.read_text(encoding="utf-8"), newline="")) if r["cell"] != ""]
    assert {Path(r["file"]).name: r["note"] for r in rows} == {"quarter.png": notes["quarter.png"], "right.png": ""}
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(tmp_path / "quarter.png"), "--cell-size", "auto"])
    assert res.exit_code == 0 and "lower magnification" not in res.output  # measured from its red cells: nothing to say


def test_an_empty_field_says_when_cells_may_have_been_missed(models, tmp_path):
    """A washed-out field, or one at a lower magnification than the size assumed, was reported as a plain empty field."""
    from firmware_host.locate import LOW_CONTRAST, SMALL_RED_CELLS, TYPICAL_RED_CELL, brightness_spread, default_cell_size, empty_reason

    plain = draw_field([], RBC_GRID)
    assert not locate(plain) and brightness_spread(plain) >= LOW_CONTRAST and empty_reason(plain, None, red_cell_size(plain)) is None
    hazy = np.clip(0.35 * plain + 160, 0, 255).astype(np.uint8)  # a hazy photo of the same field
    assert brightness_spread(hazy) < LOW_CONTRAST
    assert empty_reason(hazy, None).startswith(f"no white cell found, but the field has little contrast (its brightness spans {brightness_spread(hazy)} of 255")
    blank = np.full((H, W, 3), 200, np.uint8)
    assert "little contrast" in empty_reason(blank, None)
    quarter = at_half([at_half([plain] * 4)] * 4)  # a quarter of the magnification: red cells a quarter as large
    red = red_cell_size(quarter)
    assert red is not None and red < SMALL_RED_CELLS * TYPICAL_RED_CELL * default_cell_size(W, H)
    assert "the red cells here are as at a lower magnification" in empty_reason(quarter, None, red)
    assert "--cell-size auto" in empty_reason(quarter, None, red)
    assert empty_reason(quarter, None, None) is None  # no red cells measured: nothing to say of them
    # scan says so per field and in its summary, and counts them in the JSON
    for name, rgb in (("hazy.png", hazy), ("plain.png", plain)):
        Image.fromarray(rgb).save(tmp_path / name)
    out = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(tmp_path / "hazy.png"), str(tmp_path / "plain.png"), "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    notes = {Path(f["file"]).name: f.get("note") for f in doc["results"]}
    assert notes["plain.png"] is None and "little contrast" in notes["hazy.png"]
    assert doc["summary"]["fields_without_cells"] == 2 and doc["summary"]["fields_without_cells_noted"] == 1
    assert "2 without one (1 of them with a note above: white cells may have been missed)" in " ".join(res.output.split())


def test_worker_processes_are_as_many_as_memory_holds(models, tmp_path, monkeypatch):
    """A Pi Zero 2 has 4 cores and 512 MB: four workers scanning 48-megapixel photos would be killed for memory one
    by one (a review measured 397 MB for one). scan starts no more workers than the available memory holds for fields
    of the size given (read from their headers), down to none (the fields are scanned in this process); a 1 GB Pi
    keeps its four workers for a microscope camera's small fields."""
    from firmware_host import decode
    from firmware_host.scan import MAX_PIXELS, ScanJob, ScanOptions, field_worker_mb
    from tests.test_reliability import png_header_only

    monkeypatch.setattr(decode.os, "cpu_count", lambda: 4)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, (w, h) in ((small, (640, 480)), (large, (8000, 6000))):
        folder.mkdir()
        for k in range(300):  # enough for worker processes
            (folder / f"f{k:03d}.png").write_bytes(png_header_only(w, h) + k.to_bytes(2, "big"))  # distinct files
    small_mb, large_mb = field_worker_mb(sorted(map(str, small.iterdir()))), field_worker_mb(sorted(map(str, large.iterdir())))
    assert 73 < small_mb < 80 and 390 < large_mb < 400  # 154 MB at 12 MP, 397 at 48, measured
    assert field_worker_mb([str(tmp_path / "missing.png"), str(tmp_path)]) == field_worker_mb([]) > 400  # unknown: the largest
    assert round(field_worker_mb([]) - 73, 6) == round(6.75 * MAX_PIXELS / 1e6, 6)
    for free, on_small, on_large in ((24_000.0, 4, 4), (700.0, 4, 1), (350.0, 4, 1), (None, 4, 4)):  # None: not Linux
        monkeypatch.setattr(decode, "available_mb", lambda free=free: free)
        assert decode.default_workers(small_mb) == on_small and decode.default_workers(large_mb) == on_large, free
        jobs = [ScanJob(ScanOptions(str(models.export), (str(folder),))) for folder in (small, large)]
        assert [j.workers for j in jobs] == [on_small, on_large] and [j.processes for j in jobs] == [on_small > 1, on_large > 1]
    monkeypatch.setattr(decode.os, "cpu_count", lambda: None)  # cores unknown: one, as before
    assert decode.default_workers() == 1


def test_available_memory_is_the_lower_of_the_machines_and_the_control_groups(tmp_path):
    """In a container or a service with a memory limit (a cgroup), MemAvailable is the whole machine's: the limit
    left is what the workers may take. cgroup v2 and v1, with and without a limit."""
    from firmware_host.decode import available_mb

    proc, groups = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       24000000 kB\nMemAvailable:    2048000 kB\n")  # 2,000 MB

    def group(text: str, folder: Path, limit_file: str, limit: str, used_file: str, used: int) -> float | None:
        (proc / "self" / "cgroup").write_text(text)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / limit_file).write_text(limit + "\n")
        (folder / used_file).write_text(f"{used}\n")
        return available_mb(str(proc), str(groups))

    mb = 2**20
    v2 = groups / "system.slice" / "edgecell.service"
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", str(900 * mb), "memory.current", 300 * mb) == 600.0
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", "max", "memory.current", 300 * mb) == 2000.0
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", str(9000 * mb), "memory.current", 0) == 2000.0  # the machine's
    # a service with no limit of its own, in a slice that has one: the slice's
    (groups / "system.slice" / "memory.max").write_text(f"{700 * mb}\n")
    (groups / "system.slice" / "memory.current").write_text(f"{200 * mb}\n")
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", "max", "memory.current", 100 * mb) == 500.0
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", str(900 * mb), "memory.current", 100 * mb) == 500.0  # the lower
    assert group("0::/system.slice/edgecell.service\n", v2, "memory.max", str(300 * mb), "memory.current", 100 * mb) == 200.0
    (groups / "system.slice" / "memory.max").write_text("max\n")
    v1 = groups / "memory" / "docker" / "abc"
    text = "9:name=systemd:/\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n"
    assert group(text, v1, "memory.limit_in_bytes", str(512 * mb), "memory.usage_in_bytes", 112 * mb) == 400.0
    assert group(text, v1, "memory.limit_in_bytes", "9223372036854771712", "memory.usage_in_bytes", 112 * mb) == 2000.0
    hybrid = "4:memory:/docker/abc\n0::/docker/abc\n"  # systemd's hybrid layout: memory in v1, a v2 line without it after
    assert group(hybrid, v1, "memory.limit_in_bytes", str(512 * mb), "memory.usage_in_bytes", 112 * mb) == 400.0
    (proc / "meminfo").unlink()  # no meminfo: the group's alone
    assert group(text, v1, "memory.limit_in_bytes", str(512 * mb), "memory.usage_in_bytes", 112 * mb) == 400.0
    (proc / "self" / "cgroup").write_text("garbage\n")
    assert available_mb(str(proc), str(groups)) is None


def test_available_memory_is_read_on_linux():
    from firmware_host.decode import available_mb

    if not Path("/proc/meminfo").exists():
        pytest.skip("MemAvailable is Linux's")
    free = available_mb()
    assert free is not None and 0 < free < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def test_scan_counts_cells_with_no_stained_nucleus_for_the_lab_check():
    """scan's tally gives the lab check the cells the nucleus check sent to other (edge cells are not counted): more
    than half of them is said, as classify says it."""
    from firmware_host.runtime import OTHER_BY_NUCLEUS, OTHER_BY_SCORE
    from firmware_host.scan import FieldResult, ScanSummary

    def cell(reason: str, edge: bool = False) -> dict:
        label = "other" if reason else "monocyte"
        return {"box": [0, 0, 9, 9], "label": label, "confidence": 0.9, "flag": "", "edge": edge, "other_score": None, "other_reason": reason,
                "top3": [{"label": "monocyte", "prob": 0.9}]}  # fmt: skip

    for reasons, fires in (([OTHER_BY_NUCLEUS] * 3 + [""], True), ([OTHER_BY_NUCLEUS] * 2 + [OTHER_BY_SCORE, ""], False)):
        s = ScanSummary(classes=["monocyte", "other"], threshold=0.7, lab_check={"min_mean_confidence": 0.0, "batch": 4})
        s.add(FieldResult(file="f/a.jpg", width=100, height=100, cells=[cell(r) for r in reasons] + [cell(OTHER_BY_NUCLEUS, edge=True)]))
        assert s.labs.run.n == 4 and s.labs.run.no_nucleus == reasons.count(OTHER_BY_NUCLEUS)
        assert (s.lab_warning is not None and s.lab_warning.startswith("3 of these 4 cells show no stained nucleus")) == fires, s.lab_warning


def test_notes_of_many_fields_are_said_for_the_first_few_then_counted(models, tmp_path):
    """A clinic's day of washed-out photos: the first NOTES_SHOWN fields' notes are warning lines naming them, the rest
    one line with their count; the JSON has every note (a review: 200 photos gave 200 lines)."""
    from firmware_host.scan import NOTES_SHOWN

    fields = tmp_path / "fields"
    fields.mkdir()
    n = NOTES_SHOWN + 3
    for k in range(n):
        plain = draw_field([], RBC_GRID, seed=k)
        Image.fromarray(np.clip(0.35 * plain + 160, 0, 255).astype(np.uint8)).save(fields / f"hazy{k}.png")
    out = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["scan", "--model", str(models.export), str(fields), "--json", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    said = [ln for ln in res.output.splitlines() if ln.startswith("warning:") and "no `other` class" not in ln]  # the model's note
    assert [ln.split(": ")[1] for ln in said[:NOTES_SHOWN]] == [str(fields / f"hazy{k}.png") for k in range(NOTES_SHOWN)]
    assert all("little contrast" in ln for ln in said[:NOTES_SHOWN])
    assert said[NOTES_SHOWN:] == ["warning: and 3 more field(s) with a note like those above (every one is in --json and --csv)"]
    assert sum("little contrast" in (f.get("note") or "") for f in json.loads(out.read_text())["results"]) == n


def test_scan_reads_the_fields_headers_for_its_workers_once(models, tmp_path, monkeypatch):
    """The job decides its workers (and whether to use processes) once; the scan uses that decision, not a second
    reading of the fields' headers that could come out otherwise."""
    from firmware_host import scan as scan_mod
    from firmware_host.scan import ScanJob, ScanOptions

    calls = []
    real = scan_mod.field_worker_mb
    monkeypatch.setattr(scan_mod, "field_worker_mb", lambda paths: calls.append(1) or real(paths))
    for k in range(2):
        Image.fromarray(draw_field([(150, 140)], _away(RBC_GRID, [(150, 140)]), seed=k)).save(tmp_path / f"f{k}.png")
    with ScanJob(ScanOptions(str(models.export), (str(tmp_path),))) as job:
        assert len(list(job)) == 2
    assert calls == [1]
