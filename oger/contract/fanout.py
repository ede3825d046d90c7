"""Fan-out of independent jobs (teacher shards; one evaluation job per model): the job description
and the in-process runner. A stage takes a `fan_out(fn, jobs)` and iterates over
`(job, fn(*job.args))` in completion order, so it can save each job's result as soon as it is done.

`flows/fanout.py` gives the same interface over Prefect task runners: the default thread runner
or prefect-ray's RayTaskRunner (`runner.kind: ray`), where each job asks Ray for its CPUs/GPUs.
Jobs are pure functions of their arguments, so the runner never changes the result.
("Shard" means one thing only: a slice of one teacher's prompts, run as one job.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

FanOut = Callable[[Callable, list["Job"]], Iterator[tuple["Job", Any]]]


@dataclass
class Job:
    """One job: `fn(*args)` needing `num_cpus` CPUs and `num_gpus` GPUs (Ray resources). `bundles`: a
    placement group the job reserves and runs in (in its first bundle; its resources are the first
    bundle's), for work inside it that spans nodes: a sweep pair whose train stage runs on several nodes
    hands the group to the stage (`oger.stages.train.ray_nodes`) instead of the stage waiting for a
    second reservation."""

    name: str
    args: tuple
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    meta: dict = field(default_factory=dict)
    bundles: list[dict] | None = None


def run_in_process(fn: Callable, jobs: list[Job]) -> Iterator[tuple[Job, Any]]:
    """The default: one job after the other, in order, in this process."""
    for job in jobs:
        yield job, fn(*job.args)


def split_even(n_items: int, n_shards: int, block: int = 1) -> list[tuple[int, int]]:
    """[lo, hi) ranges of about equal size (a teacher's shards) whose boundaries are multiples of
    `block` (a backend's seeding unit), so a shard samples what the unsharded run samples there."""
    blocks = -(-n_items // block)
    n_shards = max(1, min(n_shards, blocks))
    out, lo = [], 0
    for i in range(n_shards):
        hi = min(n_items, (blocks * (i + 1) // n_shards) * block)
        out.append((lo, hi))
        lo = hi
    return [r for r in out if r[1] > r[0]]
