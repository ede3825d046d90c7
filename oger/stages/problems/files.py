"""The problems artifact's file and its readers: the only place its name is spelled.

Every other module reads the table through `read_problems` (tests/test_contract.py checks that no
module outside this package spells the file's name), and the RL prompt pool through `rl_pool`: the
index and train stages select the same problems by the same rule."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract.artifacts import ArtifactRef, read_table

PROBLEMS_FILE = "problems.parquet"
SCHEMA = {
    "problem_id": pl.Utf8,
    "question": pl.Utf8,
    "answer": pl.Utf8,
    "source": pl.Utf8,
    "split": pl.Utf8,
    "reference": pl.Utf8,
}
FILES = {
    PROBLEMS_FILE: "one row per problem: problem_id (content hash of the question), question, "
    "answer, source, split, reference (worked solution or trace, or null)"
}


def read_problems(ref: ArtifactRef | str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """The problems table (the columns of SCHEMA, or only `columns`), columns and types checked."""
    return read_table(ref, PROBLEMS_FILE, SCHEMA, columns)


def rl_pool(problems: pl.DataFrame, split: str, max_prompts: int | None) -> pl.DataFrame:
    """The RL prompt pool: the problems of `split`, the first `max_prompts` of them (train.split,
    train.max_prompts). The train stage draws its prompts from it; an index with
    `index.problems: train_pool` holds the teacher traces of these problems only."""
    pool = problems.filter(pl.col("split") == split)
    return pool.head(max_prompts) if max_prompts else pool
