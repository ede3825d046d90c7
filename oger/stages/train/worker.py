"""One training rank: `torchrun ... -m oger.stages.train.worker SPEC.json` (the train stage writes SPEC).

SPEC holds the resolved config, the initial model folder, the problems artifact, the index artifact
and the run directory; every rank checks it sees them (`shared_paths`: on several nodes they must be
one filesystem), builds the same inputs, and writes its shard of each checkpoint and its own rollouts
into the run directory; rank 0 writes the metrics and exports the final model there, where the train
stage picks it up. Each rank also records where it ran (`ranks/rank-N.json`: node, host, pid).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def main(spec_path: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from oger.contract.artifacts import ArtifactRef
    from oger.contract.config import OgerConfig
    from oger.contract.errors import StageError
    from oger.models import tokenizer_from_folder
    from oger.stages.problems.files import read_problems
    from oger.stages.train.agent import STOPPED
    from oger.stages.train.distributed import init_from_env
    from oger.stages.train.shared_paths import check_shared, node_label
    from oger.stages.train.stage import train_inputs
    from oger.stages.train.trainer import train

    try:
        spec = json.loads(Path(spec_path).read_text())
    except OSError as e:  # before the process group: this rank's node alone lacks it
        msg = (
            f"train: {node_label()} cannot read the launch spec {spec_path} ({e.strerror}): every node must mount "
            f"the workdir at the same path"
        )
        print(f"{STOPPED}{msg}", flush=True)
        raise StageError(msg) from None
    cfg = OgerConfig.model_validate(spec["config"])
    t, d = cfg.train, cfg.train.distributed
    dist = init_from_env(
        d.backend, d.fsdp, spec.get("precision", "float32"), spec.get("rollout_dtype"), d.nnodes, d.timeout_s
    )

    def progress(row: dict) -> None:
        print(
            f"[oger-train] step {row['step']}/{t.steps} reward={row['reward']:.3f} "
            f"acc={row['env_reward']:.2f} {row['seconds_step']:.1f}s",
            flush=True,
        )

    try:
        try:
            check_shared(dist, spec)  # before anything is read: a node that misses a path is named
            record_rank(Path(spec["run_dir"]), dist)
            dtype = torch.float32 if cfg.policy.dtype == "float32" else torch.bfloat16
            model = AutoModelForCausalLM.from_pretrained(spec["init_dir"], dtype=dtype)
            tokenizer = tokenizer_from_folder(spec["init_dir"])
            problems = read_problems(spec["problems"])
            inputs = train_inputs(cfg, problems, ArtifactRef(**spec["index_ref"]))
            train(t, model, tokenizer, inputs, Path(spec["run_dir"]), progress=progress, dist=dist)
        except StageError as e:  # why the run stopped (the weight guard, say), where `launch` reports it
            if dist.main:
                print(f"{STOPPED}{e}", flush=True)
            raise
    finally:
        dist.close()
    return 0


def record_rank(run_dir: Path, dist) -> None:
    """`ranks/rank-N.json`: where this rank runs (its node as the launcher numbered it, the Ray node, the
    host and pid), so a run's log says which machine each rank was on and a test can see the spread."""
    from oger.contract.artifacts import atomic_write

    info = {
        "rank": dist.rank,
        "local_rank": dist.local_rank,
        "world": dist.world,
        "node": os.environ.get("OGER_NODE"),
        "group_rank": os.environ.get("GROUP_RANK"),
        "ray_node_id": os.environ.get("OGER_RAY_NODE_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    folder = run_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"rank-{dist.rank}.json", lambda tmp: tmp.write_text(json.dumps(info)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
