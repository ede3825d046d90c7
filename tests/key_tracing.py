"""What a stage's key covers and what its run reads, traced on the config models themselves.

`reads()` records every attribute read of a config field, as (model class, field name), while a
block runs: reading `cfg.train.lr` records (OgerConfig, "train") and (TrainConfig, "lr"). Keys are
built by `key_inputs` from attribute reads and `oger.contract.keys.key_dump` (which reads the
fields it keeps as attributes too), so the reads of a stage's `key_inputs` are what its key covers.
"""

from __future__ import annotations

import typing
from typing import Iterator

from pydantic import BaseModel

from oger import contract, pipeline
from oger.config_reference import Field, reads  # the one tracer: the configuration reference uses it too
from oger.contract.config import OgerConfig
from oger.contract.keys import field_rule, inert_fields


def key_reads(cfg: OgerConfig) -> dict[str, set[Field]]:
    """stage -> the fields its key reads (key_inputs and extra_inputs), as `pipeline.plan` calls them."""
    out: dict[str, set[Field]] = {}
    plans: dict[str, pipeline.StagePlan] = {}
    for name in pipeline.STAGES:
        stage = contract.get(name)
        with reads() as seen:
            slice_, identity = stage.key_inputs(cfg)
            upstream = {u: plans[u].key for u in stage.upstream}
            if stage.extra_inputs is not None:
                upstream = stage.extra_inputs(cfg, upstream, plans)
        plans[name] = pipeline.StagePlan(name, "-", slice_, identity, upstream)
        out[name] = seen
    return out


def ancestors(name: str) -> set[str]:
    out, todo = set(), list(pipeline.UPSTREAM[name])
    while todo:
        u = todo.pop()
        if u not in out:
            out.add(u)
            todo += pipeline.UPSTREAM[u]
    return out


def _models_in(annotation) -> list[type[BaseModel]]:
    """The config model classes an annotation holds (directly, in a list, a union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def every_field(root: type[BaseModel] = OgerConfig) -> list[Field]:
    """Every field of every model reachable from `root` through fields that may be in a key (a
    field marked not in any key takes its whole subtree with it)."""
    out, seen, todo = [], set(), [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, info in cls.model_fields.items():
            out.append((cls, name))
            if field_rule(cls, name)[0] != "no":
                todo += _models_in(info.annotation)
    return out


def instances(cfg: BaseModel, path: str = "") -> Iterator[tuple[str, BaseModel]]:
    """(dotted path, model) of the config and every model inside it (lists by index)."""
    yield path, cfg
    for name in type(cfg).model_fields:
        value = cfg.__dict__[name]
        items = (
            [(f"{name}", value)] if not isinstance(value, list) else [(f"{name}.{i}", v) for i, v in enumerate(value)]
        )
        for sub, v in items:
            if isinstance(v, BaseModel):
                yield from instances(v, f"{path}{sub}.")


def inert_here(cfg: OgerConfig) -> set[Field]:
    """Fields the config's own values make unable to act (the models' `inert_fields`)."""
    return {(type(m), f) for _, m in instances(cfg) for f in inert_fields(m)}


def not_in_key(root: type[BaseModel] = OgerConfig) -> set[Field]:
    """Fields marked not in any key, and every field of the sections under such a field (a section
    marked `not_in_key`, like train.distributed, takes its whole subtree out of every key)."""
    out: set[Field] = set()
    todo, seen = [(root, False)], set()
    while todo:
        cls, below = todo.pop()
        if (cls, below) in seen:
            continue
        seen.add((cls, below))
        for name, info in cls.model_fields.items():
            off = below or field_rule(cls, name)[0] == "no"
            if off:
                out.add((cls, name))
            todo += [(m, off) for m in _models_in(info.annotation)]
    return out
