"""A step's rollouts: every rank draws the same prompts and samples n per prompt for its own slice,
seeded by each generation call's global index (the same rollouts on any number of ranks); and the
weight push into a separate rollout engine (vLLM) after the update."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from oger import seeds
from oger.algorithm.samples import Sample
from oger.contract.config import TrainConfig
from oger.generation.base import Request
from oger.generation.entropy_window import EntropyWindow
from oger.generation.hf import chat_prompt_ids
from oger.stages.train.distributed import Dist
from oger.stages.train.engine_guard import check_rollout_kl

if TYPE_CHECKING:
    from oger.stages.train.setup import TrainRun


def needs_rollout_entropy(cfg: TrainConfig) -> bool:
    """Whether anything reads the rollouts' per-token entropies: the bonus's damping g(H) and its
    monitor. Why ask: vLLM returns none, so they cost one more forward over prompt + response
    (`ColocatedEngine.generate`); grpo/luffy with `oger.monitor: false` skip it."""
    return cfg.bonus_lambda > 0 or cfg.oger.monitor


def bonus_window(cfg: TrainConfig) -> EntropyWindow:
    """Where the bonus reads H (`oger.entropy_tokens` at `oger.entropy_at`): the one selector the engine
    and the behaviour pass are both handed, so H comes from the same tokens whichever computes it."""
    return EntropyWindow(cfg.oger.entropy_tokens, cfg.oger.entropy_at)


def entropy_from_behaviour_pass(cfg: TrainConfig) -> bool:
    """Whether the bonus's entropies come from the behaviour pass (`update.behaviour_pass`), which a step
    with several optimizer steps per batch makes anyway for its old log-probs, taken before the reward
    step: then no engine records or computes them (vLLM and paged would need a forward of their own)."""
    return needs_rollout_entropy(cfg) and cfg.loss.ppo_mini_batches > 1


def rollouts(run: TrainRun, step: int) -> tuple[list[Sample], list[str], int, int]:
    """Every rank draws the same prompts, then rolls out n per prompt for its own slice [lo, hi),
    in generation calls of rollout.batch_prompts prompts seeded by their global index."""
    cfg, inputs, tok = run.cfg, run.inputs, run.tokenizer
    rng = random.Random(seeds.for_step(cfg.seed, step))
    pids = rng.sample(inputs.problem_ids, min(cfg.prompts_per_step, len(inputs.problem_ids)))
    lo, hi = _rank_slice(len(pids), cfg, run.dist)
    prompt_ids = {
        g: chat_prompt_ids(tok, inputs.questions[pids[g]], inputs.instruction, inputs.system_prompt)
        for g in range(lo, hi)
    }
    samples: list[Sample] = []
    ro = cfg.rollout
    for c in range(lo, hi, ro.batch_prompts):
        call = list(range(c, min(c + ro.batch_prompts, hi)))
        request = Request(
            n=cfg.group_size,
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            top_p=ro.top_p,
            seed=rollout_seed(cfg, step, c // ro.batch_prompts),
            record_entropy=needs_rollout_entropy(cfg) and not entropy_from_behaviour_pass(cfg),
            entropy_window=bonus_window(cfg),  # what the bonus reads (core.bonus_entropy_window)
        )
        rolls = run.engine.generate([prompt_ids[g] for g in call], request)
        samples += [
            Sample(
                call[r.prompt_index],
                pids[call[r.prompt_index]],
                prompt_ids[call[r.prompt_index]],
                r.response_ids,
                r.text,
                False,
                entropies=r.entropies,
                finish_reason=r.finish_reason,
                rollout_logprobs=r.logprobs,
            )
            for r in rolls
        ]
    return samples, pids, lo, hi


def _rank_slice(n_prompts: int, cfg: TrainConfig, dist: Dist) -> tuple[int, int]:
    """This rank's prompts [lo, hi) of the step: a contiguous run of whole generation calls."""
    if not dist.active:
        return 0, n_prompts
    per_call = dist.world * cfg.rollout.batch_prompts
    if n_prompts % per_call:
        raise ValueError(
            f"train: {n_prompts} prompts per step (train.prompts_per_step, capped by "
            f"train.max_prompts) is not a multiple of the ranks (nnodes x num_processes) x "
            f"rollout.batch_prompts = {per_call}"
        )
    per_rank = n_prompts // dist.world
    return dist.rank * per_rank, (dist.rank + 1) * per_rank


def rollout_seed(cfg: TrainConfig, step: int, call: int) -> int:
    """The sampling seed of one generation call, by its global index within the step (the first
    call keeps the seed a whole-step call had before calls were split)."""
    return seeds.for_rollout_call(cfg.seed, step, call)


def sync_engine(run: TrainRun, step: int, loss_metrics: dict) -> dict[str, float]:
    """After the update: hold the step's rollout_kl under rollout.max_rollout_kl (warn or stop), and every
    rollout.sync_every steps give a separate rollout engine (vllm) the updated weights, streamed, then
    check that it holds them (`engine_guard`: the run stops if not). The metrics the step logs: the
    push's seconds, the largest MiB of gathered weights alive at once over the ranks, the guard's
    numbers (none without a push)."""
    ro = run.cfg.rollout
    check_rollout_kl(loss_metrics, step, ro.max_rollout_kl, ro.on_rollout_kl, run.dist.main)
    sync = getattr(run.engine, "sync", None)
    if sync is None or (step + 1) % ro.sync_every:
        return {}
    out = {"seconds_sync": sync(), "push_gathered_peak_mib": max(run.dist.gather(run.engine.last_push.peak)) / 2**20}
    if run.guard is not None:
        when = f"after the weight push of step {step + 1}"
        out.update(run.guard.check(run.engine, run.policy, when, run.dist, run.runtime.autocast))
    return out
