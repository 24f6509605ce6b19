#!/usr/bin/env python3
"""Prints the skipped tests (with their reasons), then the failed ones (with their messages, last, so
that a log's tail names them), and a closing line "N passed, N failed, N skipped"
from a Criterion --json report, so that skips (the GPU tests on a machine without a GPU) are counted
visibly in the summary. Exits 1 when the report shows failures or errors or cannot be read."""
import json
import sys


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "build/test-report.json"
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        print(f"test_summary: cannot read {path}: {e}", file=sys.stderr)
        return 1
    for suite in r.get("test_suites", []):
        for t in suite.get("tests", []):
            if t.get("status") == "SKIPPED":
                why = "; ".join(t.get("messages", [])) or "skipped"
                print(f"skipped: {suite['name']}::{t['name']}: {why}")
    for suite in r.get("test_suites", []):
        for t in suite.get("tests", []):
            if t.get("status") not in ("SKIPPED", "PASSED"):
                why = "; ".join(t.get("messages", [])) or "no message"
                print(f"{t.get('status', '?')}: {suite['name']}::{t['name']}: {why[:2000]}")
    failed = r.get("failed", 0) + r.get("errored", 0)
    print(f"tests: {r.get('passed', 0)} passed, {failed} failed, {r.get('skipped', 0)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
