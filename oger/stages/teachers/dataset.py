"""Use a column of the problems table (a worked solution, LUFFY's R1 `target`) as teacher traces."""

from __future__ import annotations

from oger.contract.config import TeacherConfig
from oger.stages.teachers.base import Generation, Prompt


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    # The reference text was written once; n > 1 would only duplicate it, so one sample per problem.
    return [
        Generation(p.problem_id, 0, p.reference, None, "stop") for p in prompts if p.reference and p.reference.strip()
    ]
