"""Every derived random seed, in one place: a run's seed and the position of the thing drawn
(a step, a group, a sample, a generation call) give its seed, never a batch or a worker.

Why: a seed that depends on how work is batched or spread makes a "not in the key" setting (batch
sizes, shards, processes) change the result; one spelled with its own prime in six modules drifts.
The formulas are the ones the code has always used, so every result stays bit-identical.
"""

from __future__ import annotations

STEP_STRIDE = 7919  # steps (and evaluation's per-model streams) of one seed
ITEM_STRIDE = 1_000_003  # items (samples, groups, requests) of one stream
CALL_STRIDE = 1_000_000_007  # generation calls of one training step


def for_step(seed: int, step: int) -> int:
    """A training step's draws (prompts, teacher rows, shuffled bonus); a teacher chunk's sampling
    by its first prompt's position; evaluation's stream (step 0, items by job)."""
    return seed * STEP_STRIDE + step


def for_item(seed: int, item: int) -> int:
    """One item of a stream: a rollout's sampling numbers, a group's teacher pick, a request."""
    return seed * ITEM_STRIDE + item


def for_rollout_call(seed: int, step: int, call: int) -> int:
    """One generation call of a training step, by its global index within the step (the first call
    keeps the seed a whole-step call had before calls were split)."""
    return seed * 100_003 + step + call * CALL_STRIDE
