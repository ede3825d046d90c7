"""OGER's extra cost per RL step: algorithm=grpo vs algorithm=oger, same seeds and rollout counts,
on SmolLM2-135M (a real LM) and on the tiny demo policy (where the encoder dominates)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import machine, mean_after_warmup, result, table, tiny_artifacts, train_inputs

PHASES = ["seconds_generate", "seconds_score", "seconds_embed", "seconds_update", "seconds_step"]
LM_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"


def _steps(policy_dir: Path, algorithm: str, inputs, steps: int, **train_kw) -> tuple[dict, list]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oger.contract.config import TrainConfig
    from oger.stages.train.files import read_rollouts
    from oger.stages.train.trainer import train

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = TrainConfig(
        algorithm=algorithm,
        steps=steps,
        seed=0,
        **train_kw,
        logging={"log_rollouts": True, "checkpoint_every": 10_000},
    )
    run_dir = Path(tempfile.mkdtemp(prefix=f"oger-overhead-{algorithm}-"))
    try:
        history = train(cfg, model, tok, inputs, run_dir)
        rows = read_rollouts(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {k: mean_after_warmup([h[k] for h in history]) for k in PHASES}, rows


def worst_case_embed_seconds(rows: list[dict], inputs) -> float:
    """Seconds per step to embed *every* on-policy rollout and score it against its teachers:
    the OGER cost if every answer were correct (the bonus is only computed for correct ones)."""
    import torch

    from oger.encoder import encode, load_encoder
    from oger.algorithm import core

    model = load_encoder(inputs.encoder)
    steps = sorted({r["step"] for r in rows})
    times = []
    for step in steps:
        on = [r for r in rows if r["step"] == step and not r["off_policy"]]
        refs = inputs.index.lookup(sorted({r["problem_id"] for r in on}))
        on = [r for r in on if r["problem_id"] in refs]
        t = time.perf_counter()
        emb = torch.from_numpy(encode(model, [r["text"] for r in on], long_text=inputs.long_text)).double()
        sim, _ = core.teacher_similarity(emb, [torch.from_numpy(refs[r["problem_id"]][1]).double() for r in on])
        core.divergence(sim)
        times.append(time.perf_counter() - t)
    return mean_after_warmup(times)


def _compare(label: str, policy_dir: Path, inputs, steps: int, **kw) -> tuple[float, float, list[list]]:
    grpo, _ = _steps(policy_dir, "grpo", inputs, steps, **kw)
    oger, rollouts = _steps(policy_dir, "oger", inputs, steps, **kw)
    overhead = (oger["seconds_step"] - grpo["seconds_step"]) / grpo["seconds_step"]
    worst = worst_case_embed_seconds(rollouts, inputs) / grpo["seconds_step"]
    rows = [[f"{label} {name}"] + [d[k] for k in PHASES] for name, d in (("grpo", grpo), ("oger", oger))]
    return overhead, worst, rows


def main() -> None:
    from oger.models import materialize_gguf
    from oger.stages.policy.files import model_dir

    refs = tiny_artifacts("policy")
    tiny_dir = model_dir(refs["policy"])
    tiny_over, tiny_worst, tiny_rows = _compare("tiny", tiny_dir, train_inputs(refs), steps=6,
                                    prompts_per_step=8, group_size=8, max_new_tokens=80)
    lm_dir = materialize_gguf("smollm2")
    lm_over, lm_worst, lm_rows = _compare("smollm2", lm_dir, train_inputs(refs, LM_INSTRUCTION), steps=3,
                                prompts_per_step=4, group_size=4, max_new_tokens=64,
                                micro_batch_size=4, lr=1e-6)
    table(f"reward_overhead: mean seconds per step after the first ({machine()})",
          ["run", "generate", "score", "embed", "update", "step"], lm_rows + tiny_rows)
    table("reward_overhead: OGER's extra cost as a fraction of the grpo step",
          ["policy", "measured (oger - grpo) / grpo", "embed every on-policy rollout / grpo step"],
          [["smollm2", lm_over, lm_worst], ["tiny", tiny_over, tiny_worst]])
    result("reward_overhead", overhead=lm_over, overhead_worst=lm_worst, overhead_tiny=tiny_over,
           overhead_tiny_worst=tiny_worst)
