"""The configuration reference (oger.config_reference, the docs' generated page): every config field is
described, the page lists exactly the model's fields, and its Key column says what the stage keys do."""

import re
import typing

import pytest
from pydantic import BaseModel

from oger import contract, pipeline
from oger.config_reference import Row, key_text, reads, reference_markdown, reference_sections, rows
from oger.contract.config import OgerConfig
from tests.test_keys import VARIANTS, load, with_local_source


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def _is_list(annotation) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return typing.get_origin(annotation) is not typing.Literal and any(_is_list(a) for a in typing.get_args(annotation))


def model_fields(model: type[BaseModel] = OgerConfig, prefix: str = "") -> list[tuple[str, type, str]]:
    """(dotted path, model class, field) of every field under `model`, walked here on its own (not with
    the module's walker) so a field the walker skipped shows up; a list's items are `[]`."""
    out = []
    for name, info in model.model_fields.items():
        path = prefix + name
        out.append((path, model, name))
        inner = path + ("[]" if _is_list(info.annotation) else "")
        for sub in _models(info.annotation):
            out += model_fields(sub, inner + ".")
    return out


@pytest.fixture(scope="module")
def page() -> str:
    return reference_markdown()


def cells(line: str) -> list[str]:
    """A table row's cells: split at pipes outside code spans and not escaped (as Python-Markdown does)."""
    out, cell, code, prev = [], "", False, ""
    for ch in line.strip().removeprefix("|").removesuffix("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code and prev != "\\":
            out.append(cell.strip())
            cell = ""
        else:
            cell += ch
        prev = ch
    return [*out, cell.strip()]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """dotted path -> the row's other cells (Type, Default, Key, Description), from the page's tables."""
    out: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if re.match(r"^\| `[^`]+` \|", line):
            path, *rest = cells(line)
            out[path.strip("`")] = rest
    return out


def test_every_field_has_a_description():
    # Strict on purpose: a new field without a description fails here, naming it.
    missing = sorted(
        f"{path} ({cls.__name__}.{name})"
        for path, cls, name in model_fields()
        if not (cls.model_fields[name].description or "").strip()
    )
    assert not missing, f"config fields without a description: {missing}"


def test_the_page_lists_exactly_the_models_fields(page):
    listed = set(table_rows(page))
    expected = {path for path, _, _ in model_fields()}
    assert listed == expected, (sorted(expected - listed), sorted(listed - expected))
    assert len(expected) > 200  # the walk reaches every section (sources, teachers, guards, ...)


def test_every_row_has_its_five_cells(page):
    for path, cells in table_rows(page).items():
        assert len(cells) == 4, (path, cells)  # Type, Default, Key, Description after the path


def test_the_key_column_of_hand_checked_fields(page):
    key = {path: cells[2] for path, cells in table_rows(page).items()}
    assert key["runner.kind"] == "no (section `runner`)"  # a section marked not_in_key takes its fields out
    assert key["runner"] == "no"
    assert key["workdir"] == "no"
    assert key["train.optim.lr"] == "train"  # an optimizer field: in the train key (flat)
    assert key["train.optim"] == "train (flat)"
    assert key["train.loss.clip"] == "train (while it can act)"  # inert with one optimizer step per batch
    assert key["index.problems"] == "index (unless at its default)"
    assert key["filter.tokenizer"] == "filter (resolved)"
    assert key["policy.instruction"] == "policy, train, evaluate"  # the prompt: every stage that prompts the policy
    assert key["evaluate.heldout.limit"] == "policy"  # the held-out check runs in the policy stage
    assert key["problems.sources[].path"] == "no"  # its content fingerprint is keyed, not the path


@pytest.fixture(scope="module")
def traced_key_inputs(tmp_path_factory) -> dict:
    """(model class, field) -> the stages whose key_inputs read it on tests/test_keys.py's variants, which
    that module checks reach every keyed field."""
    wd = tmp_path_factory.mktemp("reference")
    variants = {**VARIANTS, "local-source": (with_local_source(wd), [])}
    found: dict = {}
    for path, overrides in variants.values():
        cfg = load(path, overrides, wd)
        for name in pipeline.STAGES:
            with reads() as seen:
                contract.get(name).key_inputs(cfg)
            for f in seen:
                found.setdefault(f, set()).add(name)
    return found


def test_the_stages_on_the_page_are_the_stages_whose_key_reads_the_field(traced_key_inputs):
    """The page traces the shipped configs (and falls back to the section above a field none of them
    makes a key read); the key tests' variants are built to reach every keyed field: both must agree."""
    wrong = []
    for row in rows(reference_sections()):
        if row.rule == "no" or row.off_section:
            continue
        traced = traced_key_inputs.get((row.owner, row.name), set())
        if set(row.stages) != traced:
            wrong.append(f"{row.path}: page {row.stages}, traced {sorted(traced)}")
    assert not wrong, wrong


def test_key_text_of_each_rule():
    info = OgerConfig.model_fields["lock_timeout_s"]
    row = Row("a.b", OgerConfig, "lock_timeout_s", info, "omitted_at_default", "why", stages=("index", "train"))
    assert key_text(row) == "index, train (unless at its default)"
    row.rule = "no"
    assert key_text(row) == "no; index, train keys a form derived from it"
    row.rule, row.off_section = "in", "train.distributed"
    assert key_text(row) == "no (section `train.distributed`); index, train keys a form derived from it"
