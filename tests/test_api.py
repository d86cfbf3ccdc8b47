"""The Python API a Pi script uses (README "From Python, on the Pi"): firmware_host without the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import firmware_host
from firmware_host.bench import bench_models, speedups
from firmware_host.classify import ClassifyJob, ClassifyOptions, classify_paths
from firmware_host.errors import DataError, ImageError, ModelError, first_line
from firmware_host.runtime import Classifier
from tests._tflite_fixtures import CLASSES, labelled_folder

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = labelled_folder(tmp_path_factory.mktemp("api") / "data", per_class=2)
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_the_readme_script(models, data, tmp_path):
    """What the README's ten-line script does: one file, then a folder to CSV, with the tally."""
    clf = firmware_host.Classifier.load(models.export)
    pred = clf.classify_file(next((data / "monocyte").iterdir()))
    assert pred.label in CLASSES and len(pred.top3) == 3 and abs(float(pred.probs.sum()) - 1) < 1e-6
    summary = firmware_host.classify_paths(models.export, [str(data)], csv_out=str(tmp_path / "today.csv"))
    rows = {r["path"]: r for r in csv.DictReader((tmp_path / "today.csv").open()) if not r["error"]}
    for path, row in rows.items():  # the flag a script reads is the one classify writes, at any threshold
        p = clf.classify_file(path)
        assert p.flag() == row["flag"] and p.flag(0.0) == ("" if row["flag"] == "uncertain - refer" else row["flag"])  # coloured images
    assert {r["flag"] for r in rows.values()} >= {"review: haematologist"}  # the comparison covers a flagged cell
    assert summary.n_classified == 10 and [f["path"] for f in summary.failed] == [str(data / "broken.jpg")]
    assert sum(summary.differential.values()) == 10 and summary.metrics()["n"] == 10
    rows = list(csv.DictReader((tmp_path / "today.csv").open()))
    assert len(rows) == 11 and rows[-1]["error"] and {r["label"] for r in rows[:-1]} <= set(CLASSES)


def test_classify_paths_calls_back_per_image_in_order(models, data):
    seen = []
    summary = classify_paths(models.float32, [str(data / "basophil"), str(data / "broken.jpg")], on_result=lambda p, r: seen.append((p, r)))
    assert [str(p) for p, _ in seen] == sorted(str(p) for p in (data / "basophil").iterdir()) + [str(data / "broken.jpg")]
    assert isinstance(seen[-1][1], ImageError) and all(r["true_label"] == "basophil" for _, r in seen[:-1])
    assert summary.confusion[CLASSES.index("basophil")] == [sum(r["label"] == c for _, r in seen[:-1]) for c in CLASSES]


def test_classify_job_predictions_equal_the_classifier(models, data):
    clf = Classifier.load(models.int8, threads=1)
    with ClassifyJob(ClassifyOptions(str(models.int8), (str(data / "myeloblast"),), threads=1)) as job:
        rows = [r for _, r in job]
    assert len(rows) == 2
    for r in rows:
        np.testing.assert_allclose([r["probs"][c] for c in CLASSES], clf.classify_file(r["path"]).probs, atol=1e-7)


def test_an_error_inside_the_job_leaves_no_output(models, data, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="stop"), ClassifyJob(ClassifyOptions(str(models.export), (str(data),), json_out=str(out))) as job:
        for _ in job:
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_both_outputs_on_stdout_is_refused(models, data):
    with pytest.raises(ValueError, match="only one of"):
        ClassifyJob(ClassifyOptions(str(models.export), (str(data),), json_out="-", csv_out="-"))


def test_bench_models_rows_and_speedup(models, data):
    rows = bench_models([models.export], runs=3, warmup=1, threads=(1,), images=sorted(data.glob("*/*.jpg"))[:4])
    assert [(r["precision"], r["threads"]) for r in rows] == [("int8", 1), ("float32", 1)]
    assert all(r["latency_ms"]["n"] == 3 and r["end_to_end"]["classified"] == 4 for r in rows)
    (s,) = speedups(rows)
    assert s["speedup"] == pytest.approx(rows[1]["latency_ms"]["p50"] / rows[0]["latency_ms"]["p50"])


@pytest.mark.parametrize(
    ("message", "empty", "expected"),
    [("\n  disk full \nmore", None, "disk full"), ("", None, "OSError"), ("", "", ""), ("one", "", "one")],
)
def test_first_line(message, empty, expected):
    assert first_line(OSError(message) if message else OSError(), empty) == expected


@pytest.mark.parametrize("indent", [2, None])
@pytest.mark.parametrize("n_rows", [0, 1, 3])
def test_json_stream_writes_what_json_dumps_writes(indent, n_rows):
    """The streamed report is byte for byte the one-shot json.dumps of the whole report."""
    import io
    import json

    from firmware_host.classify import JsonStream

    head = {"model": {"classes": ["a", "é"], "sizes": [1, 2], "empty": {}}, "threshold": 0.7}
    rows = [{"path": f"x/{k}.jpg", "probs": {"a": 0.25 * k, "é": 1.0}, "top3": [{"label": "a"}], "nested": []} for k in range(n_rows)]
    tail = {"failed": [], "summary": {"n": n_rows, "d": {"a": [1, [2, {}]]}}, "metrics": None}
    fh = io.StringIO()
    stream = JsonStream(fh, head, indent)
    for r in rows:
        stream.add(r)
    stream.close(tail)
    assert fh.getvalue() == json.dumps({**head, "results": rows, **tail}, indent=indent) + "\n"


def test_classify_takes_a_path_a_pil_image_of_any_mode_or_an_array(models, data):
    """Classifier.classify is the one call of a ten-line script: a PIL image gives what its file gives (a small
    JPEG: a large one is decoded from its file at a reduced size)."""
    from PIL import Image

    clf = Classifier.load(models.float32, threads=1)
    path = next((data / "monocyte").iterdir())
    by_file = clf.classify(path)
    assert by_file.path == str(path) and clf.classify(path, name="cell 1").path == "cell 1"
    with Image.open(path) as img:
        for mode in ("RGB", "RGBA", "P", "LA", "L"):
            pred = clf.classify(img.convert(mode), name="cell")
            assert pred.path == "cell" and pred.label in CLASSES
        np.testing.assert_allclose(clf.classify(img).probs, by_file.probs, atol=1e-7)
        np.testing.assert_allclose(clf.classify(np.asarray(img.convert("RGB"))).probs, by_file.probs, atol=1e-7)
    grey16 = Image.new("I;16", (32, 32), 40000)
    assert clf.classify(grey16).label in CLASSES
    for bad, says in (
        (np.zeros((2, 2, 3), np.uint8), "too small to hold a cell"),
        (np.zeros((3, 64, 48), np.uint8), "has its channels first; give (H, W, 3)"),  # it said "too small to hold a cell"
        (np.zeros((32, 32), np.uint8), "expected (H, W, 3) uint8 RGB"),
        (np.zeros((32, 32, 3), np.float32), "expected (H, W, 3) uint8 RGB"),
        (Image.new("RGB", (2, 40)), "too small to hold a cell"),
        (np.full((32, 32, 3), 20, np.uint8), "array is nearly black (its brightest pixels at 20 of 255, a smear's background 64 or more): underexposed"),
        (
            Image.new("I;16", (32, 32), 4000),
            "image is nearly black (its brightest pixels at 16 of 255, a smear's background 64 or more): underexposed, or a 10- to 14-bit camera's",
        ),
        (Image.new("F", (32, 32), 0.8), "a float image's values are read as levels of 0-255, so values of 0-1 are black"),  # not a camera's bits (a review)
        (Image.new("RGB", (32, 32), (20, 20, 20)), "nearly black (its brightest pixels at 20 of 255, a smear's background 64 or more): underexposed, or a 10"),
        (None, "cannot classify a NoneType"),
        (b"\xff\xd8 not a path", "no such file"),
        (b"\xff\xd8\x00 damaged", "not an image Pillow can read"),
        ("cell\0.jpg", "cannot read"),
        ("", "<image>: an empty path or empty bytes"),  # it said ": no such file", naming nothing (a review)
        (b"", "<image>: an empty path or empty bytes"),
    ):
        with pytest.raises(ImageError, match=says.replace("(", r"\(").replace(")", r"\)")):
            clf.classify(bad)
    contents = path.read_bytes()  # a file's contents, as bytes or a buffer: what its path gives
    for held in (contents, bytearray(contents), memoryview(contents)):
        np.testing.assert_allclose(clf.classify(held).probs, by_file.probs, atol=1e-7)
    assert clf.classify(contents).path == "<image>" and clf.classify(contents, name="c").path == "c"
    with pytest.raises(ImageError, match="takes a file's path, not a Image"):
        clf.classify_file(Image.new("RGB", (32, 32)))


def test_a_jpeg_as_opened_is_read_as_its_file(models, tmp_path):
    """``Image.open`` is lazy: a JPEG nothing has decoded yet is decoded from its bytes at a reduced size, as its file
    is (and as in training), not at full size first; one already decoded is used at full size, as documented."""
    import io

    from PIL import Image

    from tests._tflite_fixtures import save_jpeg

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:360, 0:360]
    cell = np.where(((x - 170) ** 2 + (y - 190) ** 2 < 60**2)[..., None], (90, 40, 140), (230, 200, 210)).astype(float)
    path = save_jpeg(tmp_path / "cell.jpg", np.clip(cell + rng.normal(0, 25, cell.shape), 0, 255).astype(np.uint8))
    clf = Classifier.load(models.float32, threads=1)
    by_file = clf.classify(path).probs
    with Image.open(path) as img:
        np.testing.assert_array_equal(clf.classify(img, name="c").probs, by_file)
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        np.testing.assert_array_equal(clf.classify(img).probs, by_file)
        img.load()  # decoded at full size now: the pixels of the array
        full = clf.classify(img).probs
        np.testing.assert_array_equal(full, clf.classify(np.asarray(img)).probs)
    assert not np.array_equal(full, by_file)  # the two decodes differ, so the tests above tell them apart


def test_one_path_is_a_list_of_one_not_of_characters(models, data):
    """classify_paths(model, "slides/") once read each character as a path, "/" the whole disk."""
    one = classify_paths(models.export, str(data / "basophil"))
    assert one.n_classified == 2 and not one.failed
    rows = bench_models(str(models.int8), runs=2, warmup=0, threads=[1])
    assert [r["model"] for r in rows] == [str(models.int8)]
    # images: one folder (read one character at a time, a review), threads: one count (an int, not iterable)
    rows = bench_models(str(models.int8), runs=2, warmup=0, threads=1, images=str(data / "basophil"))
    assert [r["threads"] for r in rows] == [1] and rows[0]["end_to_end"]["classified"] == 2
    with pytest.raises(DataError, match="nope: no such file or folder"):
        bench_models(str(models.int8), runs=1, warmup=0, threads=1, images=str(data / "nope"))


def test_an_empty_path_in_a_list_is_an_error_not_the_current_folder(models, data, monkeypatch):
    """A list of files read with an empty last line (``open(f).read().split("\\n")``) classified every image under
    the current folder (``Path("")`` is ``"."``), as did ``classify_paths(model, "")`` (a review)."""
    from firmware_host.scan import scan_paths

    monkeypatch.chdir(data)  # the current folder holds images: an empty path must not read them
    listed = [str(next((data / "basophil").iterdir())), ""]
    summary = classify_paths(models.export, listed)
    assert summary.n_classified == 1 and [f["path"] for f in summary.failed] == ["<empty path>"]
    assert "an empty path" in summary.failed[0]["error"]
    assert classify_paths(models.export, "").n_classified == 0
    scanned = scan_paths(models.export, [""])
    assert scanned.n_fields == 0 and scanned.n_failed == 1 and "an empty path" in scanned.failed[0]["error"]


def test_one_classifier_shared_by_threads_answers_as_one_thread(models, data):
    """Threads sharing a Classifier raised LiteRT's "reference to internal data" or got another image's outputs
    (a review: 161 of 500 calls raised, 12 answered differently); the interpreter now runs one image at a time."""
    from concurrent.futures import ThreadPoolExecutor

    clf = Classifier.load(models.export)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (clf.input_size, clf.input_size, 3), dtype=np.uint8) for _ in range(24)] * 8
    alone = [clf.predict_array_scored(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(clf.predict_array_scored, images))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(alone, shared))


def test_every_name_the_package_exports_is_what_it_names_every_time():
    """``firmware_host.locate`` was the function on first access and the submodule of that name once it had been
    imported (``from firmware_host import locate; locate(rgb)``: "'module' object is not callable"); a name the
    package exports must not share its name with a submodule."""
    import importlib.util
    import types

    for name in firmware_host.__all__:
        first = getattr(firmware_host, name)
        assert not isinstance(first, types.ModuleType) and importlib.util.find_spec(f"firmware_host.{name}") is None, name
        assert getattr(firmware_host, name) is first


@pytest.mark.parametrize("dtype", [np.uint16, np.float64, np.int64])
def test_scan_array_refuses_a_field_that_is_not_uint8(models, dtype):
    """``scan_array`` cast any array to uint8: a 12-bit frame wrapped round into one "basophil" the size of the field,
    a 16-bit one gave an empty field (a review); it now refuses, as ``Classifier.classify`` does."""
    from firmware_host.scan import scan_array

    clf = Classifier.load(models.export)
    field = np.full((240, 320, 3), 2000, dtype)
    with pytest.raises(ImageError, match=f"field.png: array shape \\(240, 320, 3\\) dtype {np.dtype(dtype).name}, expected"):
        scan_array(clf, field, 0.7, "field.png")


def test_a_name_given_as_a_path_is_written_as_text(models, data):
    import json

    clf = Classifier.load(models.export)
    image = next((data / "monocyte").iterdir())
    for source in (image, image.read_bytes(), np.zeros((40, 40, 3), np.uint8) + 128):
        try:
            pred = clf.classify(source, name=data / "renamed.png")
        except ImageError:
            continue  # the grey array has no colour: refused, which is not what is tested here
        assert pred.path == str(data / "renamed.png")
        json.dumps(pred.to_dict(clf.classes))


def test_bench_of_a_keras_model_or_a_missing_path_says_what_it_is(models, tmp_path):
    """bench said "metadata file model.json is missing beside the model" of a .keras file and of a path that does not
    exist (a review); classify and scan named them."""
    keras = tmp_path / "run" / "model.keras"
    keras.parent.mkdir()
    keras.write_bytes(b"PK")
    with pytest.raises(ModelError, match=r"is a Keras model; the runtime runs the .tflite models `edgecell convert` writes"):
        bench_models(str(keras))
    with pytest.raises(ModelError, match="no such model file or folder"):
        bench_models(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda m: Classifier.load(m, threads=-1), "threads must be a whole number from 1 to 64"),
        (lambda m: Classifier.load(m, threads=1000), "threads must be a whole number from 1 to 64"),
        (lambda m: Classifier.load(m, threads=2.7), "threads must be a whole number from 1 to 64"),
        (lambda m: Classifier.load(m, threads=True), "threads must be a whole number from 1 to 64"),
        (lambda m: classify_paths(m, "x", threshold="0.5"), "threshold must be a number from 0 to 1"),
        (lambda m: Classifier.load(m, other_threshold=float("nan")), "other_threshold must be a number at least 0"),
        (lambda m: Classifier.load(m, precision="int4"), "precision must be one of float32, float16, int8"),
        (lambda m: classify_paths(m, "x", threshold=2), "threshold must be a number from 0 to 1"),
        (lambda m: firmware_host.scan_paths(m, "x", threshold=float("nan")), "threshold must be a number from 0 to 1"),
        (lambda m: firmware_host.scan_paths(m, "x", cell_size=float("nan")), "cell_size must be a number from 8 to 10000"),
        (lambda m: bench_models(m, runs=0), "runs must be a whole number from 1 to 1000000"),
        (lambda m: bench_models(m, warmup=-1), "warmup must be a whole number from 0 to 100000"),
        (lambda m: bench_models(m, threads=[]), "threads must hold at least one thread count"),
        (lambda m: bench_models(m, threads=[1, 0]), "threads must be a whole number from 1 to 64"),
        (
            lambda m: firmware_host.triage(Classifier.load(m).classify(np.full((64, 64, 3), (200, 80, 160), np.uint8)), float("nan")),
            "threshold must be a number from 0 to 1",
        ),
    ],
)
def test_the_api_refuses_what_the_command_line_refuses(models, call, says):
    with pytest.raises(ValueError, match=says):
        call(models.export)


def test_precision_in_any_case(models):
    assert Classifier.load(models.export, precision="INT8").precision.value == "int8"


def test_loading_a_sidecar_or_an_image_as_the_model_says_so(models, data):
    from firmware_host.errors import ModelError

    with pytest.raises(ModelError, match=r"is the metadata of a model; give the model \(model_int8.tflite\) or its folder"):
        Classifier.load(models.export / "model_int8.json")
    with pytest.raises(ModelError, match="is an image, not a model"):
        Classifier.load(next((data / "monocyte").iterdir()))


def test_a_process_forked_while_another_thread_classifies_can_classify(models):
    """A fork while another thread held the Classifier's lock gave the child a lock nobody could release: it hung on
    its first image (a review). The child gets a fresh lock."""
    import multiprocessing
    import threading

    clf = Classifier.load(models.export)
    image = np.full((clf.input_size, clf.input_size, 3), 128, np.uint8)
    held, done = threading.Event(), threading.Event()

    def hold():
        with clf._lock:  # as a thread inside predict_scored would
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=clf.predict_array, args=(image,))
        child.start()
        child.join(20)
        hung = child.is_alive()
        if hung:
            child.kill()
        assert not hung and child.exitcode == 0
    finally:
        done.set()
        t.join()
