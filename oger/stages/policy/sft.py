"""Supervised warm start: next-token loss on teacher traces, prompt tokens masked out."""

from __future__ import annotations

import math
import random

import torch

from oger.runtime.cpu_threads import split_by_length
from oger.runtime.device import of_model
from oger.runtime.precision import Precision


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """(input_ids, attention_mask, labels) right-padded; labels are -100 on prompt and padding."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(examples):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(r)
    return ids, attn, labels


def sft(
    model,
    examples: list[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    epochs: float,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    precision: Precision = "float32",
    progress=None,
) -> list[float]:
    """Train in place with AdamW and a cosine schedule; returns the loss of every step. On a CPU a
    small model's batch is split over threads (`oger.runtime.cpu_threads`): same gradient, 25% faster.
    `precision="bf16-mixed"`: bf16 matmuls, float32 weights (`oger.runtime.precision`)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    runtime = of_model(model, precision)  # device, autocast, attention and threads (oger.runtime.device)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one fused kernel per op over all tensors instead of a Python loop per parameter.
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def part_loss(part: list[tuple[list[int], list[int]]], batch_tokens: int):
        ids, _, labels = pad_batch(part, pad_id)
        # Right padding only follows the real tokens, so under the causal mask no real position
        # attends to a pad and pads carry no loss: the padding mask changes nothing but costs a
        # 4D mask build and keeps SDPA off its causal fast path (~10% of a tiny model's step).
        # Summed over the part and divided by the whole batch's response tokens, the parts'
        # losses add up to the batch's token mean.
        with runtime.autocast():
            loss = model(input_ids=ids, labels=labels, num_items_in_batch=batch_tokens, use_cache=False).loss
        return loss, float(loss.detach())

    model.train()
    losses, order = [], []
    with runtime.batch_threads(model) as threads, runtime.attention(model):
        for _ in range(total):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            idx, order = order[:batch_size], order[batch_size:]
            batch = [examples[i] for i in idx]
            tokens = sum(len(r) for _, r in batch)
            parts = [
                [batch[i] for i in part]
                for part in split_by_length(range(len(batch)), lambda i, b=batch: sum(map(len, b[i])), threads.workers)
            ]
            opt.zero_grad(set_to_none=True)
            loss = sum(threads.backward(params, lambda part, n=tokens: part_loss(part, n), parts))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss)
            if progress is not None:
                progress(loss)
    model.eval()
    return losses
