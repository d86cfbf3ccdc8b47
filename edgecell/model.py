"""The edge-sized CNN: Conv2D + MaxPooling blocks, global average pooling, Dropout, Dense, Softmax.

Rescaling lives inside the model, so the runtime feeds plain RGB pixels 0-255.

The default shape (the defaults of :class:`ModelSpec`) is built for int8: a 2x2 stride-2 stem
and MaxPooling take the image to low resolution after one layer, and the compute sits in wide
layers at low resolution, which int8 runs many times faster than float32. The measurements behind
it, and the designs tried, are in docs/design.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from firmware_host.mirrors import VIEWS, check_views


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
        views: mirrored views of each image whose outputs are averaged (test-time augmentation,
            :func:`with_views`; 1: the image alone). Built around the trained network, not into it.
    """

    input_size: int
    n_classes: int
    widths: tuple[int, ...] = (32, 64, 128)
    dropout: float = 0.3
    depths: tuple[int, ...] | None = (1, 2, 2)
    stem_stride: int = 2
    stem_kernel: int = 2
    views: int = 4  # docs/design.md, "Averaging mirrored views"

    def blocks_that_fit(self) -> int:
        """How many blocks the input can pass: each block's 2x2 pooling halves the side (the stem convolution divides
        it by its stride first), and a side pooled below one pixel is no image (Keras raises deep inside fitting)."""
        side, fit = -(-self.input_size // self.stem_stride), 0
        for _ in self.widths:
            side //= 2
            if side < 1:
                break
            fit += 1
        return fit

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
    """The trained network of ``model``: without its views (:func:`with_views`) and without :func:`with_classes`'s
    last layer, one output per learning target, on one image at a time. What fine-tuning trains."""
    from edgecell.tfutil import import_tf

    model = without_views(model)
    if CLASSES_LAYER not in {layer.name for layer in model.layers}:
        return model
    tf = import_tf()
    return tf.keras.Model(model.input, model.get_layer(CLASSES_LAYER).input, name=model.name)


PROTOTYPE_FEATURES = "prototype_features"
PROTOTYPE_WHITEN = "prototype_whiten"
PROTOTYPE_HEAD = "prototypes"


def pooled_features(model):
    """The network inside ``model`` (one image, no views) with one output: what a prototype head
    (:func:`with_prototypes`) reads. Each block's output before its pooling, averaged over the image, then the
    pooled features of the last block (the never-seen score's ``gap`` layer), joined: early blocks as well as the
    last told a held-out lab's cell types apart better than the last alone (docs/design.md, "Adapting by
    prototypes")."""
    from edgecell.tfutil import import_tf
    from firmware_host.otherscore import FEATURES_LAYER

    keras = import_tf().keras
    net = learnt_outputs(model)
    pools = [layer for layer in net.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    outs = [keras.layers.GlobalAveragePooling2D(name=f"pooled_{p.name}")(p.input) for p in pools[:-1]]
    outs.append(net.get_layer(FEATURES_LAYER).output)
    joined = keras.layers.Concatenate(name=PROTOTYPE_FEATURES)(outs) if len(outs) > 1 else outs[0]
    return keras.Model(net.input, joined, name=f"{net.name}_pooled")


def with_prototypes(model, head, scale: float, classes: list[str]):
    """``model`` with its last layers replaced by a nearest-prototype head (:class:`edgecell.adapt.PrototypeHead`)
    over :func:`pooled_features`: a Dense layer that whitens the features, a Dense layer whose output ``k`` is
    ``scale`` times minus half the squared distance to prototype ``k`` (up to a term the same for all), a softmax
    over the prototypes, and their probabilities added up into ``classes`` (prototype ``k`` counts towards
    ``class_of(head.names[k])``). The convolutions are ``model``'s, unchanged, and so are its views."""
    from edgecell.tfutil import import_tf

    keras = import_tf().keras
    feats = pooled_features(model)
    whiten = keras.layers.Dense(head.whitening.shape[1], name=PROTOTYPE_WHITEN)
    dense = keras.layers.Dense(len(head.names), name=PROTOTYPE_HEAD)
    probs = keras.layers.Softmax(name="prototype_probs")(dense(whiten(feats.output)))
    whiten.set_weights([head.whitening.astype(np.float32), (-head.centre @ head.whitening).astype(np.float32)])
    dense.set_weights([(scale * head.means.T).astype(np.float32), (scale * head.bias).astype(np.float32)])
    net = with_classes(keras.Model(feats.input, probs, name=without_views(model).name), list(head.names), classes)
    return with_views(net, views_of(model))


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


VIEWS_LAYER = "views"
"""The first layer of a model that averages its outputs over mirrored views of the image (:func:`with_views`)."""
VIEW_MEAN_LAYER = "view_mean"
"""The layer that averages the views' outputs."""


@functools.cache
def _view_layers():
    """The two Keras layers of :func:`with_views`, defined on first use (Keras is imported only then) and
    registered, so that a saved model with views loads (:func:`load_model`)."""
    from edgecell.tfutil import import_tf

    import_tf()  # TensorFlow's settings first
    import keras

    ops = keras.ops

    @keras.saving.register_keras_serializable(package="edgecell")
    class MirroredViews(keras.layers.Layer):
        """(B, H, W, C) -> (views * B, H, W, C): the batch, then its mirror images (a cell has no up or left)."""

        def __init__(self, views: int, **kwargs):
            super().__init__(**kwargs)
            problem = check_views(views)
            if problem:
                raise ValueError(f"views {problem}")
            self.views = views

        def call(self, x):
            out = []
            for transpose, rows, cols in VIEWS[: self.views]:  # firmware_host.mirrors: the runtime's own order
                v = ops.transpose(x, (0, 2, 1, 3)) if transpose else x
                v = ops.flip(v, axis=1) if rows else v
                out.append(ops.flip(v, axis=2) if cols else v)
            return ops.concatenate(out, axis=0)

        def compute_output_shape(self, shape):
            return (None, *shape[1:])

        def get_config(self):
            return {**super().get_config(), "views": self.views}

    @keras.saving.register_keras_serializable(package="edgecell")
    class ViewMean(keras.layers.Layer):
        """(views * B, ...) -> (B, ...): the mean over the views of each image."""

        def __init__(self, views: int, **kwargs):
            super().__init__(**kwargs)
            self.views = views

        def call(self, x):
            return ops.mean(ops.reshape(x, (self.views, -1, *x.shape[1:])), axis=0)

        def compute_output_shape(self, shape):
            return (None, *shape[1:])

        def get_config(self):
            return {**super().get_config(), "views": self.views}

    return MirroredViews, ViewMean


def with_views(model, views: int):
    """``model`` run on ``views`` mirrored copies of each image, its outputs averaged (test-time augmentation:
    fewer errors that depend on how the cell lies in the frame). The network's weights are shared, so the file
    hardly grows; the compute grows ``views`` times. ``model`` itself for one view."""
    if views == 1:
        return model
    return _around_views(model, views, [VIEW_MEAN_LAYER], model.name)


def _around_views(net, views: int, names: Sequence[str], name: str):
    """A model of one image: ``net`` on the image's ``views`` mirrored copies, each of its outputs averaged over
    them (by a layer named from ``names``, in order; one output stays one). The one place that puts views around a
    network."""
    from edgecell.tfutil import import_tf

    keras = import_tf().keras
    layer, mean = _view_layers()
    image = keras.Input(shape=net.input_shape[1:], name="image")
    outs = net(layer(views, name=VIEWS_LAYER)(image))
    single = len(net.outputs) == 1
    outs = [mean(views, name=label)(o) for label, o in zip(names, [outs] if single else outs)]
    return keras.Model(image, outs[0] if single else outs, name=name)


def views_of(model) -> int:
    """How many views ``model`` averages (1: none, :func:`with_views`)."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(VIEWS_LAYER).views if VIEWS_LAYER in names else 1


def without_views(model):
    """The network inside :func:`with_views` (what is trained); ``model`` itself when it has no views."""
    if views_of(model) == 1:
        return model
    from edgecell.tfutil import import_tf

    keras = import_tf().keras
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def load_model(path):
    """A saved Keras model of edgecell's (views included), not compiled."""
    from edgecell.tfutil import import_tf

    keras = import_tf().keras
    _view_layers()  # registers the layers of with_views
    return keras.models.load_model(path, compile=False)


def count_macs(spec: ModelSpec) -> int:
    """Multiply-accumulates of classifying one image (convolutions and the dense layer, for each view)."""
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
    return macs * spec.views


def with_features(model):
    """``model`` with a second output: the pooled features (:data:`firmware_host.otherscore.FEATURES_LAYER`)
    that the never-seen score reads. The same weights; what ``convert`` exports when the run has a score."""
    from firmware_host.otherscore import FEATURES_LAYER

    return tapped(model, [FEATURES_LAYER], name=f"{model.name}_features")


def tapped(model, layers: Sequence[str], name: str | None = None):
    """``model`` with more outputs: its output, then those of the named inner layers, each averaged over the
    views as the probabilities are (:func:`with_views`). The same weights."""
    from edgecell.tfutil import import_tf

    keras = import_tf().keras
    name = name or f"{model.name}_tapped"
    n = views_of(model)
    if n == 1:
        return keras.Model(model.input, [model.outputs[0], *(model.get_layer(layer).output for layer in layers)], name=name)
    return _around_views(tapped(without_views(model), layers), n, [VIEW_MEAN_LAYER, *layers], name)


def run_batches(net, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Every output of the Keras ``net`` on uint8 images, in batches, as float64 (an empty batch: empty arrays)."""
    outs = [[] for _ in net.outputs]
    for i in range(0, len(x), batch):
        got = net(x[i : i + batch].astype(np.float32), training=False)
        for acc, o in zip(outs, got if len(net.outputs) > 1 else [got]):
            acc.append(np.asarray(o, np.float64))
    return [np.concatenate(acc) if acc else np.zeros((0, o.shape[-1])) for acc, o in zip(outs, net.outputs)]


def predict_with_features(model, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and pooled features of uint8 images, in batches (float64)."""
    probs, feats = run_batches(with_features(model), x, batch)
    return probs, feats
