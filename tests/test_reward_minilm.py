"""The bonus with the real MiniLM encoder on hand-written cases (tests/bonus_cases.py), and the
`oger bonus` command against the trainer's reward step."""

import json
import time

import pytest
from bonus_cases import CASES, LEGACY, as_input_lines, variants

from oger.algorithm.reward import cached_embedder, compute_rewards
from oger.commands.bonus import score_cases
from oger.contract.config import load_config
from tests.builders import sample

DEGENERATE = ("bare_answer", "offtopic_padding", "random_words", "other_language", "other_script", "repetition")


@pytest.fixture(scope="module")
def embed():
    from oger.encoder import load_encoder

    return cached_embedder(load_encoder("minilm"), "chunk_mean")


@pytest.mark.slow
def test_defaults_pay_a_new_method_more_than_a_paraphrase_and_any_hack_less(embed):
    names = list(variants(CASES[0]))
    results = score_cases(load_config("configs/tiny.yaml"), as_input_lines(), embed)
    for case, res in zip(CASES, results):
        bonus = {n: r["bonus"] for n, r in zip(names, res["rollouts"])}
        assert bonus["different"] > bonus["paraphrase"] > 0, (case["problem"], bonus)
        for name in DEGENERATE:
            assert bonus[name] < bonus["different"], (case["problem"], name, bonus)
    # Before (whole text, no guards): the hacks out-earn the new method on every problem.
    legacy = score_cases(load_config("configs/tiny.yaml", LEGACY), as_input_lines(), embed)
    for res in legacy:
        bonus = {n: r["bonus"] for n, r in zip(names, res["rollouts"])}
        assert bonus["bare_answer"] > bonus["different"] > bonus["paraphrase"]


@pytest.mark.slow
def test_bonus_command_matches_the_trainer_reward_step(tmp_path, run_oger, embed):
    lines = as_input_lines()
    lines[0]["rollouts"][1]["correct"] = False  # a wrong rollout: no bonus
    lines[1]["rollouts"][0]["entropy"] = 1.5  # damped by g(H) = exp(-1.5)
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    t0 = time.perf_counter()
    proc = run_oger("bonus", "configs/tiny.yaml", "--input", path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - t0 < 120  # ~12 s CPU; wall time inflated on the shared 2-core machine
    got = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(got) == len(lines)
    cfg = load_config("configs/tiny.yaml").train
    for k, (line, out) in enumerate(zip(lines, got)):
        # The trainer's layout: one group per problem, entropies per token, teacher texts + vectors.
        samples = [
            sample(
                r["text"],
                problem_id="pid",
                prompt_ids=[1],
                response_ids=[2, 3],
                correct=r["correct"],
                entropies=[r["entropy"]],
            )
            for r in line["rollouts"]
        ]
        step = compute_rewards(samples, {"pid": (line["teacher_traces"], None)}, embed, cfg, seed=k)
        assert [r["bonus"] for r in out["rollouts"]] == pytest.approx(step.bonus.tolist(), abs=1e-6)
        assert [r["reward"] for r in out["rollouts"]] == pytest.approx(step.reward.tolist(), abs=1e-6)
        assert [r["guards"] for r in out["rollouts"]] == [r["guards"] for r in step.rows]
    assert got[0]["rollouts"][1]["bonus"] == 0.0 and got[0]["rollouts"][1]["reward"] == 0.0
    assert got[1]["rollouts"][0]["gate"] == pytest.approx(0.22313, abs=1e-4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1", "teacher_traces": [], "rollouts": [{"text": 3}]}\n')
    proc = run_oger("bonus", "configs/tiny.yaml", "--input", bad)
    assert proc.returncode == 2 and "bad.jsonl:1: rollouts[0]" in proc.stderr
