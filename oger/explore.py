"""The explore task's strategies, told apart exactly (configs/explore.yaml, docs/RESULTS.md).

Problems are products `a * b` with one small factor. Strategy A (the teachers' only one, the
scripted style `add_first`) adds a up b times: b - 1 lines, which run out of the token budget when b
is large. Strategy B (`swap`, rare in the policy's SFT data, never in the index) swaps the factors
and adds b up a times: a - 1 lines, short when a is the small factor. A rollout's strategy is read
from the repeated addition it announces ("Add {x} {n} times."): x = a and n = b is A, x = b and
n = a is B (with a = b, B when it says "Swap" first); anything else is "other". So every rollout's
strategy is known, and a correct rollout that moved away from the teachers is one that used B.
"""

from __future__ import annotations

import re

from oger.synthetic import parse_question

STRATEGIES = ("A", "B", "other")
_ANNOUNCE = re.compile(r"Add (\d+) (\d+) times\.")


def factors(question: str) -> tuple[int, int] | None:
    """(a, b) of a question "Compute a * b.", None for any other question."""
    tokens = parse_question(question)
    if tokens is None or len(tokens) != 3 or tokens[1] != "*":
        return None
    return tokens[0], tokens[2]


def strategy_of(question: str, text: str) -> str | None:
    """"A", "B" or "other" for a response to an explore-task question; None if the question is not
    one (the metrics of other tasks are then NaN, not zero)."""
    ab = factors(question)
    if ab is None:
        return None
    m = _ANNOUNCE.search(text)
    if m is None:
        return "other"
    addend, times = int(m[1]), int(m[2])
    a, b = ab
    if a == b and (addend, times) == (a, b):
        return "B" if "Swap" in text[:m.start()] else "A"
    if (addend, times) == (a, b):
        return "A"
    if (addend, times) == (b, a):
        return "B"
    return "other"


def a_fits(question: str, budget: int, count_tokens) -> bool | None:
    """Whether strategy A's solution of the question fits `budget` tokens (`count_tokens(text)`),
    None for a question of another task. The problem classes of the report: A-feasible (True) and
    A-infeasible (False: only B can finish in time, when it fits)."""
    from oger.synthetic import scripted_solution

    if factors(question) is None:
        return None
    return count_tokens(scripted_solution("add_first", question, ("a_fits",), 0.0)) <= budget
