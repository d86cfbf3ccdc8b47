"""The never-seen score (firmware_host.otherscore) and how the runtime applies it (TensorFlow-free)."""

from __future__ import annotations

import csv
import json
import os
import statistics

import numpy as np
import pytest

from firmware_host.errors import ModelError
from firmware_host.metadata import ModelMetadata, read_metadata, write_metadata
from firmware_host.otherscore import OtherScore, decide, decode_array, encode_array
from firmware_host.runtime import FLAG_OTHER, FLAG_REVIEW, REVIEW_CLASSES, Classifier, triage
from tests._tflite_fixtures import OTHER_CLASSES, build_models, comparison_images, copy_model, other_models, save_jpeg

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too


def expected_flag(row: dict) -> str:
    """The flag of a result labelled other: the haematologist's when the network's first choice was a blast or an
    erythroblast (``runtime.triage``), else other's."""
    return FLAG_REVIEW if row["top3"][0]["label"] in REVIEW_CLASSES else FLAG_OTHER


OTHER = OTHER_CLASSES.index("other")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return other_models(tmp_path_factory)


def test_encode_decode_round_trip_and_errors():
    a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    np.testing.assert_allclose(decode_array(encode_array(a)), a, rtol=1e-7)
    bad = encode_array(a)
    bad["shape"] = [4, 4]
    with pytest.raises(ValueError, match="bytes"):
        decode_array(bad)
    with pytest.raises(ValueError, match="base64"):
        decode_array({"shape": [1], "float32_base64": "!!"})
    with pytest.raises(ValueError, match="finite"):
        decode_array(encode_array(np.array([np.inf])))


def test_score_is_the_mahalanobis_distance_to_the_nearest_mean():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 4))
    cov = np.cov(rng.normal(size=(200, 4)), rowvar=False) + 0.1 * np.eye(4)
    w = np.linalg.cholesky(np.linalg.inv(cov))
    s = OtherScore(means, w, 1.0)
    f = rng.normal(size=(5, 4))
    inv = np.linalg.inv(cov)
    expected = np.sqrt(np.min([[(x - m) @ inv @ (x - m) for m in means] for x in f], axis=1))
    np.testing.assert_allclose(s.scores(f), expected, rtol=1e-9)
    assert s.scores(means[1]) == pytest.approx(0.0, abs=1e-9)


def test_decide_other_by_argmax_or_score():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    classes = ["a", "other", "b"]
    assert decide(probs, None, 1.0, classes).tolist() == [0, 1, 2]
    assert decide(probs, np.array([2.0, 0.0, 0.5]), 1.0, classes).tolist() == [1, 1, 2]
    assert decide(probs, np.array([np.nan, 0.0, 0.5]), 1.0, classes).tolist() == [0, 1, 2]
    assert decide(probs, np.array([2.0, 2.0, 2.0]), 1.0, ["a", "c", "b"]).tolist() == [0, 1, 2]  # no other class: argmax


def test_float32_runtime_score_matches_keras_features(other):
    folder, keras_probs, keras_feats = other
    clf = Classifier.load(folder, precision="float32")
    assert clf.other_score is not None and clf.other_threshold == pytest.approx(read_metadata(folder / "model_float32.tflite").other_score["threshold"])
    probs, scores = clf.predict_batch_scored(list(comparison_images()))
    np.testing.assert_allclose(scores, clf.other_score.scores(keras_feats), rtol=1e-3)
    np.testing.assert_allclose(probs, keras_probs, atol=1e-4)


def test_int8_runtime_score_reads_the_dequantised_features_output(other):
    """The int8 model's features output, dequantised with its own scale and zero point, is what the score reads."""
    from firmware_host.interpreter import load_interpreter
    from firmware_host.runtime import dequantize_output, split_outputs, tensor_quant

    folder, _, _ = other
    clf = Classifier.load(folder, precision="int8")
    it, _ = load_interpreter(model_content=(folder / "model_int8.tflite").read_bytes(), num_threads=1)
    it.allocate_tensors()
    i = it.get_input_details()[0]
    _, f = split_outputs(it.get_output_details(), len(OTHER_CLASSES))
    for img in comparison_images()[:6]:
        it.set_tensor(i["index"], (img.astype(np.int16) - 128).astype(np.int8)[None])
        it.invoke()
        feats = dequantize_output(it.get_tensor(f["index"]).reshape(-1), tensor_quant(f))
        _, score = clf.predict_scored(img)
        assert score == pytest.approx(float(clf.other_score.scores(feats)), rel=1e-9)
    _, scores = clf.predict_batch_scored(list(comparison_images()))
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)


def test_label_is_other_when_the_score_passes_the_threshold(other):
    folder, _, _ = other
    clf = Classifier.load(folder, precision="float32")
    images = comparison_images()
    preds = [clf.classify_array(f"img{k}", img) for k, img in enumerate(images)]
    scores = np.array([p.other_score for p in preds])
    passed = scores > clf.other_threshold
    assert passed.any() and (~passed).any()  # the fixture's threshold is the median score
    for p, hit in zip(preds, passed):
        argmax = OTHER_CLASSES[int(np.argmax(p.probs))]
        assert p.label == ("other" if hit else argmax)
        assert p.confidence == pytest.approx(p.probs[OTHER_CLASSES.index(p.label)])
        if p.label == "other":
            assert triage(p) == (FLAG_REVIEW if argmax in REVIEW_CLASSES else FLAG_OTHER)  # a possible blast: the haematologist
            assert ("unlike every trained type" in p.other_reason) == bool(hit) and p.other_reason
        else:
            assert p.other_reason == ""
        assert p.to_dict(OTHER_CLASSES)["other_score"] == pytest.approx(p.other_score, abs=1e-6)


def test_other_threshold_overrides_the_sidecar(other):
    folder, _, _ = other
    images = comparison_images()
    never = Classifier.load(folder, precision="float32", other_threshold=1e9)
    always = Classifier.load(folder, precision="float32", other_threshold=0.0)
    assert never.other_threshold == 1e9
    labels_never = [never.classify_array("x", img).label for img in images]
    assert labels_never == [OTHER_CLASSES[int(np.argmax(never.predict_array(img)))] for img in images]
    assert all(always.classify_array("x", img).label == "other" for img in images)


def test_other_threshold_on_a_model_without_a_score_is_refused(tmp_path_factory):
    models = build_models(tmp_path_factory)
    with pytest.raises(ModelError, match="no never-seen score"):
        Classifier.load(models.float32, other_threshold=1.0)
    clf = Classifier.load(models.float32)  # old sidecars: argmax only
    assert clf.other_score is None and clf.other_threshold is None
    assert clf.classify_array("x", models.images[0]).other_score is None


def test_sidecar_with_a_score_but_a_model_without_features_is_refused(other, tmp_path_factory, tmp_path):
    folder, _, _ = other
    models = build_models(tmp_path_factory)
    plain = copy_model(models.float32, tmp_path)
    meta = read_metadata(plain)
    meta.other_score = read_metadata(folder / "model_float32.tflite").other_score
    write_metadata(plain, meta)
    with pytest.raises(ModelError, match="no features output"):
        Classifier.load(plain)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(kind="energy"), "kind"),
        (lambda s: s.update(threshold=-1), "threshold"),
        (lambda s: s.update(threshold="1"), "threshold"),
        (lambda s: s["whitening"].update(shape=[3, 3]), "bytes"),
        (lambda s: s.pop("means"), "means"),
    ],
)
def test_bad_other_score_in_the_sidecar_is_one_line(other, tmp_path, change, message):
    folder, _, _ = other
    model = copy_model(folder / "model_float32.tflite", tmp_path)
    d = json.loads(model.with_suffix(".json").read_text())
    change(d["other_score"])
    model.with_suffix(".json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=f"other_score.*{message}"):
        read_metadata(model)


def test_sidecar_round_trip_keeps_the_score(other):
    folder, _, _ = other
    meta = read_metadata(folder / "model_int8.tflite")
    again = ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again.other_score == meta.other_score


def test_classify_json_and_csv_carry_the_score(other, tmp_path):
    from firmware_host.classify import classify_paths

    folder, _, _ = other
    for k, img in enumerate(comparison_images()[:6]):
        save_jpeg(tmp_path / "in" / f"{k}.jpg", np.kron(img, np.ones((2, 2, 1), np.uint8)))
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    summary = classify_paths(folder, [str(tmp_path / "in")], json_out=str(js), csv_out=str(cs), other_threshold=0.0)
    rows = json.loads(js.read_text())["results"]
    assert len(rows) == 6 and all(r["label"] == "other" and r["flag"] == expected_flag(r) and r["other_score"] >= 0 for r in rows)
    assert summary.differential["other"] == 6
    with open(cs, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["other_score"]) for r in table] == pytest.approx([r["other_score"] for r in rows], abs=1e-4)
    assert json.loads(js.read_text())["model"]["other_score"]["threshold"] == 0.0


def test_classify_prints_why_a_cell_is_other_rather_than_its_low_probability(other, tmp_path):
    """A review read "other 0.04 ... (then seg_neutrophil 0.84)" as 4 % sure: a cell labelled `other` by its score or
    the nucleus check shows why, in the results table and in the one-line-per-image form, as scan's table does."""
    from click.testing import CliRunner

    from edgecell.cli import cli
    from edgecell.views.classify import _predicted

    folder, _, _ = other
    for k, img in enumerate(comparison_images()[:6]):
        save_jpeg(tmp_path / "in" / f"{k}.jpg", np.kron(img, np.ones((2, 2, 1), np.uint8)))
    res = CliRunner().invoke(cli, ["classify", "--model", str(folder), str(tmp_path / "in"), "--other-threshold", "0", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    by_score = [r for r in rows if "unlike every trained type" in r["other_reason"] and "taught as other" not in r["other_reason"]]
    assert by_score  # a threshold of 0 sends every cell the argmax did not call other there
    text = " ".join(res.output.split())
    for r in by_score:
        assert f"{os.path.basename(r['path'])}: other ({r['other_reason']})" in text
    assert _predicted({"label": "other", "other_reason": "unlike every trained type"}) == "other (unlike every trained type)"
    assert _predicted({"label": "other", "other_reason": "taught as other"}) == "other"  # its probability says it
    assert _predicted({"label": "monocyte", "other_reason": ""}) == "monocyte"


def test_lab_check_reads_the_top_probability_when_the_score_labels_other(other, tmp_path):
    """The lab check was fitted on each cell's top probability; a cell relabelled by its score keeps that."""
    from firmware_host.classify import classify_paths

    folder, _, _ = other
    for k, img in enumerate(comparison_images()[:6]):
        save_jpeg(tmp_path / "in" / f"{k}.jpg", np.kron(img, np.ones((2, 2, 1), np.uint8)))
    rows = []
    summary = classify_paths(folder, [str(tmp_path / "in")], other_threshold=0.0, on_result=lambda p, r: rows.append(r))
    assert all(r["label"] == "other" for r in rows)
    assert summary.labs.run.confidence_sum == pytest.approx(sum(max(r["probs"].values()) for r in rows))
    assert summary.labs.run.confidence_sum > sum(r["confidence"] for r in rows)  # not p(other), which is lower for some


def test_lab_warning_is_in_the_json_summary_and_the_csvs_last_row(other, tmp_path):
    """A set that looks unlike the training labs: the warning is the JSON summary's ``lab_warning`` and the CSV's last
    row (its only cell); a set that does not raise it leaves the column empty and adds no row."""
    from firmware_host.classify import classify_paths

    folder, _, _ = other
    for k, img in enumerate(comparison_images()[:4]):
        save_jpeg(tmp_path / "in" / f"{k}.jpg", img)
    model = copy_model(folder / "model_float32.tflite", tmp_path / "model")
    for floor, fires in ((1.0, True), (0.0, False)):  # no mean confidence reaches 1.0; every one reaches 0.0
        meta = read_metadata(model)
        meta.lab_check = {"min_mean_confidence": floor, "batch": 2}
        write_metadata(model, meta)
        js, cs, page = tmp_path / f"{floor}.json", tmp_path / f"{floor}.csv", tmp_path / f"{floor}.html"
        summary = classify_paths(model, [str(tmp_path / "in")], json_out=str(js), csv_out=str(cs), report_out=str(page))
        with open(cs, newline="") as fh:
            table = list(csv.DictReader(fh))
        assert (summary.lab_warning is not None) == fires
        assert json.loads(js.read_text())["summary"]["lab_warning"] == summary.lab_warning
        assert ('id="lab-warning"' in page.read_text()) == fires  # the review page says it too
        images = [r for r in table if r["path"]]
        assert len(images) == 4 and all(r["lab_warning"] == "" for r in images)
        if fires:
            assert table[-1] == {**dict.fromkeys(table[-1], ""), "lab_warning": summary.lab_warning}
            assert len(table) == 5
        else:
            assert len(table) == 4


def test_lab_warning_reads_the_median_score_of_the_cells_classified(other, tmp_path):
    """A model with the never-seen score: the lab check compares the median score of the set's cells with the
    sidecar's ``max_median_score`` (as well as the mean confidence), and says so in the warning."""
    import statistics

    from firmware_host.classify import classify_paths

    folder, _, _ = other
    for k, img in enumerate(comparison_images()[:5]):
        save_jpeg(tmp_path / "in" / f"{k}.jpg", img)
    model = copy_model(folder / "model_float32.tflite", tmp_path / "model")
    rows = []
    classify_paths(model, [str(tmp_path / "in")], on_result=lambda p, r: rows.append(r))
    median = statistics.median(r["other_score"] for r in rows)
    for limit, fires in ((median - 1e-3, True), (median + 1e-3, False)):
        meta = read_metadata(model)
        meta.lab_check = {"min_mean_confidence": 0.0, "batch": 2, "max_median_score": limit}  # the confidence never fires
        write_metadata(model, meta)
        js = tmp_path / f"{fires}.json"
        summary = classify_paths(model, [str(tmp_path / "in")], json_out=str(js))
        assert (summary.lab_warning is not None) == fires
        assert json.loads(js.read_text())["summary"]["lab_warning"] == summary.lab_warning
        if fires:
            assert "median never-seen score" in summary.lab_warning
        clf = Classifier.load(model)  # the Python API says the same of the same cells
        preds = [p for _, p in clf.classify_many(sorted((tmp_path / "in").iterdir()))]
        assert clf.lab_warning(preds) == summary.lab_warning
        assert clf.lab_warning(p for p in preds) == summary.lab_warning  # a generator: it raised TypeError
        assert clf.lab_warning(preds[:1]) is None  # fewer cells than the check's set


def test_lab_check_names_the_slide_folder_that_looks_unlike_the_training_labs(other, tmp_path):
    """A day's slides in folders: the one whose cells lie far from the training labs is named, in the printed lines,
    the JSON summary, the CSV's last rows and on the page, though the day as a whole does not fire; images in a
    folder named after a class are their slide's (the folder above)."""
    from click.testing import CliRunner

    from edgecell.cli import cli
    from firmware_host.classify import classify_paths

    folder, _, _ = other
    model = copy_model(folder / "model_float32.tflite", tmp_path / "model")
    for k, img in enumerate(comparison_images()[:6]):
        save_jpeg(tmp_path / "staged" / f"{k}.jpg", img)
    rows = []
    classify_paths(model, [str(tmp_path / "staged")], on_result=lambda p, r: rows.append(r))
    rows.sort(key=lambda r: r["other_score"])
    near, far = tmp_path / "day" / "A", tmp_path / "day" / "B" / "basophil"
    for k, r in enumerate(rows):
        (near if k < 3 else far).mkdir(parents=True, exist_ok=True)
        os.replace(r["path"], (near if k < 3 else far) / f"{k}.jpg")
    ranked = [r["other_score"] for r in rows]
    limit = (statistics.median(ranked) + ranked[4]) / 2  # above the day's median, below slide B's
    meta = read_metadata(model)
    meta.lab_check = {"min_mean_confidence": 0.0, "batch": 2, "max_median_score": limit}
    write_metadata(model, meta)
    js, cs, page = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    summary = classify_paths(model, [str(tmp_path / "day")], json_out=str(js), csv_out=str(cs), report_out=str(page))
    slide = str(tmp_path / "day" / "B")
    assert summary.lab_warning is None
    [warned] = summary.folder_lab_warnings
    assert warned["folder"] == slide and warned["n"] == 3 and warned["lab_warning"].startswith("these 3 images look unlike the labs")
    assert json.loads(js.read_text())["summary"]["folder_lab_warnings"] == [warned]
    with open(cs, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert table[-1] == {**dict.fromkeys(table[-1], ""), "lab_warning": f"{slide}: {warned['lab_warning']}"}  # no file name
    assert "Lab warning, " + slide in page.read_text()
    res = CliRunner().invoke(cli, ["classify", "--model", str(model), str(tmp_path / "day")])
    assert res.exit_code == 0, res.output
    assert f"warning: {slide}: {warned['lab_warning']}" in " ".join(res.output.split())
    one = classify_paths(model, [str(tmp_path / "day" / "B")])  # one slide: the run's own check says it
    assert one.lab_warning is not None and one.folder_lab_warnings == []


def test_scan_reports_each_cells_score_in_json_and_csv(other):
    """A cell found in a field carries the score that decided it, as classify's rows do."""
    import io

    from firmware_host.scan import CellCsv, cell_region, scan_array
    from tests._fields import RBC_GRID, _away, draw_field

    folder, _, _ = other
    clf = Classifier.load(folder, precision="float32")
    wbcs = [(150, 140), (470, 330)]
    rgb = draw_field(wbcs, _away(RBC_GRID, wbcs))
    res = scan_array(clf, rgb, threshold=0.5, path="f")
    assert len(res.cells) == 2
    h, w = rgb.shape[:2]
    for c in res.cells:
        x0, y0, x1, y1 = cell_region(c["box"], w, h)
        assert c["other_score"] == pytest.approx(clf.classify_rgb("f", rgb[y0:y1, x0:x1]).other_score, abs=1e-6)
        assert (c["label"] == "other") == (c["other_score"] > clf.other_threshold or c["top3"][0]["label"] == "other")
    out = io.StringIO()
    CellCsv(out).add(res)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [float(r["other_score"]) for r in rows] == pytest.approx([c["other_score"] for c in res.cells], abs=1e-4)


def test_scan_other_threshold_option(other, tmp_path):
    """``scan --other-threshold 0`` sends every cell to ``other``, and the JSON head records the threshold used."""
    from click.testing import CliRunner
    from PIL import Image

    from edgecell.cli import cli
    from tests._fields import RBC_GRID, _away, draw_field

    folder, _, _ = other
    wbcs = [(150, 140), (470, 330)]
    Image.fromarray(draw_field(wbcs, _away(RBC_GRID, wbcs))).save(tmp_path / "field.png")
    out = tmp_path / "scan.json"
    args = ["scan", "--model", str(folder / "model_float32.tflite"), str(tmp_path / "field.png"), "--json", str(out), "--threads", "1"]
    res = CliRunner().invoke(cli, [*args, "--other-threshold", "0"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["model"]["other_score"]["threshold"] == 0.0
    cells = report["results"][0]["cells"]
    assert len(cells) == 2 and all(c["label"] == "other" and c["flag"] == expected_flag(c) for c in cells)
    res = CliRunner().invoke(cli, [*args, "--other-threshold", "-1"])
    assert res.exit_code == 2 and "--other-threshold" in res.output


def test_lab_warning_says_when_most_cells_show_no_stained_nucleus(other, tmp_path):
    """Cells with their colours in another order: every one is `other` by the nucleus check, and the run's one line
    says why (a review: 40 real cells in BGR, as OpenCV writes them, all flagged, and no word of the cause); the same
    cells in their colours say nothing. Red and green are swapped here: the drawn cells' nucleus stays violet enough
    in BGR (offset 22), real cells do not (52-87 degrees, 150 of 150 of ../shared's)."""
    from firmware_host.classify import classify_paths
    from firmware_host.runtime import NO_NUCLEUS_ADVICE
    from tests._fields import draw_field

    folder, _, _ = other
    model = copy_model(folder / "model_float32.tflite", tmp_path / "model")
    meta = read_metadata(model)
    meta.lab_check = {"min_mean_confidence": 0.0, "batch": 20}  # the confidence test never fires
    meta.other_score = meta.other_score | {"nucleus_max_offset": 45.0}
    write_metadata(model, meta)
    for k in range(24):
        cell = draw_field([(160, 120)], [(40, 40), (280, 200)], seed=k, size=(320, 240))
        save_jpeg(tmp_path / "rgb" / f"{k}.jpg", cell)
        save_jpeg(tmp_path / "swapped" / f"{k}.jpg", np.ascontiguousarray(cell[..., [1, 0, 2]]))  # red and green swapped
    rows = []
    swapped = classify_paths(model, [str(tmp_path / "swapped")], on_result=lambda p, r: rows.append(r))
    assert all("no whole stained nucleus" in r["other_reason"] for r in rows) and len(rows) == 24
    assert swapped.lab_warning == f"24 of these 24 images show no stained nucleus where a white cell's should be: {NO_NUCLEUS_ADVICE}"
    clf = Classifier.load(model)
    assert clf.lab_warning(clf.classify_file(tmp_path / "swapped" / f"{k}.jpg") for k in range(24)) == swapped.lab_warning
    assert classify_paths(model, [str(tmp_path / "rgb")]).lab_warning is None
    mixed = [clf.classify_file(tmp_path / d / f"{k}.jpg") for d, k in [("swapped", k) for k in range(12)] + [("rgb", k) for k in range(12)]]
    assert clf.lab_warning(mixed) is None  # half of them: a slide with debris and platelets may come near it
