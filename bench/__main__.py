"""`python -m bench NAME` (or `all`): each bench prints a table and a final RESULT line."""

from __future__ import annotations

import importlib
import os
import sys

from bench import BENCHES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `oger` sets it (oger.cli.quiet_threads)


def main(argv: list[str]) -> int:
    names = BENCHES if not argv or argv[0] == "all" else argv
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown bench(es) {unknown}; choose from {BENCHES} or all", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
