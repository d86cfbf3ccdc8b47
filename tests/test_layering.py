"""The package boundaries of docs/design.md, checked: the Pi runtime stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pi

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("edgecell", "converters", "tensorflow", "keras", "sklearn", "scipy", "matplotlib", "click", "rich")
"""Top-level packages firmware_host must never import: the Pi has only numpy, Pillow and LiteRT."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "firmware_host").glob("*.py")), ids=lambda p: p.name)
def test_firmware_host_source_imports_no_other_package(path):
    """Every import statement, at the top or inside a function: none names edgecell, converters or TensorFlow."""
    assert not (_imports(path) & set(FORBIDDEN)), f"{path.name} imports {sorted(_imports(path) & set(FORBIDDEN))}"


def test_importing_all_of_firmware_host_loads_no_other_package():
    """At run time too (a transitive import would show here), in a fresh interpreter."""
    modules = sorted(p.stem for p in (ROOT / "firmware_host").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('firmware_host.' + m)\n"
        "import firmware_host\n"
        "firmware_host.Classifier, firmware_host.classify_paths\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The AST scan finds imports inside functions, so a lazy `from edgecell import x` would fail the test above."""
    f = tmp_path / "m.py"
    f.write_text("import numpy\n\ndef f():\n    from edgecell.train import predict\n    import tensorflow as tf\n")
    assert _imports(f) == {"numpy", "edgecell", "tensorflow"}
