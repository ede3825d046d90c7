"""The filter artifact's files and the reader of its kept traces: the only place their names are
spelled.

The kept traces keep the name `traces.parquet` that the teachers artifact's file has too (a
rename would change what every cached filter artifact holds): they are a different table, the
teachers' rows that passed, with the verdict columns added. Read them with `read_kept`, the
teachers' with `oger.stages.teachers.files.read_traces`."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract.artifacts import ArtifactRef, read_table
from oger.stages.teachers.files import SCHEMA as TRACE_SCHEMA

KEPT_FILE = "traces.parquet"
DECISIONS_FILE = "decisions.parquet"
VERDICT = {"extracted_answer": pl.Utf8, "correct": pl.Boolean, "n_tokens_policy": pl.Int64}
KEPT_SCHEMA = {**TRACE_SCHEMA, **VERDICT}
FILES = {
    KEPT_FILE: "the kept traces: the teachers' columns plus extracted_answer, correct and "
    "n_tokens_policy (length in the policy tokenizer)",
    DECISIONS_FILE: "one decision per teacher trace: trace_id, teacher, problem_id, reason, "
    "extracted_answer, correct, n_tokens_policy",
}


def read_kept(ref: ArtifactRef | str | Path) -> pl.DataFrame:
    """The traces the filter kept (columns of KEPT_SCHEMA, types checked)."""
    return read_table(ref, KEPT_FILE, KEPT_SCHEMA)
