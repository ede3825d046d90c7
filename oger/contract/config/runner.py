"""Where fan-out jobs run (`runner`): no stage's key."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oger.contract.config.base import Strict


class RunnerConfig(Strict):
    """Where fan-out stages run their jobs (teacher shards; one evaluation job per model):
    Prefect's default task runner in this process (`local`) or prefect-ray's RayTaskRunner
    (`ray`). Not in any key."""

    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: fan-out jobs one after another in this process; ray: each job a Ray task asking for "
        "its CPUs/GPUs, and a train stage with distributed.nnodes > 1 one torchrun agent per node on Ray",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join (e.g. ray://head:10001, head:6379 or auto); none starts a new local Ray "
        "instance (never one an earlier session left behind)",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local Ray instance (none: all of them)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a new local Ray instance (none: all visible)")
