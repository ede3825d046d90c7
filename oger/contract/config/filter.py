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
    min_tokens: int = Field(1, ge=0)
    max_tokens: int = Field(1024, ge=1)
    require_stop: bool = True
    dedupe: bool = True
    max_per_problem_teacher: int | None = Field(None, ge=1)
    verify_timeout_s: float = Field(5.0, gt=0, json_schema_extra=not_in_key("a resource bound"))

    @model_validator(mode="after")
    def _bounds(self) -> "FilterConfig":
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        return self
