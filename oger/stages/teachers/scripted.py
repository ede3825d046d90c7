"""Scripted solvers of the synthetic task: deterministic, different styles, injected slips."""

from __future__ import annotations

from oger.contract.config import TeacherConfig
from oger.contract.errors import ConfigError
from oger.stages.teachers.base import Generation, Prompt
from oger.synthetic import STYLES, scripted_solution


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    if tcfg.model not in STYLES:
        raise ConfigError(
            f"teacher {tcfg.name!r}: scripted style {tcfg.model!r} is unknown; choose one of {sorted(STYLES)}"
        )
    out = []
    for p in prompts:
        for i in range(tcfg.n):
            seed_parts = (tcfg.name, tcfg.model, tcfg.sampling.seed, round_, p.problem_id, i)
            text = scripted_solution(tcfg.model, p.question, seed_parts, tcfg.slip_rate)
            if text is None:
                continue  # not a synthetic problem: this teacher cannot solve it
            out.append(Generation(p.problem_id, i, text, len(text.split()), "stop"))
    return out
