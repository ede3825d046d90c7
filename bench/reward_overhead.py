"""OGER's extra cost per RL step: algorithm=grpo vs algorithm=oger, same seeds and rollout counts,
on SmolLM2-135M (a real LM) and on the tiny demo policy (where the encoder dominates)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import machine, mean_after_warmup, result, table, tiny_artifacts, tiny_config, train_inputs

PHASES = ["seconds_generate", "seconds_score", "seconds_embed", "seconds_update", "seconds_step"]
LM_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"
# The train settings of each policy's pair of runs (TrainConfig's sections, as a config file has them).
RUNS = {
    "tiny": dict(steps=6, prompts_per_step=8, group_size=8, rollout={"max_new_tokens": 80}),
    "smollm2": dict(
        steps=3,
        prompts_per_step=4,
        group_size=4,
        rollout={"max_new_tokens": 64},
        optim={"micro_batch_size": 4, "lr": 1e-6},
    ),
}
ALGORITHMS = ("grpo", "oger")


def train_config(algorithm: str, **run):
    """One run's TrainConfig: a RUNS entry, same seed for both algorithms, every rollout logged (the
    worst-case embed figure re-embeds them), no checkpoints inside the timed steps."""
    from oger.contract.config import TrainConfig

    return TrainConfig(algorithm=algorithm, seed=0, **run, logging={"log_rollouts": True, "checkpoint_every": 10_000})


def build() -> dict:
    """The configs main() runs with, validated without training (tests/test_bench.py): the tiny
    pipeline config its inputs come from and the TrainConfig of every (policy, algorithm) run."""
    return {
        "tiny.yaml": tiny_config(),
        **{f"{label} {alg}": train_config(alg, **run) for label, run in RUNS.items() for alg in ALGORITHMS},
    }


def _steps(policy_dir: Path, algorithm: str, inputs, run: dict) -> tuple[dict, list]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oger.stages.train.files import read_rollouts
    from oger.stages.train.trainer import train

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = train_config(algorithm, **run)
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

    from oger.algorithm import core
    from oger.encoder import encode, load_encoder

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


def _compare(label: str, policy_dir: Path, inputs) -> tuple[float, float, list[list]]:
    grpo, _ = _steps(policy_dir, "grpo", inputs, RUNS[label])
    oger, rollouts = _steps(policy_dir, "oger", inputs, RUNS[label])
    overhead = (oger["seconds_step"] - grpo["seconds_step"]) / grpo["seconds_step"]
    worst = worst_case_embed_seconds(rollouts, inputs) / grpo["seconds_step"]
    rows = [[f"{label} {name}"] + [d[k] for k in PHASES] for name, d in (("grpo", grpo), ("oger", oger))]
    return overhead, worst, rows


def main() -> None:
    from oger.models import materialize_gguf
    from oger.stages.policy.files import model_dir

    refs = tiny_artifacts("policy")
    tiny_dir = model_dir(refs["policy"])
    tiny_over, tiny_worst, tiny_rows = _compare("tiny", tiny_dir, train_inputs(refs))
    lm_dir = materialize_gguf("smollm2")
    lm_over, lm_worst, lm_rows = _compare("smollm2", lm_dir, train_inputs(refs, LM_INSTRUCTION))
    table(
        f"reward_overhead: mean seconds per step after the first ({machine()})",
        ["run", "generate", "score", "embed", "update", "step"],
        lm_rows + tiny_rows,
    )
    table(
        "reward_overhead: OGER's extra cost as a fraction of the grpo step",
        ["policy", "measured (oger - grpo) / grpo", "embed every on-policy rollout / grpo step"],
        [["smollm2", lm_over, lm_worst], ["tiny", tiny_over, tiny_worst]],
    )
    result(
        "reward_overhead",
        overhead=lm_over,
        overhead_worst=lm_worst,
        overhead_tiny=tiny_over,
        overhead_tiny_worst=tiny_worst,
    )
