"""The teachers artifact's file and its reader: the only place its name is spelled.

`traces.parquet` holds every trace the teachers wrote, one row per sample. (The filter artifact's
file has the same name and holds the kept ones, with the filter's verdict columns added: read it
with `oger.stages.filter.files.read_kept`.)"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract.artifacts import ArtifactRef, read_table

TRACES_FILE = "traces.parquet"
SCHEMA = {
    "trace_id": pl.Utf8,
    "problem_id": pl.Utf8,
    "teacher": pl.Utf8,
    "backend": pl.Utf8,
    "model": pl.Utf8,
    "round": pl.Utf8,
    "sample_index": pl.Int64,
    "text": pl.Utf8,
    "n_tokens": pl.Int64,
    "finish_reason": pl.Utf8,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_new_tokens": pl.Int64,
    "seed": pl.Int64,
}
FILES = {
    TRACES_FILE: "every teacher trace, one row per (teacher, problem, sample): text, tokens, "
    "finish reason and the sampling settings"
}


def read_traces(ref: ArtifactRef | str | Path) -> pl.DataFrame:
    """All the teachers' traces (columns of SCHEMA, types checked)."""
    return read_table(ref, TRACES_FILE, SCHEMA)
