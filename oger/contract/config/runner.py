"""Where fan-out jobs run (`runner`): no stage's key."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oger.contract.config.base import Strict


class RunnerConfig(Strict):
    """Where fan-out stages run their jobs (teacher shards; one evaluation job per model):
    Prefect's default task runner in this process (`local`) or prefect-ray's RayTaskRunner
    (`ray`). Not in any key."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="Ray cluster (e.g. ray://head:10001 or auto); none starts a local Ray instance"
    )
    num_cpus: int | None = Field(None, ge=1, description="local Ray instance only")
    num_gpus: int | None = Field(None, ge=0, description="local Ray instance only")
