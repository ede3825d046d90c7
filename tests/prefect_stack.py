"""A real Prefect server + process worker for deployment tests, on a free loopback port with its
own PREFECT_HOME; stopped by PID (worker: SIGINT, as a process worker needs)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "oger-process"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectStack:
    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = dict(
            os.environ,
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PYTHONUNBUFFERED="1",
        )
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.home / log, "w")
        return subprocess.Popen(
            [PREFECT, *args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def start(self) -> None:
        self.server = self._spawn(["server", "start", "--host", "127.0.0.1", "--port", str(self.port)], "server.log")
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert self.server.poll() is None, (self.home / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "prefect server did not become healthy in 180 s"
            time.sleep(1)
        for pool in (POOL, "oger-gpu"):  # prefect.yaml deploys the paper configs to oger-gpu
            self.cli("work-pool", "create", pool, "--type", "process")
        self.cli("deploy", "--all")
        self.worker = self._spawn(["worker", "start", "--pool", POOL, "--type", "process"], "worker.log")

    def run_deployment(self, name: str, params: dict, timeout: int = 900) -> dict:
        """`prefect deployment run NAME --param k=v ... --watch` (strings bare, as the README
        writes them; others JSON); returns the flow run (JSON) once it is terminal."""
        args = [a for k, v in params.items() for a in ("--param", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]
        proc = subprocess.run(
            [
                PREFECT,
                "--no-prompt",
                "deployment",
                "run",
                name,
                *args,
                "--watch",
                "--watch-interval",
                "2",
                "--watch-timeout",
                str(timeout),
            ],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
        )
        ids = _UUID.findall(proc.stdout)
        assert ids, proc.stdout + proc.stderr
        return self.flow_run(ids[0])

    def flow_run(self, run_id: str) -> dict:
        return json.loads(self.cli("flow-run", "inspect", run_id, "--output", "json").stdout)

    def task_states(self, flow_run_id: str) -> dict[str, str]:
        """{stage: Prefect state name} of a flow run's task runs (named `<stage>-<key8>`)."""
        body = json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}}).encode()
        req = urllib.request.Request(
            f"{self.api}/task_runs/filter", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            runs = json.loads(r.read())
        return {t["name"].rsplit("-", 1)[0]: t["state"]["name"] for t in runs}

    def artifacts(self, flow_run_id: str) -> list[dict]:
        """The artifacts of a flow run (`POST /api/artifacts/filter`, as the UI asks)."""
        body = json.dumps({"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).encode()
        req = urllib.request.Request(
            f"{self.api}/artifacts/filter", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def schedules_active(self, deployment: str) -> list[bool]:
        dep = json.loads(self.cli("deployment", "inspect", deployment, "--output", "json").stdout)
        return [sch["active"] for sch in dep["schedules"]]

    def worker_log(self) -> str:
        return (self.home / "worker.log").read_text()

    def stop(self) -> list[str]:
        """Worker first (SIGINT), then the server (SIGTERM), each by PID; returns which of them
        ignored the signal for 60 s and had to be killed (with what they started)."""
        killed = []
        for what, proc, sig in (("worker", self.worker, signal.SIGINT), ("server", self.server, signal.SIGTERM)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                killed.append(what)
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
                proc.wait(timeout=30)
        return killed


@contextlib.contextmanager
def running_stack(home: Path) -> Iterator[PrefectStack]:
    """A started stack in `home` (a test module's fixture), stopped however the module ends."""
    s = PrefectStack(home)
    try:
        s.start()
        yield s
    finally:
        s.stop()
