import json
from pathlib import Path

import pytest

from oger.contract.config import FieldMap, HFSource, LocalSource, SyntheticSource
from oger.contract.errors import DataError
from oger.data.hub import resolve_hf_local
from oger.data.normalize import normalize_row, problem_id
from oger.data.sources import load_source

# The first rows of the training files (data/SOURCES.md lists their origin; they are not in data/).
FIXTURES = Path(__file__).parent / "data"


def local(path, **kw):
    return LocalSource(kind="local", name="x", path=str(path), **kw)


def test_gsm8k_answer_and_reference():
    rows = load_source(local(FIXTURES / "train/gsm8k/train.jsonl", limit=3))
    assert len(rows) == 3
    assert rows[0]["answer"] == "72"
    assert "<<" not in rows[0]["reference"] and "#### 72" in rows[0]["reference"]


def test_math_boxed_answer():
    rows = load_source(local(FIXTURES / "train/math_full_test/test.jsonl", format="math", limit=2))
    assert rows[0]["answer"] == "2"
    assert rows[0]["reference"].startswith("The denominator")


def test_luffy_parquet(data_dir):
    rows = load_source(local(data_dir / "benchmarks/luffy_eval/valid.parquet", limit=2))
    assert rows[0]["answer"] == "204"
    assert rows[0]["question"].startswith("Every morning Aya")  # the user turn, not the system prompt


def test_olympiadbench_list_answer(data_dir):
    rows = load_source(local(data_dir / "benchmarks/olympiadbench/test.jsonl", limit=5))
    assert all(r["answer"] and "$" not in r["answer"] for r in rows)


def test_hf_source_resolves_from_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("OGER_DATA_DIR", str(data_dir))
    src = HFSource(kind="hf", name="g", dataset="openai/gsm8k", subset="main", split="test", limit=4)
    assert resolve_hf_local(src) == data_dir / "train/gsm8k/test.jsonl"
    rows = load_source(src)
    assert len(rows) == 4 and rows[0]["split"] == "test"


def test_hf_source_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("OGER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = HFSource(kind="hf", name="g", dataset="nobody/no-such-dataset", split="test")
    with pytest.raises(DataError, match="nobody/no-such-dataset"):
        load_source(src)


def test_row_without_answer_names_file_row_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    with pytest.raises(DataError) as e:
        load_source(local(p, format="plain"))
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and "'answer'" in msg


def test_invalid_json_line_names_row(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match="row 2: not valid JSON"):
        load_source(local(p))


def test_custom_field_mapping():
    row = {"q": "What is 2+3?", "a": "5", "sol": "2+3=5"}
    out = normalize_row(row, "plain", FieldMap(question="q", answer="a", reference="sol"), "f: row 1")
    assert out == {"question": "What is 2+3?", "answer": "5", "reference": "2+3=5"}


def test_synthetic_source_splits():
    rows = load_source(SyntheticSource(kind="synthetic", n_train=10, n_test=5))
    assert [r["split"] for r in rows].count("train") == 10
    assert [r["split"] for r in rows].count("test") == 5
    assert len({problem_id(r["question"]) for r in rows}) == 15


def test_synthetic_test_split_never_repeats_a_train_problem():
    # A small space (single digits, 2-3 operands) where independent draws would collide often.
    rows = load_source(
        SyntheticSource(kind="synthetic", n_train=1000, n_test=200, max_operands=3, max_value=9, ops="+-")
    )
    train = {r["question"] for r in rows if r["split"] == "train"}
    test = [r["question"] for r in rows if r["split"] == "test"]
    assert len(train) == 1000 and len(test) == 200 and not train & set(test)
