"""Unit tests for oger.algorithm.core against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from oger.algorithm import core
from oger.algorithm.core import (
    aggregate,
    clipped_surrogate,
    divergence,
    entropy_from_logits,
    group_advantages,
    kl_k3,
    last_token_entropy,
    modulation,
    oger_reward,
    policy_loss,
    policy_shaping,
    teacher_similarity,
    token_logprobs,
)

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=tol, atol=tol, equal_nan=True
    )


# ------------------------------------------------------------------------------------------------- advantages


def test_group_advantages_scaled_and_unscaled():
    r = t([[1, 0, 0, 1], [3, 1, 2, 0]])
    # group 0: mean .5, deviations +-.5; unbiased var = 4 * .25 / 3 = 1/3
    # group 1: mean 1.5, deviations [1.5, -.5, .5, -1.5]; unbiased var = (2.25+.25+.25+2.25)/3 = 5/3
    close(group_advantages(r, "none"), [[0.5, -0.5, -0.5, 0.5], [1.5, -0.5, 0.5, -1.5]])
    s0, s1 = math.sqrt(1 / 3) + 1e-6, math.sqrt(5 / 3) + 1e-6
    close(
        group_advantages(r, "group"),
        [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [1.5 / s1, -0.5 / s1, 0.5 / s1, -1.5 / s1]],
    )
    # with TRL's eps the first group is .5 / (0.57735 + 1e-4) = 0.865875
    close(group_advantages(r, "group", eps=1e-4)[0, 0], 0.865875, tol=1e-5)


def test_group_advantages_degenerate_groups():
    close(group_advantages(t([[1, 1, 1]]), "group"), [[0, 0, 0]])  # no signal when all agree
    close(group_advantages(t([[1.0], [0.0]]), "group"), [[0.0], [0.0]])  # n == 1: std taken as 0
    with pytest.raises(ValueError):
        group_advantages(t([[1, 0]]), "batch")
    with pytest.raises(ValueError):
        group_advantages(t([1, 0]))


# ------------------------------------------------------------------------------------------ surrogate, shaping


def test_clipped_surrogate_clips_only_the_pessimistic_side():
    # tokens with ratio 1.5 and 0.5 (old_logp = 0)
    logp = t([[math.log(1.5), math.log(0.5)], [math.log(1.5), math.log(0.5)]]).requires_grad_()
    old = torch.zeros(2, 2, dtype=D)
    adv = t([1.0, -1.0])
    loss = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.2)
    # A=+1: ratio 1.5 -> min(1.5, 1.2) = 1.2 (clipped); ratio .5 -> min(.5, .8) = .5 (not clipped)
    # A=-1: ratio 1.5 -> min(-1.5, -1.2) = -1.5 (not clipped); ratio .5 -> min(-.5, -.8) = -.8 (clipped)
    close(loss, [[-1.2, -0.5], [1.5, 0.8]])
    loss.sum().backward()
    # clipped tokens carry no gradient; unclipped ones: d(-ratio*A)/dlogp = -ratio*A
    close(logp.grad, [[0.0, -0.5], [1.5, 0.0]])


def test_clipped_surrogate_asymmetric_and_unclipped():
    logp = t([[math.log(1.25)]])
    old = t([[0.0]])
    close(clipped_surrogate(logp, old, t([1.0]), eps_low=0.2, eps_high=0.2), [[-1.2]])
    close(clipped_surrogate(logp, old, t([1.0]), eps_low=0.2, eps_high=0.28), [[-1.25]])  # DAPO clip-higher
    close(clipped_surrogate(t([[math.log(1.5)]]), old, t([2.0]), clip=False), [[-3.0]])


def test_policy_shaping_value_and_gradient():
    p, g, a = 0.5, 0.1, 2.0
    logp = t([[math.log(p)]]).requires_grad_()
    loss = policy_shaping(logp, t([a]), gamma=g)
    close(loss, [[-a * 0.5 / 0.6]])  # f(.5) = .5/.6 = .8333
    loss.sum().backward()
    # d f/d logp = gamma * p / (p + gamma)^2 = .1 * .5 / .36 = .138889; loss = -A f
    close(logp.grad, [[-a * g * p / (p + g) ** 2]])
    close(logp.grad, [[-0.2777778]])


# ----------------------------------------------------------------------------------------------- aggregation


def test_aggregate_modes_on_padded_mask():
    x = t([[1, 2, 3], [4, 100, 100]])  # padded positions hold garbage that must not count
    m = t([[1, 1, 1], [1, 0, 0]])
    close(aggregate(x, m, "token_mean"), 10 / 4)  # (1+2+3+4)/4
    close(aggregate(x, m, "seq_mean"), (2 + 4) / 2)  # mean(2, 4)
    close(aggregate(x, m, "constant_len", max_len=5), 10 / (2 * 5))
    with pytest.raises(ValueError):
        aggregate(x, m, "constant_len")
    with pytest.raises(ValueError):
        aggregate(x, m, "sum")


def test_aggregate_empty_row_counts_in_seq_mean():
    x = t([[1, 2], [9, 9]])
    m = t([[1, 1], [0, 0]])
    close(aggregate(x, m, "seq_mean"), (1.5 + 0) / 2)
    close(aggregate(x, m, "token_mean"), 1.5)
    close(aggregate(x, torch.zeros(2, 2, dtype=D), "token_mean"), 0.0)  # all padding: 0, not NaN


def test_kl_k3():
    # ref - logp = log .5: exp(-.693147) + .693147 - 1 = .193147
    close(kl_k3(t([[0.0, math.log(0.3)]]), t([[math.log(0.5), math.log(0.3)]])), [[0.1931472, 0.0]])
    d = torch.linspace(-3, 3, 13, dtype=D)
    assert (kl_k3(torch.zeros_like(d), d) >= 0).all()


# ------------------------------------------------------------------------------------------------ policy_loss


def _mixed_batch():
    # row 0 on-policy, A=+1, ratios 1.5 and .5; row 1 off-policy (teacher), A=-1, p = .5 and .1 (2nd padded)
    logp = t([[math.log(1.5), math.log(0.5)], [math.log(0.5), math.log(0.1)]]).requires_grad_()
    old = t([[0.0, 0.0], [float("nan"), float("nan")]])  # teacher rows have no behaviour log-prob
    adv = t([1.0, -1.0])
    mask = t([[1, 1], [1, 0]])
    off = torch.tensor([False, True])
    return logp, old, adv, mask, off


def test_policy_loss_hybrid_value_gradient_and_metrics():
    logp, old, adv, mask, off = _mixed_batch()
    loss, met = policy_loss(logp, old, adv, mask, off)
    # on: -1.2 (clipped), -.5; off: -f(.5)*A = +.5/.6 = .833333; token_mean over 3 valid tokens
    close(loss, (-1.2 - 0.5 + 0.5 / 0.6) / 3)
    loss.backward()
    assert torch.isfinite(logp.grad).all()  # NaN old_logp on the teacher row must not leak
    # token (0,0) clipped -> 0; (0,1): -ratio*A/3 = -.5/3; (1,0): +gamma p/(p+gamma)^2 / 3; (1,1) padded -> 0
    close(logp.grad, [[0.0, -0.5 / 3], [0.1 * 0.5 / 0.36 / 3, 0.0]])
    close(met["clip_frac_high"], 0.5)  # ratio 1.5 with A>0 among the 2 on-policy tokens
    close(met["clip_frac_low"], 0.0)  # ratio .5 but A>0: not clipped
    close(met["clip_frac"], 0.5)
    close(met["ratio_mean"], 1.0)
    close(met["shaping_mean"], 0.5 / 0.6)  # only the valid teacher token
    close(met["off_policy_frac"], 0.5)
    assert all(isinstance(v, float) for v in met.values())


def test_policy_loss_on_logits_clips_a_moved_token_and_reports_approx_kl():
    """A later mini-batch: the behaviour policy gave each token p_old = .5; the current one gives .55 (token 0)
    and .75 (token 1), A = +1, eps .2. Vocab 2, logits [l, 0]: p = sigmoid(l), d p / d l = p (1 - p)."""
    p_new = t([[0.55, 0.75]])
    logits = torch.stack([torch.log(p_new / (1 - p_new)), torch.zeros(1, 2, dtype=D)], -1).requires_grad_()
    logp = token_logprobs(logits, torch.zeros(1, 2, dtype=torch.long))
    old = torch.log(t([[0.5, 0.5]]))
    loss, met = policy_loss(logp, old, t([1.0]), torch.ones(1, 2, dtype=D))
    # ratios 1.1 (inside [.8, 1.2]: -1.1) and 1.5 (clipped: -1.2); token mean: -2.3 / 2
    close(loss, -1.15)
    loss.backward()
    # token 0: d(-p / .5) / d l / 2 = -2 * .55 * .45 / 2 = -.2475; token 1 clipped: no gradient
    close(logits.grad[0, :, 0], [-0.2475, 0.0])
    close(met["clip_frac"], 0.5)
    # approx KL = mean(old - new) = (log .5 - log .55 + log .5 - log .75) / 2 = -.25040
    close(met["approx_kl"], (math.log(0.5 / 0.55) + math.log(0.5 / 0.75)) / 2)
    close(met["approx_kl"], -0.250395, tol=1e-5)


def test_policy_loss_all_on_policy_is_plain_grpo():
    logp, _, adv, mask, _ = _mixed_batch()
    old = torch.zeros(2, 2, dtype=D)
    loss, _ = policy_loss(logp, old, adv, mask, None, agg="seq_mean", eps_high=0.28)
    expect = aggregate(clipped_surrogate(logp, old, adv, 0.2, 0.28), mask, "seq_mean")
    close(loss, expect)
    # row 0: ratio 1.5 clipped at 1.28 -> (-1.28 - .5)/2; row 1 (1 valid token): A=-1, ratio .5 clipped -> .8
    close(loss, ((-1.28 - 0.5) / 2 + 0.8) / 2)


def test_policy_loss_entropy_bonus_and_kl():
    logp, old, adv, mask, off = _mixed_batch()
    ent = t([[1.0, 2.0], [3.0, 4.0]])
    base, _ = policy_loss(logp, old, adv, mask, off)
    loss, met = policy_loss(logp, old, adv, mask, off, entropy=ent, entropy_coef=0.1)
    close(loss, base - 0.1 * (1 + 2 + 3) / 3)  # token mean of valid entropies = 2
    loss2, _ = policy_loss(logp, old, adv, mask, off, entropy=ent, entropy_coef=0.1, entropy_agg="seq_mean")
    close(loss2, base - 0.1 * (1.5 + 3) / 2)
    close(met["entropy"], 2.0)
    # KL: ref = logp except token (0,1) where ref - logp = log .5 -> k3 = .193147
    ref = logp.detach().clone()
    ref[0, 1] += math.log(0.5)
    loss3, met3 = policy_loss(logp, old, adv, mask, off, ref_logp=ref, beta=0.5)
    close(loss3, base + 0.5 * 0.1931472 / 3)
    close(met3["kl"], 0.1931472 / 3)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, off, beta=0.5)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, off, entropy_coef=0.1)


# -------------------------------------------------------------------------------------- entropy and log-probs


def test_entropy_from_logits():
    logits = torch.tensor(
        [
            [
                [0.0, 0.0, 0.0, 0.0],  # uniform over 4 -> log 4
                [0.0, 0.0, -float("inf"), -float("inf")],  # uniform over 2 -> log 2
                [5.0, -float("inf"), -float("inf"), -float("inf")],  # one-hot -> 0
                [1000.0, 0.0, 0.0, 0.0],
            ]
        ],
        dtype=D,
        requires_grad=True,
    )  # huge logit, no overflow
    h = entropy_from_logits(logits)
    close(h, [[math.log(4), math.log(2), 0.0, 0.0]])
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    x = torch.randn(2, 3, 7, dtype=D)
    p = x.softmax(-1)
    close(entropy_from_logits(x), -(p * p.log()).sum(-1))


def test_token_logprobs():
    logits = t([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]])  # probs [.25, .75] and [.8, .2]
    close(token_logprobs(logits, torch.tensor([[1, 1]])), [[math.log(0.75), math.log(0.2)]])


def test_last_token_entropy_uses_last_valid_tokens():
    ent = t([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # right padding; row 2 empty
    close(last_token_entropy(ent, mask, m=1), [3.0, 6.0, float("nan")])
    close(last_token_entropy(ent, mask, m=2), [2.5, 5.5, float("nan")])
    close(last_token_entropy(ent, mask, m=3), [2.0, 5.5, float("nan")])  # row 1 has only 2 tokens
    # a hole in the mask is skipped: valid tokens 0, 1, 3 -> last two are positions 1 and 3
    close(last_token_entropy(t([[1, 2, 3, 4]]), t([[1, 1, 0, 1]]), m=2), [3.0])
    with pytest.raises(ValueError):
        last_token_entropy(ent, mask, m=0)


# -------------------------------------------------------------------------------------------------- OGER reward


def test_modulation_options():
    h = t([0.0, 1.0, math.log(10), 10.0])
    close(modulation(h, "exp", tau=1.0), [1.0, math.exp(-1), 0.1, math.exp(-10)])
    close(modulation(h, "exp", tau=2.0), [1.0, math.exp(-0.5), 1 / math.sqrt(10), math.exp(-5)])
    # linear with |V| = 100: 1 - H / log 100; log 10 / log 100 = .5; H = 10 > log 100 clips to 0
    close(modulation(h, "linear", vocab_size=100), [1.0, 1 - 1 / math.log(100), 0.5, 0.0])
    close(modulation(h, "none"), [1.0, 1.0, 1.0, 1.0])
    for bad in (dict(mode="linear"), dict(mode="exp", tau=0.0), dict(mode="cosine")):
        with pytest.raises(ValueError):
            modulation(h, **bad)


def test_teacher_similarity_max_mean_and_empty():
    emb = t([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])  # row 1 not unit length
    both = t([[1.0, 0.0], [0.0, 1.0]])
    skew = t([[0.0, 2.0], [2.0, 2.0]])  # cosines with [1, 0]: 0 and 1/sqrt2
    empty = torch.zeros(0, 2, dtype=D)
    s, has = teacher_similarity(emb, [both, skew, empty], mode="max")
    close(s, [1.0, 1 / math.sqrt(2), float("nan")])
    assert has.tolist() == [True, True, False]
    s, _ = teacher_similarity(emb, [both, skew, empty], mode="mean")
    close(s, [0.5, 0.5 / math.sqrt(2), float("nan")])
    with pytest.raises(ValueError):
        teacher_similarity(emb, [both], mode="max")


def test_divergence():
    close(divergence(t([1.0, 0.25, 0.0, -0.5, float("nan")])), [0.0, 0.75, 1.0, 1.0, float("nan")])


def test_oger_reward_gating():
    correct = t([1, 0, 1, 1, 1, 1])
    div = t([0.5, 0.5, 0.5, float("nan"), 0.9, 0.5])
    ent = t([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    has = torch.tensor([True, True, True, False, True, True])
    teacher = torch.tensor([False, False, True, False, False, False])
    r, b = oger_reward(correct, div, ent, has, teacher, lam=0.5)
    # row 0: .5 * 1 * .5 * e^0 = .25; row 1 wrong; row 2 teacher; row 3 no teacher (NaN d must not leak);
    # row 4: .5 * .9 = .45; row 5: .25 * e^-1
    close(b, [0.25, 0.0, 0.0, 0.0, 0.45, 0.25 * math.exp(-1)])
    close(r, [1.25, 0.0, 1.0, 1.0, 1.45, 1 + 0.25 * math.exp(-1)])
    r0, b0 = oger_reward(correct, div, ent, has, teacher, lam=0.0)  # GRPO/LUFFY presets: r = c
    close(r0, correct)
    close(b0, torch.zeros(6, dtype=D))
    _, bl = oger_reward(correct, div, ent, has, teacher, lam=0.5, modulation_mode="linear", vocab_size=100)
    close(bl[5], 0.25 * (1 - 1 / math.log(100)))
    # guard verdicts: a row failing one (row 4) gets 0, the others keep their bonus
    passed = torch.tensor([True, True, True, True, False, True])
    rg, bg = oger_reward(correct, div, ent, has, teacher, lam=0.5, passed=passed)
    close(bg, [0.25, 0.0, 0.0, 0.0, 0.0, 0.25 * math.exp(-1)])
    close(rg, [1.25, 0.0, 1.0, 1.0, 1.0, 1 + 0.25 * math.exp(-1)])


def test_oger_bonus_grows_with_divergence_and_shrinks_with_entropy():
    n = 5
    ones = torch.ones(n, dtype=D)
    yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    _, b = oger_reward(ones, torch.linspace(0, 1, n, dtype=D), torch.zeros(n, dtype=D), yes, no, lam=0.3)
    assert (b.diff() > 0).all() and b[0] == 0
    _, b = oger_reward(ones, torch.full((n,), 0.8, dtype=D), torch.linspace(0, 4, n, dtype=D), yes, no, lam=0.3)
    assert (b.diff() < 0).all()


def test_reward_pipeline_from_embeddings_and_logits():
    """The pieces compose: embeddings + logits -> reward, with the closer rollout earning less."""
    emb = t([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    teachers = [t([[1.0, 0.0]])] * 3
    s, has = teacher_similarity(emb, teachers)
    logits = torch.zeros(3, 2, 5, dtype=D)  # uniform: entropy log 5 everywhere
    mask = t([[1, 1], [1, 0], [1, 1]])
    h = last_token_entropy(entropy_from_logits(logits), mask)
    r, b = oger_reward(t([1, 1, 0]), divergence(s), h, has, torch.zeros(3, dtype=torch.bool), lam=1.0, tau=1.0)
    close(b, [0.0, 0.4 / 5, 0.0])  # d = 0, .4, (wrong); g = exp(-log 5) = 1/5
    close(r, [1.0, 1.08, 0.0])


# --------------------------------------------------------------------------- rollouts from another engine


def test_rollout_is_weights_token_and_sequence_by_hand():
    L = math.log
    train = torch.tensor([[L(0.5), L(0.2)], [L(0.6), L(0.6)]])
    rollout = torch.tensor([[L(0.25), L(0.4)], [L(0.2), L(0.3)]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # token: ratios 0.5/0.25 = 2, 0.2/0.4 = 0.5; row 2: 0.6/0.2 = 3 (its second token is padding -> 1)
    w = core.rollout_is_weights(train, rollout, mask, "token", cap=2.5)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5], [2.5, 1.0]]))  # 3 truncated at C = 2.5
    # sequence: row 1: 2 x 0.5 = 1 on both tokens; row 2: 3 (padding left out) -> C
    w = core.rollout_is_weights(train, rollout, mask, "sequence", cap=2.5)
    assert torch.allclose(w, torch.tensor([[1.0, 1.0], [2.5, 1.0]]))
    assert not core.rollout_is_weights(train.requires_grad_(), rollout, mask).requires_grad


def test_rollout_mismatch_by_hand():
    L = math.log
    train = torch.tensor([[L(0.5), L(0.2), 0.0]])
    rollout = torch.tensor([[L(0.25), L(0.4), 5.0]])
    m = core.rollout_mismatch(train, rollout, torch.tensor([[1.0, 1.0, 0.0]]))
    # d = log 2, log 0.5: |d| mean = log 2; k3 = (2 - 1 - log 2 + 0.5 - 1 + log 2) / 2 = 0.25
    assert m["rollout_logp_diff"] == pytest.approx(L(2))
    assert m["rollout_kl"] == pytest.approx(0.25)
    # quantiles of the ratios {0.5, 2} (linear): 0.5 + q * 1.5
    assert (m["rollout_ratio_p05"], m["rollout_ratio_p50"], m["rollout_ratio_p95"]) == pytest.approx(
        (0.575, 1.25, 1.925)
    )


def test_is_weights_scale_the_on_policy_loss_only():
    logp = torch.zeros(2, 2, requires_grad=True)
    adv = torch.tensor([1.0, 1.0])
    mask = torch.ones(2, 2)
    off = torch.tensor([False, True])
    w = torch.tensor([[2.0, 0.5], [5.0, 5.0]])
    loss, m = core.policy_loss(logp, logp.detach(), adv, mask, off, is_weight=w, clip=False, gamma=0.1)
    loss.backward()
    # on-policy row, ratio 1: per token -adv * w = -2, -0.5; token_mean over 4 tokens: each token's
    # gradient is -adv * w / 4 (the weight is a constant); the teacher row's shaping is untouched:
    # d/dlogp of -adv * p/(p+g) at p = 1 is -adv * g/(1+g)^2 = -0.1/1.21, / 4
    assert torch.allclose(logp.grad[0], torch.tensor([-0.5, -0.125]))
    assert torch.allclose(logp.grad[1], torch.full((2,), -0.1 / 1.21 / 4))
    assert m["is_weight_mean"] == pytest.approx(1.25)  # over on-policy tokens only


def test_chunked_token_scores_equal_the_whole_and_keep_no_float32_vocabulary_copy():
    """`token_scores_chunked`: the same per-position log-probs and entropies (and gradients) as all
    positions at once, while autograd keeps no float32 (positions x vocabulary) tensor: only the bf16
    logits themselves (the chunks' float32 work is recomputed in backward)."""
    torch.manual_seed(0)
    base = torch.randn(3, 7, 50) * 3
    ids = torch.randint(0, 50, (3, 7))
    for entropy_grad in (False, True):
        got = {}
        for chunk in (None, 4):
            logits = base.clone().to(torch.bfloat16).requires_grad_()
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(
                lambda t, saved=saved: saved.append((t.dtype, t.numel())) or t, lambda t: t
            ):
                logp, ent = core.token_scores_chunked(logits, ids, 0.7, entropy_grad, chunk)
            (logp.sum() + ent.sum() * entropy_grad).backward()
            got[chunk] = (logp.detach(), ent.detach(), logits.grad.clone())
            vocab_fp32 = [n for dtype, n in saved if dtype == torch.float32 and n >= 50]
            if chunk is None:
                assert max(vocab_fp32) >= 21 * 50  # the whole float32 (21, 50) is kept for backward
            else:
                assert vocab_fp32 == []  # none: the chunks keep only their bf16 input
        for a, b in zip(got[None], got[4]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert ent.requires_grad == entropy_grad
    # the values are those of the functions the trainer used before: log-softmax at ids, entropy
    z = base.to(torch.bfloat16).float() / 0.7
    torch.testing.assert_close(got[4][0], core.token_logprobs(z, ids), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[4][1], core.entropy_from_logits(z), rtol=1e-6, atol=1e-6)


def test_bonus_entropy_window_is_the_last_m_generated_tokens():
    """The one selector of the positions whose entropy the bonus reads (every engine asks it)."""
    assert list(core.bonus_entropy_window(5, 1)) == [4]  # the decision to stop
    assert list(core.bonus_entropy_window(5, 3)) == [2, 3, 4]
    assert list(core.bonus_entropy_window(2, 3)) == [0, 1]  # a shorter response: what it has
    assert list(core.bonus_entropy_window(0, 1)) == []
    with pytest.raises(ValueError):
        core.bonus_entropy_window(5, 0)
    # last_token_entropy over the window's values equals it over every position
    ent = torch.tensor([[0.5, 1.0, 2.0, 4.0, 8.0]])
    window = ent[:, list(core.bonus_entropy_window(5, 2))]
    close(
        core.last_token_entropy(window, torch.ones_like(window), 2),
        core.last_token_entropy(ent, torch.ones_like(ent), 2),
    )


def test_bonus_entropy_window_before_and_inside_the_answer():
    """`entropy_at`: by hand on a 10-token response whose `\\boxed{` is tokens 4-5 and answer tokens 6-7
    (then `}` and the end-of-sequence token); without an answer, or where an option selects nothing,
    the last m tokens."""
    span = (4, 6, 8)  # (the `\\boxed` token, the answer's first token, one past its last)
    assert core.bonus_entropy_window(10, 2, "last", span) == range(8, 10)  # `}` and the stop decision
    assert core.bonus_entropy_window(10, 2, "before_answer", span) == range(2, 4)  # the reasoning's end
    assert core.bonus_entropy_window(10, 3, "before_answer", span) == range(1, 4)
    assert core.bonus_entropy_window(10, 9, "before_answer", span) == range(0, 4)  # what there is
    assert core.bonus_entropy_window(10, 2, "answer", span) == range(6, 8)  # m unused
    assert core.bonus_entropy_window(10, 1, "answer", (5, 5, 7)) == range(5, 7)  # `\\boxed{4` one token
    for at in core.ENTROPY_AT:  # no boxed answer: last
        assert core.bonus_entropy_window(10, 2, at, None) == range(8, 10)
    assert core.bonus_entropy_window(10, 2, "answer", (4, 6, 6)) == range(8, 10)  # empty `\\boxed{}`
    assert core.bonus_entropy_window(10, 2, "before_answer", (0, 2, 4)) == range(8, 10)  # opens with it
    assert core.bonus_entropy_window(0, 2, "answer", None) == range(0)
    with pytest.raises(ValueError):
        core.bonus_entropy_window(10, 2, "middle", span)
