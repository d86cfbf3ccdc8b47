"""Tiny TFLite models for the runtime and classify tests (a plain module; tests import it).

Import it as ``tests._tflite_fixtures``. The models are committed under ``tests/fixtures/tiny/``
(a few kilobytes), so the runtime's tests need no TensorFlow and run in the Pi-only environment
(``make pi-check``): a seeded Keras model (Rescaling(1/255) + Conv2D(4) +
GlobalAveragePooling + Dense(5, softmax), input 32x32x3), converted to float32 and to full-int8
TFLite (int8 input/output), plus a uint8-input/-output variant, each with the sidecar written by
:func:`firmware_host.metadata.write_metadata`. Keras' own probabilities on a fixed set of
images (:func:`comparison_images`) are stored beside them (``keras_probs.json``), so tests
compare against Keras without re-running it.

Regenerate them (TensorFlow needed, only for this) with ``python tests/make_tflite_fixtures.py``.
:func:`build_models` copies them into a temporary folder for each session, with the sidecar's
preprocessing record set to this runtime's (:func:`firmware_host.preprocess.describe`): the
models are random, so a preprocessing version change does not make them stale.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from firmware_host.errors import ModelError
from firmware_host.metadata import ModelMetadata, Precision, Quantization, read_metadata, sha256_file, write_metadata
from firmware_host.preprocess import describe

CLASSES = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
OTHER_CLASSES = ["basophil", "erythroblast", "monocyte", "myeloblast", "other", "seg_neutrophil"]
"""The classes of the export_other/ models (with ``other`` and the never-seen score's features output)."""
SIZE = 32
SEED = 8  # picked so that the random model answers three different classes on the comparison images
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tiny"
"""The committed models: export/ (float32, int8), export_uint8/ (int8 with uint8 I/O), keras_probs.json;
export_other/ (float32, int8: six classes with ``other``, a second output of 4 pooled features and a
never-seen score in the sidecar) and keras_other.json (Keras' probabilities and features)."""


@dataclass
class TinyModels:
    root: Path
    export: Path  # model_float32.tflite + model_int8.tflite (+ sidecars)
    export_uint8: Path  # model_int8.tflite with uint8 input/output
    float32: Path
    int8: Path
    uint8: Path
    images: np.ndarray  # (N, SIZE, SIZE, 3) uint8, the comparison set
    keras_probs: np.ndarray  # (N, 5) Keras softmax on ``images``

    @property
    def keras_file(self) -> Path:
        """A saved Keras model of the same design (for ``bench --keras``); skips the test without TensorFlow."""
        pytest.importorskip("tensorflow")
        path = self.root / "model.keras"
        if not path.is_file():
            _keras_model().save(path)
        return path


_CACHE: dict[str, TinyModels] = {}


def comparison_images(n: int = 24, seed: int = SEED) -> np.ndarray:
    """Random images with a per-image colour cast, so the tiny model's answers differ between them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3)).astype(np.float64)
    noise = rng.normal(0, 40, size=(n, SIZE, SIZE, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _keras_model(n_classes: int = 5, features: bool = False):
    import keras

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    # Linear conv with a negative bias: features change sign with an image's colour, so the
    # random model's top class differs between images (a useful test, unlike a constant answer).
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed=SEED), bias_initializer=keras.initializers.Constant(-1.0))(x)
    gap = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 3.0, seed=SEED + 1))(gap)
    return keras.Model(inputs, [x, gap] if features else x)


def _convert(model, io_type=None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_type is not None:
        rng = np.random.default_rng(SEED + 2)

        def representative():
            for _ in range(8):
                yield [rng.integers(0, 256, size=(1, SIZE, SIZE, 3)).astype(np.float32)]
            for img in comparison_images(56, SEED + 3):
                yield [img[None].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": expected for int8 I/O
        warnings.simplefilter("ignore", UserWarning)
        return conv.convert()


def write_model(path: Path, data: bytes, precision: Precision, classes=CLASSES, input_size=SIZE, temperature=1.0, sha256=None, other_score=None) -> Path:
    """Write a .tflite and its sidecar (quantisation read back with the interpreter)."""
    from firmware_host.interpreter import load_interpreter
    from firmware_host.runtime import split_outputs

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    it, _ = load_interpreter(model_content=data, num_threads=1)
    outs = it.get_output_details()
    try:
        out = split_outputs(outs, len(classes))[0]
    except ModelError:  # a deliberately odd model (the tests of what the runtime refuses)
        out = outs[0]
    qi, qo = it.get_input_details()[0]["quantization"], out["quantization"]
    meta = ModelMetadata(
        classes=list(classes),
        input_size=input_size,
        precision=precision,
        sha256=sha256 or sha256_file(path),
        file=path.name,
        preprocessing=describe(),
        input_quantization=Quantization(float(qi[0]), int(qi[1])) if qi[0] else None,
        output_quantization=Quantization(float(qo[0]), int(qo[1])) if qo[0] else None,
        temperature=temperature,
        edgecell_version="test",
        other_score=dict(other_score or {}),
    )
    write_metadata(path, meta)
    return path


def build_models(tmp_path_factory) -> TinyModels:
    """Copy the committed models into a session folder (once) and return them; no TensorFlow."""
    if "models" in _CACHE:
        return _CACHE["models"]
    root = tmp_path_factory.mktemp("tiny_tflite")
    for sub in ("export", "export_uint8", "export_other"):
        for src in sorted((FIXTURES / sub).glob("*.tflite")):
            dst = copy_model(src, root / sub)
            meta = read_metadata(dst)
            meta.preprocessing = describe()
            write_metadata(dst, meta)
    keras_probs = np.asarray(json.loads((FIXTURES / "keras_probs.json").read_text())["probs"], dtype=np.float64)
    export = root / "export"
    models = TinyModels(
        root,
        export,
        root / "export_uint8",
        export / Precision.float32.filename,
        export / Precision.int8.filename,
        root / "export_uint8" / Precision.int8.filename,
        comparison_images(),
        keras_probs,
    )
    _CACHE["models"] = models
    return models


def regenerate(out: Path = FIXTURES) -> None:
    """Rebuild the committed models with TensorFlow (``python tests/make_tflite_fixtures.py``)."""
    import tensorflow as tf

    model = _keras_model()
    images = comparison_images()
    keras_probs = np.asarray(model.predict(images.astype(np.float32), verbose=0), dtype=np.float64)
    write_model(out / "export" / Precision.float32.filename, _convert(model), Precision.float32)
    write_model(out / "export" / Precision.int8.filename, _convert(model, tf.int8), Precision.int8)
    write_model(out / "export_uint8" / Precision.int8.filename, _convert(model, tf.uint8), Precision.int8)
    text = json.dumps({"images": "comparison_images()", "seed": SEED, "probs": keras_probs.tolist()}) + "\n"
    (out / "keras_probs.json").write_text(text)
    regenerate_other(out)


def regenerate_other(out: Path = FIXTURES) -> None:
    """Rebuild export_other/ and keras_other.json (TensorFlow needed)."""
    import tensorflow as tf

    images = comparison_images()
    # six classes with other, the pooled features as a second output and a never-seen score whose
    # threshold half of the comparison images pass
    from edgecell.metrics import fit_feature_distance
    from firmware_host.otherscore import OtherScore

    two = _keras_model(len(OTHER_CLASSES), features=True)
    probs, feats = (np.asarray(a, dtype=np.float64) for a in two.predict(images.astype(np.float32), verbose=0))
    means, whitening = fit_feature_distance(feats, probs.argmax(axis=1), len(OTHER_CLASSES))
    score = OtherScore(means, whitening, 0.0, 0.5)
    score = score.with_threshold(float(np.median(score.scores(feats))))
    for prec, io_type in ((Precision.float32, None), (Precision.int8, tf.int8)):
        write_model(out / "export_other" / prec.filename, _convert(two, io_type), prec, classes=OTHER_CLASSES, other_score=score.to_dict())
    text = json.dumps({"images": "comparison_images()", "seed": SEED, "probs": probs.tolist(), "features": feats.tolist()}) + "\n"
    (out / "keras_other.json").write_text(text)


def other_models(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The export_other/ folder of :func:`build_models` and Keras' probabilities and features on :func:`comparison_images`."""
    models = build_models(tmp_path_factory)
    d = json.loads((FIXTURES / "keras_other.json").read_text())
    return models.root / "export_other", np.asarray(d["probs"]), np.asarray(d["features"])


def copy_model(src: Path, dst_dir: Path) -> Path:
    """Copy a .tflite and its sidecar (sealed, as convert wrote it) into ``dst_dir``; return the new .tflite path. A
    test that edits the sidecar's JSON by hand seals it again with :func:`reseal` to make the sidecar it needs (an older
    export, a failed parity check)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst_dir / src.name)
    shutil.copy2(src.with_suffix(".json"), dst_dir / src.with_suffix(".json").name)
    return dst_dir / src.name


def reseal(model: Path) -> None:
    """Seal ``model``'s sidecar again after a test edited its JSON (its digest of the rest, as convert writes it)."""
    from firmware_host.metadata import DIGEST, sidecar_digest

    side = model.with_suffix(".json")
    d = json.loads(side.read_text())
    d[DIGEST] = sidecar_digest(d)
    side.write_text(json.dumps(d, indent=2))


def save_jpeg(path: Path, array: np.ndarray, quality: int = 92) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "JPEG", quality=quality)
    return path


def distinct_copy(src: Path, dst: Path, k: int) -> Path:
    """A copy of the JPEG ``src`` with the same pixels and other bytes (a comment segment holding ``k``): classify
    leaves out a file with the same bytes as one listed already, so a folder of many images made from a few needs
    these."""
    data = src.read_bytes()
    assert data[:2] == b"\xff\xd8", f"{src} is not a JPEG"
    note = f"copy {k}".encode()
    dst.write_bytes(data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + data[2:])
    return dst


def labelled_folder(root: Path, per_class: int = 3, size: int = 48, seed: int = 7) -> Path:
    """``root/<class>/img_k.jpg``: a small data set in the Kaggle layout (random pixels)."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        for k in range(per_class):
            base = rng.integers(0, 256, size=(1, 1, 3))
            img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            save_jpeg(root / c / f"{c}_{k}.jpg", img)
    return root
