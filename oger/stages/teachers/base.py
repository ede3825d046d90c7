"""What every teacher backend receives and returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prompt:
    problem_id: str
    question: str
    reference: str | None = None
    position: int = 0  # index in the teacher's full prompt list: seeds stay the same when sharded


@dataclass
class Generation:
    """One sampled trace before the stage adds ids and provenance."""

    problem_id: str
    sample_index: int
    text: str
    n_tokens: int | None
    finish_reason: str  # "stop" | "length" | other backend-specific reasons
