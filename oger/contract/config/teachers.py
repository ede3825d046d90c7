"""The teachers stage's section: each teacher, its backend, sampling and fan-out."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oger.contract.config.base import Instruction, Strict
from oger.contract.keys import not_in_key, omitted_at_default, resolved


class Sampling(Strict):
    """How a teacher samples its traces."""

    temperature: float = Field(0.7, ge=0.0, description="sampling temperature; 0: greedy")
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="nucleus sampling: the smallest set of tokens of this total probability; 1: the whole vocabulary",
    )
    max_new_tokens: int = Field(
        256,
        ge=1,
        description="token budget of one trace; a trace cut at it has no stop, which the filter drops (require_stop)",
    )
    seed: int = Field(
        0,
        description="sampling seed (a scripted solver's slips too); samples are seeded by their place in the "
        "teacher's job list, so shards give the traces of one run",
    )


Backend = Literal["scripted", "transformers", "dataset", "openai", "vllm"]


class TeacherConfig(Strict):
    """One teacher. `model` is a scripted style, a model path/alias, a column, or a served model name."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the teacher's name (unique): what index.teachers and policy.sft.teachers select by, and its "
        "traces' label",
    )
    backend: Backend = Field(
        description="what writes the traces: scripted (the synthetic task's solvers), transformers or vllm "
        "(a model run here), openai (an OpenAI-compatible server), dataset (the problems' reference column)"
    )
    model: str | None = Field(
        None,
        description="scripted: a solver style (stepwise, terms, verbose, add_first, swap); transformers, vllm: a "
        "model alias, folder, .gguf file or hub id; openai: the served model's name; dataset: unused",
        json_schema_extra=resolved(
            "a model the backend loads is keyed by its content fingerprint, not its path or alias"
        ),
    )
    n: int = Field(1, ge=1, description="traces per problem (dataset: always 1, the reference is written once)")
    sampling: Sampling = Field(Sampling(), description="temperature, nucleus, token budget and seed of the traces")
    split: str = Field(
        "train",
        description="the problems split this teacher answers (`sft`: a synthetic source's sft_split_first_above "
        "problems)",
    )
    sources: list[str] | None = Field(None, description="problem source names; default all")
    limit: int | None = Field(None, ge=1, description="first N problems (deterministic)")
    batch_size: int = Field(
        8,
        ge=1,
        description="prompts per generation call; in the key because the transformers backend seeds each call, so "
        "another batch size samples other traces",
    )
    instruction: Instruction = Field(
        "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}",
        description="the user turn, a template holding {question}",
    )
    system_prompt: str | None = Field(None, description="system message before the user turn; default: none")
    # scripted
    slip_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="scripted: the chance that a solution has an arithmetic slip in one step, giving the filter "
        "wrong traces to drop",
    )
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
    tensor_parallel_size: int = Field(
        1, ge=1, description="vllm: GPUs the model is split over (a model too large for one GPU)"
    )
    # openai: where the served model is and how to talk to it, not what it writes
    base_url: str | None = Field(
        None,
        description="openai: the server's address, e.g. http://127.0.0.1:8000/v1",
        json_schema_extra=not_in_key("the server's address"),
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="openai: the environment variable holding the API key (the key itself never goes in a config); "
        "null: no key",
        json_schema_extra=not_in_key("credentials"),
    )
    max_concurrency: int = Field(
        4,
        ge=1,
        description="openai: requests in flight at once",
        json_schema_extra=not_in_key("requests in flight; each is seeded"),
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="openai: seconds one request may take before it fails",
        json_schema_extra=not_in_key("a resource bound"),
    )
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
    round: str = Field(
        "r1",
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="a label of one generation of traces (e.g. the nightly run's date): traces are kept per round, "
        "rounds are ordered by when they first ran, and train.init_from previous_round continues from the model "
        "of the latest earlier round",
    )
    teachers: list[TeacherConfig] = Field(min_length=1, description="the teachers, each cached on its own")

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
