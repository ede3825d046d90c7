"""Where a data file is looked up: the data roots, in order.

One rule for every reader (problems sources, benchmarks, published baselines), so pointing
`OGER_DATA_DIR` somewhere moves them all alike."""

from __future__ import annotations

import os
from pathlib import Path

# The evaluation sets shipped with the repository (data/SOURCES.md); training sets live elsewhere.
REPO_DATA = Path(__file__).resolve().parents[2] / "data"  # <repo>/oger/data/roots.py


def data_roots() -> list[Path]:
    """Where a data file is looked up, in order: `OGER_DATA_DIR` (e.g. a folder of training sets),
    then the repository's data/ (the shipped evaluation sets), so pointing `OGER_DATA_DIR` at
    training data does not hide the benchmarks."""
    roots = [Path(d) for d in [os.environ.get("OGER_DATA_DIR")] if d]
    if REPO_DATA.is_dir() and REPO_DATA not in roots:
        roots.append(REPO_DATA)
    return roots


def find_data_file(rel: str) -> Path | None:
    """The first data root holding `rel` (a path in the data/ layout), or None."""
    return next((r / rel for r in data_roots() if (r / rel).is_file()), None)
