"""`make serve`: a real Prefect server and oger-process worker start in the background with the
deployments registered, print the UI address and how to stop them, and stop by PID."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flows.ui import artifact_key
from tests.prefect_stack import free_port

REPO = Path(__file__).resolve().parents[1]


def test_artifact_keys_use_the_alphabet_prefect_allows():
    assert artifact_key("report", "qwen2.5-math-7b-oger") == "oger-report-qwen2-5-math-7b-oger"
    assert artifact_key("stages", "Tiny_Run") == "oger-stages-tiny-run"


@pytest.mark.slow
def test_serve_starts_server_and_worker_and_stops_both(tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        OGER_SERVE_DIR=str(tmp_path / "serve"),
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_UI_ENABLED="false",
    )
    serve = [sys.executable, "-m", "flows.serve"]
    started = subprocess.run(
        [*serve, "start", "--port", str(port)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    pids = {
        n: int((tmp_path / "serve" / f"{n}.pid").read_text())
        for n in ("server", "worker")
        if (tmp_path / "serve" / f"{n}.pid").exists()
    }
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Prefect UI:  http://127.0.0.1:{port}" in started.stdout
        assert "make serve-stop" in started.stdout and "prefect deployment run 'oger-pipeline/tiny'" in started.stdout
        body = json.dumps({}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/deployments/filter", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            names = {d["name"] for d in json.loads(r.read())}
        assert {"tiny", "nightly-retrain"} <= names
        assert set(pids) == {"server", "worker"}
    finally:
        stopped = subprocess.run([*serve, "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert stopped.returncode == 0 and "stopped worker" in stopped.stdout and "stopped server" in stopped.stdout
    for pid in pids.values():
        with pytest.raises(OSError):
            os.kill(pid, 0)
