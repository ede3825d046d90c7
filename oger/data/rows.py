"""Records of a data file (jsonl or parquet), one reader for problems sources and benchmarks alike.

A broken file is a `DataError` naming the file and the row, never a decoder's or polars' traceback:
data files come from outside (downloads, exports) and are the likeliest thing to be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import polars as pl

from oger.contract.errors import DataError


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based row number, record) from jsonl or parquet; a bad line names file and row.

    Undecodable text, a corrupt or truncated parquet file and an empty file are `DataError`s that
    name the file (never a UnicodeDecodeError or polars traceback)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; point the source at a file with problems")
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # polars/pyarrow: ComputeError, OSError, ArrowInvalid ...
            raise DataError(
                f"{path}: not a readable parquet file (corrupt or truncated: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                f"re-export or re-download it"
            ) from None
        for i, row in enumerate(df.iter_rows(named=True), start=1):
            yield i, row
        return
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: row {i}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1}); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: row {i}: not valid JSON ({exc.msg}; a truncated or corrupt line); fix or remove the row"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
            yield i, row
