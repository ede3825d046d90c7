"""Builders the tests share: a training `Sample` with defaults for what a test does not care about,
and the train stage's logged rows (`rollouts.jsonl`, `metrics.jsonl`) read through the stage's own
readers. One place, so a change of the Sample's fields or of the files' layout is one edit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from oger.algorithm.samples import Sample
from oger.contract.artifacts import ArtifactRef
from oger.stages.train.files import read_metrics, read_rollouts


def sample(
    text: str = "x",
    *,
    group: int = 0,
    problem_id: str = "p",
    prompt_ids: Sequence[int] = (),
    response_ids: Sequence[int] = (1,),
    off_policy: bool = False,
    correct: bool = False,
    entropies: Sequence[float] = (),
    finish_reason: str = "stop",
) -> Sample:
    """One group member (an on-policy rollout, or a teacher trace with off_policy=True)."""
    return Sample(
        group,
        problem_id,
        list(prompt_ids),
        list(response_ids),
        text,
        off_policy,
        correct=correct,
        entropies=list(entropies),
        finish_reason=finish_reason,
    )


def rollouts(ref: ArtifactRef | str | Path) -> list[dict]:
    """The rows of a train artifact's (or a trainer run folder's) rollouts.jsonl, one per rollout."""
    return read_rollouts(ref)


def rollout_keys(ref: ArtifactRef | str | Path) -> list[tuple]:
    """What two runs that sampled the same must agree on: (step, group, text, off_policy, correct,
    reward to 6 places) per rollout."""
    return [
        (r["step"], r["group"], r["text"], r["off_policy"], r["correct"], round(r["reward"], 6)) for r in rollouts(ref)
    ]


def metrics(ref: ArtifactRef | str | Path) -> list[dict]:
    """The rows of a train artifact's (or a trainer run folder's) metrics.jsonl, one per step."""
    return read_metrics(ref)


def train_inputs(problems):
    """The trainer's inputs for synthetic problems (oger.synthetic), keyed by their index, no index."""
    from oger.stages.train.setup import TrainInputs

    return TrainInputs(
        questions={str(i): p.question for i, p in enumerate(problems)},
        answers={str(i): str(p.answer) for i, p in enumerate(problems)},
        problem_ids=[str(i) for i in range(len(problems))],
    )
