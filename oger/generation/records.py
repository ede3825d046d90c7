"""The rollout record every generation engine returns, and the stop tokens they agree on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Rollout:
    prompt_index: int
    response_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length"
    entropies: list[float] = field(default_factory=list)  # one per response token


def eos_ids(model, tokenizer) -> set[int]:
    """The generation config's eos ids plus the tokenizer's: either ends a response."""
    ids = model.generation_config.eos_token_id
    out = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out
