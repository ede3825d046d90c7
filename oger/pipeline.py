"""The stage DAG without Prefect: keys for every stage from the config alone, cache checks,
running one stage, the one loop over stages (`execute`), stage selection (--only/--from/--until)
and the run record.

Stages are `oger.contract.Stage` objects registered in DAG order (the built-in ones below); this
module only walks the registry: it never branches on a stage's name. `execute` is the loop every
caller uses: `run_local` (scripts, tests, benches), the Prefect flow (`flows/pipeline.py`, whose
runner wraps `run_stage` in one task per stage) and sweeps (`oger.sweep.run`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from oger import contract, rounds
from oger.contract.artifacts import ArtifactRef, SummaryRecord, artifact_dir, load_complete, stage_key
from oger.contract.config import OgerConfig
from oger.contract.errors import ConfigError, StageError
from oger.stages.evaluate import stage as evaluate_stage
from oger.stages.filter import stage as filter_stage
from oger.stages.index import stage as index_stage
from oger.stages.policy import stage as policy_stage
from oger.stages.problems import stage as problems_stage
from oger.stages.teachers import stage as teachers_stage
from oger.stages.train import stage as train_stage

BUILTIN_STAGES = (
    problems_stage.STAGE_DEF,
    teachers_stage.STAGE_DEF,
    filter_stage.STAGE_DEF,
    index_stage.STAGE_DEF,
    policy_stage.STAGE_DEF,
    train_stage.STAGE_DEF,
    evaluate_stage.STAGE_DEF,
)
for _stage in BUILTIN_STAGES:
    contract.register(_stage)

STAGES = contract.ORDER  # live views of the registry: a registered stage shows up here
UPSTREAM = contract.UPSTREAM


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


def plan(cfg: OgerConfig) -> dict[str, StagePlan]:
    """Keys of all stages in order; each folds in its upstream keys (DESIGN §3), and a stage's
    `extra_inputs` hook may add inputs of its own (train: a pinned index tag), and a stage that
    continues from an earlier round gets that round's artifact (`oger.rounds`) as `PREVIOUS_ROUND`."""
    plans: dict[str, StagePlan] = {}
    for name in STAGES:
        stage = contract.get(name)
        slice_, identity = stage.key_inputs(cfg)
        upstream = {u: plans[u].key for u in stage.upstream}
        if stage.extra_inputs is not None:
            upstream = stage.extra_inputs(cfg, upstream, plans)
        if stage.continues_previous_round is not None and stage.continues_previous_round(cfg):
            previous = rounds.previous_checkpoint(cfg.workdir_path, cfg.teachers.round, name, plans)
            if previous is not None:
                upstream = {**upstream, contract.PREVIOUS_ROUND: previous["key"]}
        key = stage_key(name, stage.version, slice_, upstream, identity)
        plans[name] = StagePlan(name, key, slice_, identity, upstream)
    return plans


def cached_ref(cfg: OgerConfig, p: StagePlan) -> ArtifactRef | None:
    """The complete artifact for this plan, if any (and if the stage's `is_complete` agrees)."""
    ref = load_complete(cfg.workdir_path, p.name, p.key)
    is_complete = contract.get(p.name).is_complete
    if ref is not None and is_complete is not None and not is_complete(cfg, ref):
        return None
    return ref


def resolve_inputs(cfg: OgerConfig, p: StagePlan, upstream_refs: dict[str, ArtifactRef]) -> dict[str, ArtifactRef]:
    """An artifact for every key in the plan's `upstream`: the upstream stage's ref when its key
    matches, else the complete artifact with that key (a pinned index tag, an earlier round's
    checkpoint)."""
    stage, wd = contract.get(p.name), cfg.workdir_path
    inputs = {}
    for name, key in p.upstream.items():
        ref = upstream_refs.get(name)
        if ref is None or ref.key != key:
            ref = load_complete(wd, stage.input_stage(name), key)
        if ref is None:
            msg = (
                stage.missing_input(wd, name, key)
                if stage.missing_input
                else (
                    f"stage {p.name!r}: input {name!r} has no complete {stage.input_stage(name)} "
                    f"artifact for key {key[:16]} in {wd}"
                )
            )
            raise StageError(msg)
        inputs[name] = ref
    return inputs


def run_stage(
    cfg: OgerConfig, p: StagePlan, upstream_refs: dict[str, ArtifactRef], refresh: bool = False, fan_out=None
) -> ArtifactRef:
    """Return the cached artifact, or compute it (atomically) from the upstream artifacts.

    `fan_out` (`oger.contract.fanout`) runs the fan-out jobs of stages that have them (teachers,
    evaluate); default: in process."""
    if not refresh:
        ref = cached_ref(cfg, p)
        if ref is not None:
            return ref
    inputs = resolve_inputs(cfg, p, upstream_refs)
    ctx = contract.StageContext(
        workdir=cfg.workdir_path,
        name=p.name,
        key=p.key,
        config_slice=p.config_slice,
        identity=p.identity,
        upstream=dict(p.upstream),
        cfg=cfg,
        refresh=refresh,
        fan_out=fan_out,
    )
    return contract.get(p.name).run(ctx, inputs)


@dataclass
class StageRun:
    """What one stage did in a run: its artifact, whether it was reused from cache, its seconds."""

    name: str
    ref: ArtifactRef
    cached: bool
    seconds: float

    def entry(self) -> dict:
        """The stage's record in a run's or sweep's summary.json."""
        return {
            "key": self.ref.key,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "path": self.ref.path,
            "metrics": self.ref.metrics,
        }


# (cfg, plan, upstream refs, refresh, cached) -> ref. `cached`: a complete artifact exists and is
# not refreshed, so the runner will get it back (the Prefect task uses it to refresh its cache).
StageRunner = Callable[[OgerConfig, StagePlan, dict[str, ArtifactRef], bool, bool], ArtifactRef]


def in_process(fan_out=None) -> StageRunner:
    """A runner calling `run_stage` here; `fan_out` runs the fan-out stages' jobs (default: here)."""

    def run(
        cfg: OgerConfig, p: StagePlan, upstream: dict[str, ArtifactRef], refresh: bool, cached: bool
    ) -> ArtifactRef:
        return run_stage(cfg, p, upstream, refresh=refresh, fan_out=fan_out)

    return run


def execute(
    cfg: OgerConfig,
    plans: dict[str, StagePlan],
    names: Iterable[str],
    refs: dict[str, ArtifactRef],
    *,
    runner: StageRunner | None = None,
    refresh: Iterable[str] = (),
    on_stage: Callable[[StageRun], None] | None = None,
) -> dict[str, ArtifactRef]:
    """The one loop over stages (local runs, the Prefect flow, sweeps): each of `names` in DAG
    order, from cache when its artifact is complete (unless in `refresh`), else computed by
    `runner` from its upstream artifacts (`refs` holds those of stages not in `names`);
    `on_stage` hears each stage's `StageRun`. Returns `refs` with the new artifacts added."""
    runner = runner or in_process()
    refresh, refs = set(refresh), dict(refs)
    for name in names:
        p = plans[name]
        force = name in refresh
        cached = not force and cached_ref(cfg, p) is not None
        upstream = {u: refs[u] for u in UPSTREAM[name] if u in refs}
        started = time.perf_counter()
        refs[name] = runner(cfg, p, upstream, force, cached)
        if on_stage is not None:
            on_stage(StageRun(name, refs[name], cached, time.perf_counter() - started))
    return refs


def input_notes(plans: dict[str, StagePlan], selected: list[str]) -> list[str]:
    """What the selected stages want said before they run (e.g. train reads a pinned index)."""
    out: list[str] = []
    for name in selected:
        hook = contract.get(name).input_notes
        if hook is not None:
            out += hook(plans)
    return out


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
    chosen = STAGES[lo : hi + 1]
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
            raise StageError(
                f"stage {u!r} is needed by the selected stages but has no cached "
                f"artifact for key {plans[u].key[:16]}; run it first "
                f"(e.g. `oger run CONFIG --until {u}`)"
            )
        refs[u] = ref
    return refs


# --------------------------------------------------------------------------- run record


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunRecord(SummaryRecord):
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

    def add(self, run: StageRun) -> None:
        self.data["stages"][run.name] = run.entry()
        summary = contract.get(run.name).run_summary
        if summary is not None:  # headline numbers (evaluate: one entry per benchmark)
            self.data[run.name] = summary(run.ref)
        self.write()


def status_rows(cfg: OgerConfig) -> list[dict]:
    """Per stage: key, cached or stale, artifact path, metrics (no model is loaded)."""
    rows = []
    for name, p in plan(cfg).items():
        ref = cached_ref(cfg, p)
        rows.append(
            {
                "stage": name,
                "key": p.key,
                "state": "cached" if ref else "stale",
                "path": str(p.path(cfg.workdir_path)),
                "metrics": ref.metrics if ref else {},
            }
        )
    return rows


def run_local(
    cfg: OgerConfig, until: str | None = None, *, only=None, from_stage: str | None = None
) -> dict[str, ArtifactRef]:
    """Run the selected stages (default: every stage up to `until`) in this process, without
    Prefect (scripts, tests, benches). Stages not selected that the selected ones read must be
    cached already."""
    plans = plan(cfg)
    selected = select_stages(only, from_stage, until)
    return execute(cfg, plans, selected, load_upstream(cfg, plans, required_upstream(selected)))
