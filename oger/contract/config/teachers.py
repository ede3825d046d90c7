"""The teachers stage's section: each teacher, its backend, sampling and fan-out."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oger.contract.config.base import Instruction, Strict
from oger.contract.keys import not_in_key, omitted_at_default, resolved


class Sampling(Strict):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    seed: int = 0


Backend = Literal["scripted", "transformers", "dataset", "openai", "vllm"]


class TeacherConfig(Strict):
    """One teacher. `model` is a scripted style, a model path/alias, a column, or a served model name."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backend: Backend
    model: str | None = Field(
        None,
        json_schema_extra=resolved(
            "a model the backend loads is keyed by its content fingerprint, not its path or alias"
        ),
    )
    n: int = Field(1, ge=1)
    sampling: Sampling = Sampling()
    split: str = "train"
    sources: list[str] | None = Field(None, description="problem source names; default all")
    limit: int | None = Field(None, ge=1, description="first N problems (deterministic)")
    batch_size: int = Field(8, ge=1)
    instruction: Instruction = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"
    system_prompt: str | None = None
    # scripted
    slip_rate: float = Field(0.0, ge=0.0, le=1.0)
    # transformers / vllm
    dtype: Literal["float32", "bfloat16", "float16", "auto", "native"] = Field(
        "float32",
        description="auto: the checkpoint's; native: bfloat16 where computed natively (NVIDIA GPU, "
        "CPU with AVX512-BF16/AMX), else float32",
        json_schema_extra=resolved("native is keyed as what it resolves to on this machine"),
    )
    engine: Literal["hf", "paged"] = Field(
        "hf",
        description="transformers backend: padded generate (hf) or continuous batching with paged attention (paged)",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
    tensor_parallel_size: int = Field(1, ge=1)
    # openai: where the served model is and how to talk to it, not what it writes
    base_url: str | None = Field(None, json_schema_extra=not_in_key("the server's address"))
    api_key_env: str | None = Field("OPENAI_API_KEY", json_schema_extra=not_in_key("credentials"))
    max_concurrency: int = Field(4, ge=1, json_schema_extra=not_in_key("requests in flight; each is seeded"))
    request_timeout_s: float = Field(300.0, gt=0, json_schema_extra=not_in_key("a resource bound"))
    # fan-out (runner.kind: ray); not in the key: shards give the same traces as one run
    shards: int = Field(
        1,
        ge=1,
        description="split this teacher's problems into N shards, run as separate tasks (in parallel on Ray)",
        json_schema_extra=not_in_key("shards sample as one run (seeded by position)"),
    )
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each shard asks Ray for; default: tensor_parallel_size for vllm, 0 otherwise",
        json_schema_extra=not_in_key("a resource request"),
    )
    num_cpus: float = Field(
        1.0, ge=0, description="CPUs each shard asks Ray for", json_schema_extra=not_in_key("a resource request")
    )

    @model_validator(mode="after")
    def _check_backend(self) -> "TeacherConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend in ("scripted", "transformers", "openai", "vllm") and not self.model:
            raise ValueError(f"backend {self.backend!r} needs model")
        if self.engine != "hf" and self.backend != "transformers":
            raise ValueError(f"engine {self.engine!r} applies to backend 'transformers' only, not {self.backend!r}")
        return self


class TeachersConfig(Strict):
    round: str = Field("r1", pattern=r"^[A-Za-z0-9_.:-]+$")
    teachers: list[TeacherConfig] = Field(min_length=1)

    @field_validator("round", mode="before")
    @classmethod
    def _round_as_text(cls, v: Any) -> Any:
        # YAML reads `round: 2026-11-27` as a date and `round: 3` as an int: both mean the string.
        return v.isoformat() if isinstance(v, (date, datetime)) else str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _unique(self) -> "TeachersConfig":
        names = [t.name for t in self.teachers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"teacher names must be unique, repeated: {sorted(dup)}")
        return self
