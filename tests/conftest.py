import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OGER_DATA_DIR") or REPO / "data")  # the repo's data/ unless pointed elsewhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA / "benchmarks").is_dir(), f"benchmark data not found at {DATA} (data/ or OGER_DATA_DIR)"
    return DATA


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect_home")


@pytest.fixture
def run_oger(prefect_home):
    """Run the real `oger` CLI in a subprocess; returns CompletedProcess (text)."""

    def _run(*args, timeout=900):
        env = dict(os.environ, PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
        return subprocess.run([sys.executable, "-m", "oger.cli", *map(str, args)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return _run
