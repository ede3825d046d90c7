"""Shared test fixtures.

- `small_config`: the one builder of small pipeline configs (synthetic arithmetic, scripted
  teachers); `small_config.RL_UPSTREAM` the upstream sections every training test shares, with
  `rl_workdir` the session workdir where those stages run once.
- `oger_in_process`: `oger ARGS` through `oger.cli.main` in this process (one Prefect ephemeral
  server for the session); `run_oger`: the real CLI in a subprocess, for tests whose subject is
  the process (exit code, printed error) or that need a fresh interpreter.
"""

import atexit
import contextlib
import copy
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OGER_DATA_DIR") or REPO / "data")  # the repo's data/ unless pointed elsewhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# As `oger` sets it for its own runs (oger.cli.quiet_threads), before torch loads OpenMP: two workers
# on two cores oversubscribe the threads, and spinning threads then wait out a time slice at each of a
# decode's hundreds of small parallel regions (SmolLM2's packed-decoding test beside a busy 2-thread
# loop: 22 s spinning, 13.5 s passive; 4.9 s alone).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA / "benchmarks").is_dir(), f"benchmark data not found at {DATA} (data/ or OGER_DATA_DIR)"
    return DATA


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect_home")


# Flows run in this process get a Prefect home of their own (database, result storage), set before
# anything imports prefect; CLI subprocesses get another (`prefect_home`), deployments a third.
IN_PROCESS_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="oger-test-prefect-"))
os.environ["PREFECT_HOME"] = str(IN_PROCESS_PREFECT_HOME)
# Prefect's own temporary server (flows called directly) waits as long as `oger run`'s does: its
# 20 s default failed on this busy 2-core machine (flows/early_server.py).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
atexit.register(shutil.rmtree, IN_PROCESS_PREFECT_HOME, ignore_errors=True)


@pytest.fixture
def run_oger(prefect_home):
    """Run the real `oger` CLI in a subprocess; returns CompletedProcess (text)."""

    def _run(*args, timeout=900):
        env = dict(os.environ, PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
        return subprocess.run(
            [sys.executable, "-m", "oger.cli", *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


# --------------------------------------------------------------------------- small configs


def scripted(style: str, slip_rate: float | None = None, **extra) -> dict:
    """A scripted teacher (no model) named after its style."""
    t = {"name": style, "backend": "scripted", "model": style, **extra}
    if slip_rate is not None:
        t["slip_rate"] = slip_rate
    return t


# The tiny policy the training tests build (d=64, 2 layers), warm-started by a short SFT.
TINY_POLICY = {
    "tiny": {"vocab_size": 320, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "sft": {"epochs": 3, "batch_size": 16, "lr": 0.003},
}
# What the training tests train from (problems -> policy): the same sections in every RL test, so
# in the session's `rl_workdir` those stages run once and each test adds only its train stage.
RL_UPSTREAM = {
    "n_train": 40,
    "n_test": 8,
    "teachers": [scripted("stepwise", 0.2), scripted("terms")],
    "policy": TINY_POLICY,
    "evaluate": {"heldout": {"limit": 8, "max_new_tokens": 40}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class SmallConfig:
    """The one builder of the small pipeline configs tests run: synthetic arithmetic (single digits,
    + and -, 2-3 operands), scripted teachers (no model), SmolLM2's tokenizer in the filter.
    Everything else is the config's defaults unless a test says otherwise, so each test's config
    shows only what it is about. Tests get it as the `small_config` fixture."""

    scripted = staticmethod(scripted)
    TINY_POLICY = TINY_POLICY
    RL_UPSTREAM = RL_UPSTREAM

    def data(
        self,
        name: str = "small",
        *,
        n_train: int = 30,
        n_test: int = 5,
        teachers: list[dict] | None = None,
        source: dict | None = None,
        **sections,
    ) -> dict:
        """The config as a dict. `source` merges into the synthetic source; each of `sections`
        (filter=, policy=, train=, runner=, evaluate=, ...) merges into that section."""
        src = {
            "kind": "synthetic",
            "name": "arith",
            "n_train": n_train,
            "n_test": n_test,
            "max_operands": 3,
            "max_value": 9,
            "ops": "+-",
            **(source or {}),
        }
        data = {
            "name": name,
            "problems": {"sources": [src]},
            "teachers": {"teachers": teachers if teachers is not None else [scripted("stepwise", 0.2)]},
            "filter": {"tokenizer": "smollm2", "max_tokens": 200},
        }
        return _merge(data, sections)

    def write(self, folder: Path, name: str = "small", **kw) -> Path:
        """`folder/<name>.yaml`; its path (for the CLI, the flow, or load_config)."""
        path = Path(folder) / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.data(name, **kw), sort_keys=False))
        return path

    def load(self, folder: Path, *overrides: str, name: str = "small", **kw):
        """Written to `folder` and loaded with workdir `folder/w` (then `overrides`)."""
        from oger.contract.config import load_config

        return load_config(self.write(folder, name, **kw), [f"workdir={Path(folder) / 'w'}", *overrides])


@pytest.fixture(scope="session")
def small_config() -> SmallConfig:
    return SmallConfig()


@pytest.fixture(scope="session")
def rl_workdir(tmp_path_factory) -> Path:
    """One workdir for the session's training tests (configs built on `RL_UPSTREAM`): their
    upstream stages are computed by the first of them and are cache hits for the others."""
    return tmp_path_factory.mktemp("rl_work")


# --------------------------------------------------------------------------- the CLI in process


class _Records(logging.Handler):
    """Log lines (Prefect's task and flow runs, prints inside them) as Prefect's console writes
    them, `LEVEL | Task run 'name' - message`; prefect itself is not imported here, so the flow
    module's Prefect settings still apply when it is."""

    def __init__(self, sink: io.StringIO):
        super().__init__(level=logging.INFO)
        self.sink = sink

    def emit(self, record):
        msg = record.getMessage()
        if getattr(record, "task_run_name", None):
            line = f"Task run {record.task_run_name!r} - {msg}"
        elif getattr(record, "flow_run_name", None):
            line = f"Flow run {record.flow_run_name!r} - {msg}"
        else:
            line = f"{record.name} - {msg}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        self.sink.write(f"{record.levelname:<7} | {line}\n")


def oger_main(*args) -> subprocess.CompletedProcess:
    """`oger ARGS` in this process, through `oger.cli.main` (parsing, exit code, printed output),
    without a new interpreter and Prefect server per call. stdout is what the CLI prints; stderr
    holds everything else written to sys.stderr plus Prefect's log lines (the console's)."""
    from oger.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = _Records(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
    return subprocess.CompletedProcess(["oger", *map(str, args)], rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def oger_in_process():
    """`oger_main` as a fixture, for session- and module-scoped runs too."""
    return oger_main


# --------------------------------------------------------------------------- two workers

# `make test` runs two pytest-xdist workers with `--dist loadfile`: each test file goes to one
# worker, so its module-scoped runs (the demo in test_pipeline_e2e.py, the deployment stack) are
# made once. The longest files are collected first and handed out in that order (tests/durations.py).


def pytest_collection_modifyitems(config, items):
    from tests.durations import longest_files_first

    items[:] = longest_files_first(items)


@pytest.fixture
def one_launch_at_a_time():
    """Tests that launch ranks (torchrun, accelerate launch) hold this machine-wide lock, so the two
    workers never run two launches side by side: two gloo launches at once aborted the 2-rank
    DDP test once."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "oger-tests-rank-launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
