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

ADDRESS_IN_USE = 3  # uvicorn's exit code when the port was taken between our check and its bind


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def _launch(self) -> None:
        self.port = _free_port()
        site = Path(importlib.util.find_spec("prefect").origin).parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**self.env, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"})

    def wait(self, timeout_s: float) -> None:
        """Until the API answers its health check; relaunches on another port if the chosen one
        was taken meanwhile."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == ADDRESS_IN_USE:
                self._launch()
                continue
            if code is not None:
                raise RuntimeError(f"Prefect's temporary server exited with code {code} before answering "
                                   f"(see its output above)")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout_s:.0f} s")

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
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  get_current_settings)

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
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  PREFECT_UI_URL, temporary_settings)

    server.wait(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    # No UI URL: this server serves none, so Prefect prints no "View at" link (as for its own).
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
        yield
