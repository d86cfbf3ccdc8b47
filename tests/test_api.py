"""The Python API a Pi script uses (README "From Python, on the Pi"): firmware_host without the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import firmware_host
from firmware_host.bench import bench_models, speedups
from firmware_host.classify import ClassifyJob, ClassifyOptions, classify_paths
from firmware_host.errors import ImageError, first_line
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
