"""Multi-process training for real: the train stage launches 2 CPU ranks (gloo) with DDP under
torchrun and with FSDP2 under accelerate launch; both must give the parameters one process gets on
the whole batch; a launch interrupted after a rank-0 checkpoint resumes there."""

import json
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
    from oger.stages.train.distributed import train_distributed

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
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    first = load_config(p, [f"workdir={rl_workdir}", "train.distributed.num_processes=2", "train.steps=1"])
    hist = train_distributed(first, Path(refs["policy"].path) / "model", refs["problems"], refs["index"], run_dir)
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

    # FSDP2 (sharded parameters, gradients, optimizer state; gloo on CPU here) is the same update,
    # here launched by `accelerate launch`.
    fsdp_cfg = load_config(
        p,
        [
            f"workdir={rl_workdir}",
            "train.distributed.num_processes=2",
            "train.distributed.fsdp=true",
            "train.distributed.launcher=accelerate",
        ],
    )
    fsdp = pipeline.run_stage(fsdp_cfg, plans["train"], refs, refresh=True)
    assert "accelerate.commands.launch" in (run_dir / "launch.log").read_text()
    assert rollout_keys(fsdp) == single_rollouts
    c = params(Path(fsdp.path) / "model")
    for name in a:
        torch.testing.assert_close(c[name], a[name], rtol=1e-5, atol=1e-7, msg=name)
    config = json.loads((Path(fsdp.path) / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
