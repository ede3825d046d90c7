"""Prefect's temporary API server for `oger run` / `oger sweep` without PREFECT_API_URL, started
before the command's imports and input checks instead of at its first flow call.

Why: at the first flow call Prefect imports its whole server stack into the calling process (3.6 s
here) only to launch `uvicorn` in a subprocess, then waits for that process to answer (4.1 s):
7.7 s of a 12.4 s fully cached `oger run configs/tiny.yaml`. Launched first, the server boots on
the other core while this process loads torch and checks the inputs. It is the same server as
Prefect's own (its app factory in ephemeral mode, no UI, the profile's database), one per process,
stopped at exit after Prefect's log and event workers have drained into it; with PREFECT_API_URL
set (a real server, a worker) nothing changes.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

# uvicorn's exit code when it could not start: the port was taken between our check and its bind
# (relaunched elsewhere), or the app failed its start-up (a database it cannot open: an error).
STARTUP_FAILURE = 3
MAX_RELAUNCHES = 5
# How long a start may take. Prefect's own default (20 s, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)
# is too short on a busy 2-core machine: a first start migrates a fresh database while the other core
# trains, and `make test` failed there with 11 errors. A live process is waited for up to this long;
# one that exits fails at once, so a generous bound costs nothing when the server is really broken.
DEFAULT_START_TIMEOUT_S = 180.0
SLOW_START_NOTICE_S = 15.0  # past this, one line says what the command is waiting for


def start_timeout_s() -> float:
    """`OGER_SERVER_START_TIMEOUT_S` when set, else the larger of Prefect's setting and 180 s."""
    override = os.environ.get("OGER_SERVER_START_TIMEOUT_S")
    if override:
        return float(override)
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), DEFAULT_START_TIMEOUT_S)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


class EarlyServer:
    """One uvicorn process serving Prefect's API on a free local port."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._launch()
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def command(self) -> list[str]:
        """uvicorn serving Prefect's app factory on `self.port`."""
        site = Path(importlib.util.find_spec("prefect").origin).parent.parent
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(site),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]

    def _launch(self) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            self.command(),
            env={**self.env, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
        )

    def wait(self, timeout_s: float | None = None) -> float:
        """Until the API answers its health check (default bound: `start_timeout_s()`); relaunches
        on another port if the chosen one was taken meanwhile. Returns the seconds waited."""
        timeout_s = start_timeout_s() if timeout_s is None else timeout_s
        start = time.monotonic()
        deadline = start + timeout_s
        noticed, relaunches = False, 0
        while time.monotonic() < deadline:
            if not noticed and time.monotonic() - start > SLOW_START_NOTICE_S:
                print(
                    f"Waiting for Prefect's temporary server to start (up to {timeout_s:.0f} s; the machine is busy?)",
                    file=sys.stderr,
                    flush=True,
                )
                noticed = True
            code = self.process.poll()
            if code == STARTUP_FAILURE and relaunches < MAX_RELAUNCHES and _port_taken(self.port):
                relaunches += 1
                self._launch()
                continue
            if code is not None:
                raise RuntimeError(
                    f"Prefect's temporary server exited with code {code} before answering (see its output above)"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"Prefect's temporary server did not answer within {timeout_s:.0f} s; "
            f"set OGER_SERVER_START_TIMEOUT_S to wait longer, or PREFECT_API_URL to "
            f"use a running server"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


_running: EarlyServer | None = None


def _prefect_server_running() -> bool:
    """Prefect's own temporary server already serves this process (an earlier flow call)."""
    server = sys.modules.get("prefect.server.api.server")  # never imported just to ask
    instances = getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {})
    return any(getattr(s, "running", False) for s in instances.values())


def start_early() -> EarlyServer | None:
    """Launch the server now when this command would start a temporary one anyway (no
    PREFECT_API_URL, ephemeral servers allowed, none running yet); None otherwise. Like Prefect's,
    one per process: later calls (in-process tests) get the running one; it stops at exit."""
    global _running
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, get_current_settings

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    if _running is not None and _running.process is not None and _running.process.poll() is None:
        return _running
    if _prefect_server_running():
        return None
    # The profile's settings (database, home) travel as environment variables, as Prefect does.
    _running = EarlyServer({**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)})
    return _running


@contextlib.contextmanager
def reporting_to(server: EarlyServer | None) -> Iterator[None]:
    """Flows called inside the block report to `server` (waiting for it to answer first); no-op
    for None (Prefect's own behaviour)."""
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    server.wait()
    # No UI URL: this server serves none, so Prefect prints no "View at" link (as for its own).
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
        yield
