"""Sweep statistics against hand-computed values (arithmetic in the comments)."""

import math

import numpy as np
import pytest

from oger.sweep import stats


def test_t_interval_hand_values():
    # values 1, 2, 3: mean 2, sample sd 1, se 1/sqrt(3) = 0.577350; t_0.975,2 = 4.302653
    # half width 4.302653 * 0.577350 = 2.484138
    iv = stats.t_interval([1.0, 2.0, 3.0], 0.95)
    assert iv.mean == pytest.approx(2.0)
    assert iv.lo == pytest.approx(2 - 2.484138, abs=1e-5) and iv.hi == pytest.approx(2 + 2.484138, abs=1e-5)
    # two seeds 0.30, 0.40: mean 0.35, sd 0.070711, se 0.05, t_0.975,1 = 12.706205 -> half 0.635310
    iv = stats.t_interval([0.30, 0.40])
    assert (iv.lo, iv.hi) == (pytest.approx(0.35 - 0.635310, abs=1e-5), pytest.approx(0.35 + 0.635310, abs=1e-5))
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)


def test_t_interval_needs_two_seeds():
    iv = stats.t_interval([0.4])
    assert iv.mean == 0.4 and iv.lo is None and iv.hi is None and not iv.excludes_zero


def test_bootstrap_degenerate_and_two_point_distributions():
    # every score 0.5: every resample's mean is 0.5
    iv = stats.seed_problem_bootstrap([np.full((3, 4), 0.5)])
    assert (iv.mean, iv.lo, iv.hi) == (0.5, 0.5, 0.5)
    # one seed, problems scored 0 and 1: a resample draws 2 problems -> mean 0 (p 1/4), 0.5 (1/2),
    # 1 (1/4), so the 2.5% and 97.5% quantiles are 0 and 1
    iv = stats.seed_problem_bootstrap([[[0.0, 1.0]]], resamples=4000)
    assert (iv.mean, iv.lo, iv.hi) == (0.5, 0.0, 1.0)
    # two seeds, one problem: the seed resample gives the same three values
    iv = stats.seed_problem_bootstrap([[[0.2], [0.6]]], resamples=4000)
    assert iv.mean == pytest.approx(0.4) and (iv.lo, iv.hi) == (pytest.approx(0.2), pytest.approx(0.6))
    # at 50% confidence the 25% / 75% quantiles of {0.2: 1/4, 0.4: 1/2, 0.6: 1/4} fall inside
    iv = stats.seed_problem_bootstrap([[[0.2], [0.6]]], confidence=0.51, resamples=4000)
    assert 0.2 <= iv.lo <= 0.4 <= iv.hi <= 0.6


def test_bootstrap_shares_the_seed_draw_across_benchmarks():
    # Two benchmarks scored identically per seed (seed 0: 0, seed 1: 1). Sharing the seed draw, a
    # resample's average is 0 (p 1/4), 0.5 (1/2) or 1 (1/4): the 10% / 90% quantiles are 0 and 1.
    # Independent draws per benchmark would give 0 with p only 1/16 (< 10%), so an 80% interval
    # of [0.25, 0.75].
    blocks = [[[0.0], [1.0]], [[0.0], [1.0]]]
    iv = stats.seed_problem_bootstrap(blocks, confidence=0.8, resamples=4000)
    assert (iv.lo, iv.hi) == (0.0, 1.0)
    assert stats.block_mean(blocks) == 0.5


def test_seed_means_and_block_mean():
    a = [[1.0, 0.0], [1.0, 1.0]]  # per seed 0.5, 1.0; mean 0.75
    b = [[0.0], [1.0]]  # per seed 0.0, 1.0; mean 0.5
    assert stats.seed_means([a, b]).tolist() == [0.25, 1.0]
    assert stats.block_mean([a, b]) == pytest.approx(0.625)
    # the t-interval over per-seed means 0.25, 1.0: mean 0.625, sd 0.530330, se 0.375,
    # half = 12.706205 * 0.375 = 4.764827
    iv = stats.interval([a, b], "t")
    assert iv.hi == pytest.approx(0.625 + 4.764827, abs=1e-5)


def test_paired_differences():
    a = [[[1.0, 1.0], [0.0, 1.0]]]
    b = [[[0.0, 1.0], [0.0, 1.0]]]
    d = stats.paired_blocks(a, b)
    assert d[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # per seed 0.5, 0.0 -> mean 0.25
    assert stats.block_mean(d) == 0.25
    same = stats.paired_blocks(b, b)
    iv = stats.seed_problem_bootstrap(same)
    assert (iv.mean, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.excludes_zero
    with pytest.raises(ValueError, match="same seeds x problems"):
        stats.paired_blocks(a, [[[0.0, 1.0]]])


def test_pass_at_k_curve_hand_values():
    # problem 1: 4 samples, 1 correct; problem 2: 4 samples, none correct
    # pass@1 = 1/4;  pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2;  pass@3 = 1 - C(3,3)/C(4,3) = 3/4;
    # pass@4 = 1; problem 2 adds 0, so the curve is half of that
    assert stats.pass_at_k_curve([(4, 1), (4, 0)]) == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert stats.pass_at_k_curve([(4, 1), (2, 2)]) == pytest.approx([(0.25 + 1) / 2, (0.5 + 1) / 2])
    assert stats.pass_at_k_curve([]) == []


def test_verdict_lines():
    pos = stats.Interval(0.012, 0.003, 0.021, "bootstrap")
    assert (
        stats.verdict("oger", "luffy", "synthetic", pos)
        == "oger − luffy on synthetic: +1.2 points [+0.3, +2.1] (95% bootstrap CI): oger is higher than luffy"
    )
    zero = stats.Interval(0.012, -0.003, 0.027, "t")
    assert stats.verdict("oger", "luffy", "math500", zero).endswith("(95% t CI): not distinguishable from 0")
    neg = stats.Interval(-0.05, -0.09, -0.01, "t")
    assert "oger is lower than luffy" in stats.verdict("oger", "luffy", "aime24", neg)
    none = stats.Interval(0.02, None, None, "t")
    assert "no interval" in stats.verdict("oger", "luffy", "x", none)
    assert math.isclose(pos.as_dict()["lo"], 0.003)
