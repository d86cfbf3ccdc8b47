"""Regenerate the committed tiny TFLite models in tests/fixtures/tiny/ (needs TensorFlow).

    python tests/make_tflite_fixtures.py

then run the tests (the golden files compare classify's output on the float32 model: regenerate
them too with ``python tests/regen_golden.py`` if it changed) and commit tests/fixtures/tiny/.
See tests/_tflite_fixtures.py for what the models are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from tests._tflite_fixtures import FIXTURES, regenerate

    regenerate(FIXTURES)
    for p in sorted(FIXTURES.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}  {p.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
