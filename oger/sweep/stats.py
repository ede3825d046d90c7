"""Confidence intervals for sweep comparisons: pure functions on arrays of per-problem scores.

The unit of replication is a seed (a whole training run); problems are a sample from the benchmark.
Two intervals are offered, and the report names the one its verdicts use:
- `seed_problem_bootstrap`: percentile bootstrap resampling seeds and problems independently (a
  crossed design: every seed is scored on the same problems). It prevents the classic mistake of
  treating k samples x n problems of ONE training run as if they measured the method: the seed
  resample carries the run-to-run variation, the problem resample the benchmark's finite size.
  With very few seeds the seed part is coarse (3 seeds give at most 10 distinct seed resamples).
- `t_interval`: Student-t over per-seed means (df = seeds - 1). It ignores problem sampling beyond
  what the per-seed means carry, needs >= 2 seeds and is wide with 3 (t_0.975,2 = 4.30).
Paired differences (`paired_blocks`) subtract per (seed, problem) before either interval, so what
two arms share (the same problems, the same evaluation seed) cancels instead of widening the CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from oger.sample_metrics import pass_at_k


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float | None
    hi: float | None
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict:
        r = lambda x: None if x is None else round(float(x), 6)
        return {"mean": r(self.mean), "lo": r(self.lo), "hi": r(self.hi), "method": self.method}


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with df degrees of freedom (scipy: a sentence-transformers dependency)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def t_interval(values, confidence: float = 0.95) -> Interval:
    """mean ± t_{(1+c)/2, n-1} * s / sqrt(n) over per-seed values; no interval for n < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, "t")
    half = t_quantile((1 + confidence) / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, "t")


def _check_blocks(blocks) -> list[np.ndarray]:
    mats = [np.asarray(b, dtype=float) for b in blocks]
    if not mats or any(m.ndim != 2 or m.shape[1] == 0 for m in mats):
        raise ValueError("need one or more seeds x problems matrices with at least one problem")
    if len({m.shape[0] for m in mats}) != 1 or mats[0].shape[0] == 0:
        raise ValueError(f"blocks must share the same number (>= 1) of seeds: {[m.shape for m in mats]}")
    return mats


def block_mean(blocks) -> float:
    """The statistic both intervals describe: mean over blocks (benchmarks) of each block's mean
    over seeds and problems; one block is a plain mean."""
    return float(np.mean([m.mean() for m in _check_blocks(blocks)]))


def seed_problem_bootstrap(blocks, confidence: float = 0.95, resamples: int = 2000, rng_seed: int = 0) -> Interval:
    """Percentile bootstrap of `block_mean`: each resample draws seeds with replacement (the same
    seed draw for every block) and, per block, problems with replacement.

    A resample's mean over the grid X[s*, p*] is (counts_s @ X @ counts_p) / (S * P), so memory is
    O(resamples x (S + P)), never the full resampled grid."""
    mats = _check_blocks(blocks)
    rng = np.random.default_rng(rng_seed)
    s = mats[0].shape[0]
    seed_counts = rng.multinomial(s, np.full(s, 1 / s), size=resamples)  # (B, S)
    total = np.zeros(resamples)
    for m in mats:
        p = m.shape[1]
        prob_counts = rng.multinomial(p, np.full(p, 1 / p), size=resamples)  # (B, P)
        total += np.einsum("bs,sp,bp->b", seed_counts, m, prob_counts) / (s * p)
    stats = total / len(mats)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(block_mean(mats), float(lo), float(hi), "bootstrap")


def seed_means(blocks) -> np.ndarray:
    """Per seed: mean over blocks of the block's mean over problems (the t-interval's values)."""
    mats = _check_blocks(blocks)
    return np.mean([m.mean(axis=1) for m in mats], axis=0)


def interval(blocks, method: str, confidence: float = 0.95, resamples: int = 2000, rng_seed: int = 0) -> Interval:
    if method == "bootstrap":
        return seed_problem_bootstrap(blocks, confidence, resamples, rng_seed)
    if method == "t":
        return t_interval(seed_means(blocks), confidence)
    raise ValueError(f"unknown interval method {method!r}")


def paired_blocks(a_blocks, b_blocks) -> list[np.ndarray]:
    """A - B per (seed, problem): rows are the seeds both arms ran, columns the same problems."""
    a, b = _check_blocks(a_blocks), _check_blocks(b_blocks)
    if [m.shape for m in a] != [m.shape for m in b]:
        raise ValueError(
            f"paired arms need the same seeds x problems: {[m.shape for m in a]} vs {[m.shape for m in b]}"
        )
    return [x - y for x, y in zip(a, b)]


def pass_at_k_curve(counts: list[tuple[int, int]], k_max: int | None = None) -> list[float]:
    """Mean unbiased pass@k over problems for k = 1..k_max, each problem given as (samples n,
    correct c); k_max defaults to the smallest n (pass@k needs k <= n)."""
    if not counts:
        return []
    k_max = min(n for n, _ in counts) if k_max is None else k_max
    return [sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in range(1, k_max + 1)]


def verdict(
    label: str,
    baseline: str,
    benchmark: str,
    iv: Interval,
    confidence: float = 0.95,
    scale: float = 100.0,
    unit: str = "points",
) -> str:
    """One plain-language line per comparison, e.g.
    "oger − luffy on synthetic: +1.2 points [-0.3, +2.7] (95% bootstrap CI): not distinguishable from 0"."""
    head = f"{label} − {baseline} on {benchmark}: {scale * iv.mean:+.1f} {unit}"
    if iv.lo is None:
        return f"{head}, no interval ({iv.method} needs at least 2 seeds): not distinguishable from 0"
    ci = f"[{scale * iv.lo:+.1f}, {scale * iv.hi:+.1f}] ({round(100 * confidence)}% {iv.method} CI)"
    if iv.lo > 0:
        what = f"{label} is higher than {baseline}"
    elif iv.hi < 0:
        what = f"{label} is lower than {baseline}"
    else:
        what = "not distinguishable from 0"
    return f"{head} {ci}: {what}"
