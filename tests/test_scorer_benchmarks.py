"""The verifier over every row of the benchmark files in OGER_DATA_DIR: a response that states the gold
answer the way a model would scores correct, and one that states a wrong answer scores incorrect."""

import pytest

from oger.stages.evaluate.benchmarks import REGISTRY, load_benchmark
from oger.verify import _normalize, score_response

pytestmark = pytest.mark.slow

BENCHMARKS = ["math500", "aime24", "aime25", "amc", "minerva", "olympiadbench", "gsm8k", "gpqa_diamond"]

# Rows where the "wrong" answer (the next row's different gold) is in fact equal to the gold.
WRONG_IS_EQUIVALENT = {
    ("math500", 22): "gold '5' and the next gold 'x=5' state the same value",
}


def wrong_answer(name: str, golds: list[str], i: int) -> str:
    g = golds[i]
    if REGISTRY[name].kind == "choice":
        return "B" if g.strip().upper() != "B" else "C"
    for j in range(1, len(golds)):  # the next row's gold that differs as text
        w = golds[(i + j) % len(golds)]
        if _normalize(w) != _normalize(g):
            return w
    return g + "1"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_gold_scores_correct_and_wrong_scores_incorrect(name, data_dir):
    golds = load_benchmark(name)["answer"].to_list()
    assert len(golds) >= 30
    right_fail = [
        i
        for i, g in enumerate(golds)
        if not score_response(f"Let me work it out step by step ... so the answer is \\boxed{{{g}}}.", g)[1]
    ]
    wrong_pass = [
        i
        for i, g in enumerate(golds)
        if (name, i) not in WRONG_IS_EQUIVALENT
        and score_response(f"... so the answer is \\boxed{{{wrong_answer(name, golds, i)}}}.", g)[1]
    ]
    assert right_fail == [], [golds[i] for i in right_fail]
    assert wrong_pass == [], [(golds[i], wrong_answer(name, golds, i)) for i in wrong_pass]


def test_registered_sizes(data_dir):
    sizes = {n: load_benchmark(n).height for n in BENCHMARKS}
    assert sizes == {
        "math500": 500,
        "aime24": 30,
        "aime25": 30,
        "amc": 83,
        "minerva": 272,
        "olympiadbench": 675,
        "gsm8k": 1319,
        "gpqa_diamond": 198,
    }
