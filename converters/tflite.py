"""Keras -> TFLite: float32, float16 and full-integer int8, with a sanity check of the bytes.

Every conversion goes through ``tf.lite.TFLiteConverter.from_keras_model(model)`` (it works with
Keras 3 on TensorFlow 2.21). ``from_concrete_functions`` is deliberately not used: without
freezing the variables it silently writes a model that has no weights.

* float32: the plain conversion.
* float16: ``Optimize.DEFAULT`` with ``supported_types=[tf.float16]`` (float16 weights, float32
  input and output).
* int8: ``Optimize.DEFAULT``, a representative data set of float32 ``(1, S, S, 3)`` batches with
  pixel values 0-255 (the model's Rescaling layer is inside the graph, so the int8 input is
  quantised pixels), ``TFLITE_BUILTINS_INT8`` only, int8 input and int8 output.

The converter's C++ log lines are silenced (``TF_CPP_MIN_LOG_LEVEL``, absl and file descriptors
1 and 2 redirected around ``convert()``); a failed conversion is one :class:`ModelError` line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from firmware_host.atomic import raise_if_interrupted
from firmware_host.errors import ModelError, first_line
from firmware_host.metadata import Precision


def _converter(tf, model):
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert(model, precision: Precision | str, representative_dataset: Callable | None = None) -> bytes:
    """Convert a Keras model to TFLite bytes of ``precision``.

    ``representative_dataset`` is required for int8: a callable returning an iterator of
    ``[float32 array (1, S, S, 3)]`` with values 0-255.
    """
    from edgecell.tfutil import import_tf, quiet_fds

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = import_tf()
    precision = Precision(precision)
    conv = _converter(tf, model)
    if precision is Precision.float16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision is Precision.int8:
        if representative_dataset is None:
            raise ValueError("int8 conversion needs a representative data set")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    try:
        with quiet_fds(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Statistics for quantized inputs were expected ..."
            data = conv.convert()
    except Exception as exc:  # converter errors come as ConverterError/RuntimeError with pages of MLIR
        raise_if_interrupted()  # a signal the converter's C++ turned into an error of its own is still an interrupt
        raise ModelError(f"TFLite {precision.value} conversion failed ({first_line(exc)}); re-run with EDGECELL_DEBUG=1 for the converter log") from None
    return bytes(data)


def weight_count(model) -> int:
    """Trainable parameters (kernels, biases, batch-norm scale/shift): what the file must carry."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


BYTES_PER_WEIGHT = {Precision.float32: 4, Precision.float16: 2, Precision.int8: 1}


def check_size(data: bytes, precision: Precision | str, n_weights: int, name: str = "<model>") -> None:
    """Refuse bytes whose size cannot hold the model's weights.

    A weightless model (the classic ``from_concrete_functions`` trap) is a few KB whatever the
    network; a healthy one is about ``bytes-per-weight x weights`` plus a few KB of graph. Batch-norm
    folding removes a little, so the floor is 75% of that product.
    """
    precision = Precision(precision)
    per = BYTES_PER_WEIGHT[precision]
    floor = int(0.75 * per * n_weights)
    if len(data) < floor:
        raise ModelError(
            f"the {precision.value} TFLite model is {len(data):,} bytes, but {n_weights:,} weights need at least {floor:,}: "
            "the converter wrote a model without its weights",
            name,
        )
    # 4 bytes per weight at most, plus generous room for the graph, names and quantisation tables
    ceiling = 4 * n_weights * 2 + 512 * 1024
    if len(data) > ceiling:
        raise ModelError(f"the {precision.value} TFLite model is {len(data):,} bytes, far more than {n_weights:,} weights explain", name)
    if data[4:8] != b"TFL3":
        raise ModelError(f"the {precision.value} conversion did not produce a TFLite flatbuffer (no TFL3 identifier)", name)


def tensor_io(data: bytes, n_classes: int | None = None) -> dict:
    """dtype and quantisation (:class:`firmware_host.runtime.TensorQuant`) of the input and output tensors, read from an interpreter.

    With two outputs (probabilities and the never-seen score's features), ``output`` is the one of
    ``n_classes`` values (:func:`firmware_host.runtime.split_outputs`) and ``features`` the other.
    """
    from edgecell.tfutil import quiet_fds
    from firmware_host.interpreter import load_interpreter
    from firmware_host.runtime import split_outputs, tensor_quant

    with quiet_fds():
        it, _ = load_interpreter(model_content=data, num_threads=1, name="<converted model>")
    outs = it.get_output_details()
    i = it.get_input_details()[0]
    o, f = split_outputs(outs, n_classes, "<converted model>") if n_classes else (outs[0], None)
    io = {"input": tensor_quant(i), "output": tensor_quant(o), "input_shape": [int(x) for x in i["shape"]], "output_shape": [int(x) for x in o["shape"]]}
    if f is not None:
        io["features"] = tensor_quant(f)
    return io


def check_int8(data: bytes, name: str = "<model>", n_classes: int | None = None) -> dict:
    """The int8 model must take and give int8 tensors with a usable scale; returns :func:`tensor_io`."""
    io = tensor_io(data, n_classes)
    for role in [r for r in ("input", "output", "features") if r in io]:
        q = io[role]
        if np.dtype(q.dtype) != np.dtype(np.int8):
            raise ModelError(f"the int8 model's {role} tensor is {np.dtype(q.dtype).name}, expected int8", name)
        if not (q.scale > 0 and np.isfinite(q.scale)):
            raise ModelError(f"the int8 model's {role} tensor has no quantisation scale", name)
    return io
