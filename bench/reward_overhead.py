"""OGER's extra cost per RL step: algorithm=grpo vs algorithm=oger, same seeds and rollout counts,
on SmolLM2-135M (a real LM) and on the tiny demo policy (where the encoder dominates)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.common import machine, mean_after_warmup, result, table, tiny_artifacts, train_inputs

PHASES = ["seconds_generate", "seconds_score", "seconds_embed", "seconds_update", "seconds_step"]
LM_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"


def _steps(policy_dir: Path, algorithm: str, inputs, steps: int, **train_kw) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oger.config import TrainConfig
    from oger.rl.trainer import train

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = TrainConfig(algorithm=algorithm, steps=steps, log_rollouts=False, checkpoint_every=10_000,
                      seed=0, **train_kw)
    run_dir = Path(tempfile.mkdtemp(prefix=f"oger-overhead-{algorithm}-"))
    try:
        history = train(cfg, model, tok, inputs, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {k: mean_after_warmup([h[k] for h in history]) for k in PHASES}


def _compare(label: str, policy_dir: Path, inputs, steps: int, **kw) -> tuple[float, list[list]]:
    grpo = _steps(policy_dir, "grpo", inputs, steps, **kw)
    oger = _steps(policy_dir, "oger", inputs, steps, **kw)
    overhead = (oger["seconds_step"] - grpo["seconds_step"]) / grpo["seconds_step"]
    rows = [[f"{label} {name}"] + [d[k] for k in PHASES] for name, d in (("grpo", grpo), ("oger", oger))]
    return overhead, rows


def main() -> None:
    from oger.models import materialize_gguf

    refs = tiny_artifacts("policy")
    tiny_dir = Path(refs["policy"].path) / "model"
    tiny_over, tiny_rows = _compare("tiny", tiny_dir, train_inputs(refs), steps=6,
                                    prompts_per_step=8, group_size=8, max_new_tokens=80)
    lm_dir = materialize_gguf("smollm2")
    lm_over, lm_rows = _compare("smollm2", lm_dir, train_inputs(refs, LM_INSTRUCTION), steps=3,
                                prompts_per_step=4, group_size=4, max_new_tokens=64,
                                micro_batch_size=4, lr=1e-6)
    table(f"reward_overhead: mean seconds per step after the first ({machine()})",
          ["run", "generate", "score", "embed", "update", "step"], lm_rows + tiny_rows)
    result("reward_overhead", overhead=lm_over, overhead_tiny=tiny_over)
