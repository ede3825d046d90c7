"""The configuration reference (the docs' "Configuration reference" page), generated from the config
models: every field of `OgerConfig` with its dotted path, type, default, description and whether a
stage key holds it. `python -m oger.config_reference` prints the page; the docs build generates it
(docs/hooks/config_reference.py), so it cannot fall behind the schema.

Whether a field is in a key comes from the schema's own markers (`oger.contract.keys`), applied as
`key_dump` applies them: a field is in the key unless marked `not_in_key`, and a section marked so
takes its whole subtree out; `omitted_at_default`, `inert` and `resolved` fields are in it with that
condition, and a `flat_in_key` section's fields sit in the parent's key. Which stage's key: the
stages whose `key_inputs` read the field, traced (as tests/key_tracing.py does) while they build
their keys for each shipped config (configs/*.yaml). Tracing the stages' own code instead of a
list kept here means a stage that starts reading another section shows up on the page by itself;
a field no shipped config makes a key read (a local problems file when every shipped config uses
hub data) takes the stages of the nearest section above it that one does.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from oger.contract.config import OgerConfig, Strict, load_config
from oger.contract.keys import FLAT, field_rule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

Field = tuple[type, str]  # (model class, field name), as a trace records it

# What each rule says in the page's Key column, after the stages (the rules: oger.contract.keys).
QUALIFIER = {
    "in": "",
    "omitted_at_default": "unless at its default",
    "inert": "while it can act",
    "resolved": "resolved",
}


@dataclass
class Row:
    """One field on the page."""

    path: str  # dotted; a list's items as `[]`: teachers.teachers[].name
    owner: type[BaseModel]
    name: str
    info: FieldInfo
    rule: str  # in | no | omitted_at_default | inert | resolved (oger.contract.keys.RULES)
    why: str
    flat: bool = False  # a flat_in_key section
    off_section: str | None = None  # the not-in-key section above the field, if any
    stages: tuple[str, ...] = ()  # the stages whose key reads it (traced; see the module docstring)
    section: str | None = None  # the anchor of the section this field holds, if it holds one


@dataclass
class Section:
    """One model on the page: a heading, its docstring and a table of its fields."""

    path: str  # "" for OgerConfig itself
    model: type[BaseModel]
    title: str
    anchor: str
    rows: list[Row] = field(default_factory=list)
    depth: int = 2


# --------------------------------------------------------------------------- walking the models


def models_in(annotation) -> list[type[BaseModel]]:
    """The config models an annotation holds (directly, in a list, a union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def _is_list(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if origin is not typing.Literal else False


def _anchor(path: str, model: type[BaseModel], union: bool) -> str:
    base = path.replace("[]", "").replace(".", "-") or "top-level"
    return f"{base}-{model.__name__.lower()}" if union else base


def walk(root: type[BaseModel] = OgerConfig) -> list[Section]:
    """Every model reachable from `root`, depth first in declaration order, with its fields. A field
    under a section marked not in any key is not in one either (`off_section` names the section)."""
    out: list[Section] = []
    seen: set[str] = set()  # anchors visited: a model at one path under two union members is listed once

    def visit(model, path, title, anchor, off, depth):
        if anchor in seen:
            return
        seen.add(anchor)
        section = Section(path, model, title, anchor, depth=depth)
        out.append(section)
        below = []
        for name, info in model.model_fields.items():
            rule, why = field_rule(model, name)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            dotted = f"{path}.{name}" if path else name
            row = Row(dotted, model, name, info, rule, why, flat=bool(extra.get(FLAT)), off_section=off)
            section.rows.append(row)
            inner = models_in(info.annotation)
            item_path = dotted + ("[]" if _is_list(info.annotation) else "")
            union = len(inner) > 1
            for sub in inner:
                discriminator = sub.model_fields.get("kind")
                kind = typing.get_args(discriminator.annotation) if union and discriminator else ()
                sub_title = item_path + (f" (kind: {kind[0]})" if kind else "")
                sub_anchor = _anchor(item_path, sub, union)
                row.section = row.section or sub_anchor
                sub_off = off or (dotted if rule == "no" else None)
                below.append((sub, item_path, sub_title, sub_anchor, sub_off, 2 if not path else 3))
        for args in below:
            visit(*args)

    visit(root, "", "Top level", "top-level", None, 2)
    return out


def rows(sections: list[Section]) -> list[Row]:
    return [r for s in sections for r in s.rows]


# --------------------------------------------------------------------------- which stage keys a field


@contextlib.contextmanager
def reads() -> Iterator[set[Field]]:
    """Record every attribute read of a config field, as (model class, field name), while the block
    runs (the keys read fields as attributes: `oger.contract.keys.key_dump`)."""
    seen: set[Field] = set()
    had_own = "__getattribute__" in Strict.__dict__
    original = Strict.__getattribute__

    def traced(self, name):
        value = object.__getattribute__(self, name)
        if name in type(self).model_fields:
            seen.add((type(self), name))
        return value

    Strict.__getattribute__ = traced
    try:
        yield seen
    finally:
        if had_own:
            Strict.__getattribute__ = original
        else:
            del Strict.__getattribute__


def reference_configs() -> list[OgerConfig]:
    """The shipped configs, each loaded as `oger run` loads it."""
    paths = sorted(CONFIGS.glob("*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no configs in {CONFIGS}: the reference traces the stage keys on them")
    return [load_config(p) for p in paths]


def key_reads(configs: Iterable[OgerConfig]) -> dict[Field, tuple[str, ...]]:
    """(model class, field) -> the stages whose `key_inputs` read it on any of `configs`, in DAG order."""
    from oger import contract, pipeline  # registers the built-in stages

    found: dict[Field, set[str]] = {}
    for cfg in configs:
        for name in pipeline.STAGES:
            key_inputs = contract.get(name).key_inputs
            with reads() as seen:
                key_inputs(cfg)
            for f in seen:
                found.setdefault(f, set()).add(name)
    order = {n: i for i, n in enumerate(pipeline.STAGES)}
    return {f: tuple(sorted(s, key=order.__getitem__)) for f, s in found.items()}


def assign_stages(sections: list[Section], traced: dict[Field, tuple[str, ...]]) -> None:
    """Each row's stages: traced, else (a field in a key) the nearest section above it that is (a list's
    items: the list). A field marked not in any key takes only what is traced: the stages that key a
    form derived from it."""
    by_path = {r.path: r for r in rows(sections)}
    for row in rows(sections):
        stages = traced.get((row.owner, row.name), ())
        parent = row.path if row.rule != "no" and not row.off_section else ""
        while not stages and "." in parent:
            parent = parent.rsplit(".", 1)[0].removesuffix("[]")
            up = by_path.get(parent)
            stages = traced.get((up.owner, up.name), ()) if up else ()
        row.stages = stages


def reference_sections(configs: Iterable[OgerConfig] | None = None) -> list[Section]:
    sections = walk()
    assign_stages(sections, key_reads(reference_configs() if configs is None else configs))
    return sections


# --------------------------------------------------------------------------- rendering


def type_text(annotation) -> str:
    """An annotation as a reader writes it: `int | None`, `"hf" | "paged"`, `list[str]`."""
    if annotation is type(None) or annotation is None:
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["null"] if type(None) in args else []))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def constraints(info: FieldInfo) -> list[str]:
    """The field's bounds as `>= 1`, `< 1`, `at least 1 item`, `pattern ...`."""
    out = []
    for m in info.metadata:
        if isinstance(m, at.Ge):
            out.append(f"≥ {m.ge}")
        elif isinstance(m, at.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, at.Le):
            out.append(f"≤ {m.le}")
        elif isinstance(m, at.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, at.MinLen):
            out.append(f"at least {m.min_length} item{'s' if m.min_length > 1 else ''}")
        elif getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    return out


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def default_text(row: Row) -> str:
    info = row.info
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel) and row.section:
        return f"[below](#{row.section})"
    return f"`{json.dumps(_plain(value), ensure_ascii=False)}`"


def key_text(row: Row) -> str:
    """The Key column: the stages whose key holds the field, with the rule's condition, or `no`."""
    if row.rule == "no" or row.off_section:
        where = f" (section `{row.off_section}`)" if row.off_section else ""
        if row.stages:  # read by a key in a derived form (a file's fingerprint, a resolved count)
            return f"no{where}; {', '.join(row.stages)} keys a form derived from it"
        return f"no{where}"
    stages = ", ".join(row.stages) or "none"
    qualifier = "flat" if row.flat else QUALIFIER.get(row.rule, row.rule)
    return f"{stages} ({qualifier})" if qualifier else stages


def _cell(text: str) -> str:
    """One line; a pipe outside a code span escaped (inside one it does not end the cell)."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def row_text(row: Row) -> str:
    typ = type_text(row.info.annotation)
    typ = f"[`{typ}`](#{row.section})" if row.section else f"`{typ}`"
    typ = " ".join([typ, *constraints(row.info)])
    desc = row.info.description or ""
    if row.why and not row.off_section:
        desc += f" *Key: {row.why}.*"
    if row.info.exclude:
        desc += " *Set by the loader; not read from the YAML.*"
    cells = [f"`{row.path}`", typ, default_text(row), key_text(row), desc]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


INTRO = """\
# Configuration reference

Every option of an `oger` config file, generated from the config models (`oger/contract/config/`)
each time the site is built, so it lists exactly the fields the loader accepts. Options are
written as YAML sections (`train: {optim: {lr: 1e-4}}`) or overridden on the command line with their
dotted path (`oger run configs/tiny.yaml --set train.optim.lr=1e-4`); a list's items take their index
(`--set teachers.teachers.0.n=4`), shown as `[]` below.

**Key** says whether changing the option changes a stage's key, that is, whether the next run redoes
that stage (and, since each key folds in its inputs' keys, every stage after it) instead of reusing the
cached artifact. It lists the stages whose key holds the field:

- *unless at its default*: in the key only when set to something other than its default (keys made
  before the option existed stay valid);
- *while it can act*: left out while the section's other values make it unable to act (the clip
  settings with one optimizer step per batch);
- *resolved*: the key holds a resolved form (a model's content fingerprint instead of its path or
  alias; `auto` precision as what runs on this machine);
- *flat*: a section whose fields sit in the stage key under their own names;
- `no`: changing it cannot change any stage's result (paths, workers, timeouts, resources, logging);
  the reason follows the description.

The rules are declared on the fields themselves (`oger/contract/keys.py`); which stage reads a field
is traced from the stages' own key code on the shipped configs (`oger/config_reference.py`).
"""


def render(sections: list[Section]) -> str:
    out = [INTRO]
    for s in sections:
        out.append(f"{'#' * s.depth} {s.title} {{ #{s.anchor} }}\n")
        doc = " ".join((s.model.__doc__ or "").split())
        if doc:
            out.append(f"`{s.model.__name__}`: {doc}\n")
        else:
            out.append(f"`{s.model.__name__}`\n")
        out.append("| Field | Type | Default | Key | Description |\n|---|---|---|---|---|")
        out.extend(row_text(r) for r in s.rows)
        out.append("")
    return "\n".join(out)


def reference_markdown(configs: Iterable[OgerConfig] | None = None) -> str:
    """The configuration reference page, in Markdown."""
    return render(reference_sections(configs))


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
