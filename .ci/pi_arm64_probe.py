"""Raw model outputs for ``make pi-arm64``: what the interpreter returned, before any post-processing.

Run by .ci/pi_arm64.sh with the same arguments on x86 and inside the emulated arm64 root, using only
``firmware_host`` (TensorFlow-free). For every image it writes one JSON line: the path as given, the
SHA-256 of the preprocessed pixels (decode and resize with the runtime's Pillow) and the raw output
row of the interpreter (the int8 integers themselves for an int8 model; float32 values as floats); for
a model with mirrored views, the rows of every view one after the other, each from its own invocation as
the runtime makes them (:mod:`firmware_host.mirrors`).
``pi_arm64_compare.py`` then compares the int8 integers step by step, which the dequantised
probabilities in ``classify --json`` cannot show directly.

    python .ci/pi_arm64_probe.py MODEL.tflite OUT.jsonl IMAGE...
"""

from __future__ import annotations

import hashlib
import json
import sys

from firmware_host.atomic import write_text
from firmware_host.mirrors import view
from firmware_host.preprocess import load_image
from firmware_host.runtime import Classifier, quantize_input


def probe(model: str, images: list[str]) -> list[dict]:
    """One record per image: path, pixel SHA-256, the interpreter's raw output as a list, its dtype."""
    clf = Classifier.load(model, threads=1)
    rows = []
    for path in images:
        pixels = load_image(path, clf.input_size)
        raws = [clf.invoke_raw(quantize_input(view(pixels, k), clf.input_quant)[None]).copy() for k in range(clf.views)]
        rows.append(
            {
                "path": path,
                "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                "dtype": raws[0].dtype.name,
                "views": clf.views,
                "raw": [x for raw in raws for x in raw.tolist()],
            }
        )
    return rows


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    model, out, images = argv[0], argv[1], argv[2:]
    rows = probe(model, images)
    write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
