"""The stage DAG without Prefect: keys for every stage from the config alone, cache checks,
running one stage, stage selection (--only/--from/--until) and the run record.

`flows/pipeline.py` wraps `run_stage` in one Prefect task per stage; tests and scripts can call
it directly.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oger import filter as filter_stage
from oger import index as index_stage
from oger import index_versions, rounds
from oger import policy as policy_stage
from oger import problems as problems_stage
from oger import teachers as teachers_stage
from oger import train as train_stage
from oger.evaluate import stage as evaluate_stage
from oger.artifacts import ArtifactRef, artifact_dir, load_complete, stage_key
from oger.config import OgerConfig
from oger.errors import ConfigError, StageError

STAGES = ["problems", "teachers", "filter", "index", "policy", "train", "evaluate"]
UPSTREAM = {"problems": [], "teachers": ["problems"], "filter": ["problems", "teachers"],
            "index": ["filter"], "policy": ["problems", "filter"],
            "train": ["problems", "policy", "index"], "evaluate": ["problems", "policy", "train"]}
_MODULES = {"problems": problems_stage, "teachers": teachers_stage, "filter": filter_stage,
            "index": index_stage, "policy": policy_stage, "train": train_stage,
            "evaluate": evaluate_stage}


@dataclass
class StagePlan:
    """Everything that determines a stage's output, known before anything runs."""

    name: str
    key: str
    config_slice: Any
    identity: dict
    upstream: dict[str, str] = field(default_factory=dict)

    def path(self, workdir: Path) -> Path:
        return artifact_dir(workdir, self.name, self.key)


def _section(cfg: OgerConfig, name: str):
    """The config a stage's key_inputs reads (train needs several sections)."""
    return {"problems": cfg.problems, "teachers": cfg.teachers, "filter": cfg.filter,
            "index": cfg.index, "policy": cfg.policy, "train": cfg, "evaluate": cfg}[name]


def plan(cfg: OgerConfig) -> dict[str, StagePlan]:
    """Keys of all stages in order; each folds in its upstream keys (DESIGN §3)."""
    plans: dict[str, StagePlan] = {}
    for name in STAGES:
        mod = _MODULES[name]
        slice_, identity = mod.key_inputs(_section(cfg, name))
        upstream = {u: plans[u].key for u in UPSTREAM[name]}
        if name == "train":
            upstream = _train_upstream(cfg, upstream, plans["policy"].config_slice)
        key = stage_key(name, mod.STAGE_VERSION, slice_, upstream, identity)
        plans[name] = StagePlan(name, key, slice_, identity, upstream)
    return plans


def _train_upstream(cfg: OgerConfig, upstream: dict[str, str], policy_slice) -> dict[str, str]:
    """The train stage reads the pinned index tag when there is one (`oger index restore`), and
    with `train.init_from: previous_round` starts from an earlier round's checkpoint: both are
    inputs, so both go into its key."""
    wd = cfg.workdir_path
    out = {**upstream, "index": index_versions.training_tag(wd, cfg.index.table, upstream["index"])}
    if cfg.train.init_from == "previous_round":
        prev = rounds.previous_checkpoint(wd, cfg.teachers.round, policy_slice)
        if prev is not None:
            out["init"] = prev["key"]
    return out


def cached_ref(cfg: OgerConfig, p: StagePlan) -> ArtifactRef | None:
    """The complete artifact for this plan, if any (the index also needs its LanceDB tag)."""
    ref = load_complete(cfg.workdir_path, p.name, p.key)
    if ref is not None and p.name == "index":
        if not index_stage.tag_exists(cfg.workdir_path, cfg.index.table, p.key):
            return None
    return ref


def run_stage(cfg: OgerConfig, p: StagePlan, upstream_refs: dict[str, ArtifactRef],
              refresh: bool = False, fan_out=None) -> ArtifactRef:
    """Return the cached artifact, or compute it (atomically) from the upstream artifacts.

    `fan_out` (`oger.fanout`) runs the shards of fan-out stages (teachers, evaluate); default: in process."""
    if not refresh:
        ref = cached_ref(cfg, p)
        if ref is not None:
            return ref
    wd = cfg.workdir_path
    args = (wd, p.key, p.config_slice, p.identity)
    if p.name == "problems":
        return problems_stage.run_problems(cfg.problems, *args)
    if p.name == "teachers":
        return teachers_stage.run_teachers(cfg.teachers, *args, upstream_refs["problems"],
                                           refresh=refresh, fan_out=fan_out)
    if p.name == "filter":
        return filter_stage.run_filter(cfg.filter, *args, upstream_refs["problems"],
                                       upstream_refs["teachers"])
    if p.name == "index":
        return index_stage.run_index(cfg.index, *args, upstream_refs["filter"])
    if p.name == "policy":
        return policy_stage.run_policy(cfg.policy, *args, upstream_refs["problems"],
                                       upstream_refs["filter"])
    if p.name == "train":
        index_ref = upstream_refs["index"]
        if index_ref.key != p.upstream["index"]:  # pinned by `oger index restore`
            index_ref = index_versions.index_ref(wd, p.upstream["index"])
        init_ref = None
        if "init" in p.upstream:
            init_ref = load_complete(wd, "train", p.upstream["init"])
            if init_ref is None:
                raise StageError(f"train.init_from=previous_round: checkpoint "
                                 f"{p.upstream['init'][:16]} disappeared from {wd}/artifacts/train")
        return train_stage.run_train(cfg, *args, upstream_refs["problems"], upstream_refs["policy"],
                                     index_ref, refresh=refresh, init_ref=init_ref)
    if p.name == "evaluate":
        return evaluate_stage.run_evaluate(cfg, *args, upstream_refs["problems"], upstream_refs["policy"],
                                           upstream_refs["train"], refresh=refresh, fan_out=fan_out)
    raise ValueError(p.name)


def _parse_stage_list(value: str | list[str] | None, option: str) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [x for v in value for x in v.split(",")]
    items = [x.strip() for x in items if x.strip()]
    bad = [x for x in items if x not in STAGES]
    if bad:
        raise ConfigError(f"{option}: unknown stage(s) {bad}; stages are {STAGES}")
    return items


def select_stages(only=None, from_stage: str | None = None, until: str | None = None) -> list[str]:
    """The stages a run executes, in DAG order."""
    only_l = _parse_stage_list(only, "--only")
    start = _parse_stage_list(from_stage, "--from")
    end = _parse_stage_list(until, "--until")
    lo = STAGES.index(start[0]) if start else 0
    hi = STAGES.index(end[0]) if end else len(STAGES) - 1
    if lo > hi:
        raise ConfigError(f"--from {STAGES[lo]} comes after --until {STAGES[hi]}")
    chosen = STAGES[lo:hi + 1]
    if only_l:
        chosen = [s for s in chosen if s in only_l]
    if not chosen:
        raise ConfigError("the stage selection is empty")
    return chosen


def required_upstream(selected: list[str]) -> list[str]:
    """Stages not selected whose artifacts the selected ones read (must already be cached)."""
    need: list[str] = []
    for s in selected:
        for u in UPSTREAM[s]:
            if u not in selected and u not in need:
                need.append(u)
    # transitive: an upstream of an upstream is only needed through its key, not its files
    return need


def load_upstream(cfg: OgerConfig, plans: dict[str, StagePlan], names: list[str]) -> dict[str, ArtifactRef]:
    refs = {}
    for u in names:
        ref = cached_ref(cfg, plans[u])
        if ref is None:
            raise StageError(f"stage {u!r} is needed by the selected stages but has no cached "
                             f"artifact for key {plans[u].key[:16]}; run it first "
                             f"(e.g. `oger run CONFIG --until {u}`)")
        refs[u] = ref
    return refs


# --------------------------------------------------------------------------- run record


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunRecord:
    """`<workdir>/runs/<run-id>/summary.json`, rewritten atomically after every stage."""

    def __init__(self, cfg: OgerConfig, run_id: str | None = None, overrides=None):
        self.run_id = run_id or new_run_id()
        self.dir = cfg.workdir_path / "runs" / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "run_id": self.run_id,
            "config": cfg.source_file,
            "config_name": cfg.name,
            "overrides": list(overrides or []),
            "workdir": str(cfg.workdir_path),
            "round": cfg.teachers.round,
            "status": "running",
            "started_at": datetime.now(timezone.utc).isoformat(),
            "stages": {},
        }
        self.write()

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    def add(self, name: str, ref: ArtifactRef, cached: bool, seconds: float) -> None:
        self.data["stages"][name] = {"key": ref.key, "cached": cached, "seconds": round(seconds, 3),
                                     "path": ref.path, "metrics": ref.metrics}
        if name == "evaluate":  # the headline numbers, one entry per benchmark
            self.data["evaluate"] = {b: {"base": m["base"], "trained": m["trained"], "n": m["n"]}
                                     for b, m in ref.metrics.items() if "k" in m}
        self.write()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["finished_at"] = datetime.now(timezone.utc).isoformat()
        if error:
            self.data["error"] = error
        self.write()

    def write(self) -> None:
        tmp = self.summary_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.summary_path)


def status_rows(cfg: OgerConfig) -> list[dict]:
    """Per stage: key, cached or stale, artifact path, metrics (no model is loaded)."""
    rows = []
    for name, p in plan(cfg).items():
        ref = cached_ref(cfg, p)
        rows.append({"stage": name, "key": p.key, "state": "cached" if ref else "stale",
                     "path": str(p.path(cfg.workdir_path)), "metrics": ref.metrics if ref else {}})
    return rows


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def run_local(cfg: OgerConfig, until: str = STAGES[-1]) -> dict[str, ArtifactRef]:
    """Run every stage up to `until` in this process, without Prefect (scripts, tests, benches)."""
    plans, refs = plan(cfg), {}
    for name in STAGES[:STAGES.index(until) + 1]:
        refs[name] = run_stage(cfg, plans[name], refs)
    return refs
