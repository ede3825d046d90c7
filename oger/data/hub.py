"""Hub datasets: the local copy under a data root when there is one, else the hub itself.

A problems source (`kind: hf`) and a benchmark both name a hub dataset; both look for it under the
data roots first (offline machines, pinned copies) and only then ask the hub, which may be offline,
gated or not know the id: that is a `DataError` saying what was looked for where."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from oger.contract.config import HFSource
from oger.contract.errors import DataError
from oger.data.roots import find_data_file

# Local copies of HF datasets under a data root (the layout of the repository's data/).
HF_LOCAL_LAYOUT = {
    "openai/gsm8k": {"train": "train/gsm8k/train.jsonl", "test": "train/gsm8k/test.jsonl"},
    "gsm8k": {"train": "train/gsm8k/train.jsonl", "test": "train/gsm8k/test.jsonl"},
    "HuggingFaceH4/MATH-500": {"test": "benchmarks/math500/test.jsonl"},
    "math-ai/aime24": {"test": "benchmarks/aime24/test.jsonl"},
    "math-ai/aime25": {"test": "benchmarks/aime25/test.jsonl"},
    "math-ai/amc23": {"test": "benchmarks/amc23/test.jsonl"},
    "math-ai/minervamath": {"test": "benchmarks/minerva_math/test.jsonl"},
    "Hothan/OlympiadBench": {"test": "benchmarks/olympiadbench/test.jsonl"},
    "hendrycks/competition_math": {"test": "train/math_full_test/test.jsonl"},
}


def resolve_hf_local(src: HFSource) -> Path | None:
    """The local file for an HF dataset under a data root (OGER_DATA_DIR, then data/), if laid out there."""
    split = src.hf_split or src.split
    rel = HF_LOCAL_LAYOUT.get(src.dataset, {}).get(split)
    candidates = [rel] if rel else []
    for ext in ("jsonl", "parquet"):
        candidates.append(f"{src.dataset}/{src.subset + '/' if src.subset else ''}{split}.{ext}")
    return next((f for f in map(find_data_file, candidates) if f is not None), None)


def hub_rows(dataset: str, subset: str | None, split: str, failure: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, record) of a hub dataset, loaded now (`datasets` is imported only here).

    When the hub cannot give it (offline, unknown id, gated ...) the `DataError` begins with
    `failure`, the caller's account of what was missing where, then names the hub's error."""
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset, subset, split=split)
    except Exception as exc:  # offline, unknown id, auth ...
        raise DataError(f"{failure}{type(exc).__name__}: {str(exc)[:200]}") from None
    return ((i, dict(row)) for i, row in enumerate(ds, start=1))
