"""Headless Chromium for the review-page tests and benchmark (a plain module; import it as ``tests._browser``).

Chromium comes from the system packages (Debian: ``apt-get install chromium``); Playwright's Python
package (the dev extra) drives it. Playwright's own browser download is not used. Without Chromium
the calling test is skipped with the reason, except when ``EDGECELL_REQUIRE_BROWSER=1`` (set by
.ci/run): then it fails, so CI can never skip the browser checks silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REQUIRE_ENV = "EDGECELL_REQUIRE_BROWSER"


def chromium_path() -> str | None:
    """The system Chromium (``EDGECELL_CHROMIUM`` overrides), or None."""
    env = os.environ.get("EDGECELL_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for p in CHROMIUM_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    found = shutil.which("chromium")
    return found


def _absent(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 says the browser test must run (install it: apt-get install chromium)")
    pytest.skip(reason)


@contextlib.contextmanager
def browser() -> Iterator[object]:
    """A launched headless Chromium (Playwright ``Browser``); skips (or fails under CI) when absent."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _absent("Playwright's Python package is not installed (pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        _absent(f"no Chromium found (looked for {', '.join(CHROMIUM_CANDIDATES)}; Debian: apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
