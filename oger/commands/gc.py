"""`oger gc CONFIG [--keep-rounds N] [--keep-runs M] [--dry-run]`: bounded disk for a workdir that
runs every night.

What is kept is computed from the records, never from names or dates alone:
- roots: the artifacts named by the latest completed run of each of the last N rounds (rounds in
  the order of their first run), by the last M run folders, by every sweep's record, and the index
  artifact of a pinned tag;
- the closure of the roots over the manifests' `inputs` (a train artifact keeps its policy, index and
  problems; an index keeps its filter; ...), and the checkpoint a kept train stage continued from
  (`init`, one level: it is in that stage's key) with the policy artifact it was trained from.
Everything else goes: artifact folders, the stage caches of removed artifacts (a removed teachers
artifact's per-teacher trace files, a removed model's evaluation results), the resumable checkpoints
of finished train stages (unless `--keep-checkpoints`; an unfinished train stage's checkpoints are
its resumable work and stay), run folders beyond the kept ones (their summary.json moves to
`runs/archive/`, so `oger rounds` still lists every round), LanceDB tags of removed index artifacts;
then the LanceDB tables are compacted and their untagged old versions cleaned (every kept tag is
checked readable afterwards).

A kill at any point leaves a workdir the next `oger gc` and the next run both handle: every
removal first renames the folder to `<parent>/.gc-trash-<name>` (one atomic rename: a folder is
either where it was, whole, or in the trash), and the trash is emptied at the start of each gc.
It takes the workdir lock, like a run.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from oger import contract
from oger.contract.artifacts import cache_root, read_manifest, stage_root
from oger.rounds import latest_completed, round_order, run_summaries
from oger.stages.evaluate import STAGE as EVALUATE
from oger.stages.index import STAGE as INDEX
from oger.stages.policy import STAGE as POLICY
from oger.stages.teachers import STAGE as TEACHERS
from oger.stages.train import STAGE as TRAIN

TRASH = ".gc-trash-"
# Inputs that name an artifact of a round before: `init` (train.init_from: previous_round) is part of
# the kept train stage's key, so its artifact stays, but what *it* was built from does not (else every
# round would keep every earlier one).
# The policy it was trained from stays too: `init_from` checks the checkpoint's recipe against it.
LINEAGE = {"init": (TRAIN, (POLICY,))}
MODELS = (POLICY, TRAIN)  # stages whose artifacts are models (evaluation results are cached per model)


@dataclass
class Plan:
    remove: list[tuple[str, Path]] = field(default_factory=list)  # (what, path)
    archive: list[Path] = field(default_factory=list)  # run folders whose summary.json moves to runs/archive
    keep_artifacts: set[tuple[str, str]] = field(default_factory=set)  # (stage, full key)
    drop_tags: list[str] = field(default_factory=list)
    kept_rounds: list[str] = field(default_factory=list)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _artifacts(workdir: Path) -> dict[tuple[str, str], tuple[Path, dict | None]]:
    """Every artifact folder (complete or not): (stage, key) -> (folder, manifest)."""
    out = {}
    for stage in contract.REGISTRY:
        for d in sorted(stage_root(workdir, stage).glob("*")):
            if d.name.startswith("."):
                continue
            m = read_manifest(d)
            out[(stage, (m or {}).get("key", d.name))] = (d, m)
    return out


def _stage_keys(summary: dict) -> set[tuple[str, str]]:
    return {(s, e["key"]) for s, e in summary.get("stages", {}).items() if e.get("key")}


def plan_gc(workdir: Path, table: str, keep_rounds: int, keep_runs: int, keep_checkpoints: bool = False) -> Plan:
    workdir = Path(workdir)
    plan = Plan()
    runs = run_summaries(workdir)
    rounds = round_order(runs)
    plan.kept_rounds = rounds[-keep_rounds:] if keep_rounds > 0 else []
    roots: set[tuple[str, str]] = set()
    for r in plan.kept_rounds:
        latest = latest_completed(runs, r)
        if latest:
            roots |= _stage_keys(latest)
    by_start = sorted((d for d in runs if not d.get("archived")), key=lambda d: str(d.get("started_at")))
    kept_runs = by_start[-keep_runs:] if keep_runs > 0 else []
    kept_run_ids = {d.get("run_id") for d in kept_runs}
    for d in kept_runs:
        roots |= _stage_keys(d)
    for f in (workdir / "sweeps").glob("*/summary.json"):
        try:
            sweep = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for pair in sweep.get("pairs", []):
            roots |= _stage_keys(pair)
        for stage, entries in sweep.get("upstream", {}).items():
            roots |= {(stage, e["key"]) for e in entries if e.get("key")}
    from oger.stages.index.files import read_pin

    pin = read_pin(workdir, table)
    if pin:
        roots.add((INDEX, pin["tag"]))
    arts = _artifacts(workdir)
    keep, visited, todo = set(), set(), list(roots)
    while todo:  # the closure over the manifests' inputs
        stage, key = todo.pop()
        if (stage, key) in visited:  # (kept as lineage is not visited: a root's inputs are still walked)
            continue
        visited.add((stage, key))
        keep.add((stage, key))
        m = arts.get((stage, key), (None, None))[1] or {}
        for name, k in m.get("inputs", {}).items():
            if name in LINEAGE:  # the checkpoint a kept train stage continued from: kept, not its past
                stage_of, needed = LINEAGE[name]
                keep.add((stage_of, k))
                init = arts.get((stage_of, k), (None, None))[1] or {}
                keep |= {(s2, k2) for s2, k2 in init.get("inputs", {}).items() if s2 in needed}
            elif isinstance(k, str):
                todo.append((name, k))
    plan.keep_artifacts = keep
    removed_teacher_files, kept_teacher_files = set(), set()
    for (stage, key), (folder, m) in arts.items():
        files = (
            {
                t.get("cache_file")
                for t in ((m or {}).get("metrics", {}).get("per_teacher") or {}).values()
                if isinstance(t, dict) and t.get("cache_file")
            }
            if stage == TEACHERS
            else set()
        )
        if (stage, key) in keep:
            kept_teacher_files |= files
        else:
            plan.remove.append((f"artifact {stage}", folder))
            removed_teacher_files |= files
    for name in sorted(removed_teacher_files - kept_teacher_files):
        plan.remove.append(("cache teachers", cache_root(workdir, TEACHERS) / name))
    finished_train = {k for (s, k), (_, m) in arts.items() if s == TRAIN and (m or {}).get("complete")}
    kept_models = {k[:16] for s, k in keep if s in MODELS}
    for d in sorted(cache_root(workdir, TRAIN).glob("*")):
        done = any(k.startswith(d.name) for k in finished_train)
        kept = any(k.startswith(d.name) for s, k in keep if s == TRAIN)
        if done and (not kept or not keep_checkpoints):  # finished: its checkpoints are no longer needed
            plan.remove.append(("cache train (finished)", d))
    for d in sorted(cache_root(workdir, EVALUATE).glob("*")):
        known = any(k.startswith(d.name) for (s, k) in arts if s in MODELS)
        if known and d.name not in kept_models:  # results of a model that is being removed
            plan.remove.append(("cache evaluate", d))
    for d in by_start:
        if d.get("run_id") not in kept_run_ids and d.get("status") != "running":
            plan.archive.append(Path(d["summary"]).parent)
    plan.drop_tags = _tags_to_drop(workdir, table, {k for s, k in keep if s == INDEX})
    plan.remove = [(w, p) for w, p in plan.remove if p.exists()]
    return plan


def _tags_to_drop(workdir: Path, table: str, kept_index_keys: set[str]) -> list[str]:
    from oger.contract.errors import StageError
    from oger.stages.index.files import open_table

    try:
        tbl = open_table(workdir, table)
    except StageError:
        return []
    return sorted(t for t in tbl.tags.list() if t not in kept_index_keys)


def _trash(path: Path) -> None:
    """Rename into the parent's trash (atomic), then delete: a kill leaves it whole or in the trash."""
    target = path.parent / f"{TRASH}{path.name}"
    if target.exists():
        _rm(target)
    os.replace(path, target)
    _rm(target)


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def empty_trash(workdir: Path) -> int:
    """Finish the removals a killed gc left in the trash; the bytes freed."""
    freed = 0
    for p in list(Path(workdir).rglob(f"{TRASH}*")):
        if p.exists():
            freed += size_of(p)
            _rm(p)
    return freed


def lancedb_compact(workdir: Path, table: str, drop_tags: list[str]) -> dict:
    """Drop the tags of removed index artifacts, compact every table and clean the versions no tag
    holds; then check every kept tag still reads. Returns versions before/after and freed bytes."""

    import lancedb

    from oger.stages.index.files import db_path

    path = db_path(workdir)
    if not path.is_dir():
        return {"versions_before": 0, "versions_after": 0, "freed": 0}
    db = lancedb.connect(str(path))
    before = size_of(path)
    versions_before = versions_after = 0
    for name in db.list_tables().tables:
        tbl = db.open_table(name)
        versions_before += len(tbl.list_versions())
        if name == table:
            for t in drop_tags:
                tbl.tags.delete(t)
        tbl.optimize(cleanup_older_than=_older_than_every_tag(tbl), delete_unverified=True)
        versions_after += len(tbl.list_versions())
        for info in tbl.tags.list().values():  # every kept tag still reads
            tbl.checkout(info["version"])
            tbl.count_rows()
        tbl.checkout_latest()
    return {
        "versions_before": versions_before,
        "versions_after": versions_after,
        "freed": max(0, before - size_of(path)),
    }


def _older_than_every_tag(tbl):
    """The age beyond which versions may go: older than the oldest tagged version (Lance refuses a
    cleanup that would reach a tagged version), so the untagged versions before every kept tag are
    cleaned and those between kept tags stay (a few per round: bounded by keep_rounds)."""
    from datetime import datetime, timedelta

    tagged = {info["version"] for info in tbl.tags.list().values()}
    stamps = [v["timestamp"] for v in tbl.list_versions() if v["version"] in tagged]
    if not stamps:
        return timedelta(0)
    oldest = min(stamps)
    now = datetime.now(oldest.tzinfo)
    return max(timedelta(0), now - oldest + timedelta(seconds=1))


def run_gc(
    workdir: Path, table: str, keep_rounds: int, keep_runs: int, keep_checkpoints: bool = False, dry_run: bool = False
) -> dict:
    """Plan, then (unless dry_run) remove; returns {"rows": [(what, path, bytes)], "freed", ...}."""
    workdir = Path(workdir)
    trash = 0 if dry_run else empty_trash(workdir)
    plan = plan_gc(workdir, table, keep_rounds, keep_runs, keep_checkpoints)
    rows = [(what, str(p), size_of(p)) for what, p in plan.remove]
    rows += [("run folder (summary archived)", str(p), size_of(p)) for p in plan.archive]
    out = {
        "rows": rows,
        "kept_rounds": plan.kept_rounds,
        "dropped_tags": plan.drop_tags,
        "kept_artifacts": len(plan.keep_artifacts),
        "dry_run": dry_run,
    }
    if dry_run:
        out["freed"] = sum(r[2] for r in rows)
        return out
    for _, p in plan.remove:
        _trash(p)
    archive = workdir / "runs" / "archive"
    for p in plan.archive:
        archive.mkdir(parents=True, exist_ok=True)
        summary = p / "summary.json"
        if summary.is_file():
            dest = archive / f"{p.name}.json"
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(summary, tmp)
            os.replace(tmp, dest)  # the record is in the archive before the folder goes
        _trash(p)
    out["lancedb"] = lancedb_compact(workdir, table, plan.drop_tags)
    out["freed"] = sum(r[2] for r in rows) + trash + out["lancedb"]["freed"]
    return out


def cmd_gc(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from oger.contract.config import load_config
    from oger.contract.lock import workdir_lock

    cfg = load_config(args.config, args.overrides)
    r = cfg.retention
    keep_rounds = r.keep_rounds if args.keep_rounds is None else args.keep_rounds
    keep_runs = r.keep_runs if args.keep_runs is None else args.keep_runs
    with workdir_lock(cfg.workdir_path, "gc", cfg.lock_timeout_s, say=print):
        out = run_gc(cfg.workdir_path, cfg.index.table, keep_rounds, keep_runs, r.keep_checkpoints, args.dry_run)
    t = Table(
        title=f"oger gc{' --dry-run (nothing removed)' if args.dry_run else ''}: keeping rounds "
        f"{out['kept_rounds']} and the last {keep_runs} runs"
    )
    for col in ("removes", "path", "MB"):
        t.add_column(col, overflow="fold")
    for what, path, size in out["rows"]:
        t.add_row(what, path, f"{size / 1e6:.2f}")
    Console().print(t)
    if out["dropped_tags"]:
        print(f"index tags dropped: {', '.join(x[:16] for x in out['dropped_tags'])}")
    if "lancedb" in out:
        lb = out["lancedb"]
        print(f"LanceDB: {lb['versions_before']} versions -> {lb['versions_after']} after compaction")
    print(f"{'would free' if args.dry_run else 'freed'} {out['freed'] / 1e6:.1f} MB")
    return 0
