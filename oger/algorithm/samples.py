"""One member of a training group (shared by the trainer, the reward step and `oger bonus`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    """One member of a group: an on-policy rollout or a teacher trace put in its place."""

    group: int
    problem_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    off_policy: bool
    correct: bool = False
    entropies: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    rollout_logprobs: list[float] = field(default_factory=list)  # the sampling engine's own (vllm)
