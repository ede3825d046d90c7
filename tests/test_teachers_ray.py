"""Fan-out of teacher generation: sharded teachers through Prefect's Ray task runner on a local Ray
instance (2 CPUs) give the traces of Prefect's default runner and of an unsharded run."""

import glob
from pathlib import Path

import polars as pl
import pytest

from oger import pipeline
from oger.contract.config import TeacherConfig, load_config
from oger.contract.fanout import split_even
from oger.stages.teachers.stage import shard_ranges, teacher_resources


def ray_config(small_config, folder: Path) -> Path:
    """Two teachers in two shards each (scripted; SmolLM2 on 4 problems) on a local Ray of 2 CPUs."""
    smollm2 = {
        "name": "smollm2",
        "backend": "transformers",
        "model": "smollm2",
        "limit": 4,
        "batch_size": 2,
        "shards": 2,
        "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 0},
    }
    return small_config.write(
        folder,
        "raytest",
        n_train=12,
        n_test=4,
        teachers=[small_config.scripted("stepwise", 0.2, shards=2), smollm2],
        runner={"kind": "ray", "num_cpus": 2},
    )


def traces(workdir) -> pl.DataFrame:
    return pl.read_parquet(glob.glob(f"{workdir}/artifacts/teachers/*/traces.parquet")[0])


@pytest.mark.slow
def test_ray_task_runner_gives_the_traces_of_the_default_runner(tmp_path, run_oger, oger_in_process, small_config):
    cfg_path = ray_config(small_config, tmp_path)
    ray = run_oger("run", cfg_path, "--until", "teachers", "--set", f"workdir={tmp_path / 'ray'}")
    assert ray.returncode == 0, ray.stderr[-3000:]
    out = ray.stdout + ray.stderr
    assert "Started a local Ray instance" in out
    # Ray prefixes a worker's output with the task it runs and its pid: the shards ran there.
    # (Workers' log lines may be cut at shutdown, so not every shard's "Finished" line shows.)
    assert "(teacher-smollm2-" in out and "(teacher-stepwise-" in out
    local = oger_in_process(
        "run", cfg_path, "--until", "teachers", "--set", f"workdir={tmp_path / 'local'}", "--set", "runner.kind=local"
    )
    assert local.returncode == 0, local.stderr[-3000:]
    assert "Ray" not in local.stdout + local.stderr
    assert "Task run 'teacher-smollm2-2of2' - Finished in state Completed()" in local.stdout + local.stderr

    a, b = traces(tmp_path / "ray"), traces(tmp_path / "local")
    assert a.equals(b)
    assert a.filter(pl.col("teacher") == "smollm2").height == 4
    assert a.filter(pl.col("teacher") == "stepwise").height == 12
    # Sharding never changes a trace: one shard per teacher, in process, without Prefect.
    one = load_config(
        cfg_path, [f"workdir={tmp_path / 'one'}", "teachers.teachers.0.shards=1", "teachers.teachers.1.shards=1"]
    )
    assert pipeline.plan(one)["teachers"].key == pipeline.plan(load_config(cfg_path))["teachers"].key
    pipeline.run_local(one, until="teachers")
    assert traces(tmp_path / "one").equals(a)
    assert not glob.glob(f"{tmp_path / 'ray'}/cache/teachers/shards/*/*")  # parts merged, removed


def test_shards_align_to_the_seeding_unit_and_ask_for_their_gpus():
    hf = TeacherConfig(name="t", backend="transformers", model="smollm2", n=2, batch_size=8, shards=3)
    assert shard_ranges(hf, 21) == [(0, 8), (8, 16), (16, 21)]  # chunks of 8 // 2 = 4 prompts
    assert all(lo % 4 == 0 for lo, _ in shard_ranges(hf, 21))
    assert split_even(5, 8) == [(i, i + 1) for i in range(5)]  # never an empty shard
    assert teacher_resources(hf) == (1.0, 0.0)
    vllm = TeacherConfig(name="v", backend="vllm", model="Qwen/QwQ-32B", tensor_parallel_size=4)
    assert teacher_resources(vllm) == (1.0, 4.0)
    assert teacher_resources(vllm.model_copy(update={"num_gpus": 8.0})) == (1.0, 8.0)
