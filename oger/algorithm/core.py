"""OGER algorithm core as pure tensor functions (tensors in, tensors out; cf. verl's core_algos.py).

Three layers, each usable on its own so every choice is an argument and can be tested by hand:

* GRPO: group-relative advantages, token-level clipped surrogate, loss aggregation, entropy bonus, k3 KL.
* LUFFY hybrid replacement: off-policy (teacher) rows use policy shaping f(p) = p / (p + gamma) instead of
  the clipped ratio, so low-probability teacher tokens still get a large gradient.
* OGER exploration reward: correct on-policy rollouts that diverge from the offline teacher traces earn a
  bonus lam * d * g(H), damped by the policy's uncertainty H at the end of the answer.

Shapes: B rows (sequences), T completion tokens (right padded), V vocabulary, D embedding dim, G groups of
n rollouts. Masks are 1 for a real completion token and 0 for padding. Formulas: docs/ALGORITHM.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

Tensor = torch.Tensor

SCALE_REWARDS = ("group", "none")
AGG_MODES = ("token_mean", "seq_mean", "constant_len")
SIM_MODES = ("max", "mean")
MODULATIONS = ("exp", "linear", "none")
ENTROPY_AT = ("last", "before_answer", "answer")  # where the bonus reads H (bonus_entropy_window)


# ----------------------------------------------------------------------------------------------------- helpers


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last axis: (B, T, V) -> (B, T).

    Computed from log_softmax, with -inf log-probs (masked vocabulary entries) clamped to the dtype's minimum so
    that 0 * log 0 contributes 0 to both the value and the gradient instead of NaN.
    """
    logp = F.log_softmax(logits, dim=-1)
    logp = logp.clamp(min=torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log softmax(logits)[ids] per position: (B, T, V), (B, T) -> (B, T).

    Gathers the chosen logit and subtracts logsumexp, so no (B, T, V) log-softmax tensor is materialised.
    """
    chosen = logits.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def token_scores_chunked(
    logits: Tensor, ids: Tensor, temperature: float = 1.0, entropy_grad: bool = False, chunk: int | None = 1024
) -> tuple[Tensor, Tensor]:
    """(log-probs of `ids`, entropies) under softmax(logits / temperature): (..., V), (...) -> (...), (...)
    (B, T or a packed row's K positions), in float32 (bf16/fp16 logits upcast, float64 kept) over `chunk`
    positions at a time (None: all at once).

    Why chunks: at a 152k vocabulary and 8k tokens, each float32 copy of (B, T, V) (logits / T, log-softmax,
    its exp, the entropy product) is ~20 GB for 4 sequences, and autograd kept them all. Here only `logits`
    itself (in the model's dtype: bf16 under autocast) is kept; each chunk's float32 work runs under
    activation checkpointing when a gradient flows, so backward recomputes it instead of storing it (as
    verl's chunked entropy and TRL's selective log-softmax do). Each position's values are computed as
    `token_logprobs` and `entropy_from_logits` compute them: the same numbers. The entropies carry a
    gradient only with `entropy_grad` (the entropy bonus); else they are detached metrics."""
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat, flat_ids = logits.reshape(-1, V), ids.reshape(-1)
    n = flat.shape[0]
    step = n if not chunk else chunk

    def scores(x: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        z = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x) / temperature
        logp = token_logprobs(z, i)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):  # else a detached metric
            return logp, entropy_from_logits(z)

    out_logp, out_ent = [], []
    # split, not slices: a slice's backward writes its gradient into a zeroed (n, V) tensor of its own,
    # one per chunk; split's backward concatenates the chunks' gradients once
    for x, i in zip(flat.split(max(1, step)), flat_ids.split(max(1, step))):
        if x.requires_grad and step < n:
            lp, en = torch.utils.checkpoint.checkpoint(scores, x, i, use_reentrant=False)
        else:
            lp, en = scores(x, i)
        out_logp.append(lp)
        out_ent.append(en)
    if not out_logp:  # no positions
        return flat.new_zeros(lead, dtype=torch.float32), flat.new_zeros(lead, dtype=torch.float32)
    return torch.cat(out_logp).reshape(lead), torch.cat(out_ent).reshape(lead)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    """Detached mean of x over mask (NaN when the mask is empty), for metrics only."""
    n = mask.sum()
    return float((x * mask).sum() / n) if n > 0 else float("nan")


# --------------------------------------------------------------------------------------------------------- GRPO


def group_advantages(rewards: Tensor, scale_rewards: str = "group", eps: float = 1e-6) -> Tensor:
    """A_i = r_i - mean(r_group), divided by (std_group + eps) when scale_rewards == "group".

    rewards: (G, n), one row per prompt, teacher (off-policy) rows included, since LUFFY normalises them inside
    the group. std is the unbiased (Bessel) std, as in TRL; for n == 1 it is taken as 0 (TRL does the same).
    Returns (G, n).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (G, n), got shape {tuple(rewards.shape)}")
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        if rewards.shape[1] > 1:
            std = rewards.std(dim=1, unbiased=True, keepdim=True)
        else:
            std = torch.zeros_like(rewards[:, :1])
        adv = adv / (std + eps)
    return adv


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, eps_low: float = 0.2, eps_high: float = 0.2, clip: bool = True
) -> Tensor:
    """PPO/GRPO per-token loss -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), (B, T).

    ratio = exp(logp - old_logp). clip=False gives the unclipped policy gradient surrogate -ratio * A.
    adv: (B,) broadcast over tokens (or already (B, T)).
    """
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    ratio = torch.exp(logp - old_logp)
    if not clip:
        return -ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return -torch.min(ratio * adv, clipped * adv)


def policy_shaping(logp: Tensor, adv: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY off-policy per-token loss -f(p) * A with f(p) = p / (p + gamma), p = exp(logp), (B, T).

    The teacher's probability is taken as 1 (no old log-prob), and there is no clipping. d f / d logp =
    gamma * p / (p + gamma)^2 is largest around p = gamma, so rare-but-correct teacher tokens are not ignored
    (a plain ratio p would give them a gradient proportional to p, i.e. almost none).
    """
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    p = torch.exp(logp)
    return -(p / (p + gamma)) * adv


def aggregate(per_token: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over valid tokens.

    token_mean:   sum(x * m) / max(sum(m), 1)                           (TRL "bnpo"/"dapo", DAPO)
    seq_mean:     mean_b [ sum_t(x * m) / max(sum_t m, 1) ]              (TRL "grpo", original GRPO)
    constant_len: sum(x * m) / (B * max_len)                             (TRL "dr_grpo", Dr. GRPO)
    Empty rows count in seq_mean's and constant_len's B (they contribute 0), as in TRL.
    """
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if mode == "token_mean":
        return total / mask.sum().clamp(min=1.0)
    if mode == "seq_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "constant_len":
        if max_len is None or max_len <= 0:
            raise ValueError("constant_len aggregation needs a positive max_len (the max completion length)")
        return total / (per_token.shape[0] * max_len)
    raise ValueError(f"agg must be one of {AGG_MODES}, got {mode!r}")


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0, (B, T)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def rollout_is_weights(
    train_logp: Tensor, rollout_logp: Tensor, mask: Tensor, level: str = "token", cap: float = 3.0
) -> Tensor:
    """Truncated importance weights min(pi_train / pi_rollout, C) of tokens another engine sampled.

    Failure mode prevented: vLLM samples from its own kernels (other numerics, often another precision),
    so the tokens come from pi_rollout while the loss treats them as drawn from pi_train; uncorrected,
    the gradient leans toward what vLLM over-samples (TRL's vllm_importance_sampling_correction, verl's
    rollout_is). The cap C bounds the variance a rare large ratio would bring.

    train_logp, rollout_logp: (B, T) log-probs of the sampled tokens; mask: (B, T).
    level "token": w_t = min(exp(train_t - rollout_t), C); "sequence": one w = min(exp(sum_t ...), C)
    for every token of the row. Detached; 1 on padded positions.
    """
    m = mask.bool()
    log_ratio = torch.where(m, train_logp.detach() - rollout_logp, torch.zeros_like(train_logp))
    if level == "token":
        w = torch.exp(log_ratio).clamp(max=cap)
    elif level == "sequence":
        w = torch.exp(log_ratio.sum(-1, keepdim=True)).clamp(max=cap).expand_as(log_ratio)
    else:
        raise ValueError(f"unknown importance-sampling level {level!r}")
    return torch.where(m, w, torch.ones_like(w))


def rollout_mismatch(train_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the rollout engine's sampler is from the trainer's, over valid tokens: mean |d| with
    d = log pi_train - log pi_rollout, a KL(pi_rollout || pi_train) estimate (k3: e^d - 1 - d, >= 0,
    unbiased under the rollout engine's samples), and the ratio e^d's 5/50/95% quantiles."""
    m = mask.bool()
    d = (train_logp.detach() - rollout_logp)[m].double()
    if d.numel() == 0:
        nan = float("nan")
        return {
            "rollout_logp_diff": nan,
            "rollout_kl": nan,
            "rollout_ratio_p05": nan,
            "rollout_ratio_p50": nan,
            "rollout_ratio_p95": nan,
        }
    r = torch.exp(d)
    q = torch.quantile(r, torch.tensor([0.05, 0.5, 0.95], dtype=r.dtype))
    return {
        "rollout_logp_diff": float(d.abs().mean()),
        "rollout_kl": float((r - 1 - d).mean()),
        "rollout_ratio_p05": float(q[0]),
        "rollout_ratio_p50": float(q[1]),
        "rollout_ratio_p95": float(q[2]),
    }


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    off_policy: Tensor | None = None,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip: bool = True,
    gamma: float = 0.1,
    agg: str = "token_mean",
    max_len: int | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    entropy_agg: str | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Hybrid GRPO/LUFFY loss: clipped surrogate on on-policy rows, policy shaping on off-policy rows.

    per_token = where(off_policy, policy_shaping, clipped_surrogate) + beta * kl_k3(logp, ref_logp)
    loss      = aggregate(per_token, mask, agg) - entropy_coef * aggregate(entropy, mask, entropy_agg or agg)

    logp: (B, T) current-policy log-probs of the completion tokens (carries the gradient). old_logp: (B, T)
    behaviour log-probs; ignored (may be NaN) on off-policy rows. adv: (B,). mask: (B, T). off_policy: (B,) bool
    (None = all on-policy). entropy: (B, T) per-token entropy, needed only when entropy_coef != 0. ref_logp:
    (B, T), needed only when beta != 0. The KL is applied to every valid token, teacher rows included.
    is_weight: (B, T) detached importance weights of the on-policy tokens (`rollout_is_weights`: rollouts
    sampled by another engine); teacher rows keep their policy shaping untouched.
    Returns (scalar loss, detached float metrics); ratio/clip metrics are over on-policy valid tokens only.
    """
    B = logp.shape[0]
    mask = mask.to(logp.dtype)
    off = torch.zeros(B, dtype=torch.bool, device=logp.device) if off_policy is None else off_policy.bool()
    off_t = off.unsqueeze(-1)
    # Off-policy rows have no behaviour log-prob; substitute a finite one so NaNs there cannot reach the
    # gradient through the unselected branch of torch.where.
    old_logp = torch.where(off_t, logp.detach(), old_logp)
    on_loss = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high, clip)
    if is_weight is not None:
        on_loss = on_loss * is_weight.detach()
    off_loss = policy_shaping(logp, adv, gamma)
    per_token = torch.where(off_t, off_loss, on_loss)

    metrics: dict[str, float] = {}
    loss = aggregate(per_token, mask, agg, max_len)
    metrics["pg_loss"] = float(loss.detach())
    if beta != 0.0:  # aggregation is linear, so this equals aggregating per_token + beta * kl
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp)
        loss = loss + beta * aggregate(kl, mask, agg, max_len)
        metrics["kl"] = _masked_mean(kl.detach(), mask)

    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        loss = loss - entropy_coef * aggregate(entropy, mask, entropy_agg or agg, max_len)
    if entropy is not None:
        metrics["entropy"] = _masked_mean(entropy.detach(), mask)

    with torch.no_grad():
        a = adv.unsqueeze(-1) if adv.dim() == 1 else adv
        ratio = torch.exp(logp - old_logp)
        on_m = mask * (~off_t).to(mask.dtype)
        off_m = mask * off_t.to(mask.dtype)
        low = ((ratio < 1.0 - eps_low) & (a < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + eps_high) & (a > 0)).to(mask.dtype)
        metrics["ratio_mean"] = _masked_mean(ratio, on_m)
        # k1 estimate of KL(old || new) over on-policy tokens (verl's ppo_kl): 0 when old is the current policy
        metrics["approx_kl"] = _masked_mean(old_logp - logp.detach(), on_m)
        metrics["clip_frac_low"] = _masked_mean(low, on_m) if clip else 0.0
        metrics["clip_frac_high"] = _masked_mean(high, on_m) if clip else 0.0
        metrics["clip_frac"] = _masked_mean(torch.maximum(low, high), on_m) if clip else 0.0
        p = torch.exp(logp)
        metrics["shaping_mean"] = _masked_mean(p / (p + gamma), off_m)
        metrics["off_policy_frac"] = float(off.float().mean()) if B else float("nan")
        if is_weight is not None:
            metrics["is_weight_mean"] = _masked_mean(is_weight, on_m)
    return loss, metrics


# ---------------------------------------------------------------------------------------------- OGER reward


def teacher_similarity(emb: Tensor, teachers: list[Tensor], mode: str = "max") -> tuple[Tensor, Tensor]:
    """Cosine similarity of each rollout embedding to its problem's teacher-trace embeddings.

    emb: (B, D); teachers: B tensors of shape (k_i, D), k_i may be 0 (the same tensor may be passed for all
    rows of one group). Vectors are L2-normalised here even though encoders usually emit unit vectors.
    s_i = max_j cos(e_i, t_ij) (mode="max": close to ANY teacher means not novel) or mean_j (mode="mean").
    Returns (s (B,), has_teacher (B,) bool); s is NaN where k_i == 0, so a forgotten flag cannot silently pay
    the maximum bonus.
    """
    if mode not in SIM_MODES:
        raise ValueError(f"mode must be one of {SIM_MODES}, got {mode!r}")
    if len(teachers) != emb.shape[0]:
        raise ValueError(f"need one teacher tensor per row: {len(teachers)} != {emb.shape[0]}")
    e = F.normalize(emb, dim=-1)
    s = torch.full((emb.shape[0],), float("nan"), dtype=emb.dtype, device=emb.device)
    has = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
    for i, t in enumerate(teachers):
        if t is None or t.numel() == 0:
            continue
        cos = F.normalize(t.to(e), dim=-1) @ e[i]
        s[i] = cos.max() if mode == "max" else cos.mean()
        has[i] = True
    return s, has


def divergence(s: Tensor) -> Tensor:
    """d = clip(1 - s, 0, 1): 0 for a copy of a teacher trace, 1 for orthogonal or opposite ones. NaN stays NaN."""
    return (1.0 - s).clamp(0.0, 1.0)


def sampling_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The entropy H that the bonus's g(H) reads: of softmax(logits / T), the distribution the rollout was
    sampled from (raw logits for greedy decoding, T = 0). (..., V) -> (...). One definition for every
    engine and for the update's behaviour pass, which scores under softmax(logits / T) too; at T = 1 it is
    the entropy of the raw logits, as H was before the definition was written down."""
    return entropy_from_logits(logits.float() / (temperature if temperature > 0 else 1.0))


def bonus_entropy_window(length: int, m: int, at: str = "last", answer: tuple[int, int, int] | None = None) -> range:
    """The response positions whose entropy the bonus's g(H) reads (H: their mean), out of `length`.

    last:          the last m generated tokens. A stopped response's last token is its end-of-sequence
                   token, and the decision to stop right after `\\boxed{N}` is nearly certain, so with m=1
                   H ~ 0 and g(H) ~ 1 whatever the answer: the modulation barely moves.
    before_answer: the last m tokens before the final answer's `\\boxed`: the reasoning's end, where the
                   policy commits to an answer.
    answer:        the tokens inside the final `\\boxed{...}` (m unused): the policy's confidence in the
                   answer itself.
    `answer` gives the final answer's token positions (tag, start, end): the first token of its
    `\\boxed`, the first token of its content and one past its last (`answer_span` in
    oger/generation/entropy_window.py finds them from the ids). Without one (None: no boxed answer, e.g.
    a truncated response) or where the option selects nothing (an empty answer, a response that opens
    with its `\\boxed`), the positions are `last`'s: every non-empty response gets an H, one without an
    answer the same H as under `last`.

    The one selector every rollout engine asks (`Request.entropy_window`), so an engine that must compute
    entropies itself (paged, vLLM) runs the LM head on these positions only instead of on every position
    (a (B, T, V) float32 tensor at 8k tokens and a 152k vocabulary)."""
    if m < 1:
        raise ValueError("m must be >= 1")
    if at not in ENTROPY_AT:
        raise ValueError(f"at must be one of {ENTROPY_AT}, got {at!r}")
    last = range(max(0, length - m), length)
    if at == "last" or answer is None:
        return last
    tag, start, end = (min(max(0, p), length) for p in answer)
    picked = range(max(0, tag - m), tag) if at == "before_answer" else range(start, end)
    return picked if len(picked) else last


def last_token_entropy(token_entropy: Tensor, mask: Tensor, m: int = 1) -> Tensor:
    """Mean entropy over the last m VALID tokens of each row: (B, T), (B, T) -> (B,).

    Works for any mask (right padding, holes), since it ranks valid tokens from the end. Rows with fewer than
    m valid tokens average what they have; rows with none give NaN.
    """
    if m < 1:
        raise ValueError("m must be >= 1")
    valid = mask.bool()
    from_end = valid.flip(-1).long().cumsum(-1).flip(-1)  # valid tokens at or after each position
    pick = (valid & (from_end <= m)).to(token_entropy.dtype)
    n = pick.sum(-1)
    out = (token_entropy * pick).sum(-1) / n.clamp(min=1.0)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def modulation(H: Tensor, mode: str = "exp", tau: float = 1.0, vocab_size: int | None = None) -> Tensor:
    """Entropy gate g(H) in [0, 1]: confident (low-entropy) correct answers keep most of their bonus.

    exp: exp(-H / tau);  linear: clip(1 - H / log|V|, 0, 1) (needs vocab_size);  none: 1.
    """
    if mode == "exp":
        if tau <= 0:
            raise ValueError("tau must be > 0")
        return torch.exp(-H / tau)
    if mode == "linear":
        if not vocab_size or vocab_size < 2:
            raise ValueError("linear modulation needs vocab_size >= 2")
        return (1.0 - H / math.log(vocab_size)).clamp(0.0, 1.0)
    if mode == "none":
        return torch.ones_like(H)
    raise ValueError(f"modulation must be one of {MODULATIONS}, got {mode!r}")


def oger_reward(
    correct: Tensor,
    div: Tensor,
    entropy: Tensor,
    has_teacher: Tensor,
    is_teacher: Tensor,
    lam: float,
    modulation_mode: str = "exp",
    tau: float = 1.0,
    vocab_size: int | None = None,
    passed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """r = c + bonus, bonus = lam * c * d * g(H), gated to correct, on-policy rows of problems with a teacher.

    correct: (B,) in {0, 1}; div: (B,) divergence; entropy: (B,) end-of-answer entropy; has_teacher, is_teacher:
    (B,) bool; passed: (B,) bool guard verdicts (`oger.algorithm.guards`), None for all passed. Wrong answers,
    teacher (off-policy) rows, teacher-less problems and rows failing a guard get bonus exactly 0 (NaN
    divergence/entropy in those rows does not leak). Returns (reward (B,), bonus (B,)).
    The reward step (`oger.algorithm.reward.compute_rewards`) takes its raw bonus from here.
    """
    c = correct.to(div.dtype)
    gate = (c > 0) & has_teacher.bool() & ~is_teacher.bool()
    if passed is not None:
        gate = gate & passed.bool()
    if lam == 0.0:
        bonus = torch.zeros_like(c)
    else:
        raw = lam * c * div * modulation(entropy.to(div.dtype), modulation_mode, tau, vocab_size)
        bonus = torch.where(gate, raw, torch.zeros_like(raw))
    return c + bonus, bonus


# ------------------------------------------------------------------------------- OGER bonus into advantages


def shuffle_bonus(bonus: Tensor, eligible: Tensor, generator: torch.Generator) -> Tensor:
    """Control arm: the bonus values permuted among the bonus-eligible rows (B,), others unchanged.

    Keeps the batch's bonus multiset (its scale and sparsity) but breaks its link to what each rollout
    says, so a gain that survives the shuffle is not due to the divergence signal."""
    idx = torch.nonzero(eligible.bool(), as_tuple=True)[0]
    out = bonus.clone()
    if idx.numel() > 1:
        perm = torch.randperm(idx.numel(), generator=generator)
        out[idx] = bonus[idx[perm.to(idx.device)]]
    return out


def group_relative_bonus(bonus: Tensor, eligible: Tensor) -> Tensor:
    """Bonus centred over each group's eligible rows: (G, n), (G, n) bool -> (G, n); others stay 0.

    Pays being more novel than the group's other correct answers rather than a level that drifts
    with the encoder's geometry (a group with one eligible row gets 0)."""
    m = eligible.to(bonus.dtype)
    mean = (bonus * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
    return torch.where(eligible.bool(), bonus - mean, torch.zeros_like(bonus))


def neutral_teacher_bonus(bonus: Tensor, is_teacher: Tensor) -> Tensor:
    """Teacher rows get the group's mean on-policy bonus: (G, n), (G, n) bool -> (G, n).

    With teacher rows at r = c while correct rollouts get c + bonus, a teacher trace in an all-correct
    group gets a negative advantage (-sum(bonus) / n, blown up by std scaling), pushing the policy away
    from the very traces LUFFY imitates. With the group mean, its bonus-advantage is exactly 0."""
    on = (~is_teacher.bool()).to(bonus.dtype)
    mean = (bonus * on).sum(1, keepdim=True) / on.sum(1, keepdim=True).clamp(min=1.0)
    return torch.where(is_teacher.bool(), mean.expand_as(bonus), bonus)


def hybrid_advantages(
    correct: Tensor, bonus: Tensor, scale_rewards: str = "group", mode: str = "separate", eps: float = 1e-6
) -> Tensor:
    """Group advantages of r = c + bonus: (G, n), (G, n) -> (G, n).

    joint:    group_advantages(c + bonus, scale_rewards)  (std scaling divides small bonus differences
              by a tiny std in all-correct groups: unit-size advantages from noise);
    separate: group_advantages(c, scale_rewards) + (bonus - mean(bonus)): correctness normalised as in
              GRPO/LUFFY, the bonus on its own scale. With bonus 0 both equal group_advantages(c)."""
    if mode == "joint":
        return group_advantages(correct + bonus, scale_rewards, eps)
    if mode != "separate":
        raise ValueError(f"mode must be 'separate' or 'joint', got {mode!r}")
    return group_advantages(correct, scale_rewards, eps) + (bonus - bonus.mean(dim=1, keepdim=True))


def ranking_changed(adv: Tensor, adv_no_bonus: Tensor, rows: Tensor, tol: float = 1e-3) -> Tensor:
    """Per group, whether the bonus changes the (weak) order of its rows' advantages: (G, n) x2, (G, n)
    bool -> (G,) bool. A pair tied without the bonus and apart by more than tol with it, or a pair whose
    strict order flips, counts as a change; rows outside `rows` (e.g. teacher rows) are ignored."""

    def order(a):
        d = a.unsqueeze(-1) - a.unsqueeze(-2)  # (G, n, n)
        return torch.where(d > tol, 1, torch.where(d < -tol, -1, 0))

    pair = rows.bool().unsqueeze(-1) & rows.bool().unsqueeze(-2)
    return ((order(adv) != order(adv_no_bonus)) & pair).flatten(1).any(-1)
