"""firmware_host.decode: the same images, order and errors from threads and from worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

import firmware_host.decode as decode
from firmware_host.decode import decode_many
from firmware_host.errors import ImageError
from firmware_host.preprocess import load_cell, load_image

pytestmark = pytest.mark.pi  # TensorFlow-free: run by `make pi-check` in the .[pi] environment too

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """40 small JPEGs and PNGs with two bad files among them (an empty one, a missing one)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(0)
    out = []
    for k in range(40):
        arr = rng.integers(0, 256, (40 + k, 50, 3), dtype=np.uint8)
        p = root / f"img_{k:02d}.{'png' if k % 5 == 0 else 'jpg'}"
        Image.fromarray(arr).save(p)
        out.append(p)
    (root / "empty.jpg").write_bytes(b"")
    out.insert(7, root / "empty.jpg")
    out.insert(23, root / "missing.jpg")
    return out


def _check(results, files):
    assert [p for p, _, _, _ in results] == [os.fspath(f) for f in files]
    for (_path, img, ms, offset), f in zip(results, files):
        if f.name in ("empty.jpg", "missing.jpg"):
            assert isinstance(img, ImageError) and ms == 0.0 and math.isnan(offset)
            with pytest.raises(ImageError) as direct:
                load_image(f, SIZE)
            assert str(img) == str(direct.value)  # the same one line as decoding it directly
        else:
            direct, direct_offset = load_cell(f, SIZE)
            np.testing.assert_array_equal(img, direct)
            np.testing.assert_array_equal(img, load_image(f, SIZE))
            assert ms > 0 and offset == pytest.approx(direct_offset, nan_ok=True)


@pytest.mark.parametrize("workers", [1, 3])
def test_threads_give_every_file_in_order(files, workers):
    _check(list(decode_many(files, SIZE, workers=workers)), files)


def test_processes_give_the_same_as_threads(files):
    _check(list(decode_many(files, SIZE, workers=2, processes=True)), files)


def test_auto_uses_processes_only_for_long_lists(files, monkeypatch):
    started = []
    real = decode._process_pool
    monkeypatch.setattr(decode, "_process_pool", lambda w: started.append(w) or real(w))
    monkeypatch.setattr(decode, "PROCESS_MIN_FILES", len(files))
    list(decode_many(files[:-1], SIZE, workers=2, processes=None))
    list(decode_many(iter(files), SIZE, workers=2, processes=None))  # an iterator has no length: threads
    list(decode_many(files, SIZE, workers=1, processes=None))  # one worker: threads
    assert started == []
    _check(list(decode_many(files, SIZE, workers=2, processes=None)), files)
    assert started == [2]


def test_falls_back_to_threads_where_processes_cannot_start(files, monkeypatch):
    monkeypatch.setattr(decode, "_process_pool", lambda w: None)
    _check(list(decode_many(files, SIZE, workers=2, processes=True)), files)


class _DeadPool:
    """A process pool whose workers have all died (killed for memory, say)."""

    def __init__(self):
        self.shut = False

    def submit(self, fn, *args):
        fut = cf.Future()
        fut.set_exception(BrokenProcessPool("a worker died"))
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut = True


def test_a_dead_worker_only_moves_its_files_here(files, monkeypatch):
    pool = _DeadPool()
    monkeypatch.setattr(decode, "_process_pool", lambda w: pool)
    _check(list(decode_many(files, SIZE, workers=2, processes=True)), files)
    assert pool.shut


def _half_a_result(started: str) -> None:
    """In a pool's worker: write the start of a result message to the pool's results pipe (a length, then only part of
    what it says), as a worker stopped while sending a chunk's results leaves it, then wait to be stopped."""
    import gc
    import struct
    from multiprocessing.queues import SimpleQueue

    results = [q for q in gc.get_objects() if isinstance(q, SimpleQueue)]
    os.write(results[-1]._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 1000)
    Path(started).touch()
    time.sleep(60)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_stopping_workers_does_not_wait_for_the_rest_of_half_a_result(tmp_path):
    """A Ctrl-C that stops the workers while one is sending its results: the pool's shutdown must still end. It waited
    for ever (once in about 50 interrupts of a 2,800-image classify): this process held the pipe's other end open."""
    import threading

    pool = decode._process_pool(1)
    if pool is None:
        pytest.skip("worker processes cannot be started here")
    started = tmp_path / "started"
    pool.submit(_half_a_result, str(started))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the worker never ran"
    decode._stop_workers(pool)  # what ordered_chunks does on Ctrl-C
    done = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    done.start()
    done.join(20)
    assert not done.is_alive(), "shutdown still waits for the rest of the half-sent results"


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids |= {int(x) for x in (task / "children").read_text().split()}
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see the worker processes")
def test_ctrl_c_during_classify_with_worker_processes(tmp_path, tmp_path_factory):
    """Ctrl-C while worker processes decode: exit 130, one line, and no worker left behind."""
    from tests._tflite_fixtures import build_models, copy_model, distinct_copy

    models = build_models(tmp_path_factory)
    model = copy_model(models.int8, tmp_path / "model")
    rng = np.random.default_rng(1)
    from PIL import Image

    folder = tmp_path / "cells"
    folder.mkdir()
    base = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(base).save(folder / "img_0000.jpg", quality=90)
    for k in range(1, 4000):  # each its own bytes: copies are classified once
        distinct_copy(folder / "img_0000.jpg", folder / f"img_{k:04d}.jpg", k)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecell", "classify", "--model", str(model), str(folder), "--csv", str(tmp_path / "out.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2:  # the forkserver (or spawned workers) have started
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no worker processes appeared (exit {proc.returncode}): {proc.communicate()}")
        time.sleep(0.01)
    time.sleep(0.3)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("classify did not stop within 60 s of Ctrl-C")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.strip()][-1] == "Interrupted: nothing half-written was kept; earlier results are intact."
    assert not (tmp_path / "out.csv").exists()
    time.sleep(0.5)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
    assert alive == [], f"worker processes left running: {alive}"


SCRIPT = """
import json, sys
import firmware_host.decode as decode
from firmware_host import classify_paths

decode.PROCESS_MIN_FILES = 4  # a long list, for this test's few files
print("started")
summary = classify_paths(sys.argv[1], [sys.argv[2]], csv_out=sys.argv[3])
print(json.dumps({"n": summary.n_images, "failed": len(summary.failed), "processes": decode.main_is_guarded()}))
"""


@pytest.mark.parametrize("guarded", ["no guard", "guard", "call outside the guard"])
def test_a_script_without_a_main_guard_is_not_run_again_by_workers(tmp_path, tmp_path_factory, guarded):
    """The README's ten-line script has no ``if __name__ == "__main__":``; worker processes import the main module, so
    on 256 or more images it ran again in each worker and failed (found by a review). Left to choose, edgecell now
    uses threads for such a script, and processes for one with the guard; either way it runs once and gives every
    image."""
    from tests._tflite_fixtures import build_models, labelled_folder

    models = build_models(tmp_path_factory)
    data = labelled_folder(tmp_path / "cells", per_class=2)
    body = {
        "no guard": SCRIPT,
        "guard": "\nif __name__ == '__main__':\n" + "".join(f"    {ln}\n" for ln in SCRIPT.strip().splitlines()),
        "call outside the guard": SCRIPT + "\nif __name__ == '__main__':\n    pass\n",
    }[guarded]
    script = tmp_path / "script.py"
    script.write_text(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, str(script), str(models.int8), str(data), str(tmp_path / "out.csv")]
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines.count("started") == 1, res.stdout  # not run again in a worker
    out = json.loads([ln for ln in lines if ln.startswith("{")][-1])
    assert out == {"n": len(list(data.rglob("*.jpg"))), "failed": 0, "processes": guarded == "guard"}


# ------------------------------------------------------------ classify_many: decode + infer per worker


@pytest.fixture(scope="module")
def int8_classifier(tmp_path_factory):
    from firmware_host.runtime import Classifier
    from tests._tflite_fixtures import build_models

    return Classifier.load(build_models(tmp_path_factory).int8, threads=1)


def _summary(results):
    return [(p, str(r)) if isinstance(r, ImageError) else (p, r.label, r.probs.tolist()) for p, r in results]


def test_classify_in_worker_processes_equals_this_process(files, int8_classifier):
    here = list(int8_classifier.classify_many(files, workers=2, processes=False))
    there = list(int8_classifier.classify_many(files, workers=2, processes=True))
    assert _summary(there) == _summary(here)  # the same bytes through the same model: identical
    assert [p for p, _ in there] == [os.fspath(f) for f in files]
    ok = [r for _, r in there if not isinstance(r, ImageError)]
    assert len(ok) == len(files) - 2 and all(r.preprocess_ms > 0 and r.inference_ms > 0 for r in ok)


def test_classify_with_dead_workers_classifies_here(files, int8_classifier, monkeypatch):
    import firmware_host.runtime as runtime

    pool = _DeadPool()
    monkeypatch.setattr(runtime, "_process_pool", lambda *a: pool)
    here = list(int8_classifier.classify_many(files, workers=2, processes=False))
    assert _summary(int8_classifier.classify_many(files, workers=2, processes=True)) == _summary(here)
    assert pool.shut
