"""`oger rounds`: one row per round from the runs' records, scores with 95% intervals over problems
from the evaluation samples, a drop beyond the interval flagged, the PNG and the artifact markdown."""

import json

import polars as pl
import pytest

from oger.commands.trend import RoundRegression, check_round, flag_regressions, markdown, plot, regressions, round_rows
from oger.contract.config import RetentionConfig
from oger.stages.evaluate.files import SAMPLE_SCHEMA


def _eval_artifact(folder, per_problem_correct: list[list[bool]]):
    """A samples.parquet of the trained model: one list of sample outcomes per problem."""
    folder.mkdir(parents=True)
    rows = [
        {
            "benchmark": "synthetic",
            "model": "trained",
            "problem_id": f"p{i}",
            "sample_index": j,
            "response": "",
            "extracted_answer": "",
            "correct": c,
            "tokens": 1,
            "finish_reason": "stop",
            "prompt_truncated": False,
            "score_status": "quick",
        }
        for i, outs in enumerate(per_problem_correct)
        for j, c in enumerate(outs)
    ]
    pl.DataFrame(rows, schema=SAMPLE_SCHEMA).write_parquet(folder / "samples.parquet")
    return str(folder)


def _run(workdir, run_id, rnd, started, trained, eval_path=None):
    folder = workdir / "runs" / run_id
    folder.mkdir(parents=True)
    stages = {
        "teachers": {"metrics": {"traces": 10}},
        "index": {"metrics": {"rows": 8}},
        "train": {"metrics": {"env_reward_last_20pct": 0.5}},
        "evaluate": {"path": eval_path, "metrics": {"synthetic": {"metric": "avg@2", "base": 0.5, "trained": trained}}},
    }
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "round": rnd,
                "status": "completed",
                "started_at": started,
                "finished_at": started,
                "stages": stages,
            }
        )
    )


def test_rounds_in_order_with_intervals_and_a_regression_flagged(tmp_path):
    # 20 problems x 2 samples each: round a all correct on 16 (0.8), round b on 4 (0.2), round c 0.25
    high = _eval_artifact(tmp_path / "ev-a", [[True, True]] * 16 + [[False, False]] * 4)
    low = _eval_artifact(tmp_path / "ev-b", [[True, True]] * 4 + [[False, False]] * 16)
    close = _eval_artifact(tmp_path / "ev-c", [[True, True]] * 5 + [[False, False]] * 15)
    _run(tmp_path, "run-b", "2026-12-02", "2026-12-02T01:00:00", 0.2, low)
    _run(tmp_path, "run-a", "2026-12-01", "2026-12-01T01:00:00", 0.8, high)
    _run(tmp_path, "run-c", "2026-12-03", "2026-12-03T01:00:00", 0.25, close)
    rows = round_rows(tmp_path)
    assert [r["round"] for r in rows] == ["2026-12-01", "2026-12-02", "2026-12-03"]  # by first run
    a, b, c = (r["benchmarks"]["synthetic"] for r in rows)
    # per-problem scores of a: sixteen 1s and four 0s: sd = sqrt(0.8 * 0.2 * 20 / 19), half-width 1.96 sd / sqrt(20)
    assert abs(a["trained_ci"] - 1.96 * (0.8 * 0.2 * 20 / 19) ** 0.5 / 20**0.5) < 1e-9
    assert b["regression"] is True  # 0.8 -> 0.2: far beyond hypot(0.18, 0.18) = 0.25
    assert c["regression"] is False  # 0.2 -> 0.25 is a rise
    assert len(regressions(rows)) == 1 and "2026-12-02" in regressions(rows)[0]
    md = markdown(rows, "rounds.png")
    assert "**regression**" in md and "80.0 ± 18." in md and "![scores per round](rounds.png)" in md
    assert plot(rows, tmp_path / "rounds.png").stat().st_size > 1000


def test_without_samples_no_interval_and_no_flag(tmp_path):
    # retention removed the evaluations: the rows stay (from the run records), intervals unknown
    _run(tmp_path, "r1", "one", "2026-12-01T01:00:00", 0.9)
    _run(tmp_path, "r2", "two", "2026-12-02T01:00:00", 0.1)
    rows = round_rows(tmp_path)
    assert [r["benchmarks"]["synthetic"]["trained_ci"] for r in rows] == [None, None]
    assert rows[1]["benchmarks"]["synthetic"]["regression"] is False


def test_flag_needs_both_intervals():
    rows = [
        {"round": "x", "run_id": "1", "benchmarks": {"s": {"trained": 0.9, "trained_ci": 0.01}}},
        {"round": "y", "run_id": "2", "benchmarks": {"s": {"trained": 0.5, "trained_ci": None}}},
    ]
    flag_regressions(rows)
    assert rows[1]["benchmarks"]["s"]["regression"] is False


def test_fail_on_regression_fails_only_the_round_that_fell(tmp_path):
    # the same three rounds as above: b (0.8 -> 0.2) regressed, c (0.2 -> 0.25) did not
    high = _eval_artifact(tmp_path / "ev-a", [[True, True]] * 16 + [[False, False]] * 4)
    low = _eval_artifact(tmp_path / "ev-b", [[True, True]] * 4 + [[False, False]] * 16)
    close = _eval_artifact(tmp_path / "ev-c", [[True, True]] * 5 + [[False, False]] * 15)
    _run(tmp_path, "run-a", "2026-12-01", "2026-12-01T01:00:00", 0.8, high)
    _run(tmp_path, "run-b", "2026-12-02", "2026-12-02T01:00:00", 0.2, low)
    _run(tmp_path, "run-c", "2026-12-03", "2026-12-03T01:00:00", 0.25, close)
    rows = round_rows(tmp_path)
    with pytest.raises(RoundRegression, match=r"round 2026-12-02: synthetic 0\.2000 is below round 2026-12-01"):
        check_round(rows, "run-b")
    check_round(rows, "run-c")  # a rise
    check_round(rows, "run-a")  # the first round has nothing to fall below
    check_round(rows, "not-a-round-row")  # e.g. a run that evaluated nothing
    assert RetentionConfig().fail_on_regression is False  # a warning only unless asked
