"""Multi-process training for real: the train stage launches 2 CPU ranks (gloo) with DDP under
torchrun and with FSDP2 under accelerate launch; both must give the parameters one process gets on
the whole batch; a launch interrupted after its checkpoint resumes there (FSDP2: killed, resumed from
each rank's DCP shards to the uninterrupted run's weights)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from oger import pipeline
from oger.contract.config import load_config
from tests.builders import metrics, rollout_keys

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_launch_at_a_time")]

# LUFFY (teacher replacement, policy shaping), an entropy term, micro-batches that do not divide
# the rank's batch, two optimizer steps per batch (ppo_mini_batches, as the paper configs: each rank
# splits its own groups, old log-probs taken once, the loss normalised over the global mini-batch); SGD
# so that float reduction order (1e-7) cannot be amplified the way Adam's
# g/sqrt(v) amplifies it on near-zero gradients.
TRAIN = {
    "algorithm": "luffy",
    "steps": 2,
    "prompts_per_step": 4,
    "group_size": 4,
    "rollout": {"batch_prompts": 2, "max_new_tokens": 40, "temperature": 1.0},
    "optim": {"micro_batch_size": 3, "optimizer": "sgd", "lr": 0.05},
    "loss": {"ppo_mini_batches": 2, "clip_eps_high": 0.05, "entropy_coef": 0.01},
    "logging": {"checkpoint_every": 1},
}


def params(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def test_ddp_two_gloo_ranks_match_one_process_and_resume(tmp_path, small_config, rl_workdir):
    from oger.stages.train.distributed import launch_spec, train_distributed

    # The upstream stages are those of every RL test, in the session's RL workdir (cache hits
    # after the first such test); only the train stage is this test's own.
    p = small_config.write(tmp_path, "ddp", **small_config.RL_UPSTREAM, train=TRAIN)
    one = load_config(p, [f"workdir={rl_workdir}"])
    two = load_config(p, [f"workdir={rl_workdir}", "train.distributed.num_processes=2"])
    plans = pipeline.plan(one)
    assert pipeline.plan(two)["train"].key == plans["train"].key  # world size is not in the key

    refs = pipeline.run_local(one, until="train")
    single = refs["train"]
    assert single.metrics["replaced_fraction"] > 0
    steps = metrics(single)
    assert all(h["approx_kl"] != 0 for h in steps)  # the second mini-batch's ratio is not 1
    a, single_rollouts = params(Path(single.path) / "model"), rollout_keys(single)

    # Two ranks, interrupted after step 1: a launch of a 1-step run into the same run directory
    # leaves rank 0's checkpoint step-000001 there; the stage then resumes at step 2.
    run_dir = two.workdir_path / "cache" / "train" / plans["train"].key[:16]
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    first = load_config(p, [f"workdir={rl_workdir}", "train.distributed.num_processes=2", "train.steps=1"])
    spec = launch_spec(first, Path(refs["policy"].path) / "model", refs["problems"], refs["index"], run_dir)
    hist = train_distributed(first, spec)
    assert [h["step"] for h in hist] == [1]
    assert [c.name for c in (run_dir / "checkpoints").iterdir()] == ["step-000001"]  # rank 0 only
    shutil.rmtree(single.path)  # the artifact of the 1-process run, so the stage recomputes
    ddp = pipeline.run_stage(two, plans["train"], refs)
    assert ddp.metrics["resumed"] is True and ddp.metrics["steps"] == 2
    assert "[oger-train] step 2/2" in (run_dir / "launch.log").read_text()

    assert rollout_keys(ddp) == single_rollouts  # the same samples, rewards, teacher picks
    b = params(Path(ddp.path) / "model")
    moved = 0
    for name, init in params(Path(refs["policy"].path) / "model").items():
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)
        moved += int(not torch.equal(a[name], init))
    assert moved > 0  # the two steps did update the model
    assert ddp.metrics["heldout_accuracy"] == single.metrics["heldout_accuracy"]


def test_fsdp2_two_ranks_killed_after_the_step_2_checkpoint_resume_to_the_uninterrupted_weights(
    tmp_path, small_config, rl_workdir
):
    """FSDP2 (sharded parameters, gradients and optimizer state; gloo on this CPU): a torchrun launch
    SIGKILLed once its step-2 checkpoint exists (every rank's DCP shards) resumes under `accelerate
    launch`, each rank reading its own shards, to the step-4 weights of an uninterrupted run (one process:
    FSDP2 is the same update, `test_ddp_two_gloo_ranks_match_one_process_and_resume`)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from oger.stages.train.agent import launcher_command
    from oger.stages.train.checkpoint import DCP_DIR, final_model_dir, list_checkpoints
    from oger.stages.train.distributed import launch_spec

    train = {**TRAIN, "steps": 4, "logging": {"checkpoint_every": 2}}
    p = small_config.write(tmp_path, "fsdp", **small_config.RL_UPSTREAM, train=train)
    ranks = [f"workdir={rl_workdir}", "train.distributed.num_processes=2", "train.distributed.fsdp=true"]
    one = load_config(p, [f"workdir={rl_workdir}"])
    plans = pipeline.plan(one)
    refs = pipeline.run_local(one, until="train")
    a = params(Path(refs["train"].path) / "model")

    run_dir = one.workdir_path / "cache" / "train" / plans["train"].key[:16]
    shutil.rmtree(run_dir, ignore_errors=True)  # the one-process run's folder: the ranks start afresh
    run_dir.mkdir(parents=True)

    cfg = load_config(p, ranks)
    spec = run_dir / "launch.json"
    spec.write_text(
        json.dumps(launch_spec(cfg, Path(refs["policy"].path) / "model", refs["problems"], refs["index"], run_dir))
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(launcher_command("torchrun", 2, spec), stdout=log, stderr=subprocess.STDOUT, env=env)
        step2 = run_dir / "checkpoints" / "step-000002" / "COMPLETE"
        deadline = time.monotonic() + 300
        while not step2.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no step-2 checkpoint in 300 s"
            time.sleep(0.05)
        # the launcher and both ranks, mid-step 3 (torchrun starts each rank in a session of its own)
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        psutil.wait_procs([psutil.Process(pid) for pid in tree if psutil.pid_exists(pid)], timeout=30)
    assert [c.name for c in list_checkpoints(run_dir / "checkpoints")] == ["step-000002"]
    shards = sorted(f.name for f in (step2.parent / DCP_DIR).glob("*.distcp"))
    assert len(shards) == 2, shards  # one file per rank
    assert not final_model_dir(run_dir).exists()

    shutil.rmtree(refs["train"].path)  # so the stage recomputes, resuming in the same run folder
    resumed_cfg = load_config(p, [*ranks, "train.distributed.launcher=accelerate"])  # resumed by accelerate
    assert pipeline.plan(resumed_cfg)["train"].key == plans["train"].key
    resumed = pipeline.run_stage(resumed_cfg, plans["train"], refs)
    assert resumed.metrics["resumed"] is True and resumed.metrics["steps"] == 4
    log = (run_dir / "launch.log").read_text().split(f"$ {sys.executable} ")[-1]  # the resumed launch's output
    assert "accelerate.commands.launch" in log
    assert "[oger-train] step 3/4" in log and "[oger-train] step 1/4" not in log
    c = params(Path(resumed.path) / "model")
    for name in a:  # the uninterrupted run's step-4 weights (one process: FSDP2 is the same update)
        torch.testing.assert_close(c[name], a[name], rtol=0, atol=1e-6, msg=name)
    config = json.loads((Path(resumed.path) / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
