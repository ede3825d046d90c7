"""What every tracker backend shares: the metric prefix, the warning a dropped tracker gives, and how
rows and cells are turned into what trackers take."""

from __future__ import annotations

import json
import math
import warnings

PREFIX = "train/"  # a step metric's name in every tracker, as TensorBoard had it


class TrackerWarning(UserWarning):
    """A tracker was dropped (missing package, no server, a failed call): the run goes on without it."""


def warn(name: str, what: str, exc: BaseException | str) -> None:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    warnings.warn(f"tracker {name}: {what} failed ({reason}); the run goes on without it", TrackerWarning, 3)


def numbers(row: dict) -> dict[str, float]:
    """The row's measured metrics as TensorBoard always took them: its float values (not the step, not a
    count), NaN left out (a metric this run cannot measure, a vLLM-only one, is NaN in every row)."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, float) and not math.isnan(v)}


def columns(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def cell(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
