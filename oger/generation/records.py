"""The rollout record every generation engine returns, and the stop tokens they agree on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Rollout:
    """One sampled response. A server returns no token ids; `n_tokens` is then its usage count (None
    when it reports none)."""

    prompt_index: int
    response_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" (a server may name others)
    entropies: list[float] = field(default_factory=list)  # one per response token (hf, paged)
    sample_index: int = 0  # its place among its prompt's n samples
    n_tokens: int | None = None  # response tokens; engines with token ids set len(response_ids)
    logprobs: list[float] = field(default_factory=list)  # the engine's own, per token (record_logprobs)

    def __post_init__(self):
        if self.n_tokens is None and self.response_ids:
            self.n_tokens = len(self.response_ids)


def eos_ids(model, tokenizer) -> set[int]:
    """The generation config's eos ids plus the tokenizer's: either ends a response."""
    ids = model.generation_config.eos_token_id
    out = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out
