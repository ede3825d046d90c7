"""`oger run` starts Prefect's temporary server before its imports and checks (flows/early_server.py):
flows report to it, a port taken between the check and uvicorn's bind is retried, and nothing is
started when PREFECT_API_URL names a server."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
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
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
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
        server.wait(120)  # uvicorn exits with STARTUP_FAILURE, the port is taken: relaunched elsewhere
        assert server.port != port
    finally:
        server.stop()
        taken.close()
    assert server.process is None


def test_a_server_that_fails_its_start_up_is_an_error_at_once_not_a_relaunch_loop(tmp_path):
    # uvicorn exits with the same code (3) for a taken port and for an app that cannot start (here:
    # a Prefect home whose folder does not exist, so its database cannot open). Only a taken port is
    # relaunched; this one fails at once, not after the whole start-up bound.
    server = early.EarlyServer({**os.environ, "PREFECT_HOME": str(tmp_path / "missing" / "home")})
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3 before answering"):
        server.wait(170)
    assert time.monotonic() - started < 120


class DelayedServer(early.EarlyServer):
    """The real server, started `delay_s` late: a start slower than Prefect's 20 s default."""

    delay_s = 21.0

    def command(self) -> list[str]:
        python, _, _, *args = super().command()  # python -m uvicorn ARGS
        delayed = (
            f"import runpy, sys, time; time.sleep({self.delay_s}); sys.argv = ['uvicorn', *sys.argv[1:]]; "
            f"runpy.run_module('uvicorn', run_name='__main__')"
        )
        return [python, "-c", delayed, *args]


class ExitingServer(early.EarlyServer):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(7)"]


def test_the_timeout_can_be_set_and_a_dead_server_fails_at_once(monkeypatch):
    monkeypatch.setenv("OGER_SERVER_START_TIMEOUT_S", "3")
    assert early.start_timeout_s() == 3.0
    server = DelayedServer(dict(os.environ))
    with pytest.raises(RuntimeError, match="within 3 s; set OGER_SERVER_START_TIMEOUT_S"):
        server.wait()
    assert server.process is None  # stopped, not left behind

    broken = ExitingServer(dict(os.environ))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 7"):
        broken.wait(60)
    assert time.monotonic() - started < 30  # an exit is not waited out


def _spin() -> None:
    while True:
        pass


@pytest.mark.slow
def test_a_start_slower_than_prefects_default_under_cpu_load_is_waited_for(tmp_path, capsys):
    # The failure of a busy machine: Prefect's 20 s start-up timeout made `make test` fail with
    # "did not answer within 20 s". Here every core spins, the Prefect home is fresh (its database
    # is migrated at start, the slow part) and the server starts 21 s late on top: the production
    # wait (ours, 180 s) still sees it answer, and says what it waits for.
    assert early.start_timeout_s() >= 180
    spinners = [
        multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 2)
    ]
    for p in spinners:
        p.start()
    server = None
    try:
        time.sleep(1.0)
        server = DelayedServer({**os.environ, "PREFECT_HOME": str(tmp_path / "home")})
        waited = server.wait()
        print(f"server answered after {waited:.1f} s with {len(spinners)} busy cores")
        assert waited > DelayedServer.delay_s
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
            assert response.status == 200
    finally:
        if server is not None:
            server.stop()
        for p in spinners:
            p.kill()
            p.join()
    assert "Waiting for Prefect's temporary server" in capsys.readouterr().err


def test_nothing_starts_when_a_server_is_configured():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert early.start_early() is None


@pytest.mark.slow
def test_cli_run_uses_the_early_server_and_prints_no_link_to_a_missing_ui(tmp_path):
    # The real CLI in a fresh interpreter: the early path is taken (the log says nothing of
    # Prefect starting its own temporary server) and the run completes.
    cfg = REPO / "configs" / "tiny.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oger.cli",
            "run",
            str(cfg),
            "--until",
            "problems",
            "--set",
            f"workdir={tmp_path / 'w'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Starting temporary server" not in proc.stderr
    assert "View at" not in proc.stderr
    assert "Finished in state Completed" in proc.stderr
