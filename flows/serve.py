"""`make serve` / `make serve-stop`: a local Prefect server and a process worker for the
`oger-process` pool, in the background, with the deployments of prefect.yaml registered.

    python -m flows.serve start [--port 4200]   # prints the UI address and how to stop both
    python -m flows.serve stop                  # worker (SIGINT), then server (SIGTERM), by PID

PIDs and logs live in work/serve/ (`OGER_SERVE_DIR`). Then `prefect deployment run 'oger-pipeline/tiny'` (with
PREFECT_API_URL as printed) runs the tiny config, and the UI shows its DAG, states and artifacts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from oger.contract.artifacts import atomic_write

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("OGER_SERVE_DIR") or REPO / "work" / "serve")  # pids and logs
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOLS = ["oger-process", "oger-gpu"]  # prefect.yaml deploys the paper configs to oger-gpu


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _pid(name: str) -> int | None:
    f = STATE / f"{name}.pid"
    if not f.exists():
        return None
    pid = int(f.read_text())
    return pid if _alive(pid) else None


def _spawn(name: str, args: list[str], env: dict) -> int:
    log = open(STATE / f"{name}.log", "w")
    proc = subprocess.Popen(
        [PREFECT, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    atomic_write(STATE / f"{name}.pid", lambda tmp: tmp.write_text(str(proc.pid)))  # a reader never sees ""
    return proc.pid


def _wait_healthy(api: str, server_pid: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not _alive(server_pid):
            raise SystemExit(f"prefect server exited; see {STATE / 'server.log'}")
        time.sleep(1)
    raise SystemExit(f"prefect server not healthy after {timeout:.0f} s; see {STATE / 'server.log'}")


def start(port: int) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    if _pid("server") or _pid("worker"):
        print(f"already running (pids in {STATE}); `make serve-stop` first", file=sys.stderr)
        return 1
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = _spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
    _wait_healthy(api, server)
    for pool in POOLS:  # an existing pool is fine
        subprocess.run(
            [PREFECT, "--no-prompt", "work-pool", "create", pool, "--type", "process"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
    dep = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True)
    if dep.returncode != 0:
        print(dep.stdout[-2000:] + dep.stderr[-2000:], file=sys.stderr)
        stop()
        return 1
    worker = _spawn("worker", ["worker", "start", "--pool", POOLS[0], "--type", "process"], env)
    print(
        f"Prefect UI:  http://127.0.0.1:{port}   (server pid {server}, worker pid {worker} for pool "
        f"{POOLS[0]}; logs in {STATE})\n"
        f"Run:         export PREFECT_API_URL={api}\n"
        f"             prefect deployment run 'oger-pipeline/tiny'\n"
        f"             (or `oger run configs/tiny.yaml` with PREFECT_API_URL set: it shows up there too)\n"
        f"Stop both:   make serve-stop   (= kill -INT {worker}; kill {server})"
    )
    return 0


def stop() -> int:
    """Worker first (SIGINT lets a process worker shut down cleanly), then the server."""
    for name, sig in (("worker", signal.SIGINT), ("server", signal.SIGTERM)):
        pid = _pid(name)
        if pid is None:
            continue
        os.kill(pid, sig)
        for _ in range(60):
            if not _alive(pid):
                break
            time.sleep(1)
        else:
            os.killpg(pid, signal.SIGKILL)  # its own session: only what it started
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        print(f"stopped {name} (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--port", type=int, default=int(os.environ.get("OGER_SERVE_PORT", 4200)))
    args = p.parse_args(argv)
    return start(args.port) if args.action == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
