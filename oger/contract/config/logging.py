"""Experiment trackers (`logging`): where a run's metrics, config and results are logged besides its
artifacts. No stage's key: a tracker records a run, it never changes one (`oger.tracking`).

Not to be confused with `train.logging` (`TrainLogging`: checkpoints and per-sample logs, which are
files of the train stage itself)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from oger.contract.config.base import Strict

TRACKER_NAMES = ("tensorboard", "wandb", "mlflow")
Tracker = Literal["tensorboard", "wandb", "mlflow"]


class SweepPair(Strict):
    """Which sweep, arm and seed a config is one pair of: set by `oger sweep` (`oger.tracking.sweep_pair`)
    on each pair's config, so the pair's tracker run carries them as tags and sits in the sweep's group.
    It lives in the config because the config is all that reaches the train stage, on any worker."""

    id: str = Field(description="the sweep's id (`<workdir>/sweeps/<id>/`)")
    arm: str = Field(description="the arm this pair runs")
    seed: int = Field(description="the seed this pair runs")


class LoggingConfig(Strict):
    """Experiment trackers: each training step's metrics row, the resolved config and the run's identity
    (config name, round, stage keys; a sweep's id, arm and seed) go to every tracker listed, from rank 0;
    at the end of a pipeline run the evaluation table and the report's plots join the same runs, and the
    report links them. A tracker that cannot be reached or is not installed is dropped with one warning:
    it never stops a run. Not in any key."""

    trackers: list[Tracker] = Field(
        ["tensorboard"],
        description="where runs are logged, any of tensorboard (event files in the train artifact), "
        "wandb (Weights & Biases) and mlflow; [] logs to none",
    )
    project: str | None = Field(
        None, description="the W&B project and the MLflow experiment the runs go to; none: the config's name"
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="the MLflow tracking server or store (http://host:5000, sqlite:///mlflow.db, ...); none: "
        "MLflow's own default (the MLFLOW_TRACKING_URI environment variable, else its local store)",
    )
    wandb_mode: Literal["online", "offline"] | None = Field(
        None,
        description="online: runs stream to the W&B server; offline: they are written under WANDB_DIR "
        "(`wandb sync` uploads them later); none: W&B's own choice (WANDB_MODE, `wandb online/offline`)",
    )
    wandb_entity: str | None = Field(
        None, description="the W&B team or user the runs belong to; none: WANDB_ENTITY, else the API key's default"
    )
    group: str | None = Field(
        None,
        description="runs with the same group sit together (W&B group, MLflow tag `group`); none: a sweep's "
        "pairs are grouped by the sweep's id, other runs are in no group",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="extra tags on every tracker run, e.g. {owner: ana}: MLflow tags, and `key:value` W&B tags",
    )
    sweep: SweepPair | None = Field(
        None, description="set by `oger sweep` on each pair's config (its sweep id, arm and seed); leave unset"
    )

    @field_validator("trackers")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        """A tracker listed twice would log every step twice to the same run."""
        twice = sorted({t for t in v if v.count(t) > 1})
        if twice:
            raise ValueError(f"listed twice: {twice}")
        return v
