"""The GRPO / LUFFY / OGER training loop, readable top to bottom.

Each step: sample prompts -> roll out n per prompt -> replace k rollouts per group by teacher
traces from the index (at its tag) -> verify answers -> the pure reward step (`oger.algorithm.reward`:
bonus, advantages, signals) -> micro-batched update with the hybrid loss -> logging, checkpoint.
`train()` calls one function per step part (setup, rollouts, score_and_replace, compute_rewards,
optimizer_step, log_step, checkpoint). All the math lives in `oger.algorithm.core`; this file moves data.

On several ranks (`oger.stages.train.distributed`) each rank rolls out its own slice of the step's prompts,
whole groups only, and the per-sample records are gathered to rank 0, which logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from oger.contract.artifacts import atomic_write
from oger.contract.config import TrainConfig
from oger.algorithm import core
from oger.stages.train.checkpoint import latest_checkpoint, read_trainer_state, save_checkpoint
from oger.runtime.cpu_threads import BatchThreads, thread_workers
from oger.stages.train import packing, shared_prompts
from oger.stages.train.distributed import Dist, unwrap
from oger.stages.train.files import METRICS_FILE, ROLLOUTS_FILE, TENSORBOARD_DIR
from oger.algorithm.guards import THINK_CLOSE
from oger.algorithm.reward import RewardStep, cached_embedder, compute_rewards, reward_metrics
from oger.stages.train.metrics import BY_NAME as METRICS, NAMES as METRIC_NAMES, step_row
from oger.generation.base import Request
from oger.generation.hf import TransformersEngine, chat_prompt_ids
from oger.algorithm.samples import Sample
from oger.verify import score_response
from oger import seeds
from oger.explore import strategy_of

THINK_PREFIX = "<think>\n"


@dataclass
class TrainInputs:
    """What the trainer reads: problems to sample from and, for luffy/oger, the teacher index."""

    questions: dict[str, str]
    answers: dict[str, str]
    problem_ids: list[str]
    index: object | None = None  # oger.stages.index.stage.TeacherIndex at the index stage's tag
    encoder: str = "minilm"
    long_text: str = "chunk_mean"
    instruction: str = "{question}"
    system_prompt: str | None = None


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.optim.warmup_steps:
            return (step + 1) / cfg.optim.warmup_steps
        if cfg.optim.lr_schedule == "cosine":
            frac = (step - cfg.optim.warmup_steps) / max(1, cfg.steps - cfg.optim.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return 1.0
    return f


def replace_with_teachers(samples: list[Sample], cfg: TrainConfig, refs: dict, tokenizer,
                          eos_id: int, seed: int) -> None:
    """LUFFY: in each group with teacher traces, the last k rollouts become teacher traces
    (picked with a generator seeded by the group's global index: the same on any rank)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    for group, members in groups.items():
        rng = random.Random(seeds.for_item(seed, group))
        pid = samples[members[0]].problem_id
        if pid not in refs:
            continue
        if cfg.replace_policy == "when_all_fail" and any(samples[i].correct for i in members):
            continue
        texts = refs[pid][0]
        strip = (cfg.teacher_think_prefix == "strip"
                 and tokenizer.decode(samples[members[0]].prompt_ids).endswith(THINK_PREFIX))
        for i in members[len(members) - min(cfg.replace_k, len(members)):]:
            text = texts[rng.randrange(len(texts))]
            if strip and text.startswith(THINK_PREFIX):  # the prompt already opened the think block
                text = text[len(THINK_PREFIX):]
            s = samples[i]
            s.text, s.off_policy, s.entropies = text, True, []
            s.response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]
            s.finish_reason = "stop"


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
        ids[r, P - len(s.prompt_ids):P] = torch.tensor(s.prompt_ids)
        ids[r, P:P + len(s.response_ids)] = torch.tensor(s.response_ids)
        attn[r, P - len(s.prompt_ids):P + len(s.response_ids)] = 1
        resp[r, :len(s.response_ids)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos, resp


def response_logits(model, ids, attn, pos, R: int) -> torch.Tensor:
    """Logits predicting the last R tokens, (B, R, V): the LM head skips the prompt positions."""
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1,
                   use_cache=False).logits[:, :-1]
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def token_scores(model, mb: list[Sample], pad_id: int, temperature: float, layout: str,
                 entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs, entropies, response mask) of a micro-batch's response tokens under
    softmax(logits / temperature), each (samples, longest response) whatever the `layout`
    (`update_layout`): padded rows (`_batch_tensors`), one packed row (`packing`) or each distinct
    prompt once (`shared_prompts`), so the loss never sees the difference. The entropies carry a
    gradient only with `entropy_grad` (the entropy bonus); else they are metrics."""
    device = next(model.parameters()).device
    if layout == "packed":
        row = packing.pack([s.prompt_ids for s in mb], [s.response_ids for s in mb]).to(device)
        logits = packing.packed_logits(model, row) / temperature
        logp = row.unpack(core.token_logprobs(logits, row.targets))
        ent = core.entropy_from_logits(logits if entropy_grad else logits.detach())
        return logp, row.unpack(ent), packing.response_mask([s.response_ids for s in mb]).to(device)
    if layout == "shared_prompts":
        logits, targets, resp = shared_prompts.shared_prompt_logits(
            model, [s.prompt_ids for s in mb], [s.response_ids for s in mb], pad_id)
    else:
        ids, attn, pos, resp = (x.to(device) for x in _batch_tensors(mb, pad_id))
        targets = ids[:, -resp.shape[1]:]
        logits = response_logits(model, ids, attn, pos, resp.shape[1])
    logits = logits / temperature
    ent = core.entropy_from_logits(logits if entropy_grad else logits.detach())
    return core.token_logprobs(logits, targets), ent, resp


def update_layout(cfg: TrainConfig) -> str:
    """How a micro-batch is laid out for the forward: packed, shared_prompts or padded."""
    o = cfg.optim
    return "packed" if o.padding_free else "shared_prompts" if o.share_prompts else "padded"


def micro_batch_indices(samples: list[Sample], cfg: TrainConfig,
                        count_over_ranks: Callable[[int], int] | None = None,
                        workers: int = 1) -> list[list[int]]:
    """The micro-batches of a (mini-)batch: similar lengths together, `optim.micro_batch_size`
    samples or `optim.max_tokens_per_micro_batch` tokens each; with `workers` > 1 (`BatchThreads`)
    split further until there are 2 x workers (`splits_freely`)."""
    lengths = [packing.sample_tokens(s.prompt_ids, s.response_ids) for s in samples]
    groups = packing.micro_batches(_micro_batch_order(samples, cfg.optim.share_prompts), lengths,
                                   cfg.optim.micro_batch_size,
                                   cfg.optim.max_tokens_per_micro_batch, count_over_ranks)
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
    return not (cfg.loss.entropy_coef and cfg.loss.entropy_agg == "token_mean")


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


def old_logprobs(model, samples: list[Sample], cfg: TrainConfig, pad_id: int,
                 count_over_ranks: Callable[[int], int] | None = None,
                 threads: BatchThreads | None = None) -> list[torch.Tensor]:
    """The behaviour policy's log-probs of each sample's response tokens, (len(response),) per sample,
    computed once per batch before the first optimizer step (no grad, micro-batched, side by side on
    `threads`). Without them every mini-batch after the first would take the already-updated policy
    as its behaviour policy (ratio 1): the importance ratio and the clip could never act."""
    out: list[torch.Tensor | None] = [None] * len(samples)
    model.train()  # the mode the update scores in, so the first mini-batch's ratio is 1
    threads = threads or BatchThreads(1)

    def score(idx: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return token_scores(model, [samples[i] for i in idx], pad_id, cfg.rollout.temperature,
                                update_layout(cfg), entropy_grad=False)[0]

    batches = micro_batch_indices(samples, cfg, count_over_ranks, threads.workers)
    for idx, logp in zip(batches, threads.map(score, batches)):
        for row, i in enumerate(idx):
            out[i] = logp[row, :len(samples[i].response_ids)].detach()
    return out


def mini_batches(samples: list[Sample], n: int) -> list[list[int]]:
    """Sample indices of the `n` mini-batches of a batch: whole groups, group g in mini-batch g mod n.

    Whole groups keep a teacher row with the rollouts it is compared with; assigning by the global
    group index makes the split the same whatever num_processes is (a rank holds a contiguous run of
    groups). Groups are drawn at random each step, so no shuffle is needed."""
    parts: list[list[int]] = [[] for _ in range(n)]
    for i, s in enumerate(samples):
        parts[s.group % n].append(i)
    if any(not p for p in parts):
        raise ValueError(f"train.loss.ppo_mini_batches = {n} needs at least {n} prompts (groups) per rank "
                         f"and step; this rank has {len({s.group for s in samples})}: lower "
                         "ppo_mini_batches or raise prompts_per_step")
    return parts


def update(model, ref_model, samples: list[Sample], adv: torch.Tensor, cfg: TrainConfig,
           pad_id: int, totals: tuple[float, float] | None = None, grad_scale: float = 1.0,
           no_sync=None, old_logp: list[torch.Tensor] | None = None,
           threads: BatchThreads | None = None,
           count_over_ranks: Callable[[int], int] | None = None) -> dict:
    """One optimizer step's gradients, accumulated over micro-batches to equal the full batch.

    On several ranks `totals` is the (response tokens, samples) count of the global batch, which
    normalises the loss, `grad_scale` the world size (undoing DDP's average over ranks) and
    `no_sync(last)` skips the gradient all-reduce on all but the last micro-batch. `old_logp` (one
    tensor per sample, from `old_logprobs`) is the behaviour policy; None means the current one
    (ratio 1, the exact policy gradient of a single step per batch). `threads` (one process on a
    CPU, `oger.runtime.cpu_threads`) runs micro-batches side by side; `count_over_ranks` makes every
    rank run as many micro-batches (`packing.split_to_count`). The returned metrics are this
    rank's share of the global ones (summed over ranks by the caller)."""
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
        logp, ent, resp = token_scores(model, mb, pad_id, T, update_layout(cfg),
                                       entropy_grad=bool(lc.entropy_coef))
        entropy = ent if lc.entropy_coef else None
        ref_logp = None
        if lc.beta:
            with torch.no_grad():
                ref_logp, _, _ = token_scores(ref_model, mb, pad_id, T, update_layout(cfg),
                                              entropy_grad=False)
        off = torch.tensor([s.off_policy for s in mb], device=device)
        if old_logp is None:  # one update per batch: the behaviour policy is the current one (ratio 1)
            behaviour = logp.detach()
        else:  # padded positions take the current value; the mask drops them anyway
            behaviour = logp.detach().clone()
            for row, i in enumerate(idx):
                behaviour[row, :len(old_logp[i])] = old_logp[i].to(device, logp.dtype)
        is_weight, mismatch = None, {}
        if any(s.rollout_logprobs for s in mb):  # sampled by another engine (vllm): correct for its sampler
            sampled = behaviour.clone()
            for row, s in enumerate(mb):
                if s.rollout_logprobs:
                    sampled[row, :len(s.rollout_logprobs)] = torch.tensor(s.rollout_logprobs, dtype=logp.dtype)
            on = resp * (~off).unsqueeze(-1).to(resp.dtype)
            mismatch = core.rollout_mismatch(behaviour, sampled, on)
            if ro.correction != "none":
                is_weight = core.rollout_is_weights(behaviour, sampled, on, ro.correction, ro.correction_cap)
        loss, m = core.policy_loss(
            logp, behaviour, adv[idx].to(device), resp, off,
            eps_low=lc.clip_eps_low, eps_high=lc.clip_eps_high, clip=lc.clip, gamma=lc.gamma,
            agg=lc.loss_agg, max_len=max_len, entropy=entropy, entropy_coef=lc.entropy_coef,
            entropy_agg=None if lc.entropy_agg == "loss_agg" else lc.entropy_agg,
            ref_logp=ref_logp, beta=lc.beta, is_weight=is_weight)
        m.update(mismatch)
        share = batch_share(mb, (total_tokens, total_samples), lc.loss_agg)
        entropy_sum = float((ent.detach() * resp).sum())
        return loss * (share * grad_scale), (m, share, entropy_sum)

    workers = threads.workers if threads is not None else 1
    batches = micro_batch_indices(samples, cfg, count_over_ranks, workers)
    if workers > 1:
        params = [p for p in model.parameters() if p.requires_grad]
        parts = threads.backward(params, micro_batch, batches)
    else:
        parts = []
        for k, idx in enumerate(batches):
            loss, part = micro_batch(idx)
            with no_sync(k == len(batches) - 1) if no_sync else contextlib.nullcontext():
                loss.backward()
            parts.append(part)
    agg_metrics = defined_weighted_means([(m, share) for m, share, _ in parts])
    agg_metrics["token_entropy"] = sum(e for _, _, e in parts) / max(1, total_tokens)
    return agg_metrics


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


def _rank_slice(n_prompts: int, cfg: TrainConfig, dist: Dist) -> tuple[int, int]:
    """This rank's prompts [lo, hi) of the step: a contiguous run of whole generation calls."""
    if not dist.active:
        return 0, n_prompts
    per_call = dist.world * cfg.rollout.batch_prompts
    if n_prompts % per_call:
        raise ValueError(f"train: {n_prompts} prompts per step (train.prompts_per_step, capped by "
                         f"train.max_prompts) is not a multiple of distributed.num_processes x "
                         f"rollout.batch_prompts = {per_call}")
    per_rank = n_prompts // dist.world
    return dist.rank * per_rank, (dist.rank + 1) * per_rank


def rollout_seed(cfg: TrainConfig, step: int, call: int) -> int:
    """The sampling seed of one generation call, by its global index within the step (the first
    call keeps the seed a whole-step call had before calls were split)."""
    return seeds.for_rollout_call(cfg.seed, step, call)


def step_metrics(records: list[dict], needs_index: bool) -> dict:
    """A step's metrics from the per-sample records of all ranks: the bonus signals
    (`oger.algorithm.reward.reward_metrics`) and the run's health (replacement, truncation); names
    and meanings in `oger.stages.train.metrics`."""
    def mean(xs, empty=float("nan")):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else empty

    on = [r for r in records if not r["off_policy"]]
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r["correct"])
    signals = reward_metrics(records)
    return {
        "reward": mean(r["reward"] for r in records),
        **signals,
        "last_token_entropy": mean(float("nan") if r["last_token_entropy"] is None
                                   else r["last_token_entropy"] for r in on),
        "replaced_fraction": mean(float(r["off_policy"]) for r in records),
        "no_teacher_fraction": (mean(float(not r["has_teacher"]) for r in records)
                                if needs_index else float("nan")),
        "mixed_group_fraction": mean(float(any(g) and not all(g)) for g in groups.values()),
        "truncated_fraction": mean((float(r["finish_reason"] != "stop") for r in on), 0.0),
        **strategy_metrics(on),
    }


def strategy_metrics(on: list[dict]) -> dict:
    """The explore task's strategy shares and the bonus by strategy over on-policy rows
    (`oger.explore`); NaN where no row has a strategy (another task) or a share has no rows."""
    labelled = [r for r in on if r.get("strategy") is not None]
    if not labelled:
        return {}
    nan = float("nan")

    def share(rows, name):
        return sum(r["strategy"] == name for r in rows) / len(rows) if rows else nan

    def bonus(name):
        xs = [r["bonus"] for r in labelled if r["correct"] and r["strategy"] == name]
        return sum(xs) / len(xs) if xs else nan

    correct = [r for r in labelled if r["correct"]]
    return {"strategy_b_share": share(labelled, "B"), "strategy_other_share": share(labelled, "other"),
            "strategy_b_share_correct": share(correct, "B"), "bonus_mean_a": bonus("A"),
            "bonus_mean_b": bonus("B")}


@dataclass
class TrainRun:
    """Everything the step functions share, built once by `setup`."""

    cfg: TrainConfig
    model: object  # wrapped for DDP / FSDP2 on several ranks
    policy: object  # the HF model: generation and saving
    ref_model: object | None
    tokenizer: object
    inputs: TrainInputs
    dist: Dist
    opt: torch.optim.Optimizer
    sched: object
    start: int
    history: list[dict]
    writer: object | None
    threads: BatchThreads  # micro-batches side by side on a CPU (one process, small model)
    embed: object | None  # texts -> unit vectors (oger.algorithm.reward.Embed), None without the bonus
    needs_index: bool
    run_dir: Path
    engine: object  # where rollouts come from (oger.generation: policy itself, or vLLM beside it, `sync()`ed)

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id


def setup(cfg: TrainConfig, model, tokenizer, inputs: TrainInputs, run_dir: Path, dist: Dist) -> TrainRun:
    """Resume from the last checkpoint, reference model, DDP/FSDP wrap, optimizer and schedule,
    history and TensorBoard (rank 0), the encoder for the bonus (or its monitor)."""
    torch.manual_seed(cfg.seed)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    state = None
    if ckpt is not None:
        from transformers import AutoModelForCausalLM

        weights = AutoModelForCausalLM.from_pretrained(ckpt, dtype=next(model.parameters()).dtype).state_dict()
        model.load_state_dict(weights)
        state = read_trainer_state(ckpt)
    ref_model = None
    if cfg.loss.beta:
        import copy

        ref_model = copy.deepcopy(model).eval().to(dist.device)
    if cfg.distributed.gradient_checkpointing:  # non-reentrant: works with DDP's hooks and no_sync
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = dist.wrap(model)  # DDP / FSDP2 on several ranks, the model itself on one
    o = cfg.optim
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    start = 0
    if state is not None:
        dist.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
    history, writer = [], None
    if dist.main:
        history = _read_history(run_dir / METRICS_FILE, start)
        _read_history(run_dir / ROLLOUTS_FILE, start)  # drop rollouts of steps after the checkpoint
        writer = _tensorboard(run_dir / TENSORBOARD_DIR)
    dist.barrier()
    measures = cfg.bonus_lambda > 0 or cfg.oger.monitor
    needs_index = inputs.index is not None and (cfg.replaces or measures)
    embed = None
    if measures and inputs.index is not None:
        from oger.encoder import load_encoder

        embed = cached_embedder(load_encoder(inputs.encoder), inputs.long_text)
    threads = BatchThreads(thread_workers(model, distributed=dist.active))
    engine = rollout_engine(cfg, unwrap(model), tokenizer, dist, run_dir)
    return TrainRun(cfg, model, unwrap(model), ref_model, tokenizer, inputs, dist, opt, sched, start,
                    history, writer, threads, embed, needs_index, run_dir, engine)


def rollout_engine(cfg: TrainConfig, policy, tokenizer, dist: Dist, run_dir: Path):
    """The engine rollouts come from: the trained module itself (hf, paged), or an in-process vLLM
    engine beside it (vllm) that every rank holds for its own slice, built from the weights the
    policy has now (a resumed run's checkpoint included: rank 0 writes them once for all ranks).
    Under FSDP2 each rank's engine gets the full weights gathered from the shards on every push."""
    if cfg.rollout.engine != "vllm":
        return TransformersEngine(policy, tokenizer, cfg.rollout.engine, synced_gpus=dist.fsdp)
    import shutil

    from oger.generation.vllm import ColocatedEngine

    folder = run_dir / "rollout-engine"  # scratch: the weights the engines start from
    full = dist.model_state(policy) if dist.fsdp else None  # FSDP2: gathered on every rank, kept on 0
    if dist.main:
        shutil.rmtree(folder, ignore_errors=True)
        policy.save_pretrained(folder, state_dict=full)
        tokenizer.save_pretrained(folder)
    dist.barrier()
    dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
    engine = ColocatedEngine(policy, tokenizer, dtype=dtype, seed=cfg.seed, kv_cache_gib=cfg.rollout.kv_cache_gib,
                             model_dir=folder, sleep=cfg.rollout.sleep, synced_forward=dist.fsdp,
                             weights=(lambda: dist.full_weights(policy)) if dist.fsdp else None)
    dist.barrier()
    if dist.main:
        shutil.rmtree(folder, ignore_errors=True)
    return engine


def needs_rollout_entropy(cfg: TrainConfig) -> bool:
    """Whether anything reads the rollouts' per-token entropies: the bonus's damping g(H) and its
    monitor. Why ask: vLLM returns none, so they cost one more forward over prompt + response
    (`ColocatedEngine.generate`); grpo/luffy with `oger.monitor: false` skip it."""
    return cfg.bonus_lambda > 0 or cfg.oger.monitor


def rollouts(run: TrainRun, step: int) -> tuple[list[Sample], list[str], int, int]:
    """Every rank draws the same prompts, then rolls out n per prompt for its own slice [lo, hi),
    in generation calls of rollout.batch_prompts prompts seeded by their global index."""
    cfg, inputs, tok = run.cfg, run.inputs, run.tokenizer
    rng = random.Random(seeds.for_step(cfg.seed, step))
    pids = rng.sample(inputs.problem_ids, min(cfg.prompts_per_step, len(inputs.problem_ids)))
    lo, hi = _rank_slice(len(pids), cfg, run.dist)
    prompt_ids = {g: chat_prompt_ids(tok, inputs.questions[pids[g]], inputs.instruction,
                                     inputs.system_prompt) for g in range(lo, hi)}
    samples: list[Sample] = []
    ro = cfg.rollout
    for c in range(lo, hi, ro.batch_prompts):
        call = list(range(c, min(c + ro.batch_prompts, hi)))
        request = Request(n=cfg.group_size, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                          top_p=ro.top_p, seed=rollout_seed(cfg, step, c // ro.batch_prompts),
                          record_entropy=needs_rollout_entropy(cfg))
        rolls = run.engine.generate([prompt_ids[g] for g in call], request)
        samples += [Sample(call[r.prompt_index], pids[call[r.prompt_index]],
                           prompt_ids[call[r.prompt_index]], r.response_ids, r.text, False,
                           entropies=r.entropies, finish_reason=r.finish_reason,
                           rollout_logprobs=r.logprobs) for r in rolls]
    return samples, pids, lo, hi


def is_correct(text: str, answer: str, reward_format: str = "plain") -> bool:
    """The verifier's verdict; with `reward_format: think` (LUFFY) no `</think>` means 0 and only the
    text after it is verified."""
    if reward_format == "think":
        if THINK_CLOSE not in text:
            return False
        text = text.split(THINK_CLOSE, 1)[1]
    return score_response(text, answer)[1]


def score_and_replace(run: TrainRun, samples: list[Sample], pids: list[str], step: int) -> dict:
    """Verify every rollout, then (luffy/oger) put teacher traces in place of k rollouts per group.
    Returns the teacher traces of this rank's problems {problem_id: (texts, vectors)}."""
    cfg, inputs = run.cfg, run.inputs
    for s in samples:
        s.correct = is_correct(s.text, inputs.answers[s.problem_id], cfg.reward_format)
    refs = inputs.index.lookup(pids) if run.needs_index else {}
    if cfg.replaces:
        replace_with_teachers(samples, cfg, refs, run.tokenizer, run.tokenizer.eos_token_id,
                              seed=seeds.for_step(cfg.seed, step))
        for s in samples:
            if s.off_policy:
                s.correct = is_correct(s.text, inputs.answers[s.problem_id], cfg.reward_format)
    return refs


def optimizer_step(run: TrainRun, samples: list[Sample], adv: torch.Tensor) -> tuple[dict, float, float]:
    """The batch's optimizer steps: one (ppo_mini_batches 1) or one per mini-batch, each normalised
    over its global mini-batch with gradients all-reduced once; the LR schedule steps once per batch
    (as verl's actor worker). Returns (loss metrics summed over ranks and weighted over mini-batches by
    their token share, mean grad norm, learning rate used)."""
    cfg, dist, model = run.cfg, run.dist, run.model
    adv = adv.float()
    # Token budgets give ranks different micro-batch counts; each rank then runs the largest.
    count = (lambda n: int(max(dist.gather(n)))) if dist.active and cfg.optim.max_tokens_per_micro_batch else None
    if cfg.loss.ppo_mini_batches == 1:
        parts, old = [list(range(len(samples)))], None
    else:  # advantages stay those of the whole batch; the behaviour log-probs are taken once, now
        parts, old = mini_batches(samples, cfg.loss.ppo_mini_batches), old_logprobs(
            model, samples, cfg, run.pad_id, count, run.threads
        )
    batch_tokens = dist.sum([sum(len(s.response_ids) for s in samples)])[0]
    per_part: list[tuple[dict, float]] = []
    norms = []
    for part in parts:
        mb = [samples[i] for i in part]
        totals = dist.sum([sum(len(s.response_ids) for s in mb), len(mb)])
        run.opt.zero_grad(set_to_none=True)
        part_metrics = update(model, run.ref_model, mb, adv[part], cfg, run.pad_id, totals=tuple(totals),
                              grad_scale=dist.world, no_sync=lambda last: dist.no_sync(model, last),
                              old_logp=None if old is None else [old[i] for i in part], threads=run.threads,
                              count_over_ranks=count)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        norms.append(float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
        run.opt.step()
        ranks = dist.gather((part_metrics, batch_share(mb, tuple(totals), cfg.loss.loss_agg)))
        per_part.append((combine_ranks(ranks), totals[0] / batch_tokens))
    metrics = defined_weighted_means(per_part)
    lr_used = run.sched.get_last_lr()[0]
    run.sched.step()
    return metrics, sum(norms) / len(norms), lr_used


def log_step(run: TrainRun, step: int, samples: list[Sample], rew: RewardStep, loss_metrics: dict,
             extra: dict) -> dict | None:
    """Gather the per-sample records to rank 0, which appends metrics.jsonl, rollouts.jsonl and
    TensorBoard scalars. Returns the metrics row on rank 0, None elsewhere."""
    cfg = run.cfg
    records = [{"step": step + 1, **row, "strategy": strategy_of(run.inputs.questions[s.problem_id], s.text),
                **({"text": s.text} if cfg.logging.log_rollouts else {})}
               for s, row in zip(samples, rew.rows)]
    records = [r for part in run.dist.gather(records) for r in part]
    if not run.dist.main:
        return None
    # The row's keys are the registry's (oger.stages.train.metrics); of the loss metrics the
    # registered ones are logged.
    row = step_row(step + 1, {
        **step_metrics(records, run.needs_index), **extra,
        **{k: v for k, v in loss_metrics.items() if k in METRICS}})
    run.history.append(row)
    with open(run.run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    if cfg.logging.log_rollouts:
        with open(run.run_dir / ROLLOUTS_FILE, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if run.writer is not None:
        for k in METRIC_NAMES:
            if isinstance(row[k], float) and not math.isnan(row[k]):
                run.writer.add_scalar(f"train/{k}", row[k], step + 1)
        run.writer.flush()
    return row


def sync_engine(run: TrainRun, step: int) -> float | None:
    """Give a separate rollout engine (vllm) the updated weights every rollout.sync_every steps; the
    seconds it took (None: nothing to sync)."""
    sync = getattr(run.engine, "sync", None)
    if sync is None or (step + 1) % run.cfg.rollout.sync_every:
        return None
    return sync()


def checkpoint(run: TrainRun, step: int) -> None:
    if (step + 1) % run.cfg.logging.checkpoint_every == 0 or step + 1 == run.cfg.steps:
        model_state, optim_state = run.dist.model_state(run.model), run.dist.optimizer_state(run.model, run.opt)
        if run.dist.main:
            save_checkpoint(run.run_dir / "checkpoints", step + 1, run.policy, run.tokenizer, run.opt,
                            run.sched, model_state=model_state, optimizer_state=optim_state)
        run.dist.barrier()


def train(cfg: TrainConfig, model, tokenizer, inputs: TrainInputs, run_dir: Path,
          progress=None, dist: Dist | None = None) -> list[dict]:
    """Run (or resume) training; checkpoints and metrics.jsonl live in run_dir (written by rank 0;
    the other ranks return an empty history)."""
    run = setup(cfg, model, tokenizer, inputs, run_dir, dist or Dist())
    vocab = run.policy.config.vocab_size
    with run.threads:  # the micro-batch threads live as long as the loop
        for step in range(run.start, cfg.steps):
            t0 = time.perf_counter()
            samples, pids, lo, hi = rollouts(run, step)
            getattr(run.engine, "rest", lambda: None)()  # vllm with rollout.sleep: memory to the update
            t_gen = time.perf_counter()
            refs = score_and_replace(run, samples, pids[lo:hi], step)
            t_score = time.perf_counter()
            # a group never spans ranks, so the reward step's group statistics are local
            rew = compute_rewards(samples, refs, run.embed, cfg, vocab, seed=seeds.for_step(cfg.seed, step))
            t_embed = time.perf_counter()
            loss_metrics, grad_norm, lr_used = optimizer_step(run, samples, rew.advantages)
            t_update = time.perf_counter()
            synced = sync_engine(run, step)
            row = log_step(run, step, samples, rew, loss_metrics, {
                "grad_norm": grad_norm, "lr": lr_used, "seconds_generate": t_gen - t0,
                "seconds_score": t_score - t_gen, "seconds_embed": t_embed - t_score,
                "seconds_update": t_update - t_embed, "seconds_step": time.perf_counter() - t0,
                **({"seconds_sync": synced} if synced is not None else {})})
            checkpoint(run, step)
            if progress is not None and row is not None:
                progress(row)
    if run.writer is not None:
        run.writer.close()
    return run.history


def _read_history(path: Path, done_steps: int) -> list[dict]:
    """Metrics of the steps a checkpoint covers; lines written after it (lost work) are dropped.

    The kept lines replace the file through `atomic_write` (a temp sibling, renamed), so a kill
    during the trim leaves the old file whole and the next resume trims it again."""
    if not path.exists():
        return []
    original = path.read_text()
    rows = []
    for line in original.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: it belongs to lost work anyway
            continue
    rows = [r for r in rows if r.get("step", done_steps + 1) <= done_steps]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text != original:  # also drops a cut last line, which the next append would run into
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return rows


def _tensorboard(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; this only guards broken installs
        return None
    return SummaryWriter(str(logdir))
