"""The edge-sized CNN: Conv2D + MaxPooling blocks, global average pooling, Dropout, Dense, Softmax.

Rescaling lives inside the model, so the runtime feeds plain RGB pixels 0-255 (and the layer
folds away in TFLite conversion). Width is kept small so the int8 .tflite stays near 100 KB.

Measured, not adopted: the first block (a full-resolution convolution of the 3 colour channels)
is about three quarters of the int8 model's time with ai-edge-litert on x86 (0.42 of 0.58 ms at
112x112; int8 runs that layer slower than float32, and every later block 2 to 12 times faster).
A stride-2 first convolution instead of convolution + MaxPooling made int8 2.2 times faster than
float32 (0.32 ms), but cost test macro-F1 on the blood-cell set (0.980 at 112 px and 0.975 at
128 px, against 0.988 for this design): accuracy was kept.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelSpec:
    """Shape of the network.

    Attributes:
        input_size: square input in pixels.
        n_classes: outputs of the softmax.
        widths: filters of each Conv2D block; each block halves the resolution with MaxPooling.
        dropout: dropout rate before the final Dense layer.
    """

    input_size: int
    n_classes: int
    widths: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.3


def build_model(spec: ModelSpec, seed: int = 0):
    """Build (uncompiled) the Keras model for ``spec``."""
    from edgecell.tfutil import import_tf

    tf = import_tf()
    keras = tf.keras
    layers = keras.layers
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, w in enumerate(spec.widths):
        x = layers.Conv2D(w, 3, padding="same", use_bias=False, kernel_initializer=init, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)  # short memory: stable validation while weights move
        x = layers.ReLU(name=f"relu{i + 1}")(x)
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
    for w in spec.widths:
        macs += size * size * w * cin * 9
        cin = w
        size //= 2
    macs += cin * spec.n_classes
    return macs
