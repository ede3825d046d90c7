"""Sharded checkpoints (DCP) on one process: a run killed after its step-2 checkpoint resumes to the
step-4 weights of an uninterrupted run; a checkpoint in the layout from before DCP (HF weights, the
full optimizer state) still resumes; the final model is exported as an HF folder in size-limited
parts, a tied weight once. (Two ranks with FSDP2: tests/test_train_ddp.py.)"""

import copy
import json
import shutil

import pytest
import torch

from oger.contract.config import TrainConfig
from oger.stages.policy.tiny_model import build_model, train_tokenizer
from oger.stages.train.checkpoint import (
    DCP_DIR,
    STATE_FILE,
    export_model,
    final_model_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from oger.stages.train.distributed import Dist
from oger.stages.train.setup import TrainInputs
from oger.stages.train.trainer import train

QUESTIONS = {f"q{i}": f"Compute {i} + {i + 1}." for i in range(4)}
ANSWERS = {f"q{i}": str(2 * i + 1) for i in range(4)}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def start():
    tok = train_tokenizer([*QUESTIONS.values(), "Answer: \\boxed{3}", "1 + 2 = 3"] * 10, 300)
    return build_model(tok, 32, 2, 2, 64, 128, seed=0), tok


def config(**kw) -> TrainConfig:
    # AdamW: its state (two moments, the step count) must come back, not only the weights; an entropy
    # term and two optimizer steps per batch, as the paper configs
    return TrainConfig(
        algorithm="grpo",
        steps=4,
        prompts_per_step=2,
        group_size=2,
        rollout={"max_new_tokens": 8, "temperature": 1.0},
        optim={"optimizer": "adamw", "lr": 0.01, "micro_batch_size": 2},
        loss={"ppo_mini_batches": 2, "entropy_coef": 0.01},
        logging={"checkpoint_every": 2},
        **kw,
    )


def inputs() -> TrainInputs:
    return TrainInputs(questions=QUESTIONS, answers=ANSWERS, problem_ids=list(QUESTIONS))


def run(start, run_dir, kill_after: int | None = None) -> list[dict]:
    """Train a fresh copy of the start model in run_dir; `kill_after`: die once that step is logged
    (its checkpoint written, as the loop checkpoints before it reports)."""
    model, tok = copy.deepcopy(start[0]), start[1]

    def progress(row):
        if row["step"] == kill_after:
            raise Killed(row["step"])

    return train(config(), model, tok, inputs(), run_dir, progress=progress, dist=Dist())


def weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(folder).named_parameters())


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(start, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    history = run(start, run_dir)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    return weights(final_model_dir(run_dir)), history


def test_a_run_killed_after_its_step_2_checkpoint_resumes_to_the_uninterrupted_weights(start, uninterrupted, tmp_path):
    with pytest.raises(Killed):
        run(start, tmp_path, kill_after=2)
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-000002"]
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert (ckpt / DCP_DIR / ".metadata").exists() and not (ckpt / "config.json").exists()  # DCP, no HF copy
    assert not final_model_dir(tmp_path).exists()  # exported only when the run ends

    history = run(start, tmp_path)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert_same(weights(final_model_dir(tmp_path)), uninterrupted[0])
    assert [h["reward"] for h in history] == [h["reward"] for h in uninterrupted[1]]


def test_a_checkpoint_from_before_dcp_still_resumes(start, uninterrupted, tmp_path):
    """The older layout: an HF model folder beside `trainer_state.pt` holding the full optimizer state."""
    with pytest.raises(Killed):
        run(start, tmp_path, kill_after=2)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    model = copy.deepcopy(start[0])
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=config().optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert load_checkpoint(ckpt, model, opt, sched, Dist()) == 2
    shutil.rmtree(ckpt / DCP_DIR)
    model.save_pretrained(ckpt)  # rewrite it the old way
    torch.save({"step": 2, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, ckpt / STATE_FILE)

    run(start, tmp_path)
    assert_same(weights(final_model_dir(tmp_path)), uninterrupted[0])


def test_the_exported_model_comes_in_parts_with_an_index_and_a_tied_weight_once(start, tmp_path):
    model, tok = start
    assert model.config.tie_word_embeddings
    per_layer = 32 * 64 * 4  # bytes of the largest tensors but the embedding: parts of ~2 tensors
    out = export_model(tmp_path / "model", model, tok, Dist(), shard_bytes=2 * per_layer)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    parts = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(parts) > 2 and sorted(set(index["weight_map"].values())) == parts
    assert "lm_head.weight" not in index["weight_map"] and "model.embed_tokens.weight" in index["weight_map"]
    assert index["metadata"]["total_size"] == sum(
        p.numel() * p.element_size() for p in model.parameters()
    )  # every parameter once
    assert_same(weights(out), dict(model.named_parameters()))
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()

    whole = export_model(tmp_path / "one", model, tok, Dist())  # under the limit: one file, HF's name
    assert [p.name for p in whole.glob("*.safetensors")] == ["model.safetensors"]
    assert not (whole / "model.safetensors.index.json").exists()
