"""The stage contract: content-addressed keys and atomic, manifest-validated artifact directories.

A stage's key hashes everything that changes its output (DESIGN §3); its output lives in
`<workdir>/artifacts/<stage>/<key16>/`, built in a temp dir and renamed into place only after
`manifest.json` is written, so a crash can never leave something that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel

MANIFEST = "manifest.json"
_TRACKED_PACKAGES = (
    "oger",
    "torch",
    "transformers",
    "sentence-transformers",
    "lancedb",
    "polars",
    "math-verify",
    "prefect",
)


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, pydantic models dumped to plain data."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(
    stage: str, version: int, config_slice: Any, upstream: dict[str, str], identity: dict[str, Any] | None = None
) -> str:
    """sha256 over stage name, STAGE_VERSION, config slice, upstream keys and model identity."""
    payload = canonical_json(
        {
            "stage": stage,
            "version": version,
            "config": config_slice,
            "upstream": dict(sorted(upstream.items())),
            "identity": identity or {},
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ArtifactRef(BaseModel):
    """The small, serialisable handle a stage returns (and Prefect persists)."""

    stage: str
    key: str
    path: str
    metrics: dict[str, Any] = {}

    @property
    def dir(self) -> Path:
        return Path(self.path)


def artifact_path(ref: ArtifactRef | str | Path) -> Path:
    """The folder of an artifact given as its `ArtifactRef` or as its path (a summary.json's
    "path"): what every stage's readers take."""
    return ref.dir if isinstance(ref, ArtifactRef) else Path(ref)


def read_table(ref: ArtifactRef | str | Path, name: str, schema: dict, columns: list[str] | None = None):
    """The parquet file `name` of an artifact as a polars DataFrame, after checking that it has the
    columns of `schema` (all of them, or only `columns`, which are the ones read) with their types.

    The readers in each stage's `files` module call this: a table some other stage wrote is read
    through its owner's reader, which names what it expects."""
    import polars as pl

    from oger.contract.errors import StageError

    path = artifact_path(ref) / name
    want = {c: schema[c] for c in (columns or schema)}
    try:
        df = pl.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise StageError(f"{path}: no such file; the artifact is incomplete (rerun its stage with --refresh)") from None
    missing = [c for c in want if c not in df.columns]
    wrong = [f"{c} is {df.schema[c]}, expected {t}" for c, t in want.items() if c in df.columns and df.schema[c] != t]
    if missing or wrong:
        raise StageError(f"{path}: " + "; ".join(([f"missing columns {missing}"] if missing else []) + wrong))
    return df


def stage_root(workdir: Path, stage: str) -> Path:
    """`<workdir>/artifacts/<stage>/`: every artifact of one stage, one folder per key."""
    return Path(workdir) / "artifacts" / stage


def artifact_dir(workdir: Path, stage: str, key: str) -> Path:
    return stage_root(workdir, stage) / key[:16]


def cache_root(workdir: Path, stage: str) -> Path:
    """`<workdir>/cache/<stage>/`: a stage's resumable work outside its artifacts."""
    return Path(workdir) / "cache" / stage


def cache_dir(workdir: Path, stage: str, key: str) -> Path:
    """`<workdir>/cache/<stage>/<key16>/`: resumable work of one key (train checkpoints)."""
    return cache_root(workdir, stage) / key[:16]


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a temp sibling of `path` (a file or a folder), which is renamed onto
    `path` only when `write` returns: a reader, or a crash, never sees half of it.

    The one temp-then-rename in the code base besides `write_artifact` (which adds the manifest).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        write(tmp)
        if tmp.is_dir():
            _swap_into_place(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def load_complete(workdir: Path, stage: str, key: str) -> ArtifactRef | None:
    """The artifact for this key if its manifest is complete and every listed file exists."""
    path = artifact_dir(workdir, stage, key)
    manifest = read_manifest(path)
    if not manifest or manifest.get("key") != key or manifest.get("stage") != stage:
        return None
    if not manifest.get("complete"):
        return None
    for rel in manifest.get("files", []):
        if not (path / rel).exists():
            return None
    return ArtifactRef(stage=stage, key=key, path=str(path), metrics=manifest.get("metrics", {}))


def package_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class StageOutput:
    """A stage's in-progress output directory and the manifest fields it accumulates."""

    stage: str
    key: str
    tmp: Path
    final: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(stage_root: Path) -> None:
    """Remove temp dirs left by processes that died mid-stage (never those of live processes)."""
    if not stage_root.is_dir():
        return
    for p in stage_root.glob(".tmp-*"):
        try:
            pid = int(p.name.split("-")[2])
        except (IndexError, ValueError):
            pid = -1
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def write_artifact(
    workdir: Path, stage: str, key: str, *, config_slice: Any, upstream: dict[str, str], identity: dict | None = None
) -> Iterator[StageOutput]:
    """Yield a temp dir to fill; on success write the manifest and rename it into place.

    On any exception the temp dir is removed and the previous artifact (if any) is untouched.
    """
    final = artifact_dir(workdir, stage, key)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root)
    tmp = root / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    out = StageOutput(stage=stage, key=key, tmp=tmp, final=final)
    started = time.time()
    try:
        yield out
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "key": key,
            "stage": stage,
            "complete": True,
            "inputs": upstream,
            "config": json.loads(canonical_json(config_slice)),
            "identity": identity or {},
            "packages": package_versions(),
            "metrics": out.metrics,
            "wall_seconds": round(time.time() - started, 3),
            "created_at": datetime.now(timezone.utc).isoformat(),
            "files": files,
            **out.extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final (a --refresh) is moved aside first, then deleted."""
    if final.is_file():
        final.unlink()
    if final.exists():
        trash = final.parent / f".tmp-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def file_fingerprint(path: Path) -> str:
    """Content identity of a file: full sha256 for small files, size + head/tail hash for big ones."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= 64 * 1024 * 1024:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
            h.update(str(size).encode())
    return h.hexdigest()[:32]


def dir_fingerprint(path: Path) -> str:
    """Identity of a model folder: names, sizes and head/tail hashes of its files."""
    path = Path(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and ".cache" not in p.parts and not p.name.endswith(".pyc"):
            h.update(str(p.relative_to(path)).encode())
            h.update(str(p.stat().st_size).encode())
            h.update(file_fingerprint(p).encode() if p.stat().st_size > 4096 else p.read_bytes())
    return h.hexdigest()[:32]


class SummaryRecord:
    """A run's `summary.json` (`self.data` under `self.dir`), rewritten whole after every change so a
    reader never sees half a file; `finish` stamps the end state. Runs and sweeps both keep one."""

    dir: Path
    data: dict

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["finished_at"] = datetime.now(timezone.utc).isoformat()
        if error:
            self.data["error"] = error
        self.write()

    def write(self) -> None:
        text = json.dumps(self.data, indent=2, default=str)
        atomic_write(self.summary_path, lambda tmp: tmp.write_text(text))
