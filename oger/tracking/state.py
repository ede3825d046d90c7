"""The state file a training's tracker runs are opened from: the run's identity (project, name, group,
tags, the resolved config), written by the train stage before it trains, and the runs' ids, written back
by rank 0, so a resumed training continues the same runs and the end of the run finds them."""

from __future__ import annotations

import json
from pathlib import Path

from oger.contract.artifacts import atomic_write
from oger.contract.config import OgerConfig, SweepPair


def identity(cfg: OgerConfig, key: str, inputs: dict[str, str], stage: str) -> dict:
    """What a tracker run is called and tagged with: project (`logging.project`, else the config's
    name), name (`<config>-<round>[-<arm>-s<seed>]-<key8>`), group (`logging.group`, else a sweep's id),
    tags (config, round, algorithm, the stage's key and its inputs' keys, a sweep's id, arm and seed, the
    user's `logging.tags`) and the resolved config."""
    lg = cfg.logging
    pair = lg.sweep
    group = lg.group or (pair.id if pair else None)
    tags = {"config": cfg.name, "round": str(cfg.teachers.round), "algorithm": cfg.train.algorithm}
    tags |= {f"key.{stage}": key[:16], **{f"key.{name}": k[:16] for name, k in inputs.items()}}
    if pair is not None:
        tags |= {"sweep": pair.id, "arm": pair.arm, "seed": str(pair.seed)}
    if group:
        tags["group"] = group
    tags |= lg.tags
    parts = [cfg.name, str(cfg.teachers.round), *([pair.arm, f"s{pair.seed}"] if pair else []), key[:8]]
    return {
        "project": lg.project or cfg.name,
        "name": "-".join(parts),
        "group": group,
        "tags": tags,
        "config": cfg.model_dump(mode="json"),
    }


def sweep_pair(cfg: OgerConfig, sweep_id: str, arm: str, seed: int) -> OgerConfig:
    """A sweep pair's config, marked with its sweep, arm and seed (`logging.sweep`): the pair's tracker
    run carries them and sits in the sweep's group. No key moves: `logging` is in none."""
    marked = cfg.logging.model_copy(update={"sweep": SweepPair(id=sweep_id, arm=arm, seed=seed)})
    return cfg.model_copy(update={"logging": marked})


def prepare(path: Path, cfg: OgerConfig, key: str, inputs: dict[str, str], stage: str, resume: bool = False) -> None:
    """Write the state a training's rank 0 opens its trackers from (`Trackers.open`): the trackers,
    their settings and the run's identity; with `resume` (the training continues from a checkpoint)
    the ids of the runs opened before are kept, so the same runs go on."""
    runs = read_state(path).get("runs", {}) if resume else {}
    lg = cfg.logging
    state = {
        "trackers": list(lg.trackers),
        "settings": {
            "mlflow_tracking_uri": lg.mlflow_tracking_uri,
            "wandb_mode": lg.wandb_mode,
            "wandb_entity": lg.wandb_entity,
        },
        "run": identity(cfg, key, inputs, stage),
        "runs": {name: run for name, run in runs.items() if name in lg.trackers},
    }
    write(path, state)


def read_state(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # unreadable: the trainer's default (TensorBoard) is what it gets
        return {}


def recorded_runs(path: Path) -> dict[str, dict]:
    """{tracker: its run's ids, address and settings} as rank 0 recorded them (none for TensorBoard,
    whose events are in the artifact)."""
    return read_state(path).get("runs", {})


def write(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(state, indent=1, default=str)))
