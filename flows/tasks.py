"""The one Prefect task a stage runs as, for the pipeline flow and the sweep flow alike.

Cache key = the stage key scoped to the workdir. The runner refreshes the task's cache whenever
the artifact is not complete on disk (missing, interrupted, or --refresh), so Prefect never hands
back a ref to a deleted or interrupted artifact, and the first run already records the result, so
the next one shows Cached. The persisted result is the small `ArtifactRef`.
"""

from __future__ import annotations

import hashlib

from prefect import task

from flows.fanout import prefect_fan_out
from oger import pipeline
from oger.contract.artifacts import ArtifactRef
from oger.contract.config import OgerConfig

CACHE_KEY_PREFIX = "oger2"  # 2: ArtifactRef moved to oger.contract.artifacts (old results unpickle no more)


def stage_cache_key(context, parameters) -> str:
    cfg: OgerConfig = parameters["cfg"]
    p: pipeline.StagePlan = parameters["plan"]
    scope = hashlib.sha256(str(cfg.workdir_path).encode()).hexdigest()[:12]
    return f"{CACHE_KEY_PREFIX}-{p.name}-{p.key}-{scope}"


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="{plan.name}", log_prints=True)
def stage_task(
    cfg: OgerConfig, plan: pipeline.StagePlan, upstream: dict[str, ArtifactRef], refresh: bool = False
) -> ArtifactRef:
    # Fan-out stages (teachers, evaluate) run their jobs as tasks on cfg.runner's task runner.
    return pipeline.run_stage(cfg, plan, upstream, refresh=refresh, fan_out=prefect_fan_out(cfg.runner))


def as_task(
    cfg: OgerConfig, plan: pipeline.StagePlan, upstream: dict[str, ArtifactRef], refresh: bool, cached: bool
) -> ArtifactRef:
    """`pipeline.execute`'s runner inside a flow: the stage as one task run named `<stage>-<key8>`."""
    opts = {"name": plan.name, "task_run_name": f"{plan.name}-{plan.key[:8]}"}
    if not cached:  # missing, interrupted or --refresh: recompute, re-record
        opts["refresh_cache"] = True
    return stage_task.with_options(**opts)(cfg, plan, upstream, refresh=refresh)
