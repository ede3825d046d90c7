"""Sweeps for real on a small config: upstream artifacts computed once and shared, a new seed
computes only its pairs, the report's numbers come from the artifacts, and a sweep killed with
SIGKILL mid-way resumes through the CLI with the same keys.

The tests share one workdir and run in order (the kill test reuses the cached upstream stages).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from oger import pipeline
from oger.stages.train.metrics import SWEPT
from oger.sweep import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LITE = """
name: lite
problems:
  sources:
    - {kind: synthetic, name: arith, n_train: 40, n_test: 10, max_operands: 3, max_value: 9, ops: "+-"}
teachers:
  teachers:
    - {name: stepwise, backend: scripted, model: stepwise, slip_rate: 0.2}
    - {name: terms, backend: scripted, model: terms}
filter: {tokenizer: smollm2, max_tokens: 200}
policy:
  tiny: {vocab_size: 320, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}
  sft: {epochs: 1, batch_size: 16, lr: 0.003}
train: {steps: 2, prompts_per_step: 2, group_size: 4, rollout: {max_new_tokens: 24}, logging: {checkpoint_every: 1}}
evaluate:
  heldout: {limit: 4, max_new_tokens: 24}
  protocol: luffy
  max_new_tokens: 24
  score_workers: 1
  benchmarks: [{name: synthetic, limit: 6, samples: 2}]
sweep:
  arms:
    oger-lam-1: {train.algorithm: oger, train.oger.lam: 1.0}
"""


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> tuple[str, Path]:
    d = tmp_path_factory.mktemp("sweep")
    (d / "lite.yaml").write_text(LITE)
    return str(d / "lite.yaml"), d / "work"


def artifact_dirs(workdir: Path, stage: str) -> list[Path]:
    return sorted(p for p in (workdir / "artifacts" / stage).glob("*") if not p.name.startswith("."))


def cached_pairs(summary: dict) -> dict[tuple[str, int], dict[str, bool]]:
    return {(p["arm"], p["seed"]): {s: v["cached"] for s, v in p["stages"].items()} for p in summary["pairs"]}


def test_upstream_computed_once_and_a_new_seed_computes_only_its_pairs(lite):
    config, workdir = lite
    sp = run.prepare(config, "grpo,oger-lam-1", "0", [f"workdir={workdir}"])
    s1 = json.loads(run.run_sweep(sp).read_text())
    assert s1["status"] == "completed"
    # one artifact per upstream stage, computed once, shared by both arms
    for stage in run.upstream_stages():
        assert [(u["cached"]) for u in s1["upstream"][stage]] == [False], stage
        assert len(artifact_dirs(workdir, stage)) == 1, stage
    assert cached_pairs(s1) == {
        ("grpo", 0): {"train": False, "evaluate": False},
        ("oger-lam-1", 0): {"train": False, "evaluate": False},
    }
    assert len(artifact_dirs(workdir, "train")) == 2

    sp2 = run.prepare(config, "grpo,oger-lam-1", "0,1", [f"workdir={workdir}"])
    assert sp2.sweep_id != sp.sweep_id
    s2 = json.loads(run.run_sweep(sp2).read_text())
    assert all(u["cached"] for items in s2["upstream"].values() for u in items)
    assert cached_pairs(s2) == {
        (a, seed): {"train": seed == 0, "evaluate": seed == 0} for a in ("grpo", "oger-lam-1") for seed in (0, 1)
    }
    assert len(artifact_dirs(workdir, "train")) == 4 and len(artifact_dirs(workdir, "evaluate")) == 4
    # the results line says its wall time is that of a partly cached invocation
    assert "2 of 4 pairs read from cache" in (sp2.dir / "results_section.md").read_text()
    assert "from cache" not in (sp.dir / "results_section.md").read_text()
    # the policy-stage ("base") model is sampled once per evaluation seed, not once per arm
    policy_key = s2["upstream"]["policy"][0]["key"]
    assert len(list((workdir / "cache" / "evaluate" / policy_key[:16]).glob("*.parquet"))) == 2

    # the report's numbers are the artifacts' numbers
    res = s2["results"]["synthetic"]
    assert list(res["rows"]) == ["base", "grpo", "oger-lam-1"]
    for pair in s2["pairs"]:
        samples = pl.read_parquet(Path(pair["stages"]["evaluate"]["path"]) / "samples.parquet")
        trained = samples.filter(pl.col("model") == "trained")["correct"].mean()
        row = res["rows"][pair["arm"]]
        assert row["per_seed"][row["seeds"].index(pair["seed"])] == pytest.approx(trained)
        assert pair["stages"]["evaluate"]["metrics"]["synthetic"]["trained"] == pytest.approx(trained, abs=1e-4)
    grpo = res["rows"]["grpo"]
    assert grpo["mean"] == pytest.approx(sum(grpo["per_seed"]) / 2)
    assert grpo["ci_t"]["lo"] is not None  # two seeds: a t-interval exists
    (cmp,) = s2["comparisons"]
    assert (cmp["arm"], cmp["baseline"], cmp["seeds"]) == ("oger-lam-1", "grpo", [0, 1])
    assert cmp["diff"] == pytest.approx(res["rows"]["oger-lam-1"]["mean"] - grpo["mean"], abs=1e-6)
    assert cmp["ci"]["lo"] <= cmp["diff"] <= cmp["ci"]["hi"]
    assert len(s2["pass_at_k"]["synthetic"]["grpo"]) == 2  # k = 1..2 samples
    sweep_dir = workdir / "sweeps" / sp2.sweep_id
    text = (sweep_dir / "report.md").read_text()
    assert cmp["verdict"] in text and "percentile bootstrap over seeds and problems" in text
    for png in ("accuracy.png", "differences.png", "pass_at_k.png", "training_curves.png"):
        assert (sweep_dir / png).stat().st_size > 1000, png
    # on-policy correctness under its one name (not the bonus-including reward)
    assert "env_reward" in s2["training"]["grpo"] and set(s2["training"]["grpo"]) <= set(SWEPT)
    assert "No published row for this policy" in text  # oger.published, as the run report says it


def test_killed_sweep_resumes_with_the_same_keys(lite, prefect_home, run_oger):
    config, workdir = lite
    args = ["sweep", config, "--arms", "luffy,oger", "--seeds", "0", "--set", f"workdir={workdir}"]
    sp = run.prepare(config, "luffy,oger", "0", [f"workdir={workdir}"])
    planned = {p.name: {s: p.plans[s].key for s in run.pair_stages()} for p in sp.pairs}
    first_train = workdir / "artifacts" / "train" / planned["luffy-s0"]["train"][:16] / "manifest.json"
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
    log = open(workdir / "killed.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "oger.cli", *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while not first_train.exists():
            assert proc.poll() is None, (workdir / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "the first pair's training did not finish in 600 s"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the sweep and what it started
        proc.wait(timeout=60)
    killed = json.loads((sp.dir / "summary.json").read_text())
    assert killed["status"] == "running" and len(killed["pairs"]) < 2  # died mid-way
    oger_eval = workdir / "artifacts" / "evaluate" / planned["oger-s0"]["evaluate"][:16]
    assert not oger_eval.exists()

    proc2 = run_oger(*args)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    summary_path = Path(proc2.stdout.strip().splitlines()[-1])
    assert summary_path == sp.dir / "summary.json"
    s = json.loads(summary_path.read_text())
    assert s["status"] == "completed"
    assert {f"{p['arm']}-s{p['seed']}": {k: v["key"] for k, v in p["stages"].items()} for p in s["pairs"]} == planned
    assert cached_pairs(s)[("luffy", 0)]["train"] is True  # finished before the kill: reused
    assert cached_pairs(s)[("oger", 0)] == {"train": False, "evaluate": False}
    assert all(u["cached"] for items in s["upstream"].values() for u in items)
    assert all(pipeline.cached_ref(p.cfg, p.plans[st]) for p in sp.pairs for st in run.pair_stages())
    assert (sp.dir / "report.md").exists() and "prefect_flow_run" in s
