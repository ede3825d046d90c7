"""How this project joins Ray (`runner.kind: ray`): the configured cluster, or a new local instance.

Why `address="local"` when no address is configured: `ray.init()` without one first looks for the
address file an earlier Ray session left in its temp folder (`ray_current_cluster`), and after a session
that did not shut down cleanly it tries to join that dead cluster, failing with "When connecting to an
existing cluster, num_cpus and num_gpus must not be provided". "local" always starts a new instance.
"""

from __future__ import annotations

from typing import Any

LOCAL = "local"
STRATEGY = "STRICT_SPREAD"  # one bundle per node: the ranks of two "nodes" never share a machine


def bundle(num_processes: int, gpus: bool) -> dict[str, float]:
    """One node's share of a multi-node train stage: a CPU per rank, and a GPU per rank under NCCL (the
    stage's reservation, and a sweep pair's that hands it over, ask the same)."""
    return {"CPU": float(num_processes), **({"GPU": float(num_processes)} if gpus else {})}


def init_args(runner) -> tuple[str, dict[str, Any]]:
    """(address, ray.init keyword arguments) for `runner` (a RunnerConfig): a local instance gets the
    configured CPU/GPU counts; a cluster brings its own."""
    kw: dict[str, Any] = {"include_dashboard": False}
    if runner.address is None:
        kw.update({k: v for k, v in (("num_cpus", runner.num_cpus), ("num_gpus", runner.num_gpus)) if v is not None})
        return LOCAL, kw
    return runner.address, kw


def connect(runner) -> bool:
    """Join Ray as `runner` says unless this process already has; returns whether this call did (the
    caller then shuts it down when done)."""
    import ray

    if ray.is_initialized():
        return False
    address, kw = init_args(runner)
    ray.init(address=address, **kw)
    return True
