"""A cold full run of configs/tiny.yaml vs a no-op cached rerun, both through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, machine, result, table

CONFIG = "configs/tiny.yaml"


def overrides(workdir: str) -> list[str]:
    """The `--set` items of every `oger run` here."""
    return [f"workdir={workdir}"]


def build() -> dict:
    """The config `oger run` is given, loaded and validated as the CLI does, without running it."""
    from oger.contract.config import load_config

    return {"config": load_config(REPO / CONFIG, overrides(tempfile.gettempdir()))}


def _run(workdir: str, prefect_home: str) -> float:
    env = dict(os.environ, PREFECT_HOME=prefect_home)
    sets = [a for item in overrides(workdir) for a in ("--set", item)]
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "oger.cli", "run", CONFIG, *sets], cwd=REPO, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"oger run failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="oger-rerun-")
    try:
        home = os.path.join(tmp, "prefect")
        cold = _run(os.path.join(tmp, "work"), home)
        cached = [_run(os.path.join(tmp, "work"), home) for _ in range(2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table(
        f"rerun: configs/tiny.yaml end to end through `oger run` ({machine()})",
        ["run", "seconds"],
        [["cold (empty workdir)", cold], ["cached rerun #1", cached[0]], ["cached rerun #2", cached[1]]],
    )
    result("rerun", ratio=min(cached) / cold, cold_s=cold, cached_s=min(cached))
