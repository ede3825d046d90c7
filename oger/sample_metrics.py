"""Sampling metrics: avg@k, the unbiased pass@k estimator, maj@k over a problem's k samples.

Pure math with no stage in it, so it sits outside the stages: the evaluate stage scores its samples
with it and the sweep's statistics (`oger.sweep.stats`) draw pass@k curves with the same estimator."""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(correct: list[bool]) -> float:
    """Mean correctness over a problem's k samples (avg@k; avg@1 is plain accuracy)."""
    return sum(correct) / len(correct) if correct else float("nan")


def maj_at_k(answers: list[str | None], correct: list[bool]) -> float:
    """1 if the most frequent extracted answer (ties: first seen) is a correct one, else 0."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return float(next(c for a, c in zip(answers, correct) if a == winner))


def benchmark_scores(per_problem: dict[str, list[tuple[str | None, bool]]], k: int | None = None) -> dict:
    """{avg@k, pass@k, maj@k, n} over problems, each with its list of (answer, correct) samples."""
    if not per_problem:
        return {"avg": float("nan"), "pass": float("nan"), "maj": float("nan"), "n": 0}
    avg, pas, maj = [], [], []
    for samples in per_problem.values():
        n = len(samples)
        kk = min(k or n, n)
        corr = [c for _, c in samples]
        avg.append(avg_at_k(corr))
        pas.append(pass_at_k(n, sum(corr), kk))
        maj.append(maj_at_k([a for a, _ in samples], corr))
    m = len(per_problem)
    return {"avg": sum(avg) / m, "pass": sum(pas) / m, "maj": sum(maj) / m, "n": m}
