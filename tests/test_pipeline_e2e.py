"""The real flow on configs/tiny.yaml through the `oger` CLI (Prefect ephemeral, real models).

Tests in this module share one workdir and run in order: cold run, cached rerun, filter change,
new teacher round, then bad inputs against the same workdir (earlier artifacts must survive).
"""

import json
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from oger.artifacts import load_complete
from oger.index import TeacherIndex

pytestmark = pytest.mark.slow
CONFIG = "configs/tiny.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_work")


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def summary_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith("summary.json"), proc.stdout[-500:]
    return json.loads(Path(last).read_text())


def snapshot(workdir: Path) -> dict:
    """manifest text of every complete artifact, to check nothing earlier was touched."""
    return {str(p): p.read_text() for p in workdir.glob("artifacts/*/*/manifest.json")}


def test_cold_run_until_index(run_oger, workdir, state):
    proc = run_oger("run", CONFIG, "--until", "index", "--set", f"workdir={workdir}")
    s = summary_of(proc)
    assert list(s["stages"]) == ["problems", "teachers", "filter", "index"]
    assert set(s) >= {"run_id", "config", "stages"}
    assert not any(st["cached"] for st in s["stages"].values())
    f = s["stages"]["filter"]["metrics"]
    assert f["dropped_incorrect"] > 0 and f["dropped_length"] > 0 and f["kept"] > 0
    assert set(f["per_teacher"]) == {"stepwise", "terms", "verbose", "smollm2"}
    idx = s["stages"]["index"]
    assert idx["metrics"]["tag"] == idx["key"]
    assert idx["metrics"]["new_embeddings"] > 0
    ti = TeacherIndex(workdir / "index" / "lancedb", "teacher_traces", idx["key"])
    assert ti.count() == f["kept"]
    problems = pl.read_parquet(Path(s["stages"]["problems"]["path"]) / "problems.parquet")
    some = problems.filter(pl.col("split") == "train")["problem_id"].head(5).to_list()
    found = ti.lookup(some)
    assert found and all(v[1].shape[1] == 384 for v in found.values())
    state["first"] = s
    assert (Path(s["stages"]["filter"]["path"]).parent.parent.parent / "runs").is_dir()


def test_cached_rerun_is_fast_and_loads_no_model(run_oger, workdir, state):
    t = time.time()
    proc = run_oger("run", CONFIG, "--until", "index", "--set", f"workdir={workdir}")
    elapsed = time.time() - t
    s = summary_of(proc)
    assert all(st["cached"] for st in s["stages"].values())
    assert {k: v["key"] for k, v in s["stages"].items()} == \
        {k: v["key"] for k, v in state["first"]["stages"].items()}
    for marker in ("Loading weights", "teacher smollm2", "Batches", "filter: verify"):
        assert marker not in proc.stderr + proc.stdout, marker
    assert elapsed < 15, f"cached rerun took {elapsed:.1f}s"


def test_filter_change_recomputes_only_filter_and_index(run_oger, workdir, state):
    proc = run_oger("run", CONFIG, "--until", "index", "--set", f"workdir={workdir}",
                    "--set", "filter.max_tokens=100")
    s = summary_of(proc)
    cached = {k: v["cached"] for k, v in s["stages"].items()}
    assert cached == {"problems": True, "teachers": True, "filter": False, "index": False}
    first = state["first"]["stages"]
    assert s["stages"]["filter"]["metrics"]["kept"] < first["filter"]["metrics"]["kept"]
    assert s["stages"]["index"]["metrics"]["new_embeddings"] == 0
    new_tag, old_tag = s["stages"]["index"]["key"], first["index"]["key"]
    assert new_tag != old_tag
    db = workdir / "index" / "lancedb"
    assert TeacherIndex(db, "teacher_traces", old_tag).count() == first["filter"]["metrics"]["kept"]
    assert TeacherIndex(db, "teacher_traces", new_tag).count() == s["stages"]["filter"]["metrics"]["kept"]
    state["strict"] = s


def test_new_round_regenerates_teachers_and_appends(run_oger, workdir, state):
    proc = run_oger("run", CONFIG, "--until", "index", "--set", f"workdir={workdir}",
                    "--set", "teachers.round=r2")
    s = summary_of(proc)
    cached = {k: v["cached"] for k, v in s["stages"].items()}
    assert cached == {"problems": True, "teachers": False, "filter": False, "index": False}
    assert s["stages"]["teachers"]["metrics"]["round"] == "r2"
    idx = s["stages"]["index"]["metrics"]
    assert idx["rounds"] == ["r2"]
    db = workdir / "index" / "lancedb"
    r1_tag = state["strict"]["stages"]["index"]["key"]
    r2 = TeacherIndex(db, "teacher_traces", s["stages"]["index"]["key"])
    r1 = TeacherIndex(db, "teacher_traces", r1_tag)
    assert r2.count() == r1.count() + s["stages"]["filter"]["metrics"]["kept"]
    assert TeacherIndex(db, "teacher_traces", state["first"]["stages"]["index"]["key"]).count() > 0
    assert (Path(s["workdir"]) / "runs" / s["run_id"] / "report.md").is_file()
    assert (Path(s["workdir"]) / "runs" / s["run_id"] / "filter.png").is_file()


def test_filter_that_keeps_nothing_fails_clearly(run_oger, workdir):
    before = snapshot(workdir)
    proc = run_oger("run", CONFIG, "--until", "index", "--set", f"workdir={workdir}",
                    "--set", "filter.min_tokens=5000", "--set", "filter.max_tokens=6000")
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: filter stage kept 0")
    assert snapshot(workdir) == before


def test_unknown_key_fails_before_anything_runs(run_oger, workdir):
    before = snapshot(workdir)
    proc = run_oger("run", CONFIG, "--set", f"workdir={workdir}", "--set", "filter.max_tokenz=5")
    assert proc.returncode == 2
    assert "filter.max_tokenz = 5: unknown key" in proc.stderr and "tiny.yaml" in proc.stderr
    assert snapshot(workdir) == before


def test_jsonl_row_without_answer_fails_naming_file_row_field(run_oger, workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Compute 1 + 2.", "answer": "3"}\n{"question": "Compute 2 + 2."}\n')
    cfg = Path(tmp_path / "bad.yaml")
    data = yaml.safe_load(Path(CONFIG).read_text())
    data["problems"]["sources"].append({"kind": "local", "name": "extra", "path": str(bad),
                                        "format": "plain"})
    cfg.write_text(yaml.safe_dump(data))
    before = snapshot(workdir)
    proc = run_oger("run", cfg, "--until", "index", "--set", f"workdir={workdir}")
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][-1]
    assert str(bad) in err and "row 2" in err and "'answer'" in err
    assert snapshot(workdir) == before


def test_status_lists_cached_and_stale(run_oger, workdir, state):
    proc = run_oger("status", CONFIG, "--set", f"workdir={workdir}", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["stage"]: r for r in json.loads(proc.stdout)["stages"]}
    assert all(rows[s]["state"] == "cached" for s in ("problems", "teachers", "filter", "index"))
    assert rows["index"]["key"] == state["first"]["stages"]["index"]["key"]
    proc = run_oger("status", CONFIG, "--set", f"workdir={workdir}", "--set", "filter.max_tokens=99",
                    "--json")
    rows = {r["stage"]: r for r in json.loads(proc.stdout)["stages"]}
    assert rows["teachers"]["state"] == "cached" and rows["filter"]["state"] == "stale"
    assert load_complete(workdir, "problems", rows["problems"]["key"]) is not None


@pytest.mark.parametrize("algorithm", ["grpo", "luffy", "oger"])
def test_tiny_training_improves_reward_for_each_preset(run_oger, workdir, algorithm):
    proc = run_oger("run", CONFIG, "--until", "train", "--set", f"workdir={workdir}", "--set",
                    f"train.algorithm={algorithm}")
    s = summary_of(proc)
    assert list(s["stages"]) == ["problems", "teachers", "filter", "index", "policy", "train"]
    m = s["stages"]["train"]["metrics"]
    assert m["algorithm"] == algorithm
    assert m["reward_last_20pct"] > m["reward_first_20pct"], m
    assert (m["replaced_fraction"] > 0) == (algorithm != "grpo")
    assert (m["bonus_mean"] > 0) == (algorithm == "oger")
    policy = s["stages"]["policy"]["metrics"]
    assert 0.1 <= policy["heldout_accuracy"] <= 0.7, policy  # room to learn, something to learn from
    train_dir = Path(s["stages"]["train"]["path"])
    for name in ("model/config.json", "metrics.jsonl", "rollouts.jsonl", "curves.png"):
        assert (train_dir / name).exists(), name


def test_demo_evaluates_base_and_trained_on_synthetic_and_real_slices(run_oger, workdir, state):
    """The default run end to end: the trained policy beats the policy stage on the held-out split
    (avg@4), the GSM8K / MATH-500 slices are scored whatever the numbers are, and samples, summary
    and report agree."""
    proc = run_oger("run", CONFIG, "--set", f"workdir={workdir}")
    s = summary_of(proc)
    assert list(s["stages"])[-2:] == ["train", "evaluate"]
    assert s["stages"]["train"]["cached"]  # trained by the oger preset test above
    ev = s["evaluate"]
    assert set(ev) == {"synthetic", "gsm8k", "math500"}
    assert ev["synthetic"]["n"] >= 200 and ev["gsm8k"]["n"] == 50 and ev["math500"]["n"] == 50
    assert ev["synthetic"]["trained"] > ev["synthetic"]["base"], ev
    for e in ev.values():
        assert 0.0 <= e["base"] <= 1.0 and 0.0 <= e["trained"] <= 1.0
    stage = Path(s["stages"]["evaluate"]["path"])
    samples = pl.read_parquet(stage / "samples.parquet")
    assert {"benchmark", "model", "problem_id", "sample_index", "response", "extracted_answer", "correct",
            "tokens"} <= set(samples.columns)
    assert samples.filter(pl.col("benchmark") == "synthetic").height == 2 * 200 * 4  # 2 models, avg@4
    for model in ("base", "trained"):
        synth = samples.filter((pl.col("benchmark") == "synthetic") & (pl.col("model") == model))
        assert synth["correct"].mean() == pytest.approx(ev["synthetic"][model], abs=1e-4)
    # The base model is the policy stage's: its greedy held-out accuracy is measured there too.
    assert abs(ev["synthetic"]["base"] - s["stages"]["policy"]["metrics"]["heldout_accuracy"]) < 0.15
    run_dir = Path(s["workdir"]) / "runs" / s["run_id"]
    report = (run_dir / "report.md").read_text()
    assert "## Evaluation" in report and "| synthetic | avg@4 | 200 |" in report and "math average" in report
    for png in ("evaluate_scores.png", "train_curves.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    state["evaluated"] = s


def test_new_training_reevaluates_only_the_trained_model(run_oger, workdir, state):
    proc = run_oger("run", CONFIG, "--set", f"workdir={workdir}", "--set", "train.steps=2",
                    "--set", "train.seed=1")
    s = summary_of(proc)
    assert not s["stages"]["train"]["cached"] and not s["stages"]["evaluate"]["cached"]
    assert "eval trained synthetic" in proc.stderr and "eval base" not in proc.stderr
    before = state["evaluated"]["evaluate"]
    assert {b: e["base"] for b, e in s["evaluate"].items()} == {b: e["base"] for b, e in before.items()}
