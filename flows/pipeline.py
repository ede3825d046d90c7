"""Prefect wiring of the OGER DAG: one task per stage, cache key = stage key, result = ArtifactRef.

No algorithm code here: each task calls `oger.pipeline.run_stage`.
"""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from prefect import flow, task  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from oger import pipeline  # noqa: E402
from oger.artifacts import ArtifactRef  # noqa: E402
from oger.config import OgerConfig, load_config  # noqa: E402
from oger.report import write_report  # noqa: E402


def _stage_cache_key(context, parameters) -> str | None:
    """The stage key (scoped to the workdir) while its artifact is complete on disk, else None.

    Returning None when the artifact is missing stops Prefect from handing back a stale ref
    for a deleted or interrupted artifact; the task then recomputes (or finds it) itself.
    """
    cfg: OgerConfig = parameters["cfg"]
    p: pipeline.StagePlan = parameters["plan"]
    if parameters.get("refresh"):
        return None
    if pipeline.cached_ref(cfg, p) is None:
        return None
    scope = hashlib.sha256(str(cfg.workdir_path).encode()).hexdigest()[:12]
    return f"oger-{p.name}-{p.key}-{scope}"


@task(cache_key_fn=_stage_cache_key, persist_result=True, task_run_name="{plan.name}",
      log_prints=True)
def stage_task(cfg: OgerConfig, plan: pipeline.StagePlan, upstream: dict[str, ArtifactRef],
               refresh: bool = False) -> ArtifactRef:
    return pipeline.run_stage(cfg, plan, upstream, refresh=refresh)


def _run_name() -> str:
    params = flow_run.parameters or {}
    name = os.path.splitext(os.path.basename(str(params.get("config", "oger"))))[0]
    rnd = next((o.split("=", 1)[1] for o in params.get("overrides") or []
                if o.startswith("teachers.round=")), None)
    return f"{name}-{rnd}" if rnd else name


@flow(name="oger-pipeline", flow_run_name=_run_name, log_prints=True)
def oger_pipeline(config: str, overrides: list[str] | None = None, only: list[str] | None = None,
                  from_stage: str | None = None, until: str | None = None,
                  refresh: list[str] | None = None) -> str:
    """Run the selected stages of CONFIG; returns the path of the run's summary.json."""
    cfg = load_config(config, overrides)
    selected = pipeline.select_stages(only, from_stage, until)
    refresh_set = set(pipeline._parse_stage_list(refresh, "--refresh"))
    plans = pipeline.plan(cfg)
    record = pipeline.RunRecord(cfg, overrides=overrides)
    try:
        refs = pipeline.load_upstream(cfg, plans, pipeline.required_upstream(selected))
        for name in selected:
            p = plans[name]
            force = name in refresh_set
            was_cached = not force and pipeline.cached_ref(cfg, p) is not None
            upstream = {u: refs[u] for u in pipeline.UPSTREAM[name]}
            opts = {"task_run_name": f"{name}-{p.key[:8]}"}
            if force:
                opts["refresh_cache"] = True
            ref, seconds = pipeline.timed(stage_task.with_options(name=name, **opts),
                                          cfg, p, upstream, refresh=force)
            refs[name] = ref
            record.add(name, ref, was_cached, seconds)
        write_report(record)
        record.finish("completed")
    except BaseException as exc:
        record.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    return str(record.summary_path)
