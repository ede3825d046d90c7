"""The whole config: one section per stage, plus where jobs run, what gc keeps and the sweep."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from oger.contract.config.base import Strict
from oger.contract.config.evaluate import EvaluateConfig
from oger.contract.config.filter import FilterConfig
from oger.contract.config.index import IndexConfig
from oger.contract.config.logging import LoggingConfig
from oger.contract.config.policy import PolicyConfig
from oger.contract.config.problems import ProblemsConfig
from oger.contract.config.retention import RetentionConfig
from oger.contract.config.runner import RunnerConfig
from oger.contract.config.sweep import SweepConfig
from oger.contract.config.teachers import TeachersConfig
from oger.contract.config.train import TrainConfig
from oger.contract.keys import not_in_key


class OgerConfig(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the experiment's label: fills {name} in workdir and names its runs, reports and plot titles",
        json_schema_extra=not_in_key("a label: the default workdir, run names, plot titles"),
    )
    workdir: str = Field(
        "work/{name}",
        description="folder of the artifacts, caches, runs and index of this experiment ({name}: the name above; "
        "`~` expanded); configs sharing a workdir share every artifact whose key matches",
        json_schema_extra=not_in_key("where artifacts are kept"),
    )
    problems: ProblemsConfig = Field(description="the problems stage: where the problems come from")
    teachers: TeachersConfig = Field(
        description="the teachers stage: the models or scripts that write reasoning traces"
    )
    filter: FilterConfig = Field(FilterConfig(), description="the filter stage: which teacher traces are kept")
    index: IndexConfig = Field(
        IndexConfig(), description="the index stage: how kept traces are embedded and stored for the bonus"
    )
    policy: PolicyConfig = Field(
        PolicyConfig(), description="the policy stage: the model RL starts from and its SFT warm start"
    )
    train: TrainConfig = Field(TrainConfig(), description="the train stage: the RL run (GRPO, LUFFY or OGER)")
    runner: RunnerConfig = Field(
        RunnerConfig(),
        description="where fan-out jobs run: in this process, or on Ray",
        json_schema_extra=not_in_key("where fan-out jobs run; every job is seeded by its place, not by its worker"),
    )
    evaluate: EvaluateConfig = Field(  # lazy: validates against the registry
        default_factory=EvaluateConfig,
        description="the evaluate stage: benchmarks scored for the policy-stage and trained models, and the "
        "quick held-out check the policy and train stages report",
    )
    lock_timeout_s: float = Field(
        600.0,
        ge=0,
        description="a run that finds its workdir held by "
        "another run waits this long for it, then fails naming the holder "
        "(0: fail at once); `oger run --lock-timeout` overrides it",
        json_schema_extra=not_in_key("how long a run waits for another"),
    )
    retention: RetentionConfig = Field(
        RetentionConfig(),
        description="what `oger gc` keeps",
        json_schema_extra=not_in_key("what gc keeps: no stage's output"),
    )
    sweep: SweepConfig = Field(
        SweepConfig(),
        description="arms and seeds of `oger sweep`, and how their results are compared",
        json_schema_extra=not_in_key("a sweep's arms and seeds become ordinary stage configs, keyed as such"),
    )
    logging: LoggingConfig = Field(
        LoggingConfig(),
        description="experiment trackers (TensorBoard, W&B, MLflow) the runs are logged to",
        json_schema_extra=not_in_key("a tracker records a run, it never changes one"),
    )

    # Set by the loader, not by YAML.
    source_file: str | None = Field(
        None,
        exclude=True,
        description="the YAML file this config was read from (set by the loader, for messages and run records)",
        json_schema_extra=not_in_key("where the YAML was read"),
    )

    @model_validator(mode="after")
    def _teacher_names(self) -> "OgerConfig":
        """A teacher named in index.teachers or policy.sft.teachers is one of teachers.teachers (a typo
        would silently index or train on nothing of it)."""
        names = {t.name for t in self.teachers.teachers}
        for where, listed in (
            ("index.teachers", self.index.teachers),
            ("policy.sft.teachers", self.policy.sft.teachers),
        ):
            unknown = sorted(set(listed or ()) - names)
            if unknown:
                raise ValueError(f"{where}: no teacher named {unknown}; teachers: {sorted(names)}")
        return self

    @property
    def workdir_path(self) -> Path:
        return Path(os.path.expanduser(self.workdir.format(name=self.name))).resolve()
