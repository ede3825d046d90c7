"""Prefect wiring of the OGER DAG: one task per stage, cache key = stage key, result = ArtifactRef.

No algorithm code here: each task calls `oger.pipeline.run_stage`.
"""

from __future__ import annotations

import os
from datetime import timezone

from flows.early_server import DEFAULT_START_TIMEOUT_S

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's own temporary server (a flow called without `oger run`) waits as long as ours does.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(DEFAULT_START_TIMEOUT_S)))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see oger.cli.quiet_threads

from prefect import flow  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows import ui  # noqa: E402
from flows.tasks import as_task  # noqa: E402
from oger import pipeline, tracking  # noqa: E402
from oger.commands.report import write_report  # noqa: E402
from oger.contract.config import OgerConfig, load_config  # noqa: E402
from oger.contract.lock import workdir_lock  # noqa: E402


def scheduled_round() -> str:
    """The run's scheduled start date (UTC, YYYY-MM-DD): a nightly run's teachers.round."""
    return flow_run.scheduled_start_time.astimezone(timezone.utc).date().isoformat()


def _with_round(overrides: list[str] | None, round_from_schedule: bool) -> list[str]:
    return [*(overrides or []), *([f"teachers.round={scheduled_round()}"] if round_from_schedule else [])]


def _run_name() -> str:
    """`<config name>-<teachers.round>`, e.g. tiny-r1, or tiny-<YYYY-MM-DD> for a nightly run."""
    params = flow_run.parameters or {}
    try:
        cfg = load_config(
            params["config"], _with_round(params.get("overrides"), bool(params.get("round_from_schedule")))
        )
        return f"{cfg.name}-{cfg.teachers.round}"
    except Exception:  # a bad config fails inside the flow, with its message; name it by file
        return os.path.splitext(os.path.basename(str(params.get("config", "oger"))))[0]


@flow(name="oger-pipeline", flow_run_name=_run_name, log_prints=True)
def oger_pipeline(
    config: str,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    refresh: list[str] | None = None,
    round_from_schedule: bool = False,
    lock_timeout_s: float | None = None,
    retention: bool = False,
) -> str:
    """Run the selected stages of CONFIG; returns the path of the run's summary.json.

    `round_from_schedule` sets teachers.round to the run's scheduled date (the nightly deployment).
    The run holds the workdir's lock (`oger.contract.lock`) throughout; a held workdir is waited
    for up to `lock_timeout_s` (default: the config's `lock_timeout_s`).
    """
    overrides = _with_round(overrides, round_from_schedule)
    cfg = load_config(config, overrides)
    run_id = pipeline.new_run_id()
    timeout = cfg.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
    with workdir_lock(cfg.workdir_path, run_id, timeout, say=print):
        summary = _run_locked(cfg, run_id, overrides, only, from_stage, until, refresh)
        if retention:  # after the round is recorded complete, still holding the lock
            ui.apply_retention(cfg)
    if cfg.retention.fail_on_regression:  # the round is recorded and cached; the run's state says it fell
        from oger.commands.trend import check_round, round_rows

        check_round(round_rows(cfg.workdir_path), run_id)
    return summary


def _run_locked(cfg: OgerConfig, run_id: str, overrides, only, from_stage, until, refresh) -> str:
    selected = pipeline.select_stages(only, from_stage, until)
    refresh_set = set(pipeline._parse_stage_list(refresh, "--refresh"))
    plans = pipeline.plan(cfg)
    record = pipeline.RunRecord(cfg, run_id=run_id, overrides=overrides)
    record.data["prefect_flow_run"] = {"id": str(flow_run.id), "name": flow_run.name}
    ui.start(cfg, record)
    for note in pipeline.input_notes(plans, selected):  # e.g. train reads a pinned index tag
        print(note)

    def on_stage(run: pipeline.StageRun) -> None:
        record.add(run)
        ui.stage(record, run.name)

    try:
        upstream = pipeline.load_upstream(cfg, plans, pipeline.required_upstream(selected))
        pipeline.execute(cfg, plans, selected, upstream, runner=as_task, refresh=refresh_set, on_stage=on_stage)
        report = write_report(record)
        tracking.log_run_end(record.data, report)  # the results join the training's tracker runs
        record.finish("completed")
        ui.publish(record, report)
    except BaseException as exc:
        record.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    return str(record.summary_path)
