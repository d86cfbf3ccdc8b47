"""Soak: classify 20,000 images in one process; resident memory must not creep.

Not part of the default run (``slow``). Run it with either of::

    make test-all                                   # the whole suite, slow tests included
    .venv/bin/pytest -m slow tests/test_soak.py -s  # just this; -s prints the RSS figures

One process (a fresh Python without TensorFlow, as on the Pi) loads the int8 model once and
streams 20,000 paths through ``Classifier.classify_many`` - a few hundred real images (or
generated ones when ../shared/bloodcells is absent) repeated, with a few unreadable files among
them so the error path is soaked too. It samples ``VmRSS`` from /proc/self/status every 1,000
images. After the first 1,000 (caches, thread pool and interpreter arenas warm), RSS may not grow
by more than 10 percent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._tflite_fixtures import build_models, save_jpeg

from .conftest import CLASSES, REAL_DATA

N_IMAGES = 20_000
WARM = 1_000
MAX_GROWTH = 0.10

SCRIPT = r"""
import json, sys
from firmware_host.errors import ImageError
from firmware_host.runtime import Classifier, Prediction

model, listing, n, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(listing, encoding="utf-8", errors="surrogateescape") as fh:
    paths = fh.read().splitlines()

def rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

clf = Classifier.load(model, threads=1)
ok = bad = 0
labels = {}
samples = []
for i, (path, res) in enumerate(clf.classify_many(paths[i % len(paths)] for i in range(n)), 1):
    if isinstance(res, ImageError):
        bad += 1
    else:
        assert isinstance(res, Prediction)
        ok += 1
        labels[res.label] = labels.get(res.label, 0) + 1
    if i % every == 0:
        samples.append([i, rss_kib()])
print(json.dumps({"ok": ok, "bad": bad, "labels": labels, "samples": samples}))
"""


def _images(tmp: Path) -> list[Path]:
    if (REAL_DATA / "MANIFEST.csv").is_file():
        return [p for c in CLASSES for p in sorted((REAL_DATA / c).iterdir())[:80]]
    rng = np.random.default_rng(0)
    out = []
    for k in range(400):
        img = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 30, (360, 363, 3)), 0, 255).astype(np.uint8)
        out.append(save_jpeg(tmp / "gen" / f"cell_{k:03d}.jpg", img))
    return out


@pytest.mark.slow
def test_classify_20000_images_memory_is_flat(tmp_path_factory, tmp_path):
    models = build_models(tmp_path_factory)
    good = _images(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.jpg").write_bytes(Path(good[0]).read_bytes()[:500])
    (bad / "empty.jpg").write_bytes(b"")
    listing = [str(p) for p in good[:200]] + [str(bad / "truncated.jpg")] + [str(p) for p in good[200:]] + [str(bad / "empty.jpg")]
    (tmp_path / "paths.txt").write_text("\n".join(listing) + "\n", encoding="utf-8", errors="surrogateescape")

    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models.int8), str(tmp_path / "paths.txt"), str(N_IMAGES), "1000"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=1800,
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    cycles, rest = divmod(N_IMAGES, len(listing))
    assert rep["ok"] + rep["bad"] == N_IMAGES
    assert rep["bad"] == 2 * cycles + (rest > 200) + (rest > len(listing) - 1)

    samples = rep["samples"]
    base = dict(samples)[WARM]
    peak = max(kib for i, kib in samples if i >= WARM)
    growth = (peak - base) / base
    report = (
        f"soak: {N_IMAGES} images ({rep['bad']} unreadable), RSS after {WARM}: {base / 1024:.1f} MiB, "
        f"peak after: {peak / 1024:.1f} MiB, final: {samples[-1][1] / 1024:.1f} MiB, growth {100 * growth:+.1f}%"
    )
    print(report)
    print("soak: RSS MiB per 1000 images:", " ".join(f"{kib / 1024:.1f}" for _, kib in samples))
    (tmp_path / "soak.json").write_text(json.dumps({"report": report, **rep}, indent=1))
    assert growth <= MAX_GROWTH, report + "\n" + json.dumps(samples)
