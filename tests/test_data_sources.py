"""data/ ships every evaluation set the benchmark registry reads, byte-identical to data/SOURCES.md,
and nothing in the repository reaches for a folder beside it."""

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

import oger.data.roots
from oger.stages.evaluate.benchmarks import REGISTRY, benchmark_path, local_benchmark_size

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def listed_sha256() -> dict[str, str]:
    """file -> sha256 from the table in data/SOURCES.md."""
    rows = re.findall(r"^\| ([\w./-]+) \| ([0-9a-f]{64}) \|", (DATA / "SOURCES.md").read_text(), re.M)
    return dict(rows)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo_data_only(monkeypatch):
    """What a fresh clone sees: OGER_DATA_DIR unset, so the registry reads data/."""
    monkeypatch.delenv("OGER_DATA_DIR", raising=False)
    monkeypatch.setattr(oger.data.roots, "REPO_DATA", DATA)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_benchmark_resolves_under_data_with_the_listed_sha256(name, repo_data_only):
    path = benchmark_path(name)
    assert path is not None, f"{name}: {REGISTRY[name].path} is not in data/"
    rel = path.relative_to(DATA).as_posix()
    assert listed_sha256().get(rel) == sha256(path), f"{rel}: sha256 differs from data/SOURCES.md"
    assert local_benchmark_size(name, limit=3) == 3


def test_every_file_in_data_is_listed_and_matches_and_data_is_small():
    files = {p.relative_to(DATA).as_posix(): p for p in DATA.rglob("*") if p.is_file()}
    files.pop("SOURCES.md")
    listed = listed_sha256()
    assert sorted(files) == sorted(listed)
    assert {f: sha256(p) for f, p in files.items()} == listed
    assert "reference/published_results.json" in files
    assert sum(p.stat().st_size for p in files.values()) < 10 * 2**20


def test_oger_data_dir_takes_precedence_and_data_stays_the_fallback(tmp_path, monkeypatch):
    (tmp_path / "benchmarks/aime24").mkdir(parents=True)
    (tmp_path / "benchmarks/aime24/test.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    monkeypatch.setenv("OGER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(oger.data.roots, "REPO_DATA", DATA)
    assert benchmark_path("aime24") == tmp_path / "benchmarks/aime24/test.jsonl"
    assert benchmark_path("math500") == DATA / "benchmarks/math500/test.jsonl"  # not in OGER_DATA_DIR


def test_nothing_refers_to_a_shared_folder_beside_the_repo():
    tracked = subprocess.run(
        [
            "git",
            "ls-files",
            "Makefile",
            ".ci",
            "tests",
            "oger",
            "flows",
            "bench",
            "configs",
            "prefect.yaml",
            "pyproject.toml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    # The folder's name is assembled here so that this file, too, names no sibling folder.
    sibling = "sha" + "red"
    pattern = re.compile(rf"\.\./{sibling}|{sibling}/data|/ ?[\"']{sibling}[\"']")
    hits = [f for f in tracked if (REPO / f).is_file() and pattern.search((REPO / f).read_text(errors="ignore"))]
    assert hits == []
