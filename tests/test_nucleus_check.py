"""The nucleus check: a crop whose darkest pixels are not nucleus-coloured holds no white cell (TensorFlow-free)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecell.demo import draw_cell, draw_object, encode
from edgecell.metrics import NUCLEUS_MARGIN, fit_nucleus_check
from firmware_host.errors import ModelError
from firmware_host.metadata import read_metadata, write_metadata
from firmware_host.otherscore import OtherScore, decide, other_tests
from firmware_host.preprocess import (
    CUT_RADII,
    NO_COLOUR,
    NO_NUCLEUS_FOUND,
    NO_NUCLEUS_HUE,
    decode,
    decode_cell,
    is_cut,
    is_flat,
    locate_cell,
    no_nucleus,
    prepare,
    prepare_cell,
)
from firmware_host.runtime import FLAG_OTHER, FLAG_REVIEW, OTHER_BY_NUCLEUS, OTHER_BY_SCORE, REVIEW_CLASSES, Classifier, triage
from tests._tflite_fixtures import OTHER_CLASSES, copy_model, other_models, save_jpeg

pytestmark = pytest.mark.pi

SIZE = 48


def _drawn(kind: str, i: int) -> bytes:
    return encode(draw_object(kind, np.random.default_rng([5, i]), 128))


def test_prepare_cell_gives_the_same_pixels_as_prepare():
    for i in range(6):
        data = encode(draw_cell("monocyte", np.random.default_rng([2, i]), 128))
        image, offset = decode_cell(data, SIZE)
        np.testing.assert_array_equal(image, decode(data, SIZE))
        assert 0.0 <= offset <= 180.0


def test_red_cells_and_blank_background_hold_no_nucleus():
    reds = [decode_cell(_drawn("red_cells", i), SIZE)[1] for i in range(20)]
    assert np.mean(no_nucleus(np.array(reds))) >= 0.9  # measured on 300: 99 %
    blank = [decode_cell(_drawn("background", i), SIZE)[1] for i in range(20)]
    assert all(b == NO_NUCLEUS_FOUND for b in blank)  # nothing in them, tinted or grey: no whole nucleus


def test_a_blank_crop_is_no_nucleus_but_a_grey_cell_has_no_verdict():
    """A flat crop holds nothing, in colour or in grey; a grey cell (a monochrome camera) has contrast, and no verdict
    on its nucleus: :data:`NO_COLOUR`, which the runtime flags (a coloured image whose darkest pixels are grey: NaN)."""
    flat = np.full((96, 96, 3), 200, np.uint8) + np.random.default_rng(0).integers(0, 6, (96, 96, 1), dtype=np.uint8)
    assert is_flat(flat) and prepare_cell(flat, SIZE)[1] == NO_NUCLEUS_FOUND
    tinted = (flat * np.array([1.0, 0.9, 0.95])).astype(np.uint8)
    assert prepare_cell(tinted, SIZE)[1] == NO_NUCLEUS_FOUND
    yy, xx = np.mgrid[:96, :96]
    grey_cell = np.full((96, 96, 3), 220, np.uint8)
    grey_cell[(yy - 48) ** 2 + (xx - 48) ** 2 < 20**2] = 70
    assert not is_flat(grey_cell) and prepare_cell(grey_cell, SIZE)[1] == NO_COLOUR
    assert not no_nucleus(NO_COLOUR)


def test_a_violet_nucleus_passes_and_a_red_one_does_not():
    """A pale background with one dark disc: violet (a nucleus) passes, red (a red cell) does not, grey has no verdict."""
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 20**2

    def offset(colour):
        rgb = np.full((96, 96, 3), 235, np.uint8)
        rgb[disc] = colour
        return prepare_cell(rgb, SIZE)[1]

    assert offset((90, 50, 140)) < NO_NUCLEUS_HUE  # violet
    assert offset((190, 60, 70)) > NO_NUCLEUS_HUE  # red
    assert offset((80, 80, 80)) == NO_COLOUR  # grey on grey: a monochrome camera, no verdict (flagged by the runtime)
    assert no_nucleus(math.nan) is False and no_nucleus(np.array([math.nan, 90.0])).tolist() == [False, True]


def test_a_nucleus_cut_by_the_frame_is_no_whole_nucleus():
    """The same violet disc, whole and then cut by the image's edge: only the cut one gets :data:`NO_NUCLEUS_FOUND`,
    and a disc near the edge but whole still passes."""
    yy, xx = np.mgrid[:96, :96]

    def crop(cx, colour=(90, 50, 140)):
        rgb = np.full((96, 96, 3), 235, np.uint8)
        rgb[(yy - 48) ** 2 + (xx - cx) ** 2 < 20**2] = colour
        return rgb

    whole, cut, near = crop(48), crop(96), crop(66)  # centre on the edge: half the disc is left
    assert prepare_cell(whole, SIZE)[1] < NO_NUCLEUS_HUE
    assert prepare_cell(cut, SIZE)[1] == NO_NUCLEUS_FOUND and no_nucleus(prepare_cell(cut, SIZE)[1])
    loc = locate_cell(near)
    assert (96 - loc.cx) / loc.radius > CUT_RADII and not is_cut(loc, 96, 96) and prepare_cell(near, SIZE)[1] < NO_NUCLEUS_HUE
    assert is_cut(loc, 96, 96, radii=(96 - loc.cx) / loc.radius + 0.01)  # the rule is the centre's distance in radii
    np.testing.assert_array_equal(prepare_cell(cut, SIZE)[0], prepare(cut, SIZE))  # the pixels are untouched


def test_fit_nucleus_check_clears_the_training_images():
    assert fit_nucleus_check(np.array([1.0, 5.0, 30.0])) == NO_NUCLEUS_HUE  # real cells: the floor
    wide = np.concatenate([np.linspace(0, 120, 1000), [np.nan]])
    limit = fit_nucleus_check(wide)
    assert limit == pytest.approx(np.quantile(wide[:-1], 0.999) + NUCLEUS_MARGIN) and (wide[:-1] <= limit).all()
    assert fit_nucleus_check(np.array([179.0, 180.0])) == NO_NUCLEUS_FOUND  # never above "nothing found"
    assert fit_nucleus_check(np.array([np.nan])) == NO_NUCLEUS_HUE
    # training cells with no whole nucleus (cut by the frame) say nothing of the nucleus hue: they do not lift the limit
    assert fit_nucleus_check(np.array([10.0] * 990 + [NO_NUCLEUS_FOUND] * 10)) == NO_NUCLEUS_HUE


def test_decide_sends_no_nucleus_to_other_only_with_a_limit():
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    classes = ["a", "other", "b"]
    offsets = np.array([10.0, 90.0])
    assert decide(probs, None, None, classes, nucleus_offsets=offsets, nucleus_max=45.0).tolist() == [0, 1]
    assert decide(probs, None, None, classes, nucleus_offsets=offsets).tolist() == [0, 0]  # no limit: no check
    assert decide(probs, None, None, ["a", "c", "b"], nucleus_offsets=offsets, nucleus_max=45.0).tolist() == [0, 0]  # no other class
    tests = other_tests(probs, np.array([2.0, 0.0]), 1.0, classes, nucleus_offsets=offsets, nucleus_max=45.0)
    assert {k: v.tolist() for k, v in tests.items()} == {"class": [False, False], "score": [True, False], "nucleus": [False, True]}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """The fixture model with a score, its sidecar given a nucleus check."""
    folder, _, _ = other_models(tmp_path_factory)
    model = copy_model(folder / "model_float32.tflite", tmp_path_factory.mktemp("checked"))
    meta = read_metadata(model)
    meta.other_score = {**meta.other_score, "threshold": 1e9, "nucleus_max_offset": NO_NUCLEUS_HUE}  # the score off: the check alone
    write_metadata(model, meta)
    return model


def test_runtime_labels_a_red_cell_crop_other(checked, tmp_path):
    clf = Classifier.load(checked)
    assert clf.other_score.nucleus_max == NO_NUCLEUS_HUE and clf.info()["other_score"]["nucleus_max_offset"] == NO_NUCLEUS_HUE
    red = next(d for d in (_drawn("red_cells", i) for i in range(20)) if no_nucleus(decode_cell(d, clf.input_size)[1]))
    path = tmp_path / "red.jpg"
    path.write_bytes(red)
    pred = clf.classify_file(path)
    first = pred.top3[0][0]
    assert pred.label == "other" and triage(pred) == (FLAG_REVIEW if first in REVIEW_CLASSES else FLAG_OTHER) and pred.nucleus_offset > NO_NUCLEUS_HUE
    assert OTHER_BY_NUCLEUS in pred.other_reason.split("; ") and OTHER_BY_SCORE not in pred.other_reason  # the score is off here
    assert pred.to_dict(OTHER_CLASSES)["nucleus_offset"] == pytest.approx(pred.nucleus_offset, abs=1e-3)
    # the same crop through classify_many (threads and worker processes) and classify_rgb
    for processes in (False, True):
        [(_, many)] = list(clf.classify_many([str(path)], workers=2, processes=processes))
        assert many.label == "other" and many.nucleus_offset == pytest.approx(pred.nucleus_offset)
    # an already preprocessed array has no offset: no verdict, the model decides
    arr = prepare(np.asarray(Image.open(path).convert("RGB")), clf.input_size)
    assert math.isnan(clf.classify_array("x", arr).nucleus_offset)


def test_runtime_keeps_cells_with_a_nucleus(checked, tmp_path):
    """Drawn white cells (a violet nucleus) keep the model's label, whichever it is; the same cells turned green by
    swapping colours (no violet nucleus) are `other` by the nucleus check alone (the score is off in ``checked``)."""
    clf = Classifier.load(checked)
    kept = 0
    for k, kind in enumerate(["monocyte", "basophil", "myeloblast", "seg_neutrophil", "monocyte"]):
        cell = np.asarray(draw_cell(kind, np.random.default_rng([7, k]), 128))
        pred = clf.classify_file(save_jpeg(tmp_path / f"c{k}.jpg", cell))
        assert pred.nucleus_offset < NO_NUCLEUS_HUE, (kind, pred.nucleus_offset)  # the drawn nucleus is a nucleus
        assert pred.label == OTHER_CLASSES[int(np.argmax(pred.probs))] and OTHER_BY_NUCLEUS not in pred.other_reason
        kept += pred.label != "other"
        green = clf.classify_file(save_jpeg(tmp_path / f"g{k}.jpg", np.ascontiguousarray(cell[..., [0, 2, 1]])))
        assert green.label == "other" and green.other_reason == OTHER_BY_NUCLEUS, (kind, green.nucleus_offset)
    assert kept, "the comparison needs a cell the model itself does not call other"


@pytest.mark.parametrize("value", [-1, 181, "45", True])
def test_bad_nucleus_limit_in_the_sidecar_is_one_line(checked, tmp_path, value):
    model = copy_model(checked, tmp_path)
    d = json.loads(model.with_suffix(".json").read_text())
    d["other_score"]["nucleus_max_offset"] = value
    model.with_suffix(".json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="other_score.*nucleus_max_offset"):
        read_metadata(model)


def test_score_without_a_nucleus_limit_round_trips_without_one(checked):
    d = read_metadata(checked).other_score
    assert OtherScore.from_dict(d).nucleus_max == NO_NUCLEUS_HUE
    d = {k: v for k, v in d.items() if k != "nucleus_max_offset"}
    s = OtherScore.from_dict(d)
    assert s.nucleus_max is None and "nucleus_max_offset" not in s.to_dict()


@pytest.mark.realdata
def test_real_white_cells_of_every_lab_have_a_nucleus():
    """Every class folder of the three labs in ../shared (the five types and the others): no whole cell fails the
    hue test, and few are cut by the frame (measured on every image: 0.15 % of the Kaggle set, 0.9 % of the third
    lab's five types, whose crops are tight)."""
    from tests._realdata import more_cells_or_skip, real_data_or_skip

    folders = [f for f in sorted(real_data_or_skip().iterdir()) if f.is_dir()]
    folders += [t for s in sorted(more_cells_or_skip().iterdir()) if s.is_dir() for t in sorted(s.iterdir()) if t.is_dir() and s.name != "bccd_fields"]
    checked, no_whole = 0, []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[::10][:30]
        for p in files:
            offset = decode_cell(p.read_bytes(), SIZE, p)[1]
            if offset == NO_NUCLEUS_FOUND:
                no_whole.append(p)  # cut by the frame (or nothing found)
            else:
                assert not no_nucleus(offset), (p, offset)
            checked += 1
    assert checked >= 300
    assert len(no_whole) <= 0.02 * checked, no_whole


def test_review_page_says_why_a_cell_is_other(checked, tmp_path):
    """The reason travels from the runtime to the JSON, the CSV and the review page."""
    from click.testing import CliRunner

    from edgecell.cli import cli

    folder = tmp_path / "cells"
    folder.mkdir()
    red = next(d for d in (_drawn("red_cells", i) for i in range(20)) if no_nucleus(decode_cell(d, SIZE)[1]))
    (folder / "red.jpg").write_bytes(red)
    page, js, table = tmp_path / "review.html", tmp_path / "r.json", tmp_path / "r.csv"
    res = CliRunner().invoke(cli, ["classify", "--model", str(checked), str(folder), "--report", str(page), "--json", str(js), "--csv", str(table)])
    assert res.exit_code == 0, res.output
    [row] = json.loads(js.read_text())["results"]
    assert row["label"] == "other" and row["other_reason"] == OTHER_BY_NUCLEUS
    assert f",{OTHER_BY_NUCLEUS}," in table.read_text()
    assert f'<span class="tag why">{OTHER_BY_NUCLEUS}</span>' in page.read_text()


def test_a_cell_with_no_colour_is_flagged_whatever_the_model_says(checked, tmp_path):
    """A monochrome camera's cells were named confidently and unflagged (a review: grey monocytes called basophil,
    0.78): the cell is classified, flagged uncertain, and its nucleus offset says why (NO_COLOUR)."""
    from click.testing import CliRunner
    from PIL import Image

    from edgecell.cli import cli

    folder = tmp_path / "cells"
    folder.mkdir()
    colour = encode(draw_cell("monocyte", np.random.default_rng([2, 0]), 128))
    (folder / "colour.png").write_bytes(colour)
    Image.open(io.BytesIO(colour)).convert("L").save(folder / "grey.png")
    js = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["classify", "--model", str(checked), str(folder), "--json", str(js), "--threshold", "0"])
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in json.loads(js.read_text())["results"]}
    assert rows["grey.png"]["nucleus_offset"] == NO_COLOUR and rows["grey.png"]["label"] != "other"
    assert rows["grey.png"]["flag"] in ("uncertain - refer", "review: haematologist")
    assert rows["colour.png"]["nucleus_offset"] >= 0  # the same cell in colour: a verdict (threshold 0: no flag of confidence)
