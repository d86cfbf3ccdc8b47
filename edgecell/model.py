"""The edge-sized CNN: Conv2D + MaxPooling blocks, global average pooling, Dropout, Dense, Softmax.

Rescaling lives inside the model, so the runtime feeds plain RGB pixels 0-255.

The default shape (the defaults of :class:`ModelSpec`) is built for int8: a 2x2 stride-2 stem
and MaxPooling take the image to low resolution after one layer, and the compute sits in wide
layers at low resolution, which int8 runs many times faster than float32. The measurements behind
it, and the designs tried, are in docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ModelSpec:
    """Shape of the network.

    Attributes:
        input_size: square input in pixels.
        n_classes: outputs of the softmax.
        widths: filters of the Conv2D layers of each block; every block ends with 2x2 MaxPooling.
        dropout: dropout rate before the final Dense layer.
        depths: Conv2D layers in each block (None: one per block).
        stem_stride: stride of the very first convolution (1: full resolution).
        stem_kernel: kernel size of the very first convolution (every other one is 3x3).
    """

    input_size: int
    n_classes: int
    widths: tuple[int, ...] = (32, 64, 128)
    dropout: float = 0.3
    depths: tuple[int, ...] | None = (1, 2, 2)
    stem_stride: int = 2
    stem_kernel: int = 2

    def block_depths(self) -> tuple[int, ...]:
        """Convolutions per block, one entry per width."""
        if self.depths is None:
            return (1,) * len(self.widths)
        if len(self.depths) != len(self.widths):
            raise ValueError(f"{len(self.depths)} depths for {len(self.widths)} widths")
        return tuple(self.depths)


def build_model(spec: ModelSpec, seed: int = 0):
    """Build (uncompiled) the Keras model for ``spec``."""
    from edgecell.tfutil import import_tf

    tf = import_tf()
    keras = tf.keras
    layers = keras.layers
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, (w, depth) in enumerate(zip(spec.widths, spec.block_depths())):
        for j in range(depth):
            name = f"{i + 1}" if depth == 1 else f"{i + 1}_{j + 1}"
            stem = i == 0 and j == 0
            stride = spec.stem_stride if stem else 1
            x = layers.Conv2D(w, spec.stem_kernel if stem else 3, strides=stride, padding="same", use_bias=False, kernel_initializer=init, name=f"conv{name}")(
                x
            )
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{name}")(x)  # short memory: stable validation while weights move
            x = layers.ReLU(name=f"relu{name}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(spec.dropout, seed=seed, name="dropout")(x)
    x = layers.Dense(spec.n_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="edgecell_cnn")


CLASSES_LAYER = "classes"
"""The last layer of a model that learnt ``other`` as its types: it adds the types' probabilities up into the classes."""


def merge_matrix(targets: list[str], classes: list[str]) -> np.ndarray:
    """(targets, classes) 0/1 matrix: target ``t`` counts towards the class :func:`firmware_host.paths.class_of` names."""
    from firmware_host.paths import class_of

    m = np.zeros((len(targets), len(classes)), dtype=np.float32)
    for i, t in enumerate(targets):
        m[i, classes.index(class_of(t))] = 1.0
    return m


def with_classes(model, targets: list[str], classes: list[str]):
    """``model`` (one softmax output per learning target, :meth:`edgecell.data.Dataset.targets`) with a last, fixed
    layer that adds the targets' probabilities up into ``classes``: what every later step (calibration, the never-seen
    score, conversion, the Pi) sees is a model of ``classes``. ``model`` itself when the two are the same."""
    if list(targets) == list(classes):
        return model
    from edgecell.tfutil import import_tf

    tf = import_tf()
    merge = tf.keras.layers.Dense(len(classes), use_bias=False, trainable=False, name=CLASSES_LAYER)
    out = merge(model.outputs[0])
    merge.set_weights([merge_matrix(list(targets), list(classes))])
    return tf.keras.Model(model.input, out, name=model.name)  # one input, not a list of one: callers pass a batch


def learnt_outputs(model):
    """``model`` without :func:`with_classes`'s last layer: one output per learning target. ``model`` itself
    when it has no such layer (it learnt its classes as they are)."""
    from edgecell.tfutil import import_tf

    if CLASSES_LAYER not in {layer.name for layer in model.layers}:
        return model
    tf = import_tf()
    return tf.keras.Model(model.input, model.get_layer(CLASSES_LAYER).input, name=model.name)


def target_matrix(labels: list[str], types: list[str], targets: list[str], classes: list[str]) -> np.ndarray:
    """(N, targets) what each cell teaches the learnt outputs: its own type where the model has an output for it
    (a clinic's lymphocytes teach the lymphocyte output), else its class spread evenly over that class's outputs."""
    from firmware_host.paths import class_of

    merge = merge_matrix(targets, classes)
    out = np.zeros((len(labels), len(targets)), dtype=np.float32)
    for i, (label, typ) in enumerate(zip(labels, types)):
        if typ in targets and class_of(typ) == label:
            out[i, targets.index(typ)] = 1.0
        else:
            col = merge[:, classes.index(label)]
            out[i] = col / col.sum()
    return out


def count_macs(spec: ModelSpec) -> int:
    """Multiply-accumulates of one forward pass (convolutions and the dense layer)."""
    macs = 0
    size = spec.input_size
    cin = 3
    for i, (w, depth) in enumerate(zip(spec.widths, spec.block_depths())):
        for j in range(depth):
            if i == 0 and j == 0 and spec.stem_stride > 1:
                size = -(-size // spec.stem_stride)  # "same" padding: ceil
            k = spec.stem_kernel if i == 0 and j == 0 else 3
            macs += size * size * w * cin * k * k
            cin = w
        size //= 2
    macs += cin * spec.n_classes
    return macs


def with_features(model):
    """``model`` with a second output: the pooled features (:data:`firmware_host.otherscore.FEATURES_LAYER`)
    that the never-seen score reads. The same weights; what ``convert`` exports when the run has a score."""
    from edgecell.tfutil import import_tf
    from firmware_host.otherscore import FEATURES_LAYER

    tf = import_tf()
    return tf.keras.Model(model.inputs, [model.outputs[0], model.get_layer(FEATURES_LAYER).output], name=f"{model.name}_features")


def predict_with_features(model, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and pooled features of uint8 images, in batches (float64)."""
    net = with_features(model)
    probs, feats = [], []
    for i in range(0, len(x), batch):
        p, f = net([x[i : i + batch].astype(np.float32)], training=False)
        probs.append(np.asarray(p, np.float64))
        feats.append(np.asarray(f, np.float64))
    if not probs:
        return np.zeros((0, model.output_shape[-1])), np.zeros((0, net.outputs[1].shape[-1]))
    return np.concatenate(probs), np.concatenate(feats)
