"""The index artifact's file and its reader: the only place its name is spelled.

The artifact is a pointer: `index.json` names the LanceDB folder, the table and the tag (the
index stage's key) of the table version it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from oger.contract.artifacts import ArtifactRef, artifact_path
from oger.contract.errors import StageError

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
