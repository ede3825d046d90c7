"""The problems artifact's file and its reader: the only place its name is spelled.

Every other module reads the table through `read_problems` (tests/test_contract.py checks that no
module outside this package spells the file's name)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract.artifacts import ArtifactRef, read_table

PROBLEMS_FILE = "problems.parquet"
SCHEMA = {"problem_id": pl.Utf8, "question": pl.Utf8, "answer": pl.Utf8, "source": pl.Utf8,
          "split": pl.Utf8, "reference": pl.Utf8}
FILES = {PROBLEMS_FILE: "one row per problem: problem_id (content hash of the question), question, "
                        "answer, source, split, reference (worked solution or trace, or null)"}


def read_problems(ref: ArtifactRef | str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """The problems table (the columns of SCHEMA, or only `columns`), columns and types checked."""
    return read_table(ref, PROBLEMS_FILE, SCHEMA, columns)
