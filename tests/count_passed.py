"""Fail unless a JUnit XML report (pytest --junitxml) has at least N passed tests and no failures.

    python tests/count_passed.py build/pi-check/pytest.xml --at-least 40

Used by ``make pi-check``: skipped tests do not count, so a missing interpreter or fixture cannot
turn the TensorFlow-free run into a run of nothing.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--at-least", type=int, required=True)
    args = ap.parse_args(argv)
    suites = ET.parse(args.report).getroot().iter("testsuite")
    total = {k: 0 for k in ("tests", "skipped", "failures", "errors")}
    for s in suites:
        for k in total:
            total[k] += int(s.get(k, 0))
    passed = total["tests"] - total["skipped"] - total["failures"] - total["errors"]
    print(f"{passed} passed, {total['skipped']} skipped, {total['failures'] + total['errors']} failed (need at least {args.at_least} passed)")
    return 0 if passed >= args.at_least and not (total["failures"] or total["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
