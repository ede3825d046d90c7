"""Shared helpers: result lines, tables, machine facts, the tiny artifacts every bench reuses."""

from __future__ import annotations

import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_WORK = Path(os.environ.get("OGER_BENCH_WORKDIR", REPO / "work" / "bench"))


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}, {datetime.now(timezone.utc):%Y-%m-%d}"
    )


def table(title: str, headers: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in headers:
        t.add_column(h, justify="right" if h != headers[0] else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    Console().print(t)


def result(name: str, **values) -> None:
    """The last line of every bench: `RESULT <name> key=value ...`."""
    parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"RESULT {name} {parts}", flush=True)


def mean_after_warmup(values: list[float], warmup: int = 1) -> float:
    vals = values[warmup:] if len(values) > warmup else values
    return statistics.fmean(vals)


def tiny_config(*overrides: str):
    """configs/tiny.yaml in the bench workdir (artifacts are cached there across benches)."""
    from oger.contract.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [f"workdir={BENCH_WORK / 'tiny'}", *overrides])


def tiny_artifacts(until: str = "policy"):
    """problems -> ... -> policy for the tiny config, computed once and then read from cache."""
    from oger import pipeline

    return pipeline.run_local(tiny_config(), until=until)


def train_inputs(refs, instruction: str | None = None):
    """The train stage's own inputs for the tiny config (prompt pool, answers, index at its tag)."""
    from oger.stages.problems.files import read_problems
    from oger.stages.train.stage import train_inputs as build

    return build(tiny_config(), read_problems(refs["problems"]), refs["index"], instruction)
