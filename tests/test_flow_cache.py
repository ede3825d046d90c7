"""Prefect's task cache never outlives the artifact it points at: the flow records every stage's
result on its first run (so the next run shows Cached) and recomputes a stage whose artifact was
deleted even though Prefect still holds a cached result for its key."""

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LITE = """
name: lite
problems:
  sources:
    - {kind: synthetic, name: arith, n_train: 30, n_test: 5, max_operands: 3}
teachers:
  teachers:
    - {name: stepwise, backend: scripted, model: stepwise, slip_rate: 0.2}
filter: {tokenizer: smollm2, min_tokens: 1, max_tokens: 200}
"""


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def test_deleted_artifact_is_recomputed_despite_prefect_cache(run_oger, tmp_path):
    cfg = tmp_path / "lite.yaml"
    cfg.write_text(LITE)
    args = ("run", cfg, "--until", "filter", "--set", f"workdir={tmp_path / 'w'}")
    first = summary(run_oger(*args))
    assert not any(s["cached"] for s in first["stages"].values())
    again = run_oger(*args)
    assert all(s["cached"] for s in summary(again)["stages"].values())
    assert "Cached(type=COMPLETED)" in again.stdout + again.stderr  # recorded on the first run
    filter_dir = Path(first["stages"]["filter"]["path"])
    shutil.rmtree(filter_dir)
    third = summary(run_oger(*args))
    assert third["stages"]["filter"]["cached"] is False
    assert (filter_dir / "manifest.json").is_file()  # recomputed, not a stale ref from Prefect
    assert third["stages"]["teachers"]["cached"] is True
