"""The reward step, pure: (samples, teacher traces, an embed function, config) -> rewards, bonus,
advantages, per-sample signals and step metrics. No model and no I/O: the trainer calls it with the
index encoder, `oger bonus` with the same encoder on a JSONL file, tests with a fake embedder.

Per step: correct on-policy rollouts of problems with teacher traces are "eligible"; their reasoning
(or full text) is embedded, d = 1 - max cos to the teachers' embeddings, g = g(H); guards zero the
bonus of degenerate ones; bonus = lam * d * g, optionally shuffled (control arm) and centred over the
group; teacher rows get the group's mean on-policy bonus; advantages add the centred bonus to the
correctness advantage (`oger.advantage: separate`) or normalise c + bonus jointly.
Formulas: docs/ALGORITHM.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from oger.algorithm import core, guards
from oger.algorithm.samples import Sample
from oger.contract.config import TrainConfig

Embed = Callable[[list[str]], np.ndarray]  # texts -> (len, D) unit rows
SHORT_TOKENS = 50  # the "short response" monitor: share of on-policy responses under this many tokens


@dataclass
class RewardStep:
    reward: torch.Tensor  # (B,) c + bonus
    bonus: torch.Tensor  # (B,) after guards, shuffle, baseline and the teacher-row rule
    advantages: torch.Tensor  # (B,)
    rows: list[dict]  # per sample: every signal the metrics and the rollout log need
    metrics: dict


def _groups(samples: list[Sample]) -> tuple[int, int]:
    """(G, n): samples must come as G contiguous groups of n (the trainer's and the command's layout)."""
    if not samples:
        raise ValueError("no samples")
    n = sum(1 for s in samples if s.group == samples[0].group)
    if len(samples) % n or any(s.group != samples[(i // n) * n].group for i, s in enumerate(samples)):
        raise ValueError("samples must be contiguous groups of equal size")
    return len(samples) // n, n


def _embed_teachers(pids: list[str], teachers: dict, embed: Embed, mode: str) -> dict[str, torch.Tensor]:
    """Teacher-trace embeddings per problem: the index's vectors for `full` (when given), else the
    embed function on each trace's reasoning (or full text), in one call."""
    out, todo = {}, []
    for pid in dict.fromkeys(pids):
        texts, vecs = teachers[pid]
        if mode == "full" and vecs is not None:
            out[pid] = torch.as_tensor(np.asarray(vecs), dtype=torch.float64)
        else:
            todo += [(pid, guards.reasoning_text(t) or t if mode == "reasoning" else t) for t in texts]
    if todo:
        vecs = torch.as_tensor(np.asarray(embed([t for _, t in todo])), dtype=torch.float64)
        for pid in dict.fromkeys(p for p, _ in todo):
            out[pid] = vecs[[i for i, (p, _) in enumerate(todo) if p == pid]]
    return out


def compute_rewards(
    samples: list[Sample],
    teachers: dict[str, tuple[list[str], np.ndarray | None]],
    embed: Embed | None,
    cfg: TrainConfig,
    vocab_size: int | None = None,
    seed: int = 0,
) -> RewardStep:
    """Rewards, bonus and advantages of one batch of groups (see the module docstring).

    teachers: {problem_id: (trace texts, index vectors or None)}; problems absent get no bonus.
    embed: needed when lambda > 0 or `oger.monitor` and some rollout is eligible. seed: the shuffle
    control's generator seed (the trainer passes one per step)."""
    o = cfg.oger
    lam = cfg.bonus_lambda
    G, n = _groups(samples)
    B = len(samples)
    correct = torch.tensor([float(s.correct) for s in samples], dtype=torch.float64)
    is_teacher = torch.tensor([s.off_policy for s in samples])
    has_teacher = torch.tensor([s.problem_id in teachers for s in samples])
    eligible = (correct > 0) & ~is_teacher & has_teacher
    want = torch.nonzero(eligible, as_tuple=True)[0].tolist()

    width = max(1, max(len(s.entropies) for s in samples))
    ent = torch.zeros(B, width, dtype=torch.float64)
    emask = torch.zeros(B, width, dtype=torch.float64)
    for i, s in enumerate(samples):
        if s.entropies:
            ent[i, : len(s.entropies)] = torch.tensor(s.entropies, dtype=torch.float64)
            emask[i, : len(s.entropies)] = 1
    # The engines keep the window's entropies only (`rollout.bonus_window`): under `last` its last m, read
    # as before; under the answer options as many as the window has (an answer's length), all averaged.
    last_h = core.last_token_entropy(ent, emask, o.entropy_tokens if o.entropy_at == "last" else width)
    # No entropy (a hand-written rollout in `oger bonus`): no damping, g = 1.
    h = torch.nan_to_num(last_h, nan=0.0)
    gate = core.modulation(h, o.modulation, o.tau, vocab_size)

    div = torch.full((B,), float("nan"), dtype=torch.float64)
    diversity = [None] * G
    measured = (lam > 0 or o.monitor) and bool(want)
    if measured:
        if embed is None:
            raise ValueError("compute_rewards: an embed function is needed when lambda > 0 or monitor")
        texts = [samples[i].text for i in want]
        if o.embed_text == "reasoning":
            texts = [guards.reasoning_text(t) or t for t in texts]
        emb = torch.as_tensor(np.asarray(embed(texts)), dtype=torch.float64)
        teach = _embed_teachers([samples[i].problem_id for i in want], teachers, embed, o.embed_text)
        sim, _ = core.teacher_similarity(emb, [teach[samples[i].problem_id] for i in want], o.similarity)
        div[want] = core.divergence(sim)
        unit = torch.nn.functional.normalize(emb, dim=-1)
        for g in range(G):
            rows = [k for k, i in enumerate(want) if i // n == g]
            if len(rows) > 1:
                cos = unit[rows] @ unit[rows].T
                iu = torch.triu_indices(len(rows), len(rows), 1)
                diversity[g] = float((1 - cos[iu[0], iu[1]]).mean())

    verdicts: list[dict | None] = [None] * B
    passed = torch.zeros(B, dtype=torch.bool)
    for i in want:
        s = samples[i]
        v = guards.guard_verdicts(
            s.text, teachers[s.problem_id][0], o.guards, think_required=cfg.reward_format == "think"
        )
        if o.guards.max_divergence is not None and measured:
            v["off_topic"] = bool(div[i] <= o.guards.max_divergence)
        verdicts[i] = v
        passed[i] = all(v.values())

    # bonus = lam * c * d * g(H) on eligible rows whose guards passed; d is NaN where not measured (-> 0)
    _, raw = core.oger_reward(
        correct, torch.nan_to_num(div), h, has_teacher, is_teacher, lam, o.modulation, o.tau, vocab_size, passed=passed
    )
    bonus = raw
    if o.shuffle_bonus:
        bonus = core.shuffle_bonus(bonus, eligible, torch.Generator().manual_seed(seed))
    bonus = bonus.view(G, n)
    if o.baseline == "group":
        bonus = core.group_relative_bonus(bonus, eligible.view(G, n))
    if o.teacher_rows == "group_mean":
        bonus = core.neutral_teacher_bonus(bonus, is_teacher.view(G, n))
    c = correct.view(G, n)
    adv = core.hybrid_advantages(c, bonus, cfg.loss.scale_rewards, o.advantage)
    adv0 = core.hybrid_advantages(c, torch.zeros_like(bonus), cfg.loss.scale_rewards, o.advantage)
    changed = core.ranking_changed(adv, adv0, ~is_teacher.view(G, n))
    bonus, adv, adv0 = bonus.reshape(-1), adv.reshape(-1), adv0.reshape(-1)
    reward = correct + bonus

    def f(x) -> float | None:
        x = float(x)
        return None if math.isnan(x) else x

    rows = []
    for i, s in enumerate(samples):
        on = not s.off_policy
        rows.append(
            {
                "group": s.group,
                "problem_id": s.problem_id,
                "off_policy": s.off_policy,
                "correct": s.correct,
                "has_teacher": bool(has_teacher[i]),
                "bonus_eligible": bool(eligible[i]),
                "reward": float(reward[i]),
                "bonus": float(bonus[i]),
                "bonus_raw": float(raw[i]),
                "advantage": float(adv[i]),
                "advantage_no_bonus": float(adv0[i]),
                # no entropy recorded (monitor off, lambda 0: `needs_rollout_entropy`): no gate to report
                "divergence": f(div[i]),
                "gate": f(gate[i]) if on and bool(eligible[i]) and (s.entropies or lam > 0) else None,
                "last_token_entropy": f(last_h[i]) if s.entropies else None,
                "guards": verdicts[i],
                "response_tokens": len(s.response_ids),
                "nonascii": guards.nonascii_share(s.text) if on else None,
                "repetition": guards.repetition_rate(s.text, o.guards.repetition_ngram) if on else None,
                "think_format": guards.think_format(s.text) if on else None,
                "finish_reason": s.finish_reason,
                "group_rank_changed": bool(changed[i // n]),
                "group_diversity": diversity[i // n],
            }
        )
    return RewardStep(reward, bonus, adv, rows, reward_metrics(rows))


def _mean(xs, empty=float("nan")) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else empty


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q))


def _corr(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; NaN with fewer than 3 points or a constant series."""
    if len(xs) < 3:
        return float("nan")
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def reward_metrics(rows: list[dict]) -> dict:
    """What the bonus did in one step, from the per-sample rows (of all ranks: a group never spans
    ranks, so group-level fields are exact). Every name is a step metric of
    `oger.stages.train.metrics` (meaning and aggregation there)."""
    on = [r for r in rows if not r["off_policy"]]
    want = [r for r in rows if r["bonus_eligible"]]
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    all_correct = [g for g in groups.values() if all(r["correct"] for r in g if not r["off_policy"])]
    divs = [r["divergence"] for r in want if r["divergence"] is not None]
    gates = [r["gate"] for r in want if r["gate"] is not None]
    total_adv = sum(abs(r["advantage"]) for r in rows)
    guard_names = sorted({k for r in want for k in (r["guards"] or {})})
    m = {
        "env_reward": _mean(float(r["correct"]) for r in on),  # on-policy correctness: no teacher rows, no bonus
        "bonus_mean": _mean((r["bonus"] for r in on), 0.0),
        "bonus_correct_mean": _mean((r["bonus"] for r in want), 0.0),
        "bonus_share": (
            sum(abs(r["advantage"] - r["advantage_no_bonus"]) for r in rows) / total_adv if total_adv > 0 else 0.0
        ),
        "rank_change_fraction": _mean(float(g[0]["group_rank_changed"]) for g in groups.values()),
        "teacher_adv_allcorrect": _mean(r["advantage"] for g in all_correct for r in g if r["off_policy"]),
        "divergence_mean": _mean(divs),
        "divergence_q10": _quantile(divs, 0.1),
        "divergence_q50": _quantile(divs, 0.5),
        "divergence_q90": _quantile(divs, 0.9),
        "gate_mean": _mean(gates),
        "gate_q10": _quantile(gates, 0.1),
        "gate_q90": _quantile(gates, 0.9),
        "diversity_correct": _mean(g[0]["group_diversity"] for g in groups.values()),
        "response_length": _mean((r["response_tokens"] for r in on), 0.0),
        "short_share": _mean((float(r["response_tokens"] < SHORT_TOKENS) for r in on), 0.0),
        "nonascii_share": _mean((r["nonascii"] for r in on), 0.0),
        "repetition_rate": _mean((r["repetition"] for r in on), 0.0),
        "think_format_share": _mean((float(r["think_format"]) for r in on), 0.0),
        "guard_pass_fraction": _mean(float(all((r["guards"] or {}).values())) for r in want),
        **{f"guard_fail_{k}": _mean(float(not r["guards"].get(k, True)) for r in want) for k in guard_names},
    }
    for name, key in (("length", "response_tokens"), ("repetition", "repetition"), ("nonascii", "nonascii")):
        m[f"bonus_corr_{name}"] = _corr([r["bonus_raw"] for r in want], [r[key] for r in want])
    return m


def cached_embedder(encoder, long_text: str, limit: int = 200_000) -> Embed:
    """The index's `encode` with a text -> vector cache (teacher traces recur every step)."""
    from oger.encoder import encode

    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            if len(cache) + len(todo) > limit:
                cache.clear()
            cache.update(zip(todo, encode(encoder, todo, long_text=long_text)))
        return np.stack([cache[t] for t in texts])

    return embed
