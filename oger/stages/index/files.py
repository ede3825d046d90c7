"""The index artifact's file and its readers: what other modules read of the index stage.

The artifact is a pointer: `index.json` names the LanceDB folder, the table and the tag (the
index stage's key) of the table version it wrote. `TeacherIndex` reads the table at a tag (the train
stage's teacher traces). The table's versions and the pin that decides which tag training reads are
`versions`'s; the readers of them are re-exported here on purpose (`db_path`, `open_table`,
`list_versions`, `read_pin`, `pin_path`, `training_tag`), so the train stage, `oger status`,
`oger gc` and the rounds bookkeeping reach the index only through this module. Light to import: LanceDB and
numpy are imported where a table is opened or read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from oger.contract.artifacts import ArtifactRef, artifact_path
from oger.contract.errors import StageError
from oger.stages.index.versions import db_path, list_versions, open_table, pin_path, read_pin, training_tag

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = [
    "INDEX_FILE",
    "FILES",
    "read_index_info",
    "TeacherIndex",
    "vectors_of",
    "db_path",
    "list_versions",
    "open_table",
    "pin_path",
    "read_pin",
    "training_tag",
]

INDEX_FILE = "index.json"
FILES = {INDEX_FILE: "the LanceDB table version the stage wrote: db (folder), table, tag, version"}


def read_index_info(ref: ArtifactRef | str | Path) -> dict:
    """{"db", "table", "tag", "version"} of the index artifact (keys checked)."""
    path = artifact_path(ref) / INDEX_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StageError(f"{path}: not a readable index pointer ({e})") from None
    missing = [k for k in ("db", "table", "tag") if k not in info]
    if missing:
        raise StageError(f"{path}: missing {missing}")
    return info


def vectors_of(column: pa.ChunkedArray) -> np.ndarray:
    """A LanceDB vector column as a float32 array (rows, dim)."""
    import numpy as np

    arr = column.combine_chunks()
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


class TeacherIndex:
    """Read-only view of the teacher-trace table at one tag (what training uses)."""

    def __init__(self, db: str | Path, table: str, tag: str):
        import lancedb

        self.tag = tag
        self._tbl = lancedb.connect(str(db)).open_table(table)
        self._tbl.checkout(tag)

    @classmethod
    def from_artifact(cls, ref: ArtifactRef) -> "TeacherIndex":
        info = read_index_info(ref)
        return cls(info["db"], info["table"], info["tag"])

    def count(self) -> int:
        return self._tbl.count_rows()

    def lookup(self, problem_ids: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
        """{problem_id: (trace texts, unit vectors (k, dim))}; ids with no trace are absent."""
        ids = sorted(set(problem_ids))
        if not ids:
            return {}
        quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in ids)
        rows = (
            self._tbl.search()
            .where(f"problem_id IN ({quoted})")
            .select(["problem_id", "trace_id", "text", "vector"])
            .limit(None)
            .to_arrow()
        )
        pids = rows.column("problem_id").to_pylist()
        tids = rows.column("trace_id").to_pylist()
        texts = rows.column("text").to_pylist()
        vecs = vectors_of(rows.column("vector"))
        grouped: dict[str, list[int]] = {}
        for i in sorted(range(len(tids)), key=tids.__getitem__):  # stable order for a tag
            grouped.setdefault(pids[i], []).append(i)
        return {p: ([texts[i] for i in idx], vecs[idx]) for p, idx in grouped.items()}
