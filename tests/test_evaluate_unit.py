"""The evaluate stage's parts against hand-computed values: protocol, prompt fitting, scoring, summaries."""

import polars as pl
import pytest

from oger.contract.config import BenchmarkSpec, EvaluateConfig, load_config
from oger.contract.errors import ConfigError
from oger.generation.engines import fit_prompt
from oger.stages.evaluate.scoring import score_all
from oger.stages.evaluate.stage import SAMPLE_SCHEMA, group_averages, summarize


def test_luffy_protocol_samples_32_on_competition_sets_once_elsewhere():
    e = EvaluateConfig(protocol="luffy", benchmarks=["aime24", "amc", "math500", {"name": "gsm8k", "samples": 4}])
    assert [e.samples_for(b) for b in e.benchmarks] == [32, 32, 1, 4]
    assert {e.temperature_for(b) for b in e.benchmarks} == {0.6}
    g = EvaluateConfig(protocol="greedy", benchmarks=["aime24", {"name": "amc", "temperature": 1.0}])
    assert [g.samples_for(b) for b in g.benchmarks] == [1, 1]
    assert [g.temperature_for(b) for b in g.benchmarks] == [0.0, 1.0]


def test_unknown_or_repeated_benchmark_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown benchmark 'aime23'"):
        load_config("configs/tiny.yaml", ["evaluate.benchmarks=[aime23]"])
    with pytest.raises(ConfigError, match=r"benchmarks listed twice: \['gsm8k'\]"):
        load_config("configs/tiny.yaml", ["evaluate.benchmarks=[gsm8k, gsm8k]"])


def test_fit_prompt_keeps_the_end_and_flags_the_cut():
    assert fit_prompt([1, 2, 3], context=10, max_new_tokens=5) == ([1, 2, 3], False)
    assert fit_prompt(list(range(8)), context=10, max_new_tokens=5) == ([3, 4, 5, 6, 7], True)
    with pytest.raises(ConfigError, match="leaves no room"):
        fit_prompt([1], context=10, max_new_tokens=10)


def test_score_all_uses_quick_checks_and_math_verify():
    responses = [
        "so \\boxed{12}",
        "so \\boxed{13}",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{\\sqrt{4}}",
        "no answer here",
        "The answer is (C)",
    ]
    golds = ["12", "12", "0.5", "2", "3", "C"]
    scores = score_all(responses, golds, timeout_s=5, workers=2)
    assert [s.correct for s in scores] == [True, False, True, True, False, True]
    assert [s.answer for s in scores] == ["12", "13", "\\frac{1}{2}", "\\sqrt{4}", None, "C"]
    assert [s.status for s in scores] == ["quick", "quick", "math_verify", "math_verify", "quick", "quick"]


def _samples(rows):
    return pl.DataFrame(
        [
            dict(
                zip(("benchmark", "model", "problem_id", "sample_index", "extracted_answer", "correct"), r),
                response="",
                tokens=1,
                finish_reason="stop",
                prompt_truncated=False,
                score_status="quick",
            )
            for r in rows
        ],
        schema=SAMPLE_SCHEMA,
    )


def test_summarize_avg_pass_maj_per_model():
    # aime24, k=4: problem a has 1/4 correct (base) and 3/4 (trained); problem b 0/4 and 2/4.
    rows = []
    for model, a_ok, b_ok in (("base", [1, 0, 0, 0], [0, 0, 0, 0]), ("trained", [1, 1, 1, 0], [1, 0, 1, 0])):
        for j in range(4):
            rows.append(("aime24", model, "a", j, "7" if a_ok[j] else "8", bool(a_ok[j])))
            rows.append(("aime24", model, "b", j, "1" if b_ok[j] else f"w{j}", bool(b_ok[j])))
    e = EvaluateConfig(protocol="luffy", benchmarks=[{"name": "aime24", "samples": 4}])
    out = summarize(_samples(rows), e.benchmarks, e)["aime24"]
    assert out["n"] == 2 and out["k"] == 4 and out["metric"] == "avg@4"
    assert out["base"] == pytest.approx((1 / 4 + 0) / 2)
    assert out["trained"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    # pass@4 with 4 samples: 1 if any correct.
    assert out["base_pass@4"] == pytest.approx(0.5) and out["trained_pass@4"] == pytest.approx(1.0)
    # maj@4: base a votes {8: 3, 7: 1} -> wrong, b all different -> first (wrong); trained a {7: 3}
    # -> right, b {1: 2, w1: 1, w3: 1} -> right.
    assert out["base_maj@4"] == 0.0 and out["trained_maj@4"] == pytest.approx(1.0)


def test_group_averages_over_present_benchmarks():
    per = {
        "math500": {"base": 0.2, "trained": 0.4, "n": 50},
        "aime24": {"base": 0.0, "trained": 0.1, "n": 30},
        "gsm8k": {"base": 0.9, "trained": 0.9, "n": 50},
        "gpqa_diamond": {"base": 0.3, "trained": 0.2, "n": 198},
    }
    out = group_averages(per)
    assert out["math_avg"]["base"] == pytest.approx(0.1) and out["math_avg"]["trained"] == pytest.approx(0.25)
    assert out["math_avg"]["of"] == ["aime24", "math500"] and out["math_avg"]["n"] == 80
    assert out["ood_avg"] == {"base": 0.3, "trained": 0.2, "n": 198, "of": ["gpqa_diamond"]}


def test_single_sample_benchmarks_report_plain_accuracy():
    rows = [
        ("synthetic", m, p, 0, "1", ok)
        for m, oks in (("base", [1, 0, 0]), ("trained", [1, 1, 0]))
        for p, ok in zip("xyz", map(bool, oks))
    ]
    e = EvaluateConfig(protocol="greedy", benchmarks=[BenchmarkSpec(name="synthetic")])
    out = summarize(_samples(rows), e.benchmarks, e)["synthetic"]
    assert (out["metric"], out["n"], out["base"], out["trained"]) == ("accuracy", 3, 0.3333, 0.6667)


def test_missing_benchmark_file_names_the_file_and_the_hub_id(monkeypatch, tmp_path):
    import oger.data.roots
    from oger.contract.errors import DataError
    from oger.stages.evaluate.benchmarks import load_benchmark

    monkeypatch.setenv("OGER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(oger.data.roots, "REPO_DATA", tmp_path / "no-data")  # a clone without data/
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"benchmarks/aime24/test.jsonl not found under .*'math-ai/aime24'"):
        load_benchmark("aime24")


def test_luffy_system_prompt_is_the_one_in_luffys_eval_parquet(data_dir):
    from oger.contract.config import LUFFY_SYSTEM_PROMPT

    df = pl.read_parquet(data_dir / "benchmarks/luffy_eval/valid.all.parquet", columns=["prompt"])
    assert df["prompt"][0][0]["role"] == "system"
    assert LUFFY_SYSTEM_PROMPT == df["prompt"][0][0]["content"]


def test_math_verify_workers_leave_when_their_parent_is_killed(tmp_path):
    # A SIGKILLed `oger run` cannot shut its scoring pool down; before the workers watched their
    # parent, each killed run left a spawned worker waiting on its queue for good.
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from oger.stages.evaluate.scoring import Scorer\n"
        "if __name__ == '__main__':\n"
        "    s = Scorer(5.0, 2)\n"
        "    s.warm()\n"
        "    while len(s._pool()._processes) < 2:\n"
        "        time.sleep(0.05)\n"
        "    print(*s._pool()._processes, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    """Running (a zombie left for init to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
