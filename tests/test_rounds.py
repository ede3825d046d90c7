"""Rounds (order, the checkpoint a round continues from, the report's comparison) and index
versions (restore/unpin: the tag training reads), on real artifacts and a real LanceDB table."""

import json
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from oger import rounds
from oger.contract.artifacts import write_artifact
from oger.contract.config import load_config
from oger.contract.errors import ConfigError, StageError
from oger.pipeline import plan
from oger.stages.index import versions as iv

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def put(workdir: Path, stage: str, key: str, config=None, inputs=None, metrics=None) -> str:
    """A complete artifact with the given manifest fields (created now, so in call order)."""
    with write_artifact(workdir, stage, key, config_slice=config or {}, upstream=inputs or {}) as out:
        out.file("done").write_text(key)
        out.metrics = metrics or {}
    return key


def k(name: str) -> str:
    return (name.encode().hex() * 64)[:64]


def cfg_for(workdir: Path, *extra: str):
    return load_config(CONFIG, [f"workdir={workdir}", *extra])


def test_rounds_are_ordered_by_first_appearance_not_by_name(tmp_path):
    put(tmp_path, "teachers", k("t9"), {"round": "r9"})
    put(tmp_path, "teachers", k("t10"), {"round": "r10"})
    put(tmp_path, "teachers", k("t9b"), {"round": "r9"})  # rerunning r9 does not make it newer
    assert rounds.earlier_rounds(tmp_path, "r10") == ["r9"]
    assert rounds.earlier_rounds(tmp_path, "r9") == []
    assert rounds.earlier_rounds(tmp_path, "2026-11-28") == ["r10", "r9"]  # a new round


def test_previous_round_checkpoint_is_part_of_the_train_key(tmp_path):
    cfg = cfg_for(tmp_path, "teachers.round=r2", "train.init_from=previous_round")
    first = plan(cfg)["train"]
    assert "init" not in first.upstream  # nothing earlier: starts from the policy
    policy_slice = plan(cfg)["policy"].config_slice
    put(tmp_path, "teachers", k("t1"), {"round": "r1"})
    put(tmp_path, "policy", k("p1"), policy_slice)
    put(tmp_path, "policy", k("px"), {**policy_slice, "source": "model"})
    t1 = put(tmp_path, "train", k("c1"), inputs={"policy": k("p1")}, metrics={"round": "r1"})
    assert plan(cfg)["train"].upstream["init"] == t1
    assert plan(cfg)["train"].key != first.key
    t2 = put(tmp_path, "train", k("c2"), inputs={"policy": k("p1")}, metrics={"round": "r1"})
    put(tmp_path, "train", k("cx"), inputs={"policy": k("px")}, metrics={"round": "r1"})  # other recipe
    put(tmp_path, "teachers", k("t2"), {"round": "r2"})
    put(tmp_path, "train", k("c3"), inputs={"policy": k("p1")}, metrics={"round": "r2"})  # this round
    assert plan(cfg)["train"].upstream["init"] == t2
    # the default ignores earlier rounds, and its key is what it was before the option existed
    default = cfg_for(tmp_path, "teachers.round=r2")
    assert "init" not in plan(default)["train"].upstream
    assert "init_from" not in plan(default)["train"].config_slice


def _summary(
    workdir: Path, run_id: str, rnd: str, status: str, finished: str, train: dict, evaluate: dict | None = None
) -> dict:
    stages = {"train": {"key": k(run_id), "cached": False, "seconds": 1.0, "path": "", "metrics": train}}
    if evaluate is not None:
        stages["evaluate"] = {"key": k(run_id + "e"), "cached": False, "seconds": 1.0, "path": "", "metrics": evaluate}
    data = {
        "run_id": run_id,
        "round": rnd,
        "status": status,
        "workdir": str(workdir),
        "started_at": finished,
        "finished_at": finished,
        "stages": stages,
    }
    (workdir / "runs" / run_id).mkdir(parents=True)
    (workdir / "runs" / run_id / "summary.json").write_text(json.dumps(data))
    return data


def test_report_compares_with_the_previous_rounds_latest_completed_run(tmp_path):
    put(tmp_path, "teachers", k("t1"), {"round": "r1"})
    put(tmp_path, "teachers", k("t2"), {"round": "r2"})
    ev = {"synthetic": {"base": 0.25, "trained": 0.5, "n": 8}}
    _summary(tmp_path, "a-old", "r1", "completed", "2026-11-28T01:00:00+00:00", {"reward_last_20pct": 0.1})
    _summary(
        tmp_path,
        "b-r1",
        "r1",
        "completed",
        "2026-11-28T02:00:00+00:00",
        {"reward_last_20pct": 0.3, "heldout_accuracy": 0.4},
        ev,
    )
    _summary(tmp_path, "c-fail", "r1", "failed", "2026-11-28T03:00:00+00:00", {"reward_last_20pct": 0.9})
    cur = _summary(
        tmp_path,
        "d-r2",
        "r2",
        "running",
        "2026-11-28T04:00:00+00:00",
        {"reward_last_20pct": 0.5, "heldout_accuracy": 0.45},
        {"synthetic": {"base": 0.25, "trained": 0.625, "n": 8}},
    )
    lines = rounds.round_comparison_section(cur)
    assert cur["compared_with"]["run_id"] == "b-r1" and cur["compared_with"]["round"] == "r1"
    assert "## Rounds: `r2` vs `r1`" in lines
    assert "| train.reward_last_20pct | 0.3 | 0.5 | 0.2 |" in lines
    assert "| evaluate.synthetic.trained | 0.5 | 0.625 | 0.125 |" in lines
    # the first round has nothing to compare with, and says so
    first = _summary(tmp_path, "e-r1", "r1", "running", "2026-11-28T05:00:00+00:00", {})
    assert "nothing to compare with" in rounds.round_comparison_section(first)[-1]
    assert first["compared_with"] is None


def _table(workdir: Path) -> tuple[str, str]:
    """A teacher-trace table with two tagged versions (r1: 2 rows, then r2 appended: 3 rows)."""
    db = lancedb.connect(str(workdir / "index" / "lancedb"))
    tbl = db.create_table("teacher_traces", pa.table({"trace_id": ["a", "b"], "round": ["r1", "r1"]}))
    tag1 = put(workdir, "index", k("i1"), metrics={"rounds": ["r1"]})
    tbl.tags.create(tag1, tbl.version)
    tbl.add(pa.table({"trace_id": ["c"], "round": ["r2"]}))
    tag2 = put(workdir, "index", k("i2"), metrics={"rounds": ["r2"]})
    tbl.tags.create(tag2, tbl.version)
    return tag1, tag2


def test_index_restore_pins_the_tag_training_reads(tmp_path):
    tag1, tag2 = _table(tmp_path)
    assert iv.training_tag(tmp_path, "teacher_traces", tag2) == tag2
    pin = iv.restore(tmp_path, "teacher_traces", tag1[:12])  # a unique prefix is enough
    assert pin["tag"] == tag1
    assert iv.training_tag(tmp_path, "teacher_traces", tag2) == tag1
    assert plan(cfg_for(tmp_path))["train"].upstream["index"] == tag1
    listed = iv.list_versions(tmp_path, "teacher_traces")
    assert [(v["rows"], v["rounds"], v["pinned"]) for v in listed] == [(2, ["r1"], True), (3, ["r2"], False)]
    head = lancedb.connect(str(tmp_path / "index" / "lancedb")).open_table("teacher_traces")
    assert head.count_rows() == 2  # later rounds append to the restored version
    assert iv.unpin(tmp_path, "teacher_traces")["tag"] == tag1
    assert iv.training_tag(tmp_path, "teacher_traces", tag2) == tag2
    assert not iv.pin_path(tmp_path).exists()


def test_index_restore_rejects_unknown_tags_and_tags_without_artifacts(tmp_path):
    tag1, _ = _table(tmp_path)
    with pytest.raises(ConfigError, match="is not a tag"):
        iv.restore(tmp_path, "teacher_traces", "deadbeefdeadbeef")
    with pytest.raises(ConfigError, match="is not a tag"):
        iv.restore(tmp_path, "teacher_traces", tag1[:4])  # too short to be a prefix
    import shutil

    shutil.rmtree(tmp_path / "artifacts" / "index" / tag1[:16])
    with pytest.raises(StageError, match="no complete index artifact"):
        iv.restore(tmp_path, "teacher_traces", tag1)
    assert iv.read_pin(tmp_path, "teacher_traces") is None
