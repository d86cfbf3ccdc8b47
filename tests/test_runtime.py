"""firmware_host runtime: interpreter choice, verified loading, quantisation, triage, PATH expansion."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from firmware_host import interpreter as interp_mod
from firmware_host.errors import ImageError, ModelError, RuntimeMissingError
from firmware_host.interpreter import load_interpreter
from firmware_host.metadata import Precision, read_metadata, sha256_file, write_metadata
from firmware_host.paths import expand_paths, label_for, walk_folder
from firmware_host.runtime import (
    FLAG_OTHER,
    FLAG_REVIEW,
    FLAG_UNCERTAIN,
    REVIEW_CLASSES,
    Classifier,
    Prediction,
    TensorQuant,
    apply_temperature,
    classification_metrics,
    dequantize_output,
    input_lookup_table,
    models_in,
    quantize_input,
    resolve_model,
    triage,
)
from tests._tflite_fixtures import CLASSES, SIZE, copy_model, reseal, save_jpeg

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too


def _edit_sidecar(model: Path, **changes) -> None:
    meta = read_metadata(model)
    for k, v in changes.items():
        setattr(meta, k, v)
    write_metadata(model, meta)


# -- parity with Keras ------------------------------------------------------------------------


def test_float32_matches_keras(models):
    clf = Classifier.load(models.float32, threads=1)
    assert clf.precision is Precision.float32 and not clf.input_quant.quantized
    probs = np.stack([clf.predict_array(x) for x in models.images])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs, models.keras_probs, atol=1e-4)


@pytest.mark.parametrize("which", ["int8", "uint8"])
def test_integer_models_close_to_keras(models, which):
    clf = Classifier.load(getattr(models, which), threads=1)
    assert clf.input_quant.dtype == np.dtype(which) and clf.output_quant.dtype == np.dtype(which)
    probs = np.stack([clf.predict_array(x) for x in models.images])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs >= 0).all()
    agree = (probs.argmax(1) == models.keras_probs.argmax(1)).mean()
    assert agree >= 0.9, agree
    assert np.abs(probs - models.keras_probs).max() < 0.05


def test_quantisation_read_from_interpreter_and_applied(models):
    clf = Classifier.load(models.int8, threads=1)
    raw, _ = load_interpreter(model_path=models.int8, num_threads=1)
    i, o = raw.get_input_details()[0], raw.get_output_details()[0]
    assert (clf.input_quant.scale, clf.input_quant.zero_point) == pytest.approx(i["quantization"])
    assert (clf.output_quant.scale, clf.output_quant.zero_point) == pytest.approx(o["quantization"])
    assert clf.input_quant.scale > 0 and clf.output_quant.scale > 0
    for x in models.images[:6]:
        s, z = i["quantization"]
        q = np.clip(np.round(x.astype(np.float64) / s) + z, -128, 127).astype(np.int8)
        raw.set_tensor(i["index"], q[None])
        raw.invoke()
        out = raw.get_tensor(o["index"])[0]
        s_o, z_o = o["quantization"]
        manual = np.clip((out.astype(np.float64) - z_o) * s_o, 0, None)
        manual /= manual.sum()
        np.testing.assert_allclose(clf.predict_array(x), manual, atol=1e-12)


def _numpy_mirrors(x: np.ndarray) -> list[np.ndarray]:
    """The eight views of firmware_host.mirrors, written out with numpy slicing."""
    t = x.transpose(1, 0, 2)
    return [x, x[:, ::-1], x[::-1], x[::-1, ::-1], t, t[:, ::-1], t[::-1], t[::-1, ::-1]]


def test_views_are_the_mirror_images_in_order():
    from firmware_host.mirrors import VIEW_CHOICES, VIEWS, check_views, view

    x = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    assert len(VIEWS) == max(VIEW_CHOICES)
    for k, expected in enumerate(_numpy_mirrors(x)):
        np.testing.assert_array_equal(view(x, k), expected)
    assert len({view(x, k).tobytes() for k in range(len(VIEWS))}) == len(VIEWS)  # eight different images
    assert [check_views(n) for n in VIEW_CHOICES] == [None] * len(VIEW_CHOICES)
    for bad in (0, 3, 16, "4", 4.0, True, None):
        assert "must be one of 1, 2, 4, 8" in check_views(bad)


@pytest.mark.parametrize("which", ["int8", "float32"])
@pytest.mark.parametrize("views", [2, 4, 8])
def test_a_model_with_views_is_run_once_per_mirror_and_averaged(models, tmp_path, which, views):
    """The sidecar's ``views``: the runtime invokes the network on each mirrored view, one image at a time, and
    averages the dequantised outputs before it renormalises."""
    model = copy_model(getattr(models, which), tmp_path)
    plain = Classifier.load(model, threads=1)
    _edit_sidecar(model, views=views)
    clf = Classifier.load(model, threads=1)
    assert clf.views == views and clf.info()["views"] == views and plain.views == 1
    changed = 0.0
    for x in models.images[:8]:
        x = x.copy()
        x[: SIZE // 2] //= 3  # not symmetric: the mirrors differ
        each = [
            dequantize_output(plain.invoke_raw(quantize_input(np.ascontiguousarray(m), plain.input_quant)[None]), plain.output_quant)
            for m in _numpy_mirrors(x)[:views]
        ]
        mean = np.clip(np.mean(each, axis=0), 0, None)
        np.testing.assert_allclose(clf.predict_uncalibrated(x), mean / mean.sum(), atol=1e-12)
        changed = max(changed, np.abs(clf.predict_uncalibrated(x) - plain.predict_uncalibrated(x)).max())
    assert changed > 1e-4  # the views did something (float32 differs by 1e-7 from run to run at most)


@pytest.mark.parametrize("bad", [0, 3, "4", True])
def test_a_sidecar_with_a_bad_number_of_views_is_refused(models, tmp_path, bad):
    model = copy_model(models.int8, tmp_path)
    sidecar = model.with_suffix(".json")
    d = json.loads(sidecar.read_text())
    d["views"] = bad
    sidecar.write_text(json.dumps(d))
    with pytest.raises(ModelError, match="metadata has a bad field: views must be one of 1, 2, 4, 8"):
        Classifier.load(model, threads=1)


@pytest.mark.parametrize("which", ["int8", "uint8"])
def test_input_buffer_equals_lookup_table(models, which):
    """The XOR fast path (int8, scale 1, zero point -128) and the table give the same bytes."""
    clf = Classifier.load(getattr(models, which), threads=1)
    assert clf._xor128 == (which == "int8")  # the tiny int8 model is calibrated on full-range pixels
    rng = np.random.default_rng(0)
    for x in [*models.images[:3], rng.integers(0, 256, models.images[0].shape, dtype=np.uint8)]:
        clf.predict_uncalibrated(x)
        np.testing.assert_array_equal(clf._buf[0], quantize_input(x, clf.input_quant))


def test_quantisation_helpers():
    q8 = TensorQuant(np.dtype(np.int8), 1.0, -128)
    np.testing.assert_array_equal(input_lookup_table(q8), (np.arange(256) - 128).astype(np.int8))
    qu = TensorQuant(np.dtype(np.uint8), 2.0, 3)
    lut = input_lookup_table(qu)
    assert lut.dtype == np.uint8 and lut[0] == 3 and lut[255] == min(255, round(255 / 2) + 3)
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(quantize_input(img, q8), np.array([[[-128, 0, 127]]], dtype=np.int8))
    np.testing.assert_array_equal(quantize_input(img, TensorQuant(np.dtype(np.float32), 0.0, 0)), img.astype(np.float32))
    np.testing.assert_allclose(dequantize_output(np.array([-128, 0, 127], np.int8), TensorQuant(np.dtype(np.int8), 1 / 256, -128)), [0, 0.5, 255 / 256])


def test_temperature_applied(models, tmp_path):
    base = Classifier.load(models.float32, threads=1)
    m = copy_model(models.float32, tmp_path / "t")
    _edit_sidecar(m, temperature=2.0)
    hot = Classifier.load(m, threads=1)
    for x in models.images[:5]:
        p = base.predict_array(x)
        q = hot.predict_array(x)
        z = np.log(p) / 2.0
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(q, expected, atol=1e-9)
        assert q.sum() == pytest.approx(1.0) and q.max() <= p.max() + 1e-12
    np.testing.assert_allclose(apply_temperature(np.array([0.5, 0.5, 0.0]), 3.0).sum(), 1.0)


# -- refusing bad models ------------------------------------------------------------------------


def test_sha_mismatch_is_model_error(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    data = bytearray(m.read_bytes())
    data[len(data) // 2] ^= 0xFF
    m.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256 does not match") as ei:
        Classifier.load(m)
    assert str(m) in str(ei.value) and "\n" not in str(ei.value)


def test_truncated_model_is_model_error(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        Classifier.load(m)
    # The same truncated bytes with a matching checksum: the interpreter refuses them, one line.
    _edit_sidecar(m, sha256=sha256_file(m))
    with pytest.raises(ModelError, match="not a usable TFLite model") as ei:
        Classifier.load(m)
    assert str(m) in str(ei.value) and "\n" not in str(ei.value)


def test_garbage_named_tflite_is_model_error(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    m.write_bytes(os.urandom(3000))
    with pytest.raises(ModelError, match="SHA-256"):
        Classifier.load(m)
    _edit_sidecar(m, sha256=sha256_file(m))
    with pytest.raises(ModelError, match="not a usable TFLite model"):
        Classifier.load(m)
    with pytest.raises(ModelError, match="not a usable TFLite model"):
        load_interpreter(model_path=m)


def test_empty_model_and_missing_sidecar(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    m.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        Classifier.load(m)
    m2 = copy_model(models.int8, tmp_path / "y")
    m2.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="metadata file model_int8.json is missing"):
        Classifier.load(m2)


def test_class_count_mismatch_is_model_error(models, tmp_path):
    m = copy_model(models.float32, tmp_path / "x")
    _edit_sidecar(m, classes=CLASSES[:4])
    with pytest.raises(ModelError, match="lists 4 classes"):
        Classifier.load(m)


def test_input_shape_mismatch_is_model_error(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    _edit_sidecar(m, input_size=SIZE * 2)
    with pytest.raises(ModelError, match=r"input shape is \[1, 32, 32, 3\]"):
        Classifier.load(m)


def _bump_preprocessing(model: Path, **changes) -> dict:
    """Rewrite the sidecar's preprocessing description with ``changes``; return the new description."""
    from firmware_host.preprocess import describe

    pre = {**describe(), **changes}
    _edit_sidecar(model, preprocessing=pre)
    return pre


def test_other_preprocessing_version_is_model_error(models, tmp_path):
    from firmware_host.preprocess import PREPROCESSING_VERSION

    # the sidecars the current code writes load fine (and record this runtime's version)
    assert read_metadata(models.int8).preprocessing["version"] == PREPROCESSING_VERSION
    Classifier.load(models.int8, threads=1)
    m = copy_model(models.int8, tmp_path / "x")
    other = PREPROCESSING_VERSION + 1
    _bump_preprocessing(m, version=other)
    with pytest.raises(ModelError) as ei:
        Classifier.load(m, threads=1)
    side = m.with_suffix(".json")
    assert ei.value.path == str(side)
    assert ei.value.reason.startswith(
        f"model_int8.tflite was trained with preprocessing v{other}, this runtime does v{PREPROCESSING_VERSION}, so its answers here cannot be trusted; "
    )
    assert "re-export it with this edgecell version" in ei.value.reason and "(test)" in ei.value.reason  # the exporting version
    assert "\n" not in str(ei.value)
    # through a folder too (the usual way a Pi loads a model)
    with pytest.raises(ModelError, match=f"trained with preprocessing v{other}"):
        Classifier.load(m.parent)


def test_other_resize_same_version_is_model_error(models, tmp_path):
    m = copy_model(models.float32, tmp_path / "x")
    from firmware_host.preprocess import PREPROCESSING_VERSION

    _bump_preprocessing(m, resize="crop to size x size, PIL bicubic")
    with pytest.raises(ModelError, match=rf"v{PREPROCESSING_VERSION} but resize 'crop to size x size, PIL bicubic' \(this runtime: '.*bilinear'\)"):
        Classifier.load(m, threads=1)
    # a safety limit is not pixel arithmetic: a different max_pixels still loads
    _bump_preprocessing(m, max_pixels=10)
    assert Classifier.load(m, threads=1).precision is Precision.float32


def test_no_preprocessing_recorded_is_model_error(models, tmp_path):
    m = copy_model(models.int8, tmp_path / "x")
    d = json.loads(m.with_suffix(".json").read_text())
    del d["preprocessing"]
    m.with_suffix(".json").write_text(json.dumps(d))
    reseal(m)
    from firmware_host.preprocess import PREPROCESSING_VERSION

    with pytest.raises(ModelError, match=rf"records no preprocessing for model_int8.tflite \(this runtime does v{PREPROCESSING_VERSION}\)"):
        Classifier.load(m, threads=1)


def test_classify_cli_refuses_other_preprocessing(models, tmp_path):
    from click.testing import CliRunner

    from edgecell.cli import cli
    from firmware_host.metadata import edgecell_version
    from firmware_host.preprocess import PREPROCESSING_VERSION

    m = copy_model(models.int8, tmp_path / "x")
    _bump_preprocessing(m, version=PREPROCESSING_VERSION + 1)
    img = save_jpeg(tmp_path / "cell.jpg", np.full((40, 40, 3), 128, np.uint8))
    r = CliRunner().invoke(cli, ["classify", "--model", str(m), str(img)])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == [
        f"Error: {m.with_suffix('.json')}: model_int8.tflite was trained with preprocessing v{PREPROCESSING_VERSION + 1}, "
        f"this runtime does v{PREPROCESSING_VERSION}, so its answers here cannot be trusted; "
        f"classify with the edgecell version that exported it (test), or retrain and re-export it with this edgecell version ({edgecell_version()})"
    ], r.output
    # exported by this very version (a sidecar edited by hand, a development build): there is no other version to use
    _edit_sidecar(m, edgecell_version=edgecell_version())
    r = CliRunner().invoke(cli, ["classify", "--model", str(m), str(img)])
    assert r.exit_code == 1 and " ".join(r.output.split()).endswith(
        "so its answers here cannot be trusted; retrain and re-export it with this edgecell version"
    ), r.output


# -- choosing a model and an interpreter -------------------------------------------------------


def test_a_run_folder_or_its_keras_model_given_as_the_model_points_to_the_export(models, tmp_path):
    """What a user gives by mistake, named: a run folder (converted or not) or its model.keras, not its export."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"zip")
    with pytest.raises(ModelError) as err:
        resolve_model(run)
    assert (err.value.path, err.value.reason) == (
        str(run),
        f"is a run folder with no converted model yet; run `edgecell convert {run} --int8`, then give {run / 'export'}",
    )
    shutil.copytree(models.export, run / "export")
    with pytest.raises(ModelError) as err:
        resolve_model(run)
    assert err.value.reason == f"is a run folder; its converted models are in {run / 'export'}: give that folder"
    with pytest.raises(ModelError) as err:
        resolve_model(run / "model.keras")
    assert err.value.reason == f"is a Keras model; the runtime runs the .tflite models `edgecell convert` writes ({run / 'export'})"


def test_folder_prefers_int8_and_precision_selects(models, tmp_path):
    assert resolve_model(models.export) == models.int8
    assert resolve_model(models.export, "float32") == models.float32
    assert [p.name for p in models_in(models.export)] == ["model_int8.tflite", "model_float32.tflite"]
    assert Classifier.load(models.export, precision="float32").precision is Precision.float32
    with pytest.raises(ModelError, match="no model_float16.tflite"):
        Classifier.load(models.export, precision="float16")
    with pytest.raises(ModelError, match="is an int8 model but float32"):
        Classifier.load(models.int8, precision="float32")
    with pytest.raises(ModelError, match="no model in this folder"):
        resolve_model(tmp_path)


def test_backend_forced_and_missing(models, monkeypatch):
    monkeypatch.setenv("EDGECELL_INTERPRETER", "ai_edge_litert")
    clf = Classifier.load(models.int8, threads=1)
    assert clf.backend.name == "ai_edge_litert" and clf.backend.version[0].isdigit()
    assert clf.info()["interpreter"] == "ai_edge_litert"
    monkeypatch.setenv("EDGECELL_INTERPRETER", "no_such_thing")
    with pytest.raises(RuntimeMissingError, match="EDGECELL_INTERPRETER='no_such_thing' is not one of"):
        Classifier.load(models.int8)
    with pytest.raises(RuntimeMissingError, match="backend='nope' is not one of"):  # the argument, not the environment
        Classifier.load(models.int8, backend="nope")
    monkeypatch.delenv("EDGECELL_INTERPRETER")
    monkeypatch.setattr(interp_mod, "_try_import", lambda name: None)
    with pytest.raises(RuntimeMissingError) as ei:
        Classifier.load(models.int8)
    assert 'pip install ai-edge-litert (or, in edgecell\'s folder, pip install ".[pi]")' in str(ei.value) and "\n" not in str(ei.value)


def test_tflite_runtime_forced_when_absent(monkeypatch):
    pytest.importorskip("ai_edge_litert")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        monkeypatch.setenv("EDGECELL_INTERPRETER", "tflite_runtime")
        with pytest.raises(RuntimeMissingError, match="tflite_runtime"):
            interp_mod.find_backend()
    else:  # pragma: no cover - only where tflite-runtime is installed
        monkeypatch.setenv("EDGECELL_INTERPRETER", "tflite_runtime")
        assert interp_mod.find_backend().name == "tflite_runtime"


# -- inputs ----------------------------------------------------------------------------------


def test_predict_array_rejects_wrong_arrays(models):
    clf = Classifier.load(models.int8, threads=1)
    with pytest.raises(ImageError, match="shape"):
        clf.predict_array(np.zeros((SIZE + 1, SIZE, 3), np.uint8))
    with pytest.raises(ImageError, match="dtype"):
        clf.predict_array(np.zeros((SIZE, SIZE, 3), np.float32))


def test_classify_file_and_many(models, tmp_path):
    clf = Classifier.load(models.int8, threads=1)
    good = [save_jpeg(tmp_path / f"g{k}.jpg", np.full((40, 50, 3), 100 + 30 * k, np.uint8)) for k in range(5)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    p = clf.classify_file(good[0])
    assert isinstance(p, Prediction) and p.label in CLASSES and p.path == str(good[0])
    assert [lab for lab, _ in p.top3][0] == p.label and len(p.top3) == 3
    assert p.top3[0][1] >= p.top3[1][1] >= p.top3[2][1]
    assert p.preprocess_ms > 0 and p.inference_ms > 0 and p.probs.sum() == pytest.approx(1.0)
    order = good[:2] + [bad] + good[2:]
    out = list(clf.classify_many(order, workers=2))
    assert [o[0] for o in out] == [str(x) for x in order]
    assert isinstance(out[2][1], ImageError) and "bad.jpg" in str(out[2][1])
    assert all(isinstance(r, Prediction) for k, (_, r) in enumerate(out) if k != 2)
    np.testing.assert_allclose(out[0][1].probs, p.probs)


# -- triage ------------------------------------------------------------------------------------


def _pred(label, conf):
    return Prediction("x.jpg", label, conf, [(label, conf)], np.array([conf]))


def test_triage_flags():
    assert {"myeloblast", "erythroblast"} == REVIEW_CLASSES
    assert triage(_pred("seg_neutrophil", 0.95), 0.7) == ""
    assert triage(_pred("monocyte", 0.69), 0.7) == FLAG_UNCERTAIN == "uncertain - refer"
    assert triage(_pred("myeloblast", 0.99), 0.7) == FLAG_REVIEW
    assert triage(_pred("erythroblast", 0.8), 0.7) == FLAG_REVIEW
    assert triage(_pred("myeloblast", 0.5), 0.7) == FLAG_REVIEW  # a possible blast goes to the haematologist, sure or not
    assert triage(_pred("erythroblast", 0.3), 0.7) == FLAG_REVIEW
    assert triage(_pred("basophil", 0.7), 0.7) == ""
    # sent to other by its never-seen score or the nucleus check: the haematologist sees it when the network took it
    # for a blast or an erythroblast (the flag is the review's, the label stays other), else it is referred as other
    as_other = lambda first, p: Prediction("x.jpg", "other", 0.01, [(first, p), ("other", 0.01)], np.array([p]))  # noqa: E731
    assert triage(as_other("myeloblast", 0.97), 0.7) == FLAG_REVIEW
    assert triage(as_other("erythroblast", 0.4), 0.7) == FLAG_REVIEW
    assert triage(as_other("monocyte", 0.97), 0.7) == FLAG_OTHER
    assert triage(as_other("other", 0.9), 0.7) == FLAG_OTHER  # other by its own class
    # no whole stained nucleus and an erythroblast first: a red cell or a blank picture, not for the haematologist (it
    # filled their queue; a clinical review); a myeloblast first still goes (a blast whose nucleus the frame cuts)
    from firmware_host.runtime import OTHER_BY_NUCLEUS, OTHER_BY_SCORE

    for first, flag in (("erythroblast", FLAG_OTHER), ("myeloblast", FLAG_REVIEW)):
        bare = as_other(first, 0.7)
        bare.other_reason = f"{OTHER_BY_SCORE}; {OTHER_BY_NUCLEUS}"
        assert triage(bare, 0.7) == flag, first
    # an image with no colour (a monochrome camera): a person looks, however sure the model is (a review found grey
    # monocytes named basophil with 0.78, unflagged)
    from firmware_host.preprocess import NO_COLOUR

    grey = _pred("basophil", 0.95)
    grey.nucleus_offset = NO_COLOUR
    assert triage(grey, 0.7) == FLAG_UNCERTAIN
    grey.label, grey.confidence = "myeloblast", 0.95
    assert triage(grey, 0.7) == FLAG_REVIEW  # a possible blast still goes to the haematologist


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    classes = CLASSES
    y = [classes[k] for k in rng.integers(0, 5, 200)]
    p = [t if rng.random() < 0.6 else classes[k] for t, k in zip(y, rng.integers(0, 4, 200))]  # class 4 rarely predicted
    m = classification_metrics(y, p, classes)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    np.testing.assert_array_equal(np.array(m["confusion_matrix"]), sk.confusion_matrix(y, p, labels=classes))
    # only two classes present: macro over the present ones, as scikit-learn does
    y2, p2 = ["myeloblast", "myeloblast", "basophil"], ["myeloblast", "basophil", "basophil"]
    assert classification_metrics(y2, p2, classes)["macro_f1"] == pytest.approx(sk.f1_score(y2, p2, average="macro"))


# -- PATH expansion ----------------------------------------------------------------------------


def test_expand_paths(tmp_path):
    def img(k):  # each file its own pixels: a copy of a file listed already is left out
        return np.full((16, 16, 3), 40 * k, np.uint8)

    a = save_jpeg(tmp_path / "data" / "myeloblast" / "b.jpg", img(1))
    b = save_jpeg(tmp_path / "data" / "myeloblast" / "a.JPG", img(2))
    c = save_jpeg(tmp_path / "data" / "other" / "deep" / "c.jpeg", img(3))
    (tmp_path / "data" / "notes.txt").write_text("x")
    (tmp_path / "data" / "dir.jpg").mkdir()
    (tmp_path / "data" / "dir.jpg" / "inner.jpg").write_bytes(b"")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "data" / "broken.png")
    (tmp_path / "empty").mkdir()
    single = save_jpeg(tmp_path / "single.bmp.jpg", img(4))

    found = walk_folder(tmp_path / "data")
    names = [p.relative_to(tmp_path / "data").as_posix() for p in found]
    assert names == ["broken.png", "dir.jpg", "myeloblast/a.JPG", "myeloblast/b.jpg", "other/deep/c.jpeg"]

    ex = expand_paths(
        [tmp_path / "data", str(a), str(tmp_path / "data" / "m*" / "*"), single, tmp_path / "nope.jpg", tmp_path / "empty", str(tmp_path / "zz*.png")]
    )
    assert ex.paths[: len(found)] == found  # the folder, then the duplicates dropped
    assert ex.paths[-1] == single and len(ex.paths) == len(found) + 1
    reasons = sorted(e.reason for e in ex.errors)
    assert reasons == ["folder holds no images (looked for .jpg, .jpeg, .jfif, .png, .tif, .tiff, .bmp)", "no such file or folder", "pattern matches no images"]

    g = expand_paths([str(tmp_path / "data" / "**" / "*.jp*g")])
    assert {p.name for p in g.paths} >= {"b.jpg", "c.jpeg"} and not g.errors

    assert label_for(a, CLASSES) == "myeloblast" and label_for(b, CLASSES) == "myeloblast"
    assert label_for(c, CLASSES) is None


def test_a_folder_search_says_what_it_does_not_read(tmp_path, monkeypatch):
    """Hidden files (macOS ``._x.jpg``) are left out; a folder that cannot be listed is an error, not "no images",
    and pictures of another type are listed for a note: nothing leaves the count without a word."""
    img = np.zeros((16, 16, 3), np.uint8)
    save_jpeg(tmp_path / "slide" / "a.jpg", img)
    (tmp_path / "slide" / "._a.jpg").write_bytes(b"AppleDouble")
    save_jpeg(tmp_path / "slide" / ".hidden" / "h.jpg", img)
    (tmp_path / "slide" / "c.gif").write_bytes(b"GIF89a")
    (tmp_path / "slide" / "notes.txt").write_text("x")
    save_jpeg(tmp_path / "slide" / "closed" / "b.jpg", img)
    save_jpeg(tmp_path / "shut" / "d.jpg", img)
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(os.fspath(path)) in ("closed", "shut"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ex = expand_paths([tmp_path / "slide", tmp_path / "shut"])
    assert [p.name for p in ex.paths] == ["a.jpg"]
    assert [p.name for p in ex.unread] == ["c.gif"]
    assert [(Path(e.path).name, e.reason) for e in ex.errors] == [
        ("closed", "cannot list this folder (Permission denied); its images are not read"),
        ("shut", "cannot list this folder (Permission denied); its images are not read"),
    ]


def test_module_imports_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, firmware_host.runtime, firmware_host.paths, firmware_host.interpreter; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_info_is_json_serialisable(models):
    info = Classifier.load(models.int8, threads=1).info()
    assert json.loads(json.dumps(info))["precision"] == "int8"
    assert info["input_quantization"]["dtype"] == "int8" and info["sha256"] == sha256_file(models.int8)


# -- real images: the Pi sees the pixels training saw -------------------------------------------


def _float_model_of_size(root: Path, size: int) -> Path:
    """A tiny float32 TFLite model taking ``size`` x ``size`` images (mean colour -> Dense)."""
    pytest.importorskip("tensorflow")
    import keras

    from tests._tflite_fixtures import _convert, write_model

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return write_model(root / Precision.float32.filename, _convert(keras.Model(inputs, x)), Precision.float32, input_size=size)


@pytest.mark.realdata
def test_runtime_preprocessing_equals_training_on_real_images(real_data, tmp_path, monkeypatch):
    """Seeded real images from both labs: the arrays training builds (``edgecell.train.load_dataset``
    -> ``data.scan``), ``preprocess.load_image`` and the tensor ``Classifier`` hands the interpreter
    are identical, byte for byte."""
    import io

    from PIL import Image
    from rich.console import Console

    from edgecell.train import TrainOptions, load_dataset
    from firmware_host.preprocess import load_image

    size = TrainOptions.__dataclass_fields__["img_size"].default  # the size training uses by default
    rng = np.random.default_rng(20240611)
    chosen: list[Path] = []
    for c in CLASSES:
        files = sorted((real_data / c).glob("*.jpg"))
        chosen += [files[k] for k in sorted(rng.choice(len(files), size=10, replace=False))]
    sizes = {Image.open(p).size for p in chosen}
    assert {(360, 363), (400, 400)} <= sizes, sizes  # PBC (Barcelona) and LMU (Munich) images both present

    slice_dir = tmp_path / "slice"  # symlinks only: nothing is copied
    for p in chosen:
        (slice_dir / p.parent.name).mkdir(parents=True, exist_ok=True)
        (slice_dir / p.parent.name / p.name).symlink_to(p)
    ds = load_dataset(str(slice_dir), size, Console(file=io.StringIO()))
    assert ds.skipped == [] and len(ds.samples) == len(chosen) == 50
    assert ds.images.shape == (50, size, size, 3) and ds.images.dtype == np.uint8
    originals = [real_data / s.rel for s in ds.samples]
    for img, p in zip(ds.images, originals):
        assert np.array_equal(img, load_image(p, size)), p

    clf = Classifier.load(_float_model_of_size(tmp_path / "m", size), threads=1)
    assert clf.input_size == size and clf.input_quant.dtype == np.float32
    fed: list[np.ndarray] = []
    real_set_tensor = clf.interpreter.set_tensor

    def spy(index, value):
        fed.append(np.array(value, copy=True))
        return real_set_tensor(index, value)

    monkeypatch.setattr(clf.interpreter, "set_tensor", spy)
    # training feeds tf.cast(uint8 -> float32) of these arrays (edgecell.train._dataset)
    expected = ds.images.astype(np.float32)
    for k, p in enumerate(originals):
        clf.classify_file(p)
        assert len(fed) == k + 1
        assert fed[k].shape == (1, size, size, 3) and fed[k].dtype == np.float32
        assert np.array_equal(fed[k][0], expected[k]), p
    # and the pooled path `edgecell classify` uses, in input order
    fed.clear()
    done = [path for path, res in clf.classify_many(originals, workers=2) if not isinstance(res, Exception)]
    assert done == [os.fspath(p) for p in originals]
    assert np.array_equal(np.concatenate(fed), expected)


def test_a_sidecar_changed_after_convert_is_refused(models, tmp_path):
    """The model's SHA-256 covers the .tflite only: classes reordered or a review class renamed in the sidecar gave
    wrong answers from a 'verified' model. The sidecar's digest catches it; a sidecar of this preprocessing without one
    had its digest taken out (every edgecell that writes this preprocessing seals), and is refused too."""
    from firmware_host.metadata import DIGEST, sidecar_digest

    m = copy_model(models.int8, tmp_path / "sealed")
    side = m.with_suffix(".json")
    d = json.loads(side.read_text())
    assert d[DIGEST] == sidecar_digest(d) and Classifier.load(m, threads=1).classes == d["classes"]
    for change in (lambda d: d["classes"].reverse(), lambda d: d.update(temperature=0.01), lambda d: d["classes"].__setitem__(0, "blast")):
        edited = json.loads(side.read_text())
        change(edited)
        bad = copy_model(models.int8, tmp_path / f"edited{len(list(tmp_path.iterdir()))}")
        bad.with_suffix(".json").write_text(json.dumps(edited))
        with pytest.raises(ModelError, match=r"metadata file was changed after convert wrote it \(its digest differs\)"):
            Classifier.load(bad, threads=1)
    unsealed = copy_model(models.int8, tmp_path / "unsealed")
    d.pop(DIGEST)
    d["classes"].reverse()  # the edit the missing digest would have hidden
    unsealed.with_suffix(".json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=r"metadata file has no digest, though convert seals every sidecar of this preprocessing version"):
        Classifier.load(unsealed, threads=1)
