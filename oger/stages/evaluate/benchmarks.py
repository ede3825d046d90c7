"""The evaluation benchmarks: where each lives in the repository's data/ (or OGER_DATA_DIR, or on the
hub) and how to read it.

Each resolves to rows {problem_id, question, answer} with one row per problem (LUFFY's parquet repeats
AIME/AMC rows 32 times for avg@32; those repeats are collapsed here and re-created by sampling k times).
Files are found, read and normalised by `oger.data`, the same rules the problems stage reads its
sources with; the groups the scores average over are in `files` (what readers of the scores need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from oger.contract.config import FieldMap
from oger.contract.errors import DataError
from oger.data.hub import hub_rows
from oger.data.normalize import normalize_row, problem_id
from oger.data.roots import data_roots, find_data_file
from oger.data.rows import iter_rows


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str  # relative to a data root (data/ or OGER_DATA_DIR)
    format: str = "plain"
    fields: FieldMap = field(default_factory=FieldMap)
    data_source: str | None = None  # LUFFY parquet: keep rows of this data_source
    kind: str = "math"  # "math" | "choice"
    hub_id: str | None = None
    hub_subset: str | None = None
    hub_split: str = "test"


REGISTRY: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "aime24", "benchmarks/aime24/test.jsonl", fields=FieldMap(question="problem"), hub_id="math-ai/aime24"
        ),
        Benchmark("aime25", "benchmarks/aime25/test.jsonl", hub_id="math-ai/aime25"),
        Benchmark(
            "amc", "benchmarks/luffy_eval/valid.all.parquet", format="luffy", data_source="amc", hub_id="math-ai/amc23"
        ),
        Benchmark("math500", "benchmarks/math500/test.jsonl", hub_id="HuggingFaceH4/MATH-500"),
        Benchmark("minerva", "benchmarks/minerva_math/test.jsonl", format="math", hub_id="math-ai/minervamath"),
        Benchmark(
            "olympiadbench",
            "benchmarks/olympiadbench/test.jsonl",
            fields=FieldMap(answer="final_answer"),
            hub_id="Hothan/OlympiadBench",
        ),
        Benchmark("gsm8k", "train/gsm8k/test.jsonl", format="gsm8k", hub_id="openai/gsm8k", hub_subset="main"),
        Benchmark(
            "arc_c",
            "benchmarks/luffy_eval/valid.arc_c.parquet",
            format="luffy",
            kind="choice",
            hub_id="allenai/ai2_arc",
        ),
        Benchmark("gpqa_diamond", "benchmarks/gpqa_diamond_mcq/test.jsonl", kind="choice", hub_id="Idavidrein/gpqa"),
        Benchmark("mmlu_pro", "benchmarks/mmlu_pro/test.jsonl", kind="choice", hub_id="TIGER-Lab/MMLU-Pro"),
    ]
}
# The synthetic task's held-out split, read from the problems stage (not from data/).
SYNTHETIC = "synthetic"


def benchmark_path(name: str) -> Path | None:
    """The registered file under OGER_DATA_DIR or data/, or None when it is in neither."""
    return find_data_file(REGISTRY[name].path)


def local_benchmark_size(name: str, limit: int | None = None) -> int | None:
    """Problems in the benchmark's local file (first `limit`), or None when it has none: what
    `oger plan` shows, without ever asking the hub."""
    if name not in REGISTRY:
        raise DataError(f"unknown benchmark {name!r}; registered: {sorted(REGISTRY)}")
    return load_benchmark(name, limit).height if benchmark_path(name) is not None else None


def load_benchmark(name: str, limit: int | None = None) -> pl.DataFrame:
    """Rows {problem_id, question, answer} of a registered benchmark, first `limit` if given."""
    if name not in REGISTRY:
        raise DataError(f"unknown benchmark {name!r}; registered: {sorted(REGISTRY)}")
    b = REGISTRY[name]
    path = benchmark_path(name)
    records = iter_rows(Path(path)) if path is not None else _hub_rows(b)
    rows, seen = [], set()
    for i, row in records:
        if b.data_source and row.get("data_source") != b.data_source:
            continue
        rec = normalize_row(row, b.format, b.fields, f"{path or b.hub_id}: row {i}")
        pid = problem_id(rec["question"])
        if pid in seen:  # LUFFY's repeated rows
            continue
        seen.add(pid)
        rows.append({"problem_id": pid, "question": rec["question"], "answer": rec["answer"]})
        if limit and len(rows) >= limit:
            break
    return pl.DataFrame(rows, schema={"problem_id": pl.Utf8, "question": pl.Utf8, "answer": pl.Utf8})


def _hub_rows(b: Benchmark):
    """Rows of the benchmark's hub dataset when its file is in no data root."""
    return hub_rows(
        b.hub_id,
        b.hub_subset,
        b.hub_split,
        f"benchmark {b.name!r}: {b.path} not found under "
        f"{' or '.join(map(str, data_roots())) or 'no data root'} and "
        f"hub dataset {b.hub_id!r} could not be loaded: ",
    )
