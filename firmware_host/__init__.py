"""The TensorFlow-free runtime that runs edgecell models on a Raspberry Pi.

Imports only numpy, Pillow and a TFLite interpreter (see :mod:`firmware_host.interpreter`), and
nothing from ``edgecell`` or ``converters``. The Python API::

    from firmware_host import Classifier, classify_paths

    clf = Classifier.load("export")                      # a .tflite or an export folder; SHA-256 checked
    pred = clf.classify("cell.jpg")                      # a path, PIL image or RGB array -> Prediction
    summary = classify_paths("export", ["slides/"], csv_out="results.csv")   # what `edgecell classify` does
    summary = scan_paths("export", ["fields/"], json_out="scan.json")         # what `edgecell scan` does

The names below are imported on first use, so ``import firmware_host`` stays light.
"""

from firmware_host.errors import DataError, EdgecellError, ImageError, ModelError, RuntimeMissingError

_LAZY = {
    "Classifier": "firmware_host.runtime",
    "Prediction": "firmware_host.runtime",
    "triage": "firmware_host.runtime",
    "ClassifyJob": "firmware_host.classify",
    "ClassifyOptions": "firmware_host.classify",
    "ClassifySummary": "firmware_host.classify",
    "classify_paths": "firmware_host.classify",
    "bench_models": "firmware_host.bench",
    "ScanJob": "firmware_host.scan",
    "ScanOptions": "firmware_host.scan",
    "ScanSummary": "firmware_host.scan",
    "scan_paths": "firmware_host.scan",
}

__all__ = ["DataError", "EdgecellError", "ImageError", "ModelError", "RuntimeMissingError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'firmware_host' has no attribute {name!r}")
