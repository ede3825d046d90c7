import json

import pytest

from oger.contract.artifacts import artifact_dir, load_complete, stage_key, write_artifact


def test_stage_key_is_canonical_and_sensitive():
    k = stage_key("filter", 1, {"b": 2, "a": 1}, {"teachers": "x"}, {"tok": "f"})
    assert k == stage_key("filter", 1, {"a": 1, "b": 2}, {"teachers": "x"}, {"tok": "f"})
    assert len(k) == 64
    others = [
        stage_key("index", 1, {"a": 1, "b": 2}, {"teachers": "x"}, {"tok": "f"}),
        stage_key("filter", 2, {"a": 1, "b": 2}, {"teachers": "x"}, {"tok": "f"}),
        stage_key("filter", 1, {"a": 1, "b": 3}, {"teachers": "x"}, {"tok": "f"}),
        stage_key("filter", 1, {"a": 1, "b": 2}, {"teachers": "y"}, {"tok": "f"}),
        stage_key("filter", 1, {"a": 1, "b": 2}, {"teachers": "x"}, {"tok": "g"}),
    ]
    assert len({k, *others}) == 6


def test_complete_artifact_roundtrip(tmp_path):
    with write_artifact(tmp_path, "s", "k" * 64, config_slice={"x": 1}, upstream={"u": "v"}) as out:
        out.file("data.txt").write_text("hello")
        out.metrics = {"n": 1}
    ref = load_complete(tmp_path, "s", "k" * 64)
    assert ref is not None and ref.metrics == {"n": 1}
    manifest = json.loads((ref.dir / "manifest.json").read_text())
    assert manifest["files"] == ["data.txt"] and manifest["inputs"] == {"u": "v"}
    assert manifest["complete"] and "wall_seconds" in manifest and "packages" in manifest


def test_failure_after_partial_write_leaves_nothing(tmp_path):
    key = "a" * 64
    with pytest.raises(RuntimeError):
        with write_artifact(tmp_path, "s", key, config_slice={}, upstream={}) as out:
            out.file("part.parquet").write_text("half")
            raise RuntimeError("crash mid-stage")
    assert load_complete(tmp_path, "s", key) is None
    assert not artifact_dir(tmp_path, "s", key).exists()
    assert list((tmp_path / "artifacts" / "s").iterdir()) == []


def test_failed_refresh_keeps_previous_artifact(tmp_path):
    key = "b" * 64
    with write_artifact(tmp_path, "s", key, config_slice={}, upstream={}) as out:
        out.file("v.txt").write_text("v1")
    with pytest.raises(ValueError):
        with write_artifact(tmp_path, "s", key, config_slice={}, upstream={}) as out:
            out.file("v.txt").write_text("v2-partial")
            raise ValueError("boom")
    ref = load_complete(tmp_path, "s", key)
    assert (ref.dir / "v.txt").read_text() == "v1"


def test_incomplete_or_damaged_manifest_is_not_a_hit(tmp_path):
    key = "c" * 64
    d = artifact_dir(tmp_path, "s", key)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"key": key, "stage": "s", "complete": False}))
    assert load_complete(tmp_path, "s", key) is None
    (d / "manifest.json").write_text("{not json")
    assert load_complete(tmp_path, "s", key) is None
    (d / "manifest.json").write_text(
        json.dumps({"key": key, "stage": "s", "complete": True, "files": ["missing.parquet"]})
    )
    assert load_complete(tmp_path, "s", key) is None


def test_stale_tmp_dirs_of_dead_processes_are_cleaned(tmp_path):
    root = tmp_path / "artifacts" / "s"
    stale = root / ".tmp-deadbeef-999999999-abcd"
    stale.mkdir(parents=True)
    with write_artifact(tmp_path, "s", "d" * 64, config_slice={}, upstream={}) as out:
        out.file("x").write_text("1")
    assert not stale.exists()
