"""Labellers: a task's own reading of a response (which strategy it used, say), named by the problem
source that defines the task (`labeller:` in a problems source).

Why a hook: the trainer logs, for any labeller, the share of on-policy rollouts under each label and the
bonus paid by label (`oger.stages.train.metrics.label_metrics`), and nothing for a task without one; the
task's analysis (the explore task's strategies, `oger.explore`) stays the task's business, out of the
trainer. A labeller is a pure function of the question and the response, so the same rows label the same
way in training, in the sweep report and in a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from oger.synthetic import parse_question


@dataclass(frozen=True)
class Labeller:
    """`label(question, response)` is one of `labels`, `rest` (a response none of them fits) or None (a
    question of another task: its rows count in no share). `name` prefixes the share metrics;
    `focus` are the labels whose shares are plotted, swept and summarised over the first and last 20%
    of a run (the others by their mean)."""

    name: str
    labels: tuple[str, ...]
    rest: str
    focus: tuple[str, ...]
    label: Callable[[str, str], str | None]

    @property
    def all_labels(self) -> tuple[str, ...]:
        return (*self.labels, self.rest)

    # The names of its step metrics (`oger.stages.train.metrics.label_metrics` defines them, the trainer's
    # step log fills them): spelled here once.
    def share_metric(self, label: str) -> str:
        return f"{self.name}_{label.lower()}_share"

    def share_correct_metric(self, label: str) -> str:
        return f"{self.share_metric(label)}_correct"

    def bonus_metric(self, label: str) -> str:
        return f"bonus_mean_{label.lower()}"


def by_source(sources) -> dict[str, Labeller]:
    """{problems source name: the labeller it names} for the configured sources that name one."""
    return {s.name: LABELLERS[s.labeller] for s in sources if s.labeller}


# --------------------------------------------------------------------------- the explore task's strategies

_ANNOUNCE = re.compile(r"Add (\d+) (\d+) times\.")


def factors(question: str) -> tuple[int, int] | None:
    """(a, b) of a question "Compute a * b.", None for any other question."""
    tokens = parse_question(question)
    if tokens is None or len(tokens) != 3 or tokens[1] != "*":
        return None
    return tokens[0], tokens[2]


def strategy_of(question: str, text: str) -> str | None:
    """ "A", "B" or "other" for a response to a product question (configs/explore.yaml): A adds a up b
    times, B swaps the factors and adds b up a times, read from the repeated addition the response
    announces ("Add {x} {n} times."; with a = b, B when it says "Swap" first). None if the question is
    not a product of two factors."""
    ab = factors(question)
    if ab is None:
        return None
    m = _ANNOUNCE.search(text)
    if m is None:
        return "other"
    addend, times = int(m[1]), int(m[2])
    a, b = ab
    if a == b and (addend, times) == (a, b):
        return "B" if "Swap" in text[: m.start()] else "A"
    if (addend, times) == (a, b):
        return "A"
    if (addend, times) == (b, a):
        return "B"
    return "other"


STRATEGY = Labeller(name="strategy", labels=("A", "B"), rest="other", focus=("B",), label=strategy_of)

LABELLERS: dict[str, Labeller] = {STRATEGY.name: STRATEGY}
