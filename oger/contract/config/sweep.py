"""Arms x seeds (`sweep`): no stage's key."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oger.contract.config.base import Strict


class SweepConfig(Strict):
    """Arms x seeds (`oger sweep`, flow `oger-sweep`): each arm is a named set of overrides
    (`{"train.oger.lam": 1.0}`) on top of this config; presets grpo, luffy, oger, shuffled-bonus
    and lam-0-monitor are built in (an arm defined here with a preset's name replaces it). Not in
    any stage key: every (arm, seed) is an ordinary train/evaluate artifact."""

    arms: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name -> {dotted.config.key: value}, e.g. "
        "oger-lam-1.0: {train.algorithm: oger, train.oger.lam: 1.0}",
    )
    default_arms: list[str] = Field(
        ["grpo", "luffy", "oger"], min_length=1, description="arms when --arms is not given"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds when --seeds is not given")
    baseline: str = Field(
        "luffy",
        description="arm every other arm is compared with (paired "
        "differences); when it is not in the sweep, the first arm",
    )
    seed_fields: list[str] = Field(
        ["train.seed", "evaluate.seed"],
        min_length=1,
        description="config fields a sweep seed sets: RL sampling/order and evaluation sampling. "
        "Upstream seeds (policy.sft.seed, policy.tiny.seed) stay shared unless added here",
    )
    interval: Literal["bootstrap", "t"] = Field(
        "bootstrap",
        description="interval the verdicts use: percentile bootstrap over seeds and "
        "problems, or Student-t over per-seed means (needs >= 2 seeds)",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    bootstrap_resamples: int = Field(
        2000, ge=100, description="bootstrap resamples per interval: more give steadier bounds, slower"
    )
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each (arm, seed) job asks Ray for "
        "(runner.kind: ray); default: train.distributed.num_processes when "
        "train.distributed.backend is nccl, else 0",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs each (arm, seed) job asks Ray for")

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict) -> dict:
        for name, overrides in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"arm name {name!r}: use letters, digits, '_', '.', '-'")
            if not isinstance(overrides, dict):
                raise ValueError(f"arm {name!r}: expected a mapping of config keys to values")
            for key in overrides:
                if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                    raise ValueError(f"arm {name!r}: {key!r} is not a dotted config key")
                if key.split(".")[0] == "sweep":
                    raise ValueError(f"arm {name!r}: an arm cannot change the sweep section ({key})")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "SweepConfig":
        for what, items in (("seeds", self.seeds), ("default_arms", self.default_arms)):
            dup = sorted({x for x in items if items.count(x) > 1})
            if dup:
                raise ValueError(f"{what} listed twice: {dup}")
        return self
