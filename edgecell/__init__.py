"""edgecell: blood-cell classification for Raspberry Pi-class devices.

The package imports nothing heavy at start-up: TensorFlow is imported lazily, and only by
training, evaluation and conversion code. The Pi runtime lives in ``firmware_host``.
"""

__version__ = "0.3.0"

CLASSES = ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil")
"""The five cell types, in the order the model's outputs use by default."""
