"""Versions of the teacher-trace table and the pin that decides which one training reads.

Every index stage tags the table version it wrote with its stage key. Training normally reads
the tag of the index stage in its own plan. `oger index restore TAG` pins an older tag instead:
the pin (`<workdir>/index/pinned.json`) replaces the index key in the train stage's key and the
train stage reads the table at the pinned tag, so caching stays exact. Restoring also makes that
version the table's latest (LanceDB `restore`), so rows appended by later rounds build on it;
tagged versions themselves never change. `oger index unpin` goes back to following the plan.

Nothing here imports the index stage's code (or LanceDB at the top), so `oger status`, `oger gc` and
the train stage's plan read the versions cheaply. Other modules read them through
`oger.stages.index.files`; only `oger index restore|unpin` calls the writers here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from oger.contract import artifact_manifest, atomic_write, load_complete
from oger.contract.errors import ConfigError, StageError

PIN_FILE = "pinned.json"


def db_path(workdir: Path) -> Path:
    """The workdir's LanceDB folder: the teacher-trace table with its tags, and the embedding caches."""
    return Path(workdir) / "index" / "lancedb"


def open_committed(db, name: str):
    """The table, or None when it does not exist yet or a killed `create_table` left only data
    files and no committed version (LanceDB lists such a folder but cannot open it; nothing in
    it was ever visible, so the next write creates the table over it)."""
    if name not in db.list_tables().tables:
        return None
    try:
        return db.open_table(name)
    except ValueError:
        if any((Path(db.uri) / f"{name}.lance" / "_versions").glob("*.manifest")):
            raise  # a committed table that fails to open is not ours to replace
        return None


def pin_path(workdir: Path) -> Path:
    return db_path(workdir).parent / PIN_FILE


def _read_pins(workdir: Path) -> dict:
    path = pin_path(workdir)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); delete it to unpin") from None


def read_pin(workdir: Path, table: str) -> dict | None:
    """{"table", "tag", "version", "pinned_at"} when training is pinned to a tag of `table`."""
    return _read_pins(workdir).get(table)


def _write_pins(workdir: Path, pins: dict) -> None:
    path = pin_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not pins:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(pins, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def open_table(workdir: Path, table: str):
    """The workdir's table of teacher traces (at its latest version); a StageError when there is none."""
    import lancedb

    path = db_path(workdir)
    if not path.is_dir():
        raise StageError(f"no index in {workdir} yet (run the pipeline up to the index stage)")
    tbl = open_committed(lancedb.connect(str(path)), table)
    if tbl is None:
        raise StageError(f"{path}: no table {table!r} (index.table)")
    return tbl


def list_versions(workdir: Path, table: str) -> list[dict]:
    """One row per tag, oldest version first: tag, version, rows at that version, the rounds its
    index stage added, when it was written, and whether training reads it."""
    tbl = open_table(workdir, table)
    pin = read_pin(workdir, table)
    rows = []
    for tag, info in tbl.tags.list().items():
        version = info["version"]
        manifest = artifact_manifest(workdir, "index", tag) or {}
        metrics = manifest.get("metrics", {})
        tbl.checkout(version)
        rows.append(
            {
                "tag": tag,
                "version": version,
                "rows": tbl.count_rows(),
                "rounds": metrics.get("rounds", []),
                "created_at": manifest.get("created_at"),
                "pinned": bool(pin and pin["tag"] == tag),
            }
        )
    tbl.checkout_latest()
    return sorted(rows, key=lambda r: r["version"])


def resolve_tag(workdir: Path, table: str, tag: str) -> str:
    """A full tag from a tag or a unique prefix of at least 8 characters (status shows 16)."""
    tags = list(open_table(workdir, table).tags.list())
    if tag in tags:
        return tag
    hits = [t for t in tags if len(tag) >= 8 and t.startswith(tag)]
    if len(hits) == 1:
        return hits[0]
    what = "matches several tags" if hits else "is not a tag"
    raise ConfigError(
        f"index tag {tag!r} {what} of table {table!r} in {db_path(workdir)}; `oger index list CONFIG` shows the tags"
    )


def restore(workdir: Path, table: str, tag: str) -> dict:
    """Pin training to `tag` and make its version the table's latest; returns the pin."""
    tag = resolve_tag(workdir, table, tag)
    if load_complete(workdir, "index", tag) is None:
        raise StageError(
            f"tag {tag[:16]} has no complete index artifact in {workdir}/artifacts/index "
            f"(it was deleted); restore another tag"
        )
    tbl = open_table(workdir, table)
    version = tbl.tags.get_version(tag)
    tbl.checkout(version)
    tbl.restore()
    pin = {
        "table": table,
        "tag": tag,
        "version": version,
        "restored_as_version": tbl.version,
        "pinned_at": datetime.now(timezone.utc).isoformat(),
    }
    pins = _read_pins(workdir)
    pins[table] = pin
    _write_pins(workdir, pins)
    return pin


def unpin(workdir: Path, table: str) -> dict | None:
    """Training follows the index stage again; returns the pin that was removed, if any."""
    pins = _read_pins(workdir)
    old = pins.pop(table, None)
    _write_pins(workdir, pins)
    return old


def training_tag(workdir: Path, table: str, planned: str) -> str:
    """The index tag the train stage reads: the pinned one, else the index stage's key."""
    pin = read_pin(workdir, table)
    return pin["tag"] if pin else planned
