"""The TensorFlow-free runtime that runs edgecell models on a Raspberry Pi.

Imports only numpy, Pillow and a TFLite interpreter (see :mod:`firmware_host.interpreter`).
"""

from firmware_host.errors import DataError, EdgecellError, ImageError, ModelError, RuntimeMissingError

__all__ = ["DataError", "EdgecellError", "ImageError", "ModelError", "RuntimeMissingError"]
