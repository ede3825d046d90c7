"""Prefect wiring of `oger.contract.fanout`: every fan-out job becomes a Prefect task run, submitted to Prefect's
default thread runner (`runner.kind: local`, one job at a time, in this process) or to
prefect-ray's RayTaskRunner (`runner.kind: ray`), where each job asks Ray for the CPUs and GPUs
its backend needs. The stage code is the same either way; only the task runner differs.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from oger.contract.config import RunnerConfig
from oger.contract.errors import ConfigError
from oger.contract.fanout import FanOut, Job
from oger.runtime.ray_cluster import init_args


@task(cache_policy=NONE, log_prints=True)
def job_task(fn: Callable, args: tuple) -> Any:
    return fn(*args)


def task_runner(runner: RunnerConfig):
    if runner.kind == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:  # pragma: no cover - prefect-ray is a dependency of the dev extra
        raise ConfigError("runner.kind: ray needs prefect-ray and ray: pip install 'oger[ray]'") from None
    # a new local instance when no address is set, never a dead one an earlier session left behind
    address, init = init_args(runner)
    if runner.address is None:
        # Ray workers report task runs to this process's Prefect API (in ephemeral mode each would
        # otherwise start its own temporary server on the same database). On a remote cluster,
        # set PREFECT_API_URL to a server the workers can reach.
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            api_url = str(client.api_url)
        init["runtime_env"] = {"env_vars": {"PREFECT_API_URL": api_url}}
    return RayTaskRunner(address=address, init_kwargs=init)


def _resources(runner: RunnerConfig, job: Job, groups: list):
    """The job's Ray options: its CPUs and GPUs, and for a job with `bundles` a placement group reserved
    now (appended to `groups`, removed when the fan-out ends) with the job in its first bundle."""
    if runner.kind != "ray":
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    if not job.bundles:
        return remote_options(num_cpus=job.num_cpus, num_gpus=job.num_gpus)
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from oger.runtime.ray_cluster import STRATEGY

    pg = placement_group(job.bundles, strategy=STRATEGY, name=f"oger-{job.name}")
    ray.get(pg.ready())  # waits like a task waits for its resources
    groups.append(pg)
    return remote_options(
        num_cpus=job.num_cpus,
        num_gpus=job.num_gpus,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
    )


def prefect_fan_out(runner: RunnerConfig) -> FanOut:
    """A `fan_out(fn, jobs)` that runs each job as a Prefect task on the configured task runner."""

    def fan_out(fn: Callable, jobs: list[Job]) -> Iterator[tuple[Job, Any]]:
        if not jobs:
            return
        with task_runner(runner) as tr:
            futures, groups = {}, []
            try:
                for job in jobs:
                    with _resources(runner, job, groups):
                        fut = tr.submit(
                            job_task.with_options(name=job.name, task_run_name=job.name),
                            parameters={"fn": fn, "args": job.args},
                        )
                    futures[fut] = job
                for fut in as_completed(list(futures)):
                    yield futures[fut], fut.result()
            finally:
                for pg in groups:
                    from ray.util.placement_group import remove_placement_group

                    remove_placement_group(pg)

    return fan_out
