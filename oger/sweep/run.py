"""Planning and running a sweep (arms x seeds) over the cached DAG, with or without Prefect.

Every (arm, seed) gets its own config and `pipeline.plan`; the stages that are not `per_pair` are
collected by key, so each distinct upstream artifact is computed once (normally one per stage: arms
change only train options) in DAG order; then the per-pair stages (train, evaluate) run as one
fan-out job per (arm, seed). Both go through `pipeline.execute`, the loop every run uses. Each pair
is an ordinary cached artifact, so adding a seed computes only the new pairs
and a killed sweep resumes (train from its last checkpoint). `flows/sweep.py` passes Prefect hooks:
a task per upstream stage and `flows.fanout.prefect_fan_out` (thread runner or Ray).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oger import contract, pipeline, tracking
from oger.contract.artifacts import ArtifactRef, SummaryRecord, canonical_json
from oger.contract.config import OgerConfig, SweepConfig, load_config
from oger.contract.errors import ConfigError
from oger.contract.fanout import FanOut, Job, run_in_process
from oger.sweep.arms import Arm, pair_config, parse_list, parse_seeds, resolve_arms


def pair_stages() -> list[str]:
    """The stages run once per (arm, seed): those marked `per_pair`, which must end the DAG (a
    shared stage cannot read one pair's artifact)."""
    names = [s for s in pipeline.STAGES if contract.get(s).per_pair]
    if names != pipeline.STAGES[len(pipeline.STAGES) - len(names) :]:
        raise ConfigError(f"per-pair stages {names} must come last in the DAG {pipeline.STAGES}")
    return names


def upstream_stages() -> list[str]:
    """The stages shared by every pair with the same key (computed once each)."""
    return [s for s in pipeline.STAGES if s not in pair_stages()]


@dataclass
class Pair:
    arm: str
    seed: int
    cfg: OgerConfig
    plans: dict[str, pipeline.StagePlan]

    @property
    def name(self) -> str:
        return f"{self.arm}-s{self.seed}"


@dataclass
class SweepPlan:
    sweep_id: str
    config: str
    overrides: list[str]
    arms: list[Arm]
    seeds: list[int]
    baseline: str
    settings: SweepConfig
    base: OgerConfig
    pairs: list[Pair]
    # (stage, key) -> the config and plans of the first pair that needs it, in DAG order
    upstream: dict[tuple[str, str], tuple[OgerConfig, dict[str, pipeline.StagePlan]]] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.base.workdir_path / "sweeps" / self.sweep_id


def default_sweep_id(base: OgerConfig, overrides: list[str], arms: list[Arm], seeds: list[int]) -> str:
    """`<config name>-<hash8>` of what the sweep runs: rerunning the same sweep (after a kill)
    writes the same folder; a different arm or seed list, a new one."""
    h = hashlib.sha256(
        canonical_json({"overrides": overrides, "seeds": seeds, "arms": {a.name: a.overrides for a in arms}}).encode()
    )
    return f"{base.name}-{h.hexdigest()[:8]}"


def prepare(
    config: str,
    arms=None,
    seeds=None,
    overrides: list[str] | None = None,
    baseline: str | None = None,
    sweep_id: str | None = None,
) -> SweepPlan:
    """Resolve arms and seeds, load and validate every pair's config and plan every stage. Nothing
    runs; a bad arm or seed fails here, naming it."""
    overrides = list(overrides or [])
    base = load_config(config, overrides)
    s = base.sweep
    arm_names = parse_list(arms, "--arms") or list(s.default_arms)
    seed_list = parse_seeds(seeds) or list(s.seeds)
    resolved = resolve_arms(arm_names, s)
    chosen = baseline or s.baseline
    if baseline and baseline not in arm_names:
        raise ConfigError(f"--baseline {baseline!r} is not one of the sweep's arms {arm_names}")
    if chosen not in arm_names:
        chosen = arm_names[0]
    if sweep_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", sweep_id):
        raise ConfigError(f"--id {sweep_id!r}: use letters, digits, '-', '_', '.'")
    sweep_id = sweep_id or default_sweep_id(base, overrides, resolved, seed_list)
    pairs = []
    for arm in resolved:
        for seed in seed_list:
            cfg = pair_config(config, overrides, arm, seed, s.seed_fields)
            cfg = tracking.sweep_pair(cfg, sweep_id, arm.name, seed)  # its tracker run's tags and group
            pairs.append(Pair(arm.name, seed, cfg, pipeline.plan(cfg)))
    _check_distinct(pairs, s.seed_fields)
    sp = SweepPlan(
        sweep_id,
        str(config),
        overrides,
        resolved,
        seed_list,
        chosen,
        s,
        base,
        pairs,
    )
    for name in upstream_stages():
        for pair in pairs:
            sp.upstream.setdefault((name, pair.plans[name].key), (pair.cfg, pair.plans))
    return sp


def _check_distinct(pairs: list[Pair], seed_fields: list[str]) -> None:
    """Two seeds of one arm must be two training runs, or the interval measures nothing."""
    seen: dict[tuple[str, str], int] = {}
    first = pair_stages()[0]
    for pair in pairs:
        key = pair.plans[first].key
        if (pair.arm, key) in seen:
            raise ConfigError(
                f"arm {pair.arm!r}: seeds {seen[(pair.arm, key)]} and {pair.seed} give "
                f"the same {first} key: sweep.seed_fields {seed_fields} do not "
                f"reach the {first} stage"
            )
        seen[(pair.arm, key)] = pair.seed


def refs_for(
    plans: dict[str, pipeline.StagePlan], names: list[str], by_key: dict[tuple[str, str], ArtifactRef]
) -> dict[str, ArtifactRef]:
    return {n: by_key[(n, plans[n].key)] for n in names}


def run_pair(
    cfg: OgerConfig,
    plans: dict[str, pipeline.StagePlan],
    upstream_refs: dict[str, ArtifactRef],
    fan_out: FanOut | None = None,
) -> dict[str, dict]:
    """One fan-out job: the per-pair stages of one (arm, seed) in order, each from cache when its
    artifact is complete. Returns plain data (it may come back from a Ray worker)."""
    out: dict[str, dict] = {}
    pipeline.execute(
        cfg,
        plans,
        pair_stages(),
        upstream_refs,
        runner=pipeline.in_process(fan_out),
        on_stage=lambda run: out.__setitem__(run.name, run.entry()),
    )
    return out


def pair_gpus(sp: SweepPlan, cfg: OgerConfig) -> float:
    if sp.settings.num_gpus is not None:
        return sp.settings.num_gpus
    return float(cfg.train.distributed.num_processes) if cfg.train.distributed.backend == "nccl" else 0.0


def pair_bundles(cfg: OgerConfig) -> list[dict] | None:
    """A pair whose train stage spans nodes reserves them for the whole pair: one bundle per node (the
    stage's own shape, `ray_cluster.bundle`), the pair itself in the first; None for one node."""
    d = cfg.train.distributed
    if d.nnodes < 2:
        return None
    from oger.runtime.ray_cluster import bundle

    return [bundle(d.num_processes, d.backend == "nccl")] * d.nnodes


def pair_jobs(
    sp: SweepPlan, by_key: dict[tuple[str, str], ArtifactRef], pair_fan_out: FanOut | None = None
) -> list[Job]:
    """One job per (arm, seed) for `run_pair`; its arguments travel to a Ray worker (pickled)."""
    jobs = []
    for pair in sp.pairs:
        bundles = pair_bundles(pair.cfg)
        first = bundles[0] if bundles else {}
        jobs.append(
            Job(
                pair.name,
                (pair.cfg, pair.plans, refs_for(pair.plans, upstream_stages(), by_key), pair_fan_out),
                num_cpus=first.get("CPU", sp.settings.num_cpus),
                num_gpus=first.get("GPU", 0.0) if bundles else pair_gpus(sp, pair.cfg),
                meta={"arm": pair.arm, "seed": pair.seed},
                bundles=bundles,
            )
        )
    return jobs


def run_sweep(
    sp: SweepPlan,
    runner: pipeline.StageRunner | None = None,
    fan_out: FanOut | None = None,
    pair_fan_out: FanOut | None = None,
    prefect_flow_run: dict | None = None,
) -> Path:
    """Upstream stages once per key (through `runner`, default in process: the flow passes its
    task), then every pair as a job on `fan_out` (default: in process, one after the other), then
    the report. `pair_fan_out` is what a pair's own fan-out stages (evaluate) use inside the job.
    Returns summary.json's path."""
    from oger.sweep.report import write_report

    record = SweepRecord(sp, prefect_flow_run)
    try:
        by_key: dict[tuple[str, str], ArtifactRef] = {}
        for (name, key), (cfg, plans) in sp.upstream.items():
            before = upstream_stages()[: upstream_stages().index(name)]
            refs = pipeline.execute(
                cfg, plans, [name], refs_for(plans, before, by_key), runner=runner, on_stage=record.add_upstream
            )
            by_key[(name, key)] = refs[name]
        for job, result in (fan_out or run_in_process)(run_pair, pair_jobs(sp, by_key, pair_fan_out)):
            record.add_pair(job.meta["arm"], job.meta["seed"], result)
        report = write_report(sp, record)
        for pair in record.data["pairs"]:  # each pair's results join its training's tracker runs
            tracking.log_run_end(pair_run_record(sp, pair), report)
        record.finish("completed")
    except BaseException as exc:
        record.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    return record.summary_path


def pair_run_record(sp: SweepPlan, pair: dict) -> dict:
    """A pair's stages as a run's record (`tracking.log_run_end`): the stage entries and, for a stage with
    a `run_summary` hook (evaluate), its headline numbers read from its artifact."""
    from oger.contract.artifacts import load_complete

    data: dict = {"stages": pair["stages"]}
    for name, entry in pair["stages"].items():
        hook = contract.get(name).run_summary
        ref = load_complete(sp.base.workdir_path, name, entry["key"]) if hook else None
        if ref is not None:
            data[name] = hook(ref)
    return data


class SweepRecord(SummaryRecord):
    """`<workdir>/sweeps/<id>/summary.json`, rewritten atomically after every stage and pair (the
    report adds results, comparisons and verdicts at the end)."""

    def __init__(self, sp: SweepPlan, prefect_flow_run: dict | None = None):
        self.dir = sp.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "sweep_id": sp.sweep_id,
            "config": sp.base.source_file,
            "config_name": sp.base.name,
            "overrides": sp.overrides,
            "workdir": str(sp.base.workdir_path),
            "arms": {a.name: {"overrides": a.overrides, "source": a.source} for a in sp.arms},
            "seeds": sp.seeds,
            "seed_fields": sp.settings.seed_fields,
            "baseline": sp.baseline,
            "status": "running",
            "started_at": datetime.now(timezone.utc).isoformat(),
            "planned": [{"arm": p.arm, "seed": p.seed, **{s: p.plans[s].key for s in pair_stages()}} for p in sp.pairs],
            "upstream": {},
            "pairs": [],
        }
        if prefect_flow_run:
            self.data["prefect_flow_run"] = prefect_flow_run
        self.write()

    def add_upstream(self, run: pipeline.StageRun) -> None:
        entry = run.entry()
        entry.pop("metrics")  # the stage's own record holds them; a sweep lists what it shared
        self.data["upstream"].setdefault(run.name, []).append(entry)
        self.write()

    def add_pair(self, arm: str, seed: int, stages: dict[str, dict]) -> None:
        self.data["pairs"].append({"arm": arm, "seed": seed, "stages": stages})
        self.write()
