"""`oger run` starts Prefect's temporary server before its imports and checks (flows/early_server.py):
flows report to it, a port taken between the check and uvicorn's bind is retried, and nothing is
started when PREFECT_API_URL names a server."""

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.early_server as early
from tests.conftest import REPO


@flow(name="early-server-probe")
def probe() -> int:
    return 7


def _flow_run_names(api_url: str) -> list[str]:
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [r["name"] for r in json.load(response)]


def test_flows_report_to_the_early_server_and_a_second_call_reuses_it():
    server = early.start_early()
    assert server is not None and early.start_early() is server  # one per process, like Prefect's
    with early.reporting_to(server):
        assert probe() == 7
    assert _flow_run_names(server.api_url)  # the probe's run is on the early server
    with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
        assert response.status == 200


def test_a_port_taken_before_uvicorn_binds_it_is_retried_on_another(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    ports = iter([port])
    free = early._free_port
    monkeypatch.setattr(early, "_free_port", lambda: next(ports, None) or free())
    server = early.EarlyServer(dict(os.environ))
    try:
        assert server.port == port
        server.wait(120)  # uvicorn exits with ADDRESS_IN_USE; the wait relaunches it elsewhere
        assert server.port != port
    finally:
        server.stop()
        taken.close()
    assert server.process is None


def test_nothing_starts_when_a_server_is_configured():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert early.start_early() is None


@pytest.mark.slow
def test_cli_run_uses_the_early_server_and_prints_no_link_to_a_missing_ui(tmp_path):
    # The real CLI in a fresh interpreter: the early path is taken (the log says nothing of
    # Prefect starting its own temporary server) and the run completes.
    cfg = REPO / "configs" / "tiny.yaml"
    proc = subprocess.run([sys.executable, "-m", "oger.cli", "run", str(cfg), "--until", "problems",
                           "--set", f"workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PREFECT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Starting temporary server" not in proc.stderr
    assert "View at" not in proc.stderr
    assert "Finished in state Completed" in proc.stderr
