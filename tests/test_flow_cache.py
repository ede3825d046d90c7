"""Prefect's task cache never outlives the artifact it points at: the flow records every stage's
result on its first run (so the next run shows Cached) and recomputes a stage whose artifact was
deleted even though Prefect still holds a cached result for its key."""

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def test_deleted_artifact_is_recomputed_despite_prefect_cache(oger_in_process, small_config, tmp_path):
    cfg = small_config.write(tmp_path, "lite", source={"max_value": 20, "ops": "+-*"})
    args = ("run", cfg, "--until", "filter", "--set", f"workdir={tmp_path / 'w'}")
    first = summary(oger_in_process(*args))
    assert not any(s["cached"] for s in first["stages"].values())
    again = oger_in_process(*args)
    assert all(s["cached"] for s in summary(again)["stages"].values())
    assert "Cached(type=COMPLETED)" in again.stdout + again.stderr  # recorded on the first run
    filter_dir = Path(first["stages"]["filter"]["path"])
    shutil.rmtree(filter_dir)
    third = summary(oger_in_process(*args))
    assert third["stages"]["filter"]["cached"] is False
    assert (filter_dir / "manifest.json").is_file()  # recomputed, not a stale ref from Prefect
    assert third["stages"]["teachers"]["cached"] is True
