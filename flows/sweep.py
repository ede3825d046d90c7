"""Prefect wiring of a sweep (`oger-sweep`): upstream stages as one cached task each (cache key =
stage key, as in `oger-pipeline`), then one task per (arm, seed) on cfg.runner's task runner
(`flows.fanout`: the thread runner by default, prefect-ray's RayTaskRunner with runner.kind: ray,
each pair asking Ray for sweep.num_cpus / sweep.num_gpus). No algorithm code here: `oger.sweep.run`.
"""

from __future__ import annotations

import os

from flows.early_server import DEFAULT_START_TIMEOUT_S

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's own temporary server (a flow called without `oger run`) waits as long as ours does.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(DEFAULT_START_TIMEOUT_S)))

from prefect import flow  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows.fanout import prefect_fan_out  # noqa: E402
from flows.tasks import as_task  # noqa: E402
from flows.ui import publish_sweep  # noqa: E402
from oger.contract.lock import workdir_lock  # noqa: E402
from oger.sweep import run as sweep_run  # noqa: E402


def _run_name() -> str:
    params = flow_run.parameters or {}
    name = os.path.splitext(os.path.basename(str(params.get("config", "oger"))))[0]
    arms = params.get("arms")
    arms = ",".join(arms) if isinstance(arms, list) else (arms or "default-arms")
    return f"sweep-{name}-{arms}"


@flow(name="oger-sweep", flow_run_name=_run_name, log_prints=True)
def oger_sweep(
    config: str,
    arms: list[str] | str | None = None,
    seeds: list[int] | str | None = None,
    overrides: list[str] | None = None,
    baseline: str | None = None,
    sweep_id: str | None = None,
) -> str:
    """Train and evaluate every (arm, seed) of CONFIG, sharing upstream artifacts; returns the path
    of `<workdir>/sweeps/<id>/summary.json`. `arms`/`seeds` default to the config's sweep section."""
    sp = sweep_run.prepare(config, arms, seeds, overrides, baseline, sweep_id)
    runner = sp.base.runner
    print(
        f"sweep {sp.sweep_id}: arms {[a.name for a in sp.arms]} x seeds {sp.seeds} = "
        f"{len(sp.pairs)} pairs; {len(sp.upstream)} upstream artifacts; runner {runner.kind}"
    )
    # A pair's own fan-out stage (evaluate) runs in its job's process: nested task runners inside
    # a Ray worker are not needed, and the job already holds its GPUs.
    pair_fan_out = prefect_fan_out(runner) if runner.kind == "local" else None
    # The same workdir lock as `oger-pipeline`: a sweep and a run never write one workdir at once.
    with workdir_lock(sp.base.workdir_path, sp.sweep_id, sp.base.lock_timeout_s, say=print):
        summary = sweep_run.run_sweep(
            sp,
            runner=as_task,
            fan_out=prefect_fan_out(runner),
            pair_fan_out=pair_fan_out,
            prefect_flow_run={"id": str(flow_run.id), "name": flow_run.name},
        )
    publish_sweep(summary)
    return str(summary)
