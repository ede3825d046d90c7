"""Keys that cannot go stale: whether a config field changes a stage's result is declared on the
field itself, in the schema (`oger.contract.config`), and a stage's config slice is derived from
that declaration (`key_dump`) instead of a hand-kept list of fields to drop.

Why: a slice kept by hand silently misses a field that `run` reads, and a user who reruns one stage
after changing that field gets the old artifact back with no error. Every field is in the key
unless its schema entry says otherwise, with a reason:

- `not_in_key(why)`: cannot change the result (paths, workers, logging, timeouts, batch sizes that
  do not change samples); tests perturb these and check the artifact is byte-identical.
- `omitted_at_default(why)`: in the key only when it differs from its default, so keys made before
  the option existed stay valid (the default is what the code did before).
- `inert(why)`: in the key except when the model's `inert_fields()` says the other fields make it
  unable to act (train's clip settings with one optimizer step per batch).
- `flat_in_key(why)` (a section): in the key, its fields merged into the parent's under their
  `serialization_alias` or name (a section added later keeps the keys made before it).
- `resolved(why)`: the stage puts a resolved form in its slice or identity instead of the raw value
  (a model alias -> its content fingerprint; `precision: auto` -> what runs on this machine).

`tests/test_keys.py` walks every field of every section and fails on a field no stage keys and no
rule marks, and traces what each stage reads while it runs against what its key covers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

KEY = "key"  # the json_schema_extra entry holding a field's rule
RULES = ("in", "no", "omitted_at_default", "inert", "resolved")
FLAT = "flat"  # a section whose fields sit in the parent's key (`flat_in_key`)


def _rule(kind: str, why: str) -> dict:
    if not why:
        raise ValueError("a key rule needs its reason")
    return {KEY: kind, "why": why}


def not_in_key(why: str) -> dict:
    return _rule("no", why)


def omitted_at_default(why: str) -> dict:
    return _rule("omitted_at_default", why)


def inert(why: str) -> dict:
    return _rule("inert", why)


def resolved(why: str) -> dict:
    return _rule("resolved", why)


def flat_in_key(why: str) -> dict:
    return {**_rule("in", why), FLAT: True}


def field_rule(model_cls: type[BaseModel], name: str) -> tuple[str, str]:
    """(rule, reason) of one field; ("in", "") when the schema declares nothing."""
    extra = model_cls.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and KEY in extra:
        return str(extra[KEY]), str(extra.get("why", ""))
    return "in", ""


def _is_flat(info) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(FLAT))


def inert_fields(model: BaseModel) -> set[str]:
    """Fields the model's other values make unable to act (its `inert_fields()` method, if any)."""
    hook = getattr(type(model), "inert_fields", None)
    return set(hook(model)) if hook is not None else set()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return key_dump(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def key_dump(model: BaseModel) -> dict:
    """`model.model_dump(mode="json")` restricted to what changes the result, recursively: fields
    marked `no` or `resolved` are left out (a stage adds the resolved form itself),
    `omitted_at_default` ones while at their default, `inert` ones while the model says they
    cannot act. Values are read as attributes, so a test can trace what a key covers."""
    cls = type(model)
    idle = inert_fields(model)
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if info.exclude:
            continue
        rule, _ = field_rule(cls, name)
        if rule in ("no", "resolved") or (rule == "inert" and name in idle):
            continue
        value = getattr(model, name)
        if rule == "omitted_at_default" and value == info.get_default(call_default_factory=True):
            continue
        if _is_flat(info) and isinstance(value, BaseModel):
            inner = key_dump(value)
            aliases = {n: f.serialization_alias or n for n, f in type(value).model_fields.items()}
            for sub, v in inner.items():
                flat = aliases.get(sub, sub)
                if flat in out or flat in cls.model_fields:
                    raise ValueError(
                        f"{cls.__name__}.{name}.{sub}: its flat key name {flat!r} is taken in {cls.__name__}"
                    )
                out[flat] = v
            continue
        out[name] = _plain(value)
    return to_jsonable_python(out)  # as model_dump(mode="json") gives them (dates, paths)
