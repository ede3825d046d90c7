"""What every node of a multi-node run must see, checked before any training: the run folder (launch
spec, checkpoints, metrics), the model the run starts from, the problems artifact and the teacher index.

Why a check: a multi-node run silently assumes one filesystem (a workdir on NFS or a parallel
filesystem, mounted at the same path everywhere). A node with a local folder at that path instead would
start from other weights, write checkpoints no other node can resume, or fail at its first read deep
inside a step. The driver writes a token file into the run folder; every rank reads it back and looks
for the inputs, and all ranks stop together with one error naming each node and path that failed.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from oger.contract.artifacts import atomic_write
from oger.contract.errors import StageError

TOKEN_FILE = "shared-check.token"


def write_shared_token(run_dir: Path) -> dict:
    """A fresh token in the run folder (written atomically) and what the ranks compare it with."""
    token = uuid.uuid4().hex
    path = run_dir / TOKEN_FILE
    atomic_write(path, lambda tmp: tmp.write_text(token))
    return {"file": str(path), "token": token}


def node_label() -> str:
    """This process's node as the errors name it: its index in the run (OGER_NODE, set by the launcher),
    the Ray node, the host."""
    node = os.environ.get("OGER_NODE", os.environ.get("GROUP_RANK", "?"))
    where = [f"host {socket.gethostname()}"]
    if os.environ.get("OGER_RAY_NODE_ID"):
        where.insert(0, f"ray node {os.environ['OGER_RAY_NODE_ID'][:12]}")
    return f"node {node} ({', '.join(where)})"


def shared_inputs(spec: dict) -> dict[str, str]:
    """{what: path} every rank reads besides the run folder, from the launch spec."""
    from oger.contract.artifacts import ArtifactRef, artifact_path
    from oger.stages.index.files import read_index_info

    out = {"the starting model": spec["init_dir"], "the problems artifact": spec["problems"]}
    ref = ArtifactRef(**spec["index_ref"])
    try:
        out["the teacher index"] = str(read_index_info(ref)["db"])
    except StageError:  # the index artifact itself is not visible: named as such
        out["the index artifact"] = str(artifact_path(ref))
    return out


def missing_here(spec: dict) -> list[str]:
    """What this process cannot see of what the run shares ([] when all is there)."""
    bad = []
    shared = spec.get("shared_token")
    if shared is not None:
        path = Path(shared["file"])
        try:
            seen = path.read_text()
        except OSError:
            seen = None
        if seen != shared["token"]:
            why = "is not there" if seen is None else "holds another run's token"
            bad.append(f"the run folder: {path} {why}")
    for what, path in shared_inputs(spec).items():
        if not Path(path).exists():
            bad.append(f"{what}: {path} is not there")
    return bad


def check_shared(dist, spec: dict) -> None:
    """Every rank checks what it sees; all stop with the same error when any rank misses something."""
    bad = missing_here(spec)
    verdicts = dist.gather({"rank": dist.rank, "node": node_label(), "bad": bad})
    failed = [v for v in verdicts if v["bad"]]
    if failed:
        lines = [f"  {v['node']}, rank {v['rank']}: " + "; ".join(v["bad"]) for v in failed]
        raise StageError(
            "train: not every node sees the run's files (the workdir must be one filesystem mounted at the same "
            "path on every node: artifacts, checkpoints, the index):\n" + "\n".join(lines)
        )
