"""Sweep arms: named sets of config overrides (built-in presets and `sweep.arms`), resolved into a
validated config per (arm, seed).

An arm is applied exactly as `--set` items after the sweep's own overrides, so whatever the config
loader accepts an arm accepts, and a field this version does not have fails when the sweep is
planned, before anything runs, naming the arm and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from oger.contract.config import OgerConfig, SweepConfig, load_config
from oger.contract.errors import ConfigError

# The presets, and two controls that separate what the bonus does from what any extra reward does:
#  shuffled-bonus: the OGER bonus values permuted among the eligible rollouts of each batch, so it
#    keeps the bonus' distribution and loses its direction ("directed by divergence" vs "extra
#    reward variance");
#  lam-0-monitor: LUFFY (no bonus) with the encoder still measuring divergence, the baseline for
#    "OGER increases divergence".
PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"train.algorithm": "grpo"},
    "luffy": {"train.algorithm": "luffy"},
    "oger": {"train.algorithm": "oger"},
    "shuffled-bonus": {"train.algorithm": "oger", "train.oger.shuffle_bonus": True},
    "lam-0-monitor": {"train.algorithm": "oger", "train.oger.lam": 0.0, "train.oger.monitor": True},
}
# Sections an arm may not change: every arm shares one workdir (so upstream artifacts are shared),
# the sweep's runner, and the sweep definition itself.
_FIXED = ("name", "workdir", "runner", "sweep")


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]
    source: str  # "preset" or "config"

    def set_items(self) -> list[str]:
        """The arm as `--set` items (values as JSON, which the loader reads as YAML)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


def available_arms(settings: SweepConfig) -> dict[str, Arm]:
    """Presets, then the config's arms (a config arm with a preset's name replaces the preset)."""
    arms = {n: Arm(n, dict(o), "preset") for n, o in PRESETS.items()}
    arms.update({n: Arm(n, dict(o), "config") for n, o in settings.arms.items()})
    return arms


def parse_list(value: str | list | None, what: str) -> list[str]:
    """`a,b,c` (or a list of such strings) -> ["a", "b", "c"], without blanks or repeats."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [x for v in value for x in str(v).split(",")]
    items = [x.strip() for x in items if x.strip()]
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise ConfigError(f"{what}: listed twice: {dup}")
    return items


def parse_seeds(value: str | list | None) -> list[int]:
    out = []
    for item in parse_list(value, "--seeds"):
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(f"--seeds: {item!r} is not an integer (e.g. --seeds 0,1,2)") from None
    return out


def resolve_arms(names: list[str], settings: SweepConfig) -> list[Arm]:
    known = available_arms(settings)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown arm(s) {unknown}; presets: {sorted(PRESETS)}; defined in the "
            f"config's sweep.arms: {sorted(settings.arms) or 'none'}"
        )
    arms = [known[n] for n in names]
    for arm in arms:
        fixed = sorted({k for k in arm.overrides if k.split(".")[0] in _FIXED})
        if fixed:
            raise ConfigError(
                f"arm {arm.name!r}: cannot change {fixed} (all arms share the "
                f"sweep's workdir, runner and sweep section)"
            )
    return arms


def seed_items(seed: int, fields: list[str]) -> list[str]:
    """`--set` items that make a run seed `seed` (sweep.seed_fields, default train.seed and
    evaluate.seed: RL sampling and batch order, evaluation sampling)."""
    return [f"{f}={seed}" for f in fields]


def pair_config(config: str, overrides: list[str], arm: Arm, seed: int, seed_fields: list[str]) -> OgerConfig:
    """The config of one (arm, seed): CONFIG + the sweep's --set items + the arm + the seed."""
    try:
        return load_config(config, [*overrides, *arm.set_items(), *seed_items(seed, seed_fields)])
    except ConfigError as exc:
        raise ConfigError(
            f"arm {arm.name!r} ({arm.source}: {arm.overrides}), seed {seed}: the "
            f"config does not accept it (a field this version lacks, or a bad "
            f"value):\n{exc}"
        ) from None
