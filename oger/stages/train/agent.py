"""One node's share of a multi-process run: the torchrun (or accelerate) command that starts this node's
ranks of `oger.stages.train.worker`, and running it to its end with its output in a log.

Used by the one-node launch (`distributed.launch`), the first node's agent of a multi-node run without Ray,
and every node's agent on Ray (`ray_nodes`), so a node of a multi-node run runs exactly what one machine
runs, with a rendezvous instead of `--standalone`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from oger.contract.artifacts import atomic_write
from oger.contract.errors import ConfigError
from oger.stages.train.files import spec_path

STOPPED = "[oger-train] stopped: "  # rank 0's line with the StageError that stopped the ranks (`worker`)


WORKER = "oger.stages.train.worker"


def launcher_command(
    launcher: str,
    num_processes: int,
    spec: Path,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "oger-train",
    join_timeout_s: int = 900,
    node: int = 0,
) -> list[str]:
    """The command that starts `oger.stages.train.worker SPEC` on `num_processes` ranks of this node.
    Several nodes: one torchrun agent per node, all with the same c10d rendezvous (the first node's
    host:port, which the agent there serves) and no restarts: a failed rank fails the run, which
    resumes from its last checkpoint when run again; an agent whose peers never come gives up after
    `join_timeout_s` (the collective timeout). `node` 0 hosts the rendezvous store (said outright: torchrun's
    guess, whether the endpoint's host name is this machine's, fails where names do not resolve to it, and
    then no agent serves the store)."""
    if launcher == "torchrun":
        run = [sys.executable, "-m", "torch.distributed.run"]
        if nnodes == 1:
            return [*run, "--standalone", f"--nproc_per_node={num_processes}", "-m", WORKER, str(spec)]
        if rdzv_endpoint is None:
            raise ConfigError("train.distributed.nnodes > 1: the rendezvous needs the first node's host:port")
        return [
            *run,
            f"--nnodes={nnodes}",
            f"--nproc_per_node={num_processes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
            f"--rdzv_id={rdzv_id}",
            f"--rdzv_conf=join_timeout={join_timeout_s},is_host={int(node == 0)}",
            "--max_restarts=0",
            "-m",
            WORKER,
            str(spec),
        ]
    if launcher == "accelerate":
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ConfigError(
                "train.distributed.launcher: accelerate needs the accelerate package "
                "(pip install accelerate), or use train.distributed.launcher: torchrun"
            )
        # --multi_gpu is accelerate's multi-process launcher (torch.distributed.run); without it a
        # CPU machine would get one process. The trainer does its own DDP / FSDP2 wrapping.
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "1",
            "--num_processes",
            str(num_processes),
            "--main_process_port",
            "0",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--module",
            WORKER,
            str(spec),
        ]
    raise ValueError(launcher)


def write_spec(spec: dict, run_dir: Path) -> Path:
    path = spec_path(run_dir)
    text = json.dumps(spec, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


@dataclass
class AgentResult:
    """How one node's launcher ended: its exit status, the ranks' own stop reason (rank 0's `STOPPED`
    line, if it printed one) and the log's last lines."""

    rc: int
    stopped: str | None
    tail: list[str]


def agent_env(num_processes: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra or {}))
    # torchrun would pin every rank to one thread; share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return env


def run_agent(cmd: list[str], log_path: Path, env: dict, echo=print) -> AgentResult:
    """Run one node's launcher to its end, appending its output to `log_path` and passing rank 0's
    progress lines (`[oger-train] ...`) to `echo`. The launcher gets SIGTERM if this process dies
    (Linux), so a cancelled Ray task does not leave ranks behind."""
    tail: deque[str] = deque(maxlen=40)
    stopped = None
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[3],  # the repository root
            preexec_fn=_die_with_parent,
        )
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            if line.startswith("[oger-train]"):
                echo(line.rstrip())
            if line.startswith(STOPPED):
                stopped = line.rstrip().removeprefix(STOPPED)
        rc = proc.wait()
    return AgentResult(rc, stopped, list(tail))


def _die_with_parent() -> None:
    """In the launcher's child process before exec: SIGTERM when the parent goes (prctl PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def rdzv_id(run_dir: Path) -> str:
    """The rendezvous id every node's agent names: the run folder's (the train key's), so agents of two
    runs never join each other."""
    return f"oger-{run_dir.name}"


def node_commands(cfg, run_dir: Path) -> list[str]:
    """What to run on nodes 1.. of a multi-node run without Ray (`oger plan` prints it): the same torchrun
    agent, joining the first node's rendezvous, on the launch spec the first node's `oger run` writes
    into the shared run folder."""
    d = cfg.train.distributed
    endpoint = d.rdzv_endpoint or "FIRST_NODE_HOST:29400"
    out = []
    for i in range(1, d.nnodes):
        cmd = launcher_command(
            d.launcher, d.num_processes, spec_path(run_dir), d.nnodes, endpoint, rdzv_id(run_dir), d.timeout_s, i
        )
        out.append(f"OGER_NODE={i} " + " ".join(["python", *cmd[1:]]))
    return out
