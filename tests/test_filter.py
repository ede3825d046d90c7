import polars as pl

from oger.contract.config import FilterConfig
from oger.stages.filter.stage import REASONS, decide, summarize


def traces(rows):
    return pl.DataFrame(
        rows,
        schema={
            "trace_id": pl.Utf8,
            "problem_id": pl.Utf8,
            "teacher": pl.Utf8,
            "text": pl.Utf8,
            "finish_reason": pl.Utf8,
        },
    )


def test_each_rule_with_hand_made_traces():
    gold = {"p1": "5", "p2": "7"}
    t = traces(
        [
            {"trace_id": "a", "problem_id": "p1", "teacher": "A", "text": r"2+3 \boxed{5}", "finish_reason": "stop"},
            {"trace_id": "b", "problem_id": "p1", "teacher": "A", "text": r"2+3 \boxed{5}", "finish_reason": "stop"},
            {"trace_id": "c", "problem_id": "p1", "teacher": "B", "text": r"wrong \boxed{6}", "finish_reason": "stop"},
            {
                "trace_id": "d",
                "problem_id": "p2",
                "teacher": "B",
                "text": r"cut off \boxed{7}",
                "finish_reason": "length",
            },
            {"trace_id": "e", "problem_id": "p2", "teacher": "B", "text": r"long \boxed{7}", "finish_reason": "stop"},
            {"trace_id": "f", "problem_id": "p2", "teacher": "A", "text": r"ok \boxed{7}", "finish_reason": "stop"},
            {
                "trace_id": "g",
                "problem_id": "p2",
                "teacher": "A",
                "text": r"also ok \boxed{7}",
                "finish_reason": "stop",
            },
        ]
    )
    n_tokens = [4, 4, 4, 4, 50, 4, 4]
    cfg = FilterConfig(min_tokens=2, max_tokens=10, max_per_problem_teacher=1)
    d = decide(t, gold, n_tokens, cfg)
    assert d["reason"].to_list() == [
        "kept",
        "dropped_duplicate",
        "dropped_incorrect",
        "dropped_truncated",
        "dropped_length",
        "kept",
        "dropped_cap",
    ]
    assert d["correct"].to_list() == [True, True, False, True, True, True, True]
    m = summarize(d)
    assert m["kept"] == 2 and m["traces"] == 7
    assert sum(m[r] for r in REASONS) == 7
    assert m["per_teacher"]["A"] == {
        "kept": 2,
        "dropped_truncated": 0,
        "dropped_incorrect": 0,
        "dropped_length": 0,
        "dropped_duplicate": 1,
        "dropped_cap": 1,
    }


def test_options_off_keep_more():
    gold = {"p": "1"}
    t = traces(
        [
            {"trace_id": "a", "problem_id": "p", "teacher": "A", "text": r"\boxed{1}", "finish_reason": "length"},
            {"trace_id": "b", "problem_id": "p", "teacher": "A", "text": r"\boxed{1}", "finish_reason": "stop"},
        ]
    )
    d = decide(t, gold, [3, 3], FilterConfig(min_tokens=0, max_tokens=5, require_stop=False, dedupe=False))
    assert d["reason"].to_list() == ["kept", "kept"]
