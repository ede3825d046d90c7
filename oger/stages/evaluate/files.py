"""The evaluate artifact's files and the reader of its samples: the only place their names are
spelled; and the benchmark groups its scores average over, which readers of the scores (the sweep)
average over too."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract.artifacts import ArtifactRef, read_table

SAMPLES_FILE = "samples.parquet"
SCORES_FILE = "scores.json"
SCORES_PNG = "scores.png"
SAMPLE_SCHEMA = {
    "benchmark": pl.Utf8,
    "model": pl.Utf8,
    "problem_id": pl.Utf8,
    "sample_index": pl.Int64,
    "response": pl.Utf8,
    "extracted_answer": pl.Utf8,
    "correct": pl.Boolean,
    "tokens": pl.Int64,
    "finish_reason": pl.Utf8,
    "prompt_truncated": pl.Boolean,
    "score_status": pl.Utf8,
}
FILES = {
    SAMPLES_FILE: "one row per (benchmark, model, problem, sample): response, extracted answer, "
    "correct, tokens; model is base (policy stage) or trained",
    SCORES_FILE: "the scores per benchmark (avg@k, pass@k, maj@k) and group averages",
    SCORES_PNG: "base vs trained per benchmark, a bar chart",
}

# The groups scores.json averages ("math_avg", "ood_avg": the mean over the group's benchmarks that
# were evaluated): in-distribution math and out-of-distribution multiple choice, as LUFFY reports them.
# The sweep averages its per-problem scores over the same groups, so they are read from here.
MATH_BENCHMARKS = ["aime24", "aime25", "amc", "math500", "minerva", "olympiadbench"]
OOD_BENCHMARKS = ["arc_c", "gpqa_diamond", "mmlu_pro"]
BENCHMARK_GROUPS = (("math_avg", MATH_BENCHMARKS), ("ood_avg", OOD_BENCHMARKS))


def read_samples(ref: ArtifactRef | str | Path) -> pl.DataFrame:
    """The scored samples of both models (columns of SAMPLE_SCHEMA, types checked)."""
    return read_table(ref, SAMPLES_FILE, SAMPLE_SCHEMA)
