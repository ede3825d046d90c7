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

    question: str | None = Field(
        None,
        description="column holding the question (a chat list: its last user message); default: `prompt` "
        "for luffy, else the first of question, problem, Question",
    )
    answer: str | None = Field(
        None,
        description="column holding the gold answer; default: `reward_model` (its ground_truth) for luffy, "
        "`answer` (after its `####`) for gsm8k, the last \\boxed{} of the reference for math, else the first "
        "of answer, final_answer, gold",
    )
    reference: str | None = Field(
        None,
        description="column holding a worked solution, the text a `dataset` teacher uses as its trace; default: "
        "`target` for luffy, the answer's text for gsm8k, `solution` for math, else solution or reference",
    )


class SyntheticSource(Strict):
    """The project's own verifiable arithmetic task (deterministic by seed)."""

    kind: Literal["synthetic"] = Field(description="selects this source type: generated arithmetic problems")
    name: str = Field(
        "arith",
        description="the source's name in the problems table (unique): what teachers' `sources` select by",
    )
    seed: int = Field(0, description="generator seed: another seed draws other problems")
    n_train: int = Field(400, ge=0, description="problems in the train split (the RL pool and the teachers' default)")
    n_test: int = Field(
        200,
        ge=0,
        description="problems in the test split (the held-out check and the synthetic benchmark), none of "
        "them a train problem",
    )
    min_operands: int = Field(2, ge=2, description="fewest numbers in an expression")
    max_operands: int = Field(3, ge=2, description="most numbers in an expression; more operands make harder problems")
    max_value: int = Field(
        20,
        ge=1,
        description="operands are drawn from 1 to this; too small a range cannot give enough distinct problems",
    )
    ops: str = Field("+-*", description="the operators drawn from, a subset of `+-*` (usual precedence)")
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
    test_second_above: int | None = Field(
        None,
        ge=1,
        description="train problems whose second operand exceeds this get the split 'test' instead: out of the "
        "RL pool, into the held-out split (the explore task's only-signal variant: where strategy A cannot "
        "finish, held out, so the pool holds only problems both strategies solve)",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
    distinct_in_train: bool = Field(
        False,
        description="train problems whose operands are all equal get the split 'test' instead (the explore "
        "task: with a = b its two strategies are the same text, so such a problem cannot tell them apart)",
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
    name: str = Field(
        description="the source's name in the problems table (unique): what teachers' `sources` select by"
    )
    format: Literal["auto", "gsm8k", "math", "luffy", "plain"] = Field(
        "auto",
        description="the rows' layout: gsm8k (`#### <answer>` lines), math (the answer is the solution's last "
        "\\boxed{}), luffy (LUFFY's parquet: chat prompt, reward_model.ground_truth, target) or plain "
        "question/answer fields; auto: told apart per row by its fields",
    )
    fields: FieldMap = Field(FieldMap(), description="column names, where they are not the format's defaults")
    split: str = Field("train", description="split label written to the problems table")
    limit: int | None = Field(None, ge=1, description="first N rows (deterministic); default: all")
    labeller: Literal[LABELLER_NAMES] | None = labeller_field()


class LocalSource(_FileLikeSource):
    """A local jsonl or parquet file; `${OGER_DATA_DIR}` and `~` are expanded."""

    kind: Literal["local"] = Field(description="selects this source type: a local file")
    path: str = Field(
        description="the jsonl or parquet file; `~` and environment variables (`${OGER_DATA_DIR}`) are expanded",
        json_schema_extra=not_in_key(
            "the file's content fingerprint is in the identity: a moved copy is the same data"
        ),
    )


class HFSource(_FileLikeSource):
    """A Hugging Face dataset by id, read from `OGER_DATA_DIR` when a local copy is laid out there."""

    kind: Literal["hf"] = Field(description="selects this source type: a Hugging Face dataset")
    dataset: str = Field(
        description="the dataset's hub id (e.g. openai/gsm8k); its copy under OGER_DATA_DIR or data/ is read "
        "when laid out there, else it is loaded from the hub"
    )
    subset: str | None = Field(None, description="the dataset's configuration (subset) name, if it has several")
    hf_split: str | None = Field(None, description="dataset split to read; default: `split`")


Source = Annotated[Union[SyntheticSource, LocalSource, HFSource], Field(discriminator="kind")]


class ProblemsConfig(Strict):
    sources: list[Source] = Field(
        min_length=1,
        description="where problems come from, each a synthetic task, a local file or a hub dataset (by `kind`); "
        "a question already read from an earlier source is dropped",
    )
