"""The pure reward step and its parts, with hand values: OGER gating through `compute_rewards` with a
fake embedder (no model, well under a second), guards, neutral teacher rows, separate bonus scaling,
the shuffle control, ranking changes."""

import math

import numpy as np
import pytest
import torch

from oger.algorithm import core, guards
from oger.algorithm.reward import compute_rewards, reward_metrics
from oger.contract.config import TrainConfig
from tests.builders import sample

TEACHER = "alpha We add the numbers step by step and carry the tens. So the answer is \\boxed{7}."
# 2-D unit vectors chosen by the first word, so every cosine is a hand value.
VECS = {"alpha": (1.0, 0.0), "beta": (0.6, 0.8), "gamma": (0.0, 1.0), "delta": (0.8, 0.6)}


def fake_embed(texts):
    return np.array([VECS[t.split()[0].lower()] for t in texts])


def rollout(word: str) -> str:
    return f"{word} We add these numbers in a different order and check the sum. The answer is \\boxed{{7}}."


def cfg(**oger) -> TrainConfig:
    scale = oger.pop("scale_rewards", "none")
    return TrainConfig(group_size=4, loss={"scale_rewards": scale}, oger={"lam": 0.5, **oger})


def group(g, pid, rows):
    """rows: (first word or teacher text, correct, off_policy); entropy 0 at the last token (g(H) = 1)."""
    return [
        sample(
            text if off else rollout(text),
            group=g,
            problem_id=pid,
            response_ids=[1, 2, 3],
            off_policy=off,
            correct=c,
            entropies=[0.0],
        )
        for text, c, off in rows
    ]


def test_answer_options_average_every_entropy_the_engine_kept():
    """The engines keep the window's entropies only (`rollout.bonus_window`): under `last` the reward
    reads the last entropy_tokens of them, as before the options; under `answer` (as many as the answer
    has tokens) and `before_answer`, their mean."""
    rows = group(
        0, "p", [("beta", True, False), ("alpha", True, False), ("gamma", False, False), (TEACHER, True, True)]
    )
    rows[0].entropies = [0.3, 0.6, 0.9]
    for at, h in [("last", 0.9), ("answer", 0.6), ("before_answer", 0.6)]:
        out = compute_rewards(rows, {"p": ([TEACHER], None)}, fake_embed, cfg(entropy_at=at))
        assert out.rows[0]["last_token_entropy"] == pytest.approx(h)
        assert float(out.bonus[0]) == pytest.approx(0.5 * 0.4 * math.exp(-h))  # lam * d * g(H), d = 0.4


def test_oger_gating_and_advantages_by_hand():
    # Group 0 (problem p, one teacher trace at (1, 0)): a copy of the teacher direction (d = 0), a rollout
    # at cos 0.6 (d = 0.4), a WRONG rollout at cos 0 (d would be 1), and the teacher row.
    # Group 1 (problem q, no teacher trace): correct rollouts get nothing.
    samples = group(
        0, "p", [("alpha", True, False), ("beta", True, False), ("gamma", False, False), (TEACHER, True, True)]
    ) + group(1, "q", [("gamma", True, False), ("beta", True, False), ("gamma", False, False), ("delta", False, False)])
    teachers = {"p": ([TEACHER], None)}
    out = compute_rewards(samples, teachers, fake_embed, cfg())
    # bonus = lam * d * g(H) = 0.5 * 0.4 * 1 = 0.2 for "beta" only; the teacher row gets the group's mean
    # on-policy bonus (0 + 0.2 + 0) / 3 = 0.0667; group 1 has no teacher: no bonus at all.
    assert out.bonus.tolist() == pytest.approx([0.0, 0.2, 0.0, 0.2 / 3, 0, 0, 0, 0])
    assert out.reward.tolist() == pytest.approx([1.0, 1.2, 0.0, 1 + 0.2 / 3, 1, 1, 0, 0])
    assert [r["divergence"] for r in out.rows[:4]] == pytest.approx([0.0, 0.4, None, None], nan_ok=True)
    # separate advantages, scale none: c - mean(c) + (b - mean(b)); group 0: mean c = 0.75, mean b = 0.0667
    #   [0.25 - 0.0667, 0.25 + 0.1333, -0.75 - 0.0667, 0.25 + 0] ; group 1: c - 0.5
    assert out.advantages.tolist() == pytest.approx(
        [0.25 - 0.2 / 3, 0.25 + 0.4 / 3, -0.75 - 0.2 / 3, 0.25, 0.5, 0.5, -0.5, -0.5]
    )
    m = out.metrics
    assert m["bonus_correct_mean"] == pytest.approx(0.1)  # eligible rows: alpha, beta
    assert m["divergence_mean"] == pytest.approx(0.2) and m["divergence_q50"] == pytest.approx(0.2)
    # |A - A_no_bonus| = 0.0667 + 0.1333 + 0.0667 + 0 over sum |A| = 0.1833+0.3833+0.8167+0.25+4*0.5
    assert m["bonus_share"] == pytest.approx((0.8 / 3) / (0.55 / 3 + 1.15 / 3 + 2.45 / 3 + 0.25 + 2))
    assert m["rank_change_fraction"] == 0.5  # group 0: alpha and beta were tied, now apart
    assert m["diversity_correct"] == pytest.approx(0.4)  # 1 - cos(alpha, beta), group 0 only
    assert m["env_reward"] == pytest.approx(4 / 7) and "onpolicy_accuracy" not in m  # one name


def test_all_correct_group_gives_teacher_rows_zero_and_bonus_stays_on_its_scale():
    samples = group(
        0, "p", [("alpha", True, False), ("beta", True, False), ("delta", True, False), (TEACHER, True, True)]
    )
    teachers = {"p": ([TEACHER], None)}
    out = compute_rewards(samples, teachers, fake_embed, cfg(scale_rewards="group"))
    # bonuses 0, 0.2, 0.1 (cos 0.8 -> d 0.2); teacher 0.1; c-advantage 0 (all correct, std 0)
    assert out.advantages.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    assert out.metrics["teacher_adv_allcorrect"] == 0.0
    # The old rule (teacher r = c, c + b normalised together) blows bonus noise up to unit size and
    # pushes the teacher trace down: r = [1, 1.2, 1.1, 1], mean 1.075, std 0.0957
    old = compute_rewards(
        samples, teachers, fake_embed, cfg(scale_rewards="group", teacher_rows="zero", advantage="joint")
    )
    std = float(torch.tensor([1, 1.2, 1.1, 1.0], dtype=torch.float64).std())
    assert old.advantages.tolist() == pytest.approx([(x - 1.075) / (std + 1e-6) for x in (1, 1.2, 1.1, 1)])
    assert old.metrics["teacher_adv_allcorrect"] < -0.7


def test_lambda_zero_monitor_measures_without_paying_and_no_embedder_without_monitor():
    samples = group(
        0, "p", [("alpha", True, False), ("beta", True, False), ("gamma", False, False), (TEACHER, True, True)]
    )
    teachers = {"p": ([TEACHER], None)}
    c = TrainConfig(group_size=4, algorithm="oger", oger={"lam": 0.0, "monitor": True})
    out = compute_rewards(samples, teachers, fake_embed, c)
    assert out.bonus.abs().sum() == 0 and out.metrics["divergence_mean"] == pytest.approx(0.2)
    assert out.advantages.tolist() == pytest.approx(
        core.group_advantages(torch.tensor([[1.0, 1, 0, 1]], dtype=torch.float64)).view(-1).tolist()
    )
    off = TrainConfig(group_size=4, algorithm="luffy", oger={"monitor": False})
    unmeasured = compute_rewards(samples, teachers, None, off)  # no embedder needed: nothing is embedded
    assert math.isnan(unmeasured.metrics["divergence_mean"])  # NaN: not measured (not 0, not a value)
    assert all(r["divergence"] is None for r in unmeasured.rows)
    assert unmeasured.bonus.abs().sum() == 0


def test_no_recorded_entropy_reports_no_gate_unless_the_bonus_applied_one():
    # `needs_rollout_entropy` False (luffy, monitor off): the rollouts carry no entropies, and their
    # gate is None (not g(0) = 1, which nothing computed). With lambda > 0 and no entropy (a
    # hand-written rollout in `oger bonus`) g = 1 is what the bonus applied: reported as 1.
    rows = [("alpha", True, False), ("beta", True, False), ("gamma", False, False), (TEACHER, True, True)]
    samples = [
        sample(
            s.text,
            group=0,
            problem_id="p",
            response_ids=[1, 2, 3],
            off_policy=s.off_policy,
            correct=s.correct,
            entropies=[],
        )
        for s in group(0, "p", rows)
    ]
    teachers = {"p": ([TEACHER], None)}
    off = compute_rewards(
        samples, teachers, None, TrainConfig(group_size=4, algorithm="luffy", oger={"monitor": False})
    )
    assert all(r["gate"] is None for r in off.rows)
    applied = compute_rewards(samples, teachers, fake_embed, cfg())
    assert [r["gate"] for r in applied.rows] == [1.0, 1.0, None, None]  # eligible: the two correct rollouts


def test_guards_zero_the_bonus_of_degenerate_rollouts():
    teachers = {"p": ([TEACHER], None)}
    degenerate = [
        "beta So the answer is \\boxed{7}.",  # no reasoning left
        "beta " + "we add the numbers again " * 12 + ". The answer is \\boxed{7}.",  # repetition
        "beta Sumamos los números en otro orden y comprobamos la suma que es correcta. La respuesta es \\boxed{7}.",
    ]  # another language
    samples = [sample(t, correct=True, entropies=[0.0]) for t in degenerate]
    samples.append(sample(rollout("beta"), correct=True, entropies=[0.0]))
    out = compute_rewards(samples, teachers, fake_embed, TrainConfig(group_size=4))
    failed = [{k for k, ok in r["guards"].items() if not ok} for r in out.rows]
    assert failed == [{"reasoning"}, {"length_ratio", "repetition"}, {"language"}, set()]
    assert out.bonus.tolist() == pytest.approx([0, 0, 0, 0.2])
    # off-topic: d = 1 > max_divergence 0.45
    far = [sample(rollout("gamma"), correct=True, entropies=[0.0])] * 2
    out = compute_rewards(far, teachers, fake_embed, TrainConfig(group_size=2))
    assert out.rows[0]["guards"]["off_topic"] is False and out.bonus.abs().sum() == 0


def test_think_format_reward_and_guard():
    from oger.stages.train.reward import is_correct

    assert is_correct("<think>\n3 + 4 = 7\n</think>\nThe answer is \\boxed{7}.", "7", "think")
    assert not is_correct("3 + 4 = 7. The answer is \\boxed{7}.", "7", "think")
    assert not is_correct("\\boxed{7} </think> so \\boxed{8}", "7", "think")  # verified after </think>
    assert is_correct("3 + 4 = 7. The answer is \\boxed{7}.", "7", "plain")
    g = TrainConfig().oger.guards
    assert guards.guard_verdicts(rollout("x"), [TEACHER], g, think_required=True)["think_format"] is False
    assert "think_format" not in guards.guard_verdicts(rollout("x"), [TEACHER], g, think_required=False)


def test_text_signals_by_hand():
    assert guards.reasoning_text("Add 3 and 4.\nSo the answer is \\boxed{7}.") == "Add 3 and 4."
    assert guards.reasoning_text("The answer is \\boxed{7}.") == ""
    assert guards.reasoning_text("<think>\nadd them\n</think> \\boxed{7}") == "add them"
    # 6 words -> 3 4-grams: (a b c d), (b c d a), (c d a b)... "a b a b a b": grams abab, baba, abab -> 1 - 2/3
    assert guards.repetition_rate("a b a b a b") == pytest.approx(1 - 2 / 3)
    assert guards.repetition_rate("one two three") == 0.0
    assert guards.length_ratio("a b c d", ["x y", "x y z w v u", "x y z w"]) == pytest.approx(4 / 4)
    assert guards.words("约数和 is 91") == ["约", "数", "和", "is", "91"]
    assert guards.nonascii_share("ab约") == pytest.approx(1 / 3)
    assert guards.language("We add the numbers and then divide.") == "latin:en"
    assert guards.language("Sumamos los números y la respuesta es 7.") == "latin:es"
    assert guards.language("Разделим обе части на 3") == "cyrillic"
    assert guards.language("3 + 4 = 7") is None


def test_shuffle_keeps_the_batch_bonus_multiset():
    bonus = torch.tensor([0.1, 0.0, 0.3, 0.2, 0.0, 0.5], dtype=torch.float64)
    eligible = torch.tensor([True, False, True, True, False, True])
    out = core.shuffle_bonus(bonus, eligible, torch.Generator().manual_seed(3))
    assert sorted(out[eligible].tolist()) == sorted(bonus[eligible].tolist())
    assert out[~eligible].tolist() == [0.0, 0.0]
    assert out.tolist() != bonus.tolist()  # seed 3 moves values (a fixed seed: deterministic)
    assert core.shuffle_bonus(bonus, eligible, torch.Generator().manual_seed(3)).tolist() == out.tolist()
    # through the reward step: the per-batch multiset of eligible bonuses is unchanged
    samples = group(
        0, "p", [("alpha", True, False), ("beta", True, False), ("delta", True, False), (TEACHER, True, True)]
    )
    teachers = {"p": ([TEACHER], None)}
    plain = compute_rewards(samples, teachers, fake_embed, cfg(teacher_rows="zero"))
    for seed in range(5):
        shuf = compute_rewards(samples, teachers, fake_embed, cfg(teacher_rows="zero", shuffle_bonus=True), seed=seed)
        assert sorted(shuf.bonus.tolist()) == pytest.approx(sorted(plain.bonus.tolist()))


def test_group_relative_and_neutral_teacher_bonus_by_hand():
    b = torch.tensor([[0.2, 0.4, 0.0, 0.0]], dtype=torch.float64)
    elig = torch.tensor([[True, True, False, False]])
    # centred over the 2 eligible rows: mean 0.3 -> [-0.1, 0.1, 0, 0]
    assert core.group_relative_bonus(b, elig).tolist()[0] == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    teacher = torch.tensor([[False, False, False, True]])
    # teacher row: mean over the 3 on-policy rows (0.2 + 0.4 + 0) / 3 = 0.2
    assert core.neutral_teacher_bonus(b, teacher).tolist()[0] == pytest.approx([0.2, 0.4, 0.0, 0.2])


def test_hybrid_advantages_by_hand():
    c = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.2, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # separate, scale none: c - 0.5 + (b - 0.05) = [0.65, 0.45, -0.55, -0.55]
    assert core.hybrid_advantages(c, b, "none").tolist()[0] == pytest.approx([0.65, 0.45, -0.55, -0.55])
    # separate, group: (c - 0.5) / (std 0.5774 + eps) + (b - 0.05)
    s = 1 / math.sqrt(3) * math.sqrt(1.0) * 1.0  # std of [1,1,0,0] with Bessel: sqrt(1/3)
    exp = [0.5 / (s + 1e-6) + 0.15, 0.5 / (s + 1e-6) - 0.05, -0.5 / (s + 1e-6) - 0.05, -0.5 / (s + 1e-6) - 0.05]
    assert core.hybrid_advantages(c, b, "group").tolist()[0] == pytest.approx(exp)
    # joint equals group_advantages(c + b); both modes equal group_advantages(c) without a bonus
    assert torch.allclose(core.hybrid_advantages(c, b, "group", "joint"), core.group_advantages(c + b))
    for mode in ("separate", "joint"):
        assert torch.allclose(core.hybrid_advantages(c, torch.zeros_like(b), "group", mode), core.group_advantages(c))


def test_ranking_changed_by_hand():
    rows = torch.ones(3, 3, dtype=torch.bool)
    a0 = torch.tensor([[1.0, 1.0, -2.0], [1.0, 0.0, -1.0], [0.5, 0.5, -1.0]])
    a = torch.tensor(
        [
            [1.1, 0.9, -2.0],  # tie broken: changed
            [0.9, 0.95, -1.0],  # strict pair flipped: changed
            [0.5, 0.5004, -1.0],
        ]
    )  # below tol: unchanged
    assert core.ranking_changed(a, a0, rows).tolist() == [True, True, False]
    only = torch.tensor([[True, False, True]] * 3)  # ignore the middle row
    assert core.ranking_changed(a, a0, only).tolist() == [False, False, False]


def test_reward_metrics_hack_monitors():
    rows = compute_rewards(
        group(0, "p", [("alpha", True, False), ("beta", True, False), ("gamma", False, False), (TEACHER, True, True)]),
        {"p": ([TEACHER], None)},
        fake_embed,
        cfg(),
    ).rows
    m = reward_metrics(rows)
    assert m["response_length"] == 3 and m["short_share"] == 1.0
    assert m["nonascii_share"] == 0.0 and m["think_format_share"] == 0.0
    assert m["guard_pass_fraction"] == 1.0
