"""The benchmark harness itself: RESULT lines, the GPU skip, a small LanceDB lookup, and every
registered bench's configs, inputs and project imports (checked without its timed run, so a moved
config field or function fails here rather than in the next `python -m bench`)."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from bench import BENCHES, lookup

PROJECT = ("oger", "bench", "flows", "tests")  # top-level packages of this repository


def test_lookup_bench_prints_result(capsys):
    lookup.main(rows=2000, per_problem=10, dim=16, batch=4, calls=5)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT lookup lance_ms=") and "rows=2000" in last


def test_gpu_step_skips_cleanly_without_gpu():
    import torch

    proc = subprocess.run([sys.executable, "-m", "bench", "gpu_step"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    if torch.cuda.is_available():
        assert last.startswith("RESULT gpu_step tokens_per_s=")
    else:
        assert last == "RESULT gpu_step skipped=1"


def test_unknown_bench_is_refused():
    proc = subprocess.run([sys.executable, "-m", "bench", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown bench" in proc.stderr


@pytest.mark.parametrize("name", BENCHES)
def test_bench_builds_its_configs_and_inputs(name):
    """Each registered bench's `build()`: the configs (validated by oger.contract.config) and inputs its
    main() runs with, without training, generating or a GPU. A bench without one fails: the registry
    is the list, so a new bench is covered from the day it is registered."""
    module = importlib.import_module(f"bench.{name}")
    build = getattr(module, "build", None)
    assert callable(build), f"bench {name} has no build(): its configs and inputs go untested until it runs"
    built = build()
    assert isinstance(built, dict) and built, f"bench {name}: build() returned {built!r}"


def _project_imports(path: Path):
    """(module, name) of every `from <project module> import name` in a file, the lazy ones inside
    functions included (benches import most of what they time there, which a plain import never runs)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in PROJECT:
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("name", [*BENCHES, "common"])
def test_bench_project_imports_resolve(name):
    """Every name a bench imports from this repository exists where it imports it from (a function that
    moved to another module breaks a bench only when its code path runs; this reads them all)."""
    missing = []
    for module, attr in _project_imports(Path(__file__).parents[1] / "bench" / f"{name}.py"):
        mod = importlib.import_module(module)
        if not hasattr(mod, attr):
            try:
                importlib.import_module(f"{module}.{attr}")  # a submodule: `from oger.algorithm import core`
            except ModuleNotFoundError:
                missing.append(f"from {module} import {attr}")
    assert not missing, f"bench/{name}.py: {missing}"
