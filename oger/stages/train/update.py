"""The update: micro-batched forward passes that score the response tokens (padded, packed or with
shared prompts), the hybrid GRPO/LUFFY loss from `oger.algorithm.core`, gradients accumulated to equal
the whole batch on any number of ranks, and the optimizer step(s) of a batch (mini-batches as verl's
actor worker)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from oger.algorithm import core
from oger.algorithm.samples import Sample
from oger.contract.config import TrainConfig
from oger.generation.entropy_window import EntropyWindow, as_window
from oger.runtime.cpu_threads import BatchThreads
from oger.stages.train import packing, shared_prompts
from oger.stages.train.varlen import per_sample_attention

if TYPE_CHECKING:
    from oger.stages.train.setup import TrainRun


def _batch_tensors(samples: list[Sample], pad_id: int):
    """Prompts left-padded to one width P, responses right-padded to width R (as TRL lays them out),
    so every response sits in the last R positions and the LM head runs on those only.

    Returns ids (B, P+R), attention mask, position ids (counting real tokens only, as `generate`
    does under left padding) and the response mask (B, R) over the R predicted tokens.
    """
    P = max(len(s.prompt_ids) for s in samples)
    R = max(len(s.response_ids) for s in samples)
    ids = torch.full((len(samples), P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), P + R), dtype=torch.long)
    resp = torch.zeros((len(samples), R))
    for r, s in enumerate(samples):
        ids[r, P - len(s.prompt_ids) : P] = torch.tensor(s.prompt_ids)
        ids[r, P : P + len(s.response_ids)] = torch.tensor(s.response_ids)
        attn[r, P - len(s.prompt_ids) : P + len(s.response_ids)] = 1
        resp[r, : len(s.response_ids)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos, resp


def response_logits(model, ids, attn, pos, R: int) -> torch.Tensor:
    """Logits predicting the last R tokens, (B, R, V), in the model's compute dtype (bf16 under
    autocast: the float32 work is done per chunk, `core.token_scores_chunked`): the LM head skips the
    prompt positions."""
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1, use_cache=False).logits[
        :, :-1
    ]


def token_scores(
    model,
    mb: list[Sample],
    pad_id: int,
    temperature: float,
    layout: str,
    entropy_grad: bool,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs, entropies, response mask) of a micro-batch's response tokens under
    softmax(logits / temperature), each (samples, longest response) whatever the `layout`
    (`update_layout`): padded rows (`_batch_tensors`), one packed row (`packing`) or each distinct
    prompt once (`shared_prompts`), so the loss never sees the difference. The entropies carry a
    gradient only with `entropy_grad` (the entropy bonus); else they are metrics. The forward runs
    under `autocast` (the runtime's: bf16-mixed), the log-softmax and entropy in float32, `chunk`
    positions at a time (`optim.logprob_chunk`: no float32 (B, T, V) tensor is kept for backward)."""
    device = next(model.parameters()).device
    if layout == "packed":
        row = packing.pack([s.prompt_ids for s in mb], [s.response_ids for s in mb]).to(device)
        with autocast():
            logits = packing.packed_logits(model, row)
        logp, ent = core.token_scores_chunked(logits, row.targets, temperature, entropy_grad, chunk)
        return row.unpack(logp), row.unpack(ent), packing.response_mask([s.response_ids for s in mb]).to(device)
    if layout == "shared_prompts":
        with autocast():
            logits, targets, resp = shared_prompts.shared_prompt_logits(
                model, [s.prompt_ids for s in mb], [s.response_ids for s in mb], pad_id
            )
    else:
        ids, attn, pos, resp = (x.to(device) for x in _batch_tensors(mb, pad_id))
        targets = ids[:, -resp.shape[1] :]
        with autocast():
            logits = response_logits(model, ids, attn, pos, resp.shape[1])
    logp, ent = core.token_scores_chunked(logits, targets, temperature, entropy_grad, chunk)
    return logp, ent, resp


def update_layout(cfg: TrainConfig) -> str:
    """How a micro-batch is laid out for the forward: packed, shared_prompts or padded."""
    o = cfg.optim
    return "packed" if o.padding_free else "shared_prompts" if o.share_prompts else "padded"


def micro_batch_indices(
    samples: list[Sample], cfg: TrainConfig, count_over_ranks: Callable[[int], int] | None = None, workers: int = 1
) -> list[list[int]]:
    """The micro-batches of a (mini-)batch: similar lengths together, `optim.micro_batch_size`
    samples or `optim.max_tokens_per_micro_batch` tokens each; with `workers` > 1 (`BatchThreads`)
    split further until there are 2 x workers (`splits_freely`)."""
    lengths = [packing.sample_tokens(s.prompt_ids, s.response_ids) for s in samples]
    groups = packing.micro_batches(
        _micro_batch_order(samples, cfg.optim.share_prompts),
        lengths,
        cfg.optim.micro_batch_size,
        cfg.optim.max_tokens_per_micro_batch,
        count_over_ranks,
    )
    if workers > 1 and splits_freely(cfg):
        groups = packing.split_to_count(groups, lengths, max(len(groups), min(2 * workers, len(samples))))
    return groups


def splits_freely(cfg: TrainConfig) -> bool:
    """Whether cutting a micro-batch in parts leaves the loss as it is. Why split: one micro-batch
    (TRL-like micro_batch_size = batch) ran on torch's two intra-op threads in 0.27 s per tiny-policy
    update; cut into four parts on two `BatchThreads` it took 0.18 s (docs/PERFORMANCE.md,
    "trl_step"). Parts run two at a time, so memory stays under one micro-batch's. Not with
    `entropy_agg: token_mean`, which averages the entropy per micro-batch (LUFFY/verl): more parts
    would be another loss."""
    return not cfg.loss_depends_on_cut


def _micro_batch_order(samples: list[Sample], by_group: bool = False) -> list[int]:
    # Micro-batches of similar length waste less compute on padding (long teacher traces end up
    # together); the accumulated gradient does not depend on the order. Sharing prompts, a group's
    # samples stay together (shortest groups first) so its prompt runs once.
    def tokens(i: int) -> int:
        return len(samples[i].prompt_ids) + len(samples[i].response_ids)

    if not by_group:
        return sorted(range(len(samples)), key=tokens)
    longest: dict[int, int] = {}
    for i, s in enumerate(samples):
        longest[s.group] = max(longest.get(s.group, 0), tokens(i))
    return sorted(range(len(samples)), key=lambda i: (longest[samples[i].group], samples[i].group, tokens(i)))


def behaviour_scores(
    model,
    samples: list[Sample],
    cfg: TrainConfig,
    pad_id: int,
    count_over_ranks: Callable[[int], int] | None = None,
    threads: BatchThreads | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    entropy_window: EntropyWindow | int | None = None,
    tokenizer=None,
) -> tuple[list[torch.Tensor], list[list[float]]]:
    """The behaviour policy's log-probs of each sample's response tokens, (len(response),) per sample,
    computed once per batch before the first optimizer step (no grad, micro-batched, side by side on
    `threads`); with `entropy_window` (an `EntropyWindow`, or m for the last m tokens) also each sample's
    entropies of softmax(logits / T) at the bonus's positions (`EntropyWindow.positions`, which the
    answer options ask `tokenizer`; `core.sampling_entropy`): the bonus's H at the tokens the engines
    would read, from a pass the step makes anyway, so no engine needs a pass of its own for them.
    Without the log-probs every mini-batch after the first would take the already-updated policy as its
    behaviour policy (ratio 1): the importance ratio and the clip could never act."""
    out: list[torch.Tensor | None] = [None] * len(samples)
    ents: list[list[float]] = [[] for _ in samples]
    window = as_window(entropy_window)
    model.train()  # the mode the update scores in, so the first mini-batch's ratio is 1
    threads = threads or BatchThreads(1)

    def score(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return token_scores(
                model,
                [samples[i] for i in idx],
                pad_id,
                cfg.rollout.temperature,
                update_layout(cfg),
                entropy_grad=False,
                autocast=autocast,
                chunk=cfg.optim.logprob_chunk,
            )[:2]

    batches = micro_batch_indices(samples, cfg, count_over_ranks, threads.workers)
    for idx, (logp, ent) in zip(batches, threads.map(score, batches)):
        for row, i in enumerate(idx):
            n = len(samples[i].response_ids)
            out[i] = logp[row, :n].detach()
            if window:
                w = window.positions(samples[i].response_ids, tokenizer)
                ents[i] = ent[row, w.start : w.stop].tolist()
    return out, ents


def mini_batches(samples: list[Sample], n: int) -> list[list[int]]:
    """Sample indices of the `n` mini-batches of a batch: whole groups, group g in mini-batch g mod n.

    Whole groups keep a teacher row with the rollouts it is compared with; assigning by the global
    group index makes the split the same whatever num_processes is (a rank holds a contiguous run of
    groups). Groups are drawn at random each step, so no shuffle is needed."""
    parts: list[list[int]] = [[] for _ in range(n)]
    for i, s in enumerate(samples):
        parts[s.group % n].append(i)
    if any(not p for p in parts):
        raise ValueError(
            f"train.loss.ppo_mini_batches = {n} needs at least {n} prompts (groups) per rank "
            f"and step; this rank has {len({s.group for s in samples})}: lower "
            "ppo_mini_batches or raise prompts_per_step"
        )
    return parts


def update(
    model,
    ref_model,
    samples: list[Sample],
    adv: torch.Tensor,
    cfg: TrainConfig,
    pad_id: int,
    totals: tuple[float, float] | None = None,
    grad_scale: float = 1.0,
    no_sync=None,
    old_logp: list[torch.Tensor] | None = None,
    threads: BatchThreads | None = None,
    count_over_ranks: Callable[[int], int] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """One optimizer step's gradients, accumulated over micro-batches to equal the full batch.

    On several ranks `totals` is the (response tokens, samples) count of the global batch, which
    normalises the loss, `grad_scale` the world size (undoing DDP's average over ranks) and
    `no_sync(last)` skips the gradient all-reduce on all but the last micro-batch. `old_logp` (one
    tensor per sample, from `behaviour_scores`) is the behaviour policy; None means the current one
    (ratio 1, the exact policy gradient of a single step per batch). `threads` (one process on a
    CPU, `oger.runtime.cpu_threads`) runs micro-batches side by side; `count_over_ranks` makes every
    rank run as many micro-batches (`packing.split_to_count`); `autocast` (the runtime's) is entered
    around each forward, in the thread that runs it. The returned metrics are this rank's share of the
    global ones (summed over ranks by the caller)."""
    total_tokens, total_samples = totals or (sum(len(s.response_ids) for s in samples), len(samples))
    # Dr.GRPO normalises by a constant: the generation budget, the same for every batch.
    lc, ro, T = cfg.loss, cfg.rollout, cfg.rollout.temperature
    max_len = cfg.rollout.max_new_tokens if lc.loss_agg == "constant_len" else None
    device = next(model.parameters()).device
    model.train()

    def micro_batch(idx: list[int]) -> tuple[torch.Tensor, tuple[dict, float, float]]:
        """(this micro-batch's share of the batch loss, (loss metrics, share, token entropy sum))."""
        mb = [samples[i] for i in idx]
        # The behaviour policy sampled from softmax(logits / T): score tokens under the same one.
        logp, ent, resp = token_scores(
            model,
            mb,
            pad_id,
            T,
            update_layout(cfg),
            entropy_grad=bool(lc.entropy_coef),
            autocast=autocast,
            chunk=cfg.optim.logprob_chunk,
        )
        entropy = ent if lc.entropy_coef else None
        ref_logp = None
        if lc.beta:
            with torch.no_grad():
                ref_logp, _, _ = token_scores(
                    ref_model,
                    mb,
                    pad_id,
                    T,
                    update_layout(cfg),
                    entropy_grad=False,
                    autocast=autocast,
                    chunk=cfg.optim.logprob_chunk,
                )
        off = torch.tensor([s.off_policy for s in mb], device=device)
        if old_logp is None:  # one update per batch: the behaviour policy is the current one (ratio 1)
            behaviour = logp.detach()
        else:  # padded positions take the current value; the mask drops them anyway
            behaviour = logp.detach().clone()
            for row, i in enumerate(idx):
                behaviour[row, : len(old_logp[i])] = old_logp[i].to(device, logp.dtype)
        is_weight, mismatch = None, {}
        if any(s.rollout_logprobs for s in mb):  # sampled by another engine (vllm): correct for its sampler
            sampled = behaviour.clone()
            for row, s in enumerate(mb):
                if s.rollout_logprobs:
                    sampled[row, : len(s.rollout_logprobs)] = torch.tensor(s.rollout_logprobs, dtype=logp.dtype)
            on = resp * (~off).unsqueeze(-1).to(resp.dtype)
            mismatch = core.rollout_mismatch(behaviour, sampled, on)
            if ro.correction != "none":
                is_weight = core.rollout_is_weights(behaviour, sampled, on, ro.correction, ro.correction_cap)
        loss, m = core.policy_loss(
            logp,
            behaviour,
            adv[idx].to(device),
            resp,
            off,
            eps_low=lc.clip_eps_low,
            eps_high=lc.clip_eps_high,
            clip=lc.clip,
            gamma=lc.gamma,
            agg=lc.loss_agg,
            max_len=max_len,
            entropy=entropy,
            entropy_coef=lc.entropy_coef,
            entropy_agg=None if lc.entropy_agg == "loss_agg" else lc.entropy_agg,
            ref_logp=ref_logp,
            beta=lc.beta,
            is_weight=is_weight,
        )
        m.update(mismatch)
        share = batch_share(mb, (total_tokens, total_samples), lc.loss_agg)
        entropy_sum = float((ent.detach() * resp).sum())
        return loss * (share * grad_scale), (m, share, entropy_sum)

    workers = threads.workers if threads is not None else 1
    batches = micro_batch_indices(samples, cfg, count_over_ranks, workers)
    # the packed layout's attention held over the backward too: gradient checkpointing recomputes there
    held = per_sample_attention(model) if update_layout(cfg) == "packed" else contextlib.nullcontext()
    with held:
        parts = _forward_backward(micro_batch, batches, model, workers, threads, no_sync)
    agg_metrics = defined_weighted_means([(m, share) for m, share, _ in parts])
    agg_metrics["token_entropy"] = sum(e for _, _, e in parts) / max(1, total_tokens)
    return agg_metrics


def _forward_backward(micro_batch, batches: list[list[int]], model, workers: int, threads, no_sync) -> list:
    """Each micro-batch's forward and backward (side by side on CPU threads with `workers` > 1); their
    (metrics, share, entropy sum)."""
    if workers > 1:
        params = [p for p in model.parameters() if p.requires_grad]
        parts = threads.backward(params, micro_batch, batches)
    else:
        parts = []
        for k, idx in enumerate(batches):
            # Over the forward too: DDP decides there whether the backward all-reduces.
            with no_sync(k == len(batches) - 1) if no_sync else contextlib.nullcontext():
                loss, part = micro_batch(idx)
                loss.backward()
            parts.append(part)
    return parts


def batch_share(samples: list[Sample], totals: tuple[int, int], loss_agg: str) -> float:
    """The part of a global batch's loss that `samples` carry: their response tokens over the
    batch's (token_mean), else their count over the batch's; `totals` = (tokens, samples)."""
    tokens, count = totals
    if loss_agg == "token_mean":
        return sum(len(s.response_ids) for s in samples) / tokens
    return len(samples) / count


def combine_ranks(ranks: list[tuple[dict, float]]) -> dict[str, float]:
    """The global metrics from each rank's (`update` metrics, `batch_share`): a rank's value is its
    mean times its share, so the sum over the ranks that define a metric, over their shares. A
    metric no part of a rank defined (no teacher row there: `shaping_mean`) is absent from its
    dict; summing as 0 would halve it on two ranks."""
    return {k: v / w if w > 0 else 0.0 for k, (v, w) in _defined_sums(ranks, scale=False).items()}


def defined_weighted_means(parts: list[tuple[dict, float]]) -> dict[str, float]:
    """Each metric's weighted mean over the parts that define it (not NaN, present), times the
    parts' total weight. Why: a metric over on-policy tokens is NaN in a part of teacher rows only;
    weighting the defined parts by their share of the whole batch counted such a part as 0, so
    `is_weight_mean` read 0.52 when every weight was 1 (four parts, two without an on-policy token).
    Times the total weight: a rank's parts hold its share of the global batch, and the caller sums
    ranks (and mini-batches) as before."""
    total = sum(w for _, w in parts)
    return {k: s / w * total if w > 0 else 0.0 for k, (s, w) in _defined_sums(parts, scale=True).items()}


def _defined_sums(parts: list[tuple[dict, float]], scale: bool) -> dict[str, tuple[float, float]]:
    """{metric: (sum of its values (times their part's weight with `scale`), sum of those weights)}
    over the parts where it is present and not NaN."""
    sums: dict[str, tuple[float, float]] = {}
    for m, w in parts:
        for k, v in m.items():
            if isinstance(v, (int, float)) and not math.isnan(v):
                s, ws = sums.get(k, (0.0, 0.0))
                sums[k] = (s + (v * w if scale else v), ws + w)
    return sums


def _count_over_ranks(run: TrainRun):
    """Token budgets give ranks different micro-batch counts; each rank then runs the largest."""
    dist = run.dist
    if dist.active and run.cfg.optim.max_tokens_per_micro_batch:
        return lambda n: int(max(dist.gather(n)))
    return None


def behaviour_pass(run: TrainRun, samples: list[Sample], entropy_window: EntropyWindow | None = None):
    """`behaviour_scores` for a training run (its ranks, threads, autocast and tokenizer): the old
    log-probs the mini-batches after the first need, and the bonus's window entropies with
    `entropy_window` (`rollout.bonus_window`)."""
    return behaviour_scores(
        run.model,
        samples,
        run.cfg,
        run.pad_id,
        _count_over_ranks(run),
        run.threads,
        autocast=run.runtime.autocast,
        entropy_window=entropy_window,
        tokenizer=run.tokenizer if entropy_window is not None and entropy_window.needs_tokenizer else None,
    )


def optimizer_step(
    run: TrainRun, samples: list[Sample], adv: torch.Tensor, old: list[torch.Tensor] | None = None
) -> tuple[dict, float, float]:
    """The batch's optimizer steps: one (ppo_mini_batches 1) or one per mini-batch, each normalised
    over its global mini-batch with gradients all-reduced once; the LR schedule steps once per batch
    (as verl's actor worker); a step whose gradient norm is not finite is skipped and counted
    (`nonfinite_grad_steps`). `old`: the behaviour log-probs when the step already took them
    (`behaviour_pass`, before the reward step); else taken here. Returns (loss metrics summed over ranks
    and weighted over mini-batches by their token share, mean grad norm, learning rate used)."""
    cfg, dist, model = run.cfg, run.dist, run.model
    adv = adv.float()
    count = _count_over_ranks(run)
    if cfg.loss.ppo_mini_batches == 1:
        parts, old = [list(range(len(samples)))], None
    else:  # advantages stay those of the whole batch; the behaviour log-probs are taken once, before any step
        parts = mini_batches(samples, cfg.loss.ppo_mini_batches)
        if old is None:
            old = behaviour_pass(run, samples)[0]
    batch_tokens = dist.sum([sum(len(s.response_ids) for s in samples)])[0]
    per_part: list[tuple[dict, float]] = []
    norms, skipped = [], 0
    for part in parts:
        mb = [samples[i] for i in part]
        totals = dist.sum([sum(len(s.response_ids) for s in mb), len(mb)])
        run.opt.zero_grad(set_to_none=True)
        part_metrics = update(
            model,
            run.ref_model,
            mb,
            adv[part],
            cfg,
            run.pad_id,
            totals=tuple(totals),
            grad_scale=dist.world,
            no_sync=lambda last: dist.no_sync(model, last),
            old_logp=None if old is None else [old[i] for i in part],
            threads=run.threads,
            count_over_ranks=count,
            autocast=run.runtime.autocast,
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        norms.append(float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
        if math.isfinite(norms[-1]):
            run.opt.step()
        else:  # a NaN/inf step would poison every weight: skip it, as verl does (the norm is global: all ranks skip)
            skipped += 1
        run.opt.zero_grad(set_to_none=True)  # now, not at the next update: no gradients through the rollouts
        ranks = dist.gather((part_metrics, batch_share(mb, tuple(totals), cfg.loss.loss_agg)))
        per_part.append((combine_ranks(ranks), totals[0] / batch_tokens))
    metrics = {**defined_weighted_means(per_part), "nonfinite_grad_steps": skipped}
    lr_used = run.sched.get_last_lr()[0]
    run.sched.step()
    return metrics, sum(norms) / len(norms), lr_used
