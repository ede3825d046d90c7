"""Longest test files first, so two `--dist loadfile` workers end together.

With `--no-loadscope-reorder` (pytest-xdist >= 3.8, in `make test`) xdist hands a worker the next
file in collection order whenever it is down to its last tests. Its default order, most tests first,
left one worker idle for the last ~1.5 min (the 2026-12-07 durations, simulated: 864 s and 780 s of
work; longest file first: 822 s each; the demo's file alone is ~5.5 min). `durations.json` holds each
file's seconds from a `make test` run; files not in it (new ones) go last. Refresh it after the suite
changes much:

    .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=0 > /tmp/d.log
    .venv/bin/python -m tests.durations /tmp/d.log > tests/durations.json
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

RECORDED = Path(__file__).with_name("durations.json")
LINE = re.compile(r"\s*([\d.]+)s (?:setup|call|teardown)\s+tests/([\w/]+\.py)::")


def file_seconds(log_lines) -> dict[str, int]:
    """Seconds per test file from pytest's `--durations=0` lines, longest first."""
    total: collections.Counter = collections.Counter()
    for line in log_lines:
        m = LINE.match(line)
        if m:
            total[m.group(2)] += float(m.group(1))
    return {f: round(s) for f, s in total.most_common() if round(s) >= 1}


def longest_files_first(items: list) -> list:
    """`items` regrouped by file, files by recorded seconds (descending, unknown last), each file's
    tests in their own order (module-scoped fixtures see the order they were written for)."""
    seconds = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(Path(str(item.fspath)).name, []).append(item)
    order = sorted(by_file, key=lambda f: -seconds.get(f, 0))  # stable: unknown files keep their order
    return [item for f in order for item in by_file[f]]


if __name__ == "__main__":
    with open(sys.argv[1]) as log:
        print(json.dumps(file_seconds(log), indent=1))
