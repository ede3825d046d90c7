"""The GRPO / LUFFY / OGER training loop, readable top to bottom.

Each step: sample prompts -> roll out n per prompt -> replace k rollouts per group by teacher
traces from the index (at its tag) -> verify answers -> embed correct on-policy rollouts ->
rewards (OGER bonus) -> group advantages -> micro-batched update with the hybrid loss.
All the math lives in `oger.rl.core`; this file only moves data.

On several ranks (`oger.rl.distributed`) each rank rolls out its own slice of the step's prompts,
whole groups only, and the per-sample records are gathered to rank 0, which logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from oger.config import TrainConfig
from oger.rl import core
from oger.rl.checkpoint import latest_checkpoint, read_trainer_state, save_checkpoint
from oger.rl.distributed import Dist, unwrap
from oger.rl.rollout import chat_prompt_ids, generate
from oger.verify import score_response


@dataclass
class Sample:
    """One member of a group: an on-policy rollout or a teacher trace put in its place."""

    group: int
    problem_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    off_policy: bool
    correct: bool = False
    entropies: list[float] = field(default_factory=list)
    finish_reason: str = "stop"


@dataclass
class TrainInputs:
    """What the trainer reads: problems to sample from and, for luffy/oger, the teacher index."""

    questions: dict[str, str]
    answers: dict[str, str]
    problem_ids: list[str]
    index: object | None = None  # oger.index.TeacherIndex at the index stage's tag
    encoder: str = "minilm"
    long_text: str = "chunk_mean"
    instruction: str = "{question}"
    system_prompt: str | None = None


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
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
        rng = random.Random(seed * 1_000_003 + group)
        pid = samples[members[0]].problem_id
        if pid not in refs:
            continue
        if cfg.replace_policy == "when_all_fail" and any(samples[i].correct for i in members):
            continue
        texts = refs[pid][0]
        for i in members[len(members) - min(cfg.replace_k, len(members)):]:
            text = texts[rng.randrange(len(texts))]
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
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1).logits[:, :-1]
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def update(model, ref_model, samples: list[Sample], adv: torch.Tensor, cfg: TrainConfig,
           pad_id: int, totals: tuple[float, float] | None = None, grad_scale: float = 1.0,
           no_sync=None) -> dict:
    """One optimizer step's gradients, accumulated over micro-batches to equal the full batch.

    On several ranks `totals` is the (response tokens, samples) count of the global batch, which
    normalises the loss, `grad_scale` the world size (undoing DDP's average over ranks) and
    `no_sync(last)` skips the gradient all-reduce on all but the last micro-batch. The returned
    metrics are this rank's share of the global ones (summed over ranks by the caller)."""
    total_tokens, total_samples = totals or (sum(len(s.response_ids) for s in samples), len(samples))
    # Dr.GRPO normalises by a constant: the generation budget, the same for every batch.
    max_len = cfg.max_new_tokens if cfg.loss_agg == "constant_len" else None
    agg_metrics: dict[str, float] = {}
    token_entropy_sum = 0.0
    model.train()
    # Micro-batches of similar length waste less compute on padding (long teacher traces end up
    # together); the accumulated gradient does not depend on the order.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
    starts = list(range(0, len(samples), cfg.micro_batch_size))
    for b in starts:
        idx = order[b:b + cfg.micro_batch_size]
        mb = [samples[i] for i in idx]
        ids, attn, pos, resp = _batch_tensors(mb, pad_id)
        device = next(model.parameters()).device
        ids, attn, pos, resp = ids.to(device), attn.to(device), pos.to(device), resp.to(device)
        R = resp.shape[1]
        targets = ids[:, -R:]
        # The behaviour policy sampled from softmax(logits / T): score tokens under the same one.
        logits = response_logits(model, ids, attn, pos, R) / cfg.temperature
        logp = core.token_logprobs(logits, targets)
        entropy = core.entropy_from_logits(logits) if cfg.entropy_coef else None
        ref_logp = None
        if cfg.beta:
            with torch.no_grad():
                ref_logits = response_logits(ref_model, ids, attn, pos, R) / cfg.temperature
                ref_logp = core.token_logprobs(ref_logits, targets)
        off = torch.tensor([s.off_policy for s in mb], device=device)
        # One update per batch: the behaviour policy is the current one (ratio 1, exact gradient).
        loss, m = core.policy_loss(
            logp, logp.detach(), adv[idx].to(device), resp, off,
            eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high, clip=cfg.clip, gamma=cfg.gamma,
            agg=cfg.loss_agg, max_len=max_len, entropy=entropy, entropy_coef=cfg.entropy_coef,
            ref_logp=ref_logp, beta=cfg.beta)
        share = (resp.sum().item() / total_tokens if cfg.loss_agg == "token_mean"
                 else len(mb) / total_samples)
        with no_sync(b == starts[-1]) if no_sync else contextlib.nullcontext():
            (loss * (share * grad_scale)).backward()
        with torch.no_grad():
            ent = entropy if entropy is not None else core.entropy_from_logits(logits.detach())
            token_entropy_sum += float((ent * resp).sum())
        for k, v in m.items():
            if isinstance(v, float) and not math.isnan(v):
                agg_metrics[k] = agg_metrics.get(k, 0.0) + v * share
    agg_metrics["token_entropy"] = token_entropy_sum / max(1, total_tokens)
    return agg_metrics


def _rank_slice(n_prompts: int, cfg: TrainConfig, dist: Dist) -> tuple[int, int]:
    """This rank's prompts [lo, hi) of the step: a contiguous run of whole generation calls."""
    if not dist.active:
        return 0, n_prompts
    per_call = dist.world * cfg.rollout_batch_prompts
    if n_prompts % per_call:
        raise ValueError(f"train: {n_prompts} prompts per step (train.prompts_per_step, capped by "
                         f"train.max_prompts) is not a multiple of num_processes x "
                         f"rollout_batch_prompts = {per_call}")
    per_rank = n_prompts // dist.world
    return dist.rank * per_rank, (dist.rank + 1) * per_rank


def rollout_seed(cfg: TrainConfig, step: int, call: int) -> int:
    """The sampling seed of one generation call, by its global index within the step (the first
    call keeps the seed a whole-step call had before calls were split)."""
    return cfg.seed * 100_003 + step + call * 1_000_000_007


def step_metrics(records: list[dict], needs_index: bool) -> dict:
    """A step's metrics from the per-sample records of all ranks."""
    def mean(xs, empty=float("nan")):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else empty

    on = [r for r in records if not r["off_policy"]]
    want = [r for r in records if r["bonus_eligible"]]
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r["correct"])
    return {
        "reward": mean(r["reward"] for r in records),
        "accuracy": mean(float(r["correct"]) for r in on),
        "bonus_mean": mean(r["bonus"] for r in records),
        "bonus_correct_mean": mean((r["bonus"] for r in want), 0.0),
        "divergence": mean(r["divergence"] for r in want),
        "last_token_entropy": mean(float("nan") if r["last_token_entropy"] is None
                                   else r["last_token_entropy"] for r in on),
        "replaced_fraction": mean(float(r["off_policy"]) for r in records),
        "no_teacher_fraction": (mean(float(not r["has_teacher"]) for r in records)
                                if needs_index else float("nan")),
        "mixed_group_fraction": mean(float(any(g) and not all(g)) for g in groups.values()),
        "response_length": mean((r["response_tokens"] for r in on), 0.0),
        "truncated_fraction": mean((float(r["finish_reason"] != "stop") for r in on), 0.0),
    }


def train(cfg: TrainConfig, model, tokenizer, inputs: TrainInputs, run_dir: Path,
          progress=None, dist: Dist | None = None) -> list[dict]:
    """Run (or resume) training; checkpoints and metrics.jsonl live in run_dir (written by rank 0;
    the other ranks return an empty history)."""
    dist = dist or Dist()
    torch.manual_seed(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    vocab = model.config.vocab_size
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    rollouts_path = run_dir / "rollouts.jsonl"
    ckpt = latest_checkpoint(ckpt_root)
    state = None
    if ckpt is not None:
        from transformers import AutoModelForCausalLM

        weights = AutoModelForCausalLM.from_pretrained(ckpt, dtype=next(model.parameters()).dtype).state_dict()
        model.load_state_dict(weights)
        state = read_trainer_state(ckpt)
    ref_model = None
    if cfg.beta:
        import copy

        ref_model = copy.deepcopy(model).eval().to(dist.device)
    if cfg.gradient_checkpointing:  # non-reentrant: works with DDP's hooks and no_sync
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = dist.wrap(model)  # DDP / FSDP2 on several ranks, the model itself on one
    policy = unwrap(model)  # the HF model: generation and saving
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    start = 0
    if state is not None:
        dist.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
    history, writer = [], None
    if dist.main:
        history = _read_history(metrics_path, start)
        _read_history(rollouts_path, start)  # drop rollouts of steps after the checkpoint
        writer = _tensorboard(run_dir / "tensorboard")
    dist.barrier()
    lam = cfg.bonus_lambda
    needs_index = inputs.index is not None and (cfg.replaces or lam > 0)
    encoder = None
    if lam > 0:
        from oger.encoder import load_encoder

        encoder = load_encoder(inputs.encoder)

    for step in range(start, cfg.steps):
        rng = random.Random(cfg.seed * 7919 + step)
        t0 = time.perf_counter()
        # 1. every rank draws the same prompts, then rolls out n per prompt for its own slice,
        #    in generation calls of rollout_batch_prompts prompts seeded by their global index
        pids = rng.sample(inputs.problem_ids, min(cfg.prompts_per_step, len(inputs.problem_ids)))
        lo, hi = _rank_slice(len(pids), cfg, dist)
        prompt_ids = {g: chat_prompt_ids(tokenizer, inputs.questions[pids[g]], inputs.instruction,
                                         inputs.system_prompt) for g in range(lo, hi)}
        samples: list[Sample] = []
        for c in range(lo, hi, cfg.rollout_batch_prompts):
            call = list(range(c, min(c + cfg.rollout_batch_prompts, hi)))
            rolls = generate(policy, tokenizer, [prompt_ids[g] for g in call], n=cfg.group_size,
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=rollout_seed(cfg, step, c // cfg.rollout_batch_prompts),
                             batch_size=len(call) * cfg.group_size, synced_gpus=dist.fsdp, engine=cfg.rollout_engine)
            samples += [Sample(call[r.prompt_index], pids[call[r.prompt_index]],
                               prompt_ids[call[r.prompt_index]], r.response_ids, r.text, False,
                               entropies=r.entropies, finish_reason=r.finish_reason) for r in rolls]
        t_gen = time.perf_counter()

        # 2. verify, then (luffy/oger) put teacher traces in place of k rollouts per group
        for s in samples:
            s.correct = score_response(s.text, inputs.answers[s.problem_id])[1]
        refs = inputs.index.lookup(pids[lo:hi]) if needs_index else {}
        if cfg.replaces:
            replace_with_teachers(samples, cfg, refs, tokenizer, eos_id, seed=cfg.seed * 7919 + step)
            for s in samples:
                if s.off_policy:
                    s.correct = score_response(s.text, inputs.answers[s.problem_id])[1]
        t_score = time.perf_counter()

        # 3. OGER: divergence of correct on-policy rollouts from the problem's teacher traces
        B = len(samples)
        div = torch.zeros(B, dtype=torch.float64)
        has_teacher = torch.tensor([s.problem_id in refs for s in samples])
        is_teacher = torch.tensor([s.off_policy for s in samples])
        correct = torch.tensor([float(s.correct) for s in samples], dtype=torch.float64)
        want = [i for i, s in enumerate(samples) if s.correct and not s.off_policy and s.problem_id in refs]
        if lam > 0 and want:
            from oger.encoder import encode

            emb = torch.from_numpy(encode(encoder, [samples[i].text for i in want],
                                          long_text=inputs.long_text)).double()
            teach = [torch.from_numpy(refs[samples[i].problem_id][1]).double() for i in want]
            sim, _ = core.teacher_similarity(emb, teach, cfg.oger.similarity)
            div[want] = core.divergence(sim)
        width = max(1, max(len(s.entropies) for s in samples))
        ent = torch.zeros(B, width, dtype=torch.float64)
        emask = torch.zeros(B, width, dtype=torch.float64)
        for i, s in enumerate(samples):
            if s.entropies:
                ent[i, :len(s.entropies)] = torch.tensor(s.entropies, dtype=torch.float64)
                emask[i, :len(s.entropies)] = 1
        last_h = core.last_token_entropy(ent, emask, cfg.oger.entropy_tokens)
        t_embed = time.perf_counter()

        # 4. rewards and group advantages (teacher samples included in the group statistics);
        #    a group never spans ranks, so its statistics are local
        reward, bonus = core.oger_reward(correct, div, last_h, has_teacher, is_teacher, lam,
                                         cfg.oger.modulation, cfg.oger.tau, vocab)
        adv = core.group_advantages(reward.view(hi - lo, cfg.group_size), cfg.scale_rewards).view(-1)

        # 5. update: the loss is normalised over the global batch, gradients all-reduced once
        totals = dist.sum([sum(len(s.response_ids) for s in samples), len(samples)])
        opt.zero_grad(set_to_none=True)
        loss_metrics = update(model, ref_model, samples, adv.float(), cfg, pad_id, totals=tuple(totals),
                              grad_scale=dist.world, no_sync=lambda last: dist.no_sync(model, last))
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        lr_used = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        t_update = time.perf_counter()

        # 6. gather the per-sample records; rank 0 logs them and checkpoints
        records = [{
            "step": step + 1, "group": s.group, "problem_id": s.problem_id,
            "off_policy": s.off_policy, "correct": s.correct, "has_teacher": bool(has_teacher[i]),
            "reward": float(reward[i]), "bonus": float(bonus[i]), "advantage": float(adv[i]),
            "divergence": float(div[i]),
            "last_token_entropy": float(last_h[i]) if s.entropies else None,
            "bonus_eligible": i in want, "response_tokens": len(s.response_ids),
            "finish_reason": s.finish_reason, **({"text": s.text} if cfg.log_rollouts else {}),
        } for i, s in enumerate(samples)]
        records = [r for part in dist.gather(records) for r in part]
        loss_metrics = _sum_metrics(dist.gather(loss_metrics))
        if dist.main:
            row = {
                "step": step + 1, **step_metrics(records, needs_index),
                "grad_norm": grad_norm,
                "lr": lr_used,
                "seconds_generate": t_gen - t0,
                "seconds_score": t_score - t_gen,
                "seconds_embed": t_embed - t_score,
                "seconds_update": t_update - t_embed,
                "seconds_step": t_update - t0,
                **{k: v for k, v in loss_metrics.items() if k in ("pg_loss", "kl", "clip_frac", "token_entropy")},
            }
            history.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if cfg.log_rollouts:
                with open(rollouts_path, "a") as f:
                    for r in records:
                        f.write(json.dumps(r) + "\n")
            if writer is not None:
                for k, v in row.items():
                    if k != "step" and isinstance(v, float) and not math.isnan(v):
                        writer.add_scalar(f"train/{k}", v, step + 1)
                writer.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            model_state, optim_state = dist.model_state(model), dist.optimizer_state(model, opt)
            if dist.main:
                save_checkpoint(ckpt_root, step + 1, policy, tokenizer, opt, sched,
                                model_state=model_state, optimizer_state=optim_state)
            dist.barrier()
        if progress is not None and dist.main:
            progress(row)
    if writer is not None:
        writer.close()
    return history


def _sum_metrics(parts: list[dict]) -> dict:
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _read_history(path: Path, done_steps: int) -> list[dict]:
    """Metrics of the steps a checkpoint covers; lines written after it (lost work) are dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: it belongs to lost work anyway
            continue
    rows = [r for r in rows if r.get("step", done_steps + 1) <= done_steps]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _tensorboard(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; this only guards broken installs
        return None
    return SummaryWriter(str(logdir))
