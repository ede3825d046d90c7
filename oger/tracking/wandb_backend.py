"""A Weights & Biases run (online or offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oger.tracking.base import PREFIX, cell, columns


class WandB:
    """A Weights & Biases run: `train/*` metrics on the `train/step` axis (a resumed training logs its
    redone steps again without W&B dropping them as steps from the past), tags as `key:value`."""

    name = "wandb"

    def __init__(self):
        self.run = None

    def start(self, run: dict, settings: dict, previous: dict | None) -> dict:
        import wandb

        previous = previous or {}
        kw: dict[str, Any] = {
            "project": previous.get("project") or run.get("project"),
            "entity": previous.get("entity") or settings.get("wandb_entity") or None,
            "mode": previous.get("mode") or settings.get("wandb_mode") or None,
            "group": previous.get("group") or run.get("group"),
            # several runs in one process (a sweep's pairs on threads), none finishing another
            "reinit": "create_new",
            # console capture would mix the output of concurrent runs; metrics are logged explicitly
            "settings": wandb.Settings(console="off"),
        }
        if run.get("name"):
            kw |= {"name": run["name"], "tags": self._tags(run.get("tags", {})), "config": run.get("config")}
            kw["allow_val_change"] = True
        if previous.get("id"):
            kw |= {"id": previous["id"], "resume": "allow"}
        self.run = wandb.init(**kw)
        self.run.define_metric(PREFIX + "step")
        self.run.define_metric(PREFIX + "*", step_metric=PREFIX + "step")
        return {
            "id": self.run.id,
            "project": self.run.project,
            "entity": self.run.entity or None,
            "group": kw["group"],
            "mode": "offline" if self.run.offline else "online",  # reopened the same way at the run's end
            "url": self.run.url,
            "dir": str(self.run.settings.sync_dir),
        }

    @staticmethod
    def _tags(tags: dict[str, str]) -> list[str]:
        return [f"{k}:{v}"[:64] for k, v in tags.items()]  # W&B's limit on a tag's length

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.run.log({PREFIX + "step": step, **{PREFIX + k: v for k, v in values.items()}})

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.run.tags = tuple(dict.fromkeys([*self.run.tags, *self._tags(tags)]))

    def log_table(self, name: str, rows: list[dict]) -> None:
        import wandb

        cols = columns(rows)
        self.run.log({name: wandb.Table(columns=cols, data=[[cell(r.get(c)) for c in cols] for r in rows])})

    def log_image(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({f"plots/{name}": wandb.Image(str(path))})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
