"""The edge-sized CNN: Conv2D + MaxPooling blocks, global average pooling, Dropout, Dense, Softmax.

Rescaling lives inside the model, so the runtime feeds plain RGB pixels 0-255.

The default shape (the defaults of :class:`ModelSpec`) was chosen by measurement, int8 first.
At 112x112, with ai-edge-litert (XNNPACK) on the 2-core x86 benchmark machine:

* The stem is a 2x2 convolution with stride 2 (32 filters), then MaxPooling: the network reaches
  28x28 after one layer. An int8 convolution of the 3 colour channels at full resolution is
  slower than the same layer in float32 (0.51 against 0.16 ms for
  a 3x3 convolution to 16 filters); a 3x3 stride-2 stem cost 0.13 ms and the 2x2 one 0.08 ms.
* The compute sits in wide layers at low resolution (two 64-filter convolutions at 28x28 and two
  128-filter ones at 14x14), which int8 runs 8 to 24 times faster than float32 (timed layer
  by layer).

Measured alternatives on ../shared/bloodcells (seed 42, 50 epochs unless said; test macro-F1,
and int8 ms per image on 1 thread):

==================================================  ========  =======
design                                              macro-F1  int8 ms
==================================================  ========  =======
16/32/64/128, full-resolution 3x3 first layer       0.972     0.72
16/32/64/128, 3x3 stride-2 first layer, no pool     0.980     0.30
the same + a second 128-filter conv (60 epochs)     0.995     0.36
32/64/128, depths 1/2/2, 3x3 s2 stem (60 epochs)    0.993     0.27
the same, 4x4 stride-4 stem, no pool (60 epochs)    0.983     0.19
the same, 2x2 stride-2 stem (the default)           0.992     0.21
==================================================  ========  =======

One run each: the same design moves by about a point of macro-F1 between seeds.
"""

from __future__ import annotations

from dataclasses import dataclass


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
