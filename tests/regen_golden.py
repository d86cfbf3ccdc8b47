"""Rewrite the golden files in tests/golden/ from the current output.

Run from anywhere, with the project's environment::

    python tests/regen_golden.py            # same as: pytest tests/test_golden.py --update-golden

then review ``git diff tests/golden`` and commit the files with the change that explains them.
Extra arguments go to pytest (e.g. ``-k help``). See tests/test_golden.py for what each file holds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import pytest

    os.chdir(ROOT)
    args = sys.argv[1:] if argv is None else argv
    rc = int(pytest.main(["tests/test_golden.py", "--update-golden", "-q", "-p", "no:cacheprovider", *args]))
    if rc == 0:
        print("golden files up to date in tests/golden/; review with: git diff tests/golden")
    return rc


if __name__ == "__main__":
    sys.exit(main())
