"""The update alone, padded vs padding-free: SmolLM2-135M (float32, CPU) on one batch with the
paper's length spread scaled down (prompts 64 tokens, responses uniform in [16, 1024] tokens), the
same loss and optimizer settings, runs alternating, best of each. Padded: `optim.micro_batch_size`
samples per micro-batch (sorted by length, as the trainer does), each padded to its longest. Packed:
`optim.padding_free` with `optim.max_tokens_per_micro_batch`, every position a real token. "Positions"
counts what the model computes on: padded rows x longest, or packed tokens."""

from __future__ import annotations

import os
import random
import time

from bench.common import machine, result, table

SAMPLES = int(os.environ.get("OGER_BENCH_UPDATE_SAMPLES", "8"))
PROMPT, SHORTEST, LONGEST = 64, 16, 1024
SMOLLM2_VOCAB = 49_152  # build() makes the batch without loading the model


def spread_batch(
    vocab: int, n: int, seed: int = 0, prompt: int = PROMPT, shortest: int = SHORTEST, longest: int = LONGEST
):
    """n samples of random token ids: `prompt` prompt tokens, responses uniform in [shortest, longest]."""
    from oger.algorithm.samples import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.randint(shortest, longest)
        out.append(
            Sample(
                group=i // 4,
                problem_id=f"p{i}",
                prompt_ids=[rng.randrange(3, vocab) for _ in range(prompt)],
                response_ids=[rng.randrange(3, vocab) for _ in range(r)],
                text="",
                off_policy=False,
                correct=bool(i % 2),
            )
        )
    return out


def positions(samples, cfg) -> tuple[int, int]:
    """(positions the model runs over, real tokens) for the trainer's micro-batches under cfg."""
    from oger.stages.train.update import micro_batch_indices

    real = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    if cfg.optim.padding_free:
        return real, real
    run = 0
    for idx in micro_batch_indices(samples, cfg):
        longest = max(len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in idx)
        run += longest * len(idx)
    return run, real


def timed_update(model, samples, cfg, pad_id) -> float:
    import torch

    from oger.stages.train.update import update

    cuda = next(model.parameters()).is_cuda
    adv = torch.tensor([1.0 if s.correct else -1.0 for s in samples])
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    update(model, None, samples, adv, cfg, pad_id)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def arm_configs() -> dict:
    """The layouts compared, as TrainConfigs (the same loss settings; only the micro-batching differs)."""
    from oger.contract.config import TrainConfig

    common = dict(loss={"loss_agg": "token_mean"}, rollout={"max_new_tokens": LONGEST})
    return {
        "padded 16/mb": TrainConfig(**common),  # the default micro_batch_size: the whole batch at once
        "padded 2/mb": TrainConfig(optim={"micro_batch_size": 2}, **common),
        "packed 2048 tok": TrainConfig(optim={"padding_free": True, "max_tokens_per_micro_batch": 2048}, **common),
        "packed 4096 tok": TrainConfig(optim={"padding_free": True, "max_tokens_per_micro_batch": 4096}, **common),
    }


def build() -> dict:
    """The arms' configs, the batch (SmolLM2's vocabulary size, no model loaded) and each arm's
    micro-batches: everything main() times with, without an update (tests/test_bench.py)."""
    from oger.stages.train.update import micro_batch_indices

    configs = arm_configs()
    samples = spread_batch(SMOLLM2_VOCAB, SAMPLES)
    return {
        "arms": configs,
        "samples": samples,
        "micro_batches": {name: micro_batch_indices(samples, cfg) for name, cfg in configs.items()},
        "positions": {name: positions(samples, cfg) for name, cfg in configs.items()},
    }


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from oger.models import materialize_gguf
    from oger.stages.train.update import micro_batch_indices

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(materialize_gguf("smollm2"), dtype=torch.float32)
    samples = spread_batch(model.config.vocab_size, SAMPLES)
    arms = arm_configs()
    pad_id = 0
    timed_update(model, samples[:2], arms["padded 2/mb"], pad_id)  # warm the kernels
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(2):  # alternate so drift in machine load hits every arm
        for name, cfg in arms.items():
            times[name].append(timed_update(model, samples, cfg, pad_id))
    rows = []
    base = min(times["padded 16/mb"])
    for name, cfg in arms.items():
        run, real = positions(samples, cfg)
        best = min(times[name])
        rows.append([name, len(micro_batch_indices(samples, cfg)), run, real, best, real / best, best / base])
    table(
        f"update: {SAMPLES} samples, prompts {PROMPT} + responses U[{SHORTEST}, {LONGEST}] tokens, "
        f"SmolLM2-135M float32 ({machine()})",
        ["layout", "micro-batches", "positions", "tokens", "best s", "tokens/s", "/ padded 16"],
        rows,
    )
    packed = min(min(times["packed 2048 tok"]), min(times["packed 4096 tok"]))
    result(
        "update",
        ratio=packed / base,
        ratio_vs_padded2=packed / min(times["padded 2/mb"]),
        padded_s=base,
        packed_s=packed,
        real_tokens=rows[0][3],
        padded_positions=rows[0][2],
    )
