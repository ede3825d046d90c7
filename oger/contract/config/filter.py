"""The filter stage's section: which teacher traces are kept."""

from __future__ import annotations

from pydantic import Field, model_validator

from oger.contract.config.base import Strict
from oger.contract.keys import not_in_key, resolved


class FilterConfig(Strict):
    tokenizer: str = Field(
        "smollm2",
        description="model whose tokenizer measures trace length",
        json_schema_extra=resolved("keyed by its content fingerprint"),
    )
    min_tokens: int = Field(
        1, ge=0, description="a correct trace shorter than this (in the tokenizer's tokens) is dropped"
    )
    max_tokens: int = Field(
        1024,
        ge=1,
        description="a correct trace longer than this is dropped: keep it within what the policy can learn from "
        "(policy.sft.max_tokens, train.rollout.max_new_tokens)",
    )
    require_stop: bool = Field(True, description="drop a trace that did not end by itself (cut at its token budget)")
    dedupe: bool = Field(True, description="drop a trace whose text repeats a kept trace of the same problem")
    max_per_problem_teacher: int | None = Field(
        None, ge=1, description="keep at most this many traces per (problem, teacher), the first ones; default: all"
    )
    verify_timeout_s: float = Field(
        5.0,
        gt=0,
        description="seconds math-verify may spend comparing one trace's answer with the gold one",
        json_schema_extra=not_in_key("a resource bound"),
    )

    @model_validator(mode="after")
    def _bounds(self) -> "FilterConfig":
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        return self
