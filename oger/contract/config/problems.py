"""The problems stage's section: where the problems come from (synthetic, local files, HF datasets)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from oger.contract.config.base import Strict
from oger.contract.keys import not_in_key, omitted_at_default

# The labellers `oger.labels` defines, by name (the contract imports no task code; a test keeps the two
# equal, as BENCHMARK_NAMES with the benchmark registry).
LABELLER_NAMES = ("strategy",)


def labeller_field():
    return Field(
        None,
        description="a labeller of this task's responses (`oger.labels`: `strategy`, the "
        "explore task's A/B/other): the train stage logs each label's share and the bonus by label; "
        "default: none, and no label metrics",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )


class FieldMap(Strict):
    """Column names in a local or HF dataset; None means 'use the format's default'."""

    question: str | None = None
    answer: str | None = None
    reference: str | None = None


class SyntheticSource(Strict):
    """The project's own verifiable arithmetic task (deterministic by seed)."""

    kind: Literal["synthetic"]
    name: str = "arith"
    seed: int = 0
    n_train: int = Field(400, ge=0)
    n_test: int = Field(200, ge=0)
    min_operands: int = Field(2, ge=2)
    max_operands: int = Field(3, ge=2)
    max_value: int = Field(20, ge=1)
    ops: str = "+-*"
    smallest_at_most: int | None = Field(
        None,
        ge=1,
        description="only problems with an operand at most this (the explore task, configs/explore.yaml); default: all",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )

    sft_split_first_above: int | None = Field(
        None,
        ge=1,
        description="problems whose first operand exceeds this get the split 'sft' instead "
        "of train/test: out of the RL pool and the held-out split, seen only by teachers with split: sft "
        "(the explore task: where strategy B cannot fit, yet its additions are learned)",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
    labeller: Literal[LABELLER_NAMES] | None = labeller_field()

    @model_validator(mode="after")
    def _check(self) -> "SyntheticSource":
        if self.max_operands < self.min_operands:
            raise ValueError("max_operands must be >= min_operands")
        bad = set(self.ops) - set("+-*")
        if not self.ops or bad:
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        return self


class _FileLikeSource(Strict):
    name: str
    format: Literal["auto", "gsm8k", "math", "luffy", "plain"] = "auto"
    fields: FieldMap = FieldMap()
    split: str = Field("train", description="split label written to the problems table")
    limit: int | None = Field(None, ge=1)
    labeller: Literal[LABELLER_NAMES] | None = labeller_field()


class LocalSource(_FileLikeSource):
    """A local jsonl or parquet file; `${OGER_DATA_DIR}` and `~` are expanded."""

    kind: Literal["local"]
    path: str = Field(
        json_schema_extra=not_in_key("the file's content fingerprint is in the identity: a moved copy is the same data")
    )


class HFSource(_FileLikeSource):
    """A Hugging Face dataset by id, read from `OGER_DATA_DIR` when a local copy is laid out there."""

    kind: Literal["hf"]
    dataset: str
    subset: str | None = None
    hf_split: str | None = Field(None, description="dataset split to read; default: `split`")


Source = Annotated[Union[SyntheticSource, LocalSource, HFSource], Field(discriminator="kind")]


class ProblemsConfig(Strict):
    sources: list[Source] = Field(min_length=1)
