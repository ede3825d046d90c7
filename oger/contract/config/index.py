"""The index stage's section: how teacher traces are embedded and which are indexed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oger.contract.config.base import Strict
from oger.contract.keys import not_in_key, omitted_at_default, resolved


class IndexConfig(Strict):
    encoder: str = Field(
        "minilm",
        description="the sentence-transformers model that embeds traces (and the train stage's rollouts, for "
        "the bonus's divergence): an alias, a folder or a hub id",
        json_schema_extra=resolved("keyed by its content fingerprint"),
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="texts per encoder call: memory against speed",
        json_schema_extra=not_in_key(
            "batching changes the vectors in the last float32 bits only (|diff| <= 1.2e-7 measured)"
        ),
    )
    long_text: Literal["chunk_mean", "head"] = Field(
        "chunk_mean",
        description="a text longer than the encoder's window: chunk_mean embeds each window-sized chunk and "
        "averages them; head embeds the first window only (the rest is ignored)",
    )
    table: str = Field(
        "teacher_traces",
        description="the LanceDB table (in the workdir) the index writes, one tagged version per index key, and "
        "the train stage reads at that tag",
    )
    problems: Literal["all", "train_pool"] = Field(
        "all",
        description="whose traces to index: all kept traces, or only those of the RL pool "
        "(train.split, first train.max_prompts), the only problems the train stage looks up",
        json_schema_extra=omitted_at_default("keys from before the option; train_pool adds the pool"),
    )
    teachers: list[str] | None = Field(
        None,
        description="whose traces to index (what divergence is measured against and LUFFY "
        "replaces rollouts with): these teachers' only; default all. A teacher may then train the "
        "policy (policy.sft.teachers) without being a reference (configs/explore.yaml)",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
