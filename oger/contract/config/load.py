"""Loading: read the YAML, apply `--set a.b=value` overrides, validate; errors name the key, the value
and the file. (A field from before the sections is an error naming its new place: the `_moved_fields`
validators of `PolicyConfig` and `TrainConfig`.)"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from oger.contract.config.top import OgerConfig
from oger.contract.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.0.c=value`; the value is parsed as a YAML scalar (so 3 is int, true is bool)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any, item: str) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not an index of a list of {len(node)}")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])} is a value, not a section")


def _format_validation_error(exc: ValidationError, data: dict, where: str) -> str:
    lines = [f"{where}: invalid config"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # Pydantic puts union tags in loc (e.g. sources.0.synthetic.n_tain); drop them.
        loc = ".".join(p for p in loc.split(".") if p not in ("synthetic", "local", "hf"))
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> OgerConfig:
    """Read YAML, apply `--set` overrides, validate; errors name the key, value and file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item)
    where = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    try:
        cfg = OgerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, data, where)) from None
    cfg.source_file = str(path.resolve())
    return cfg
