"""One training rank: `torchrun ... -m oger.stages.train.worker SPEC.json` (the train stage writes SPEC).

SPEC holds the resolved config, the initial model folder, the problems artifact, the index artifact
and the run directory; every rank builds the same inputs, and rank 0 writes metrics and checkpoints
into the run directory, where the train stage picks up the final checkpoint.
"""

from __future__ import annotations

import json
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
    from oger.stages.train.distributed import STOPPED, init_from_env
    from oger.stages.train.stage import train_inputs
    from oger.stages.train.trainer import train

    spec = json.loads(Path(spec_path).read_text())
    cfg = OgerConfig.model_validate(spec["config"])
    t = cfg.train
    dist = init_from_env(
        t.distributed.backend, t.distributed.fsdp, spec.get("precision", "float32"), spec.get("rollout_dtype")
    )
    try:
        dtype = torch.float32 if cfg.policy.dtype == "float32" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(spec["init_dir"], dtype=dtype)
        tokenizer = tokenizer_from_folder(spec["init_dir"])
        problems = read_problems(spec["problems"])
        inputs = train_inputs(cfg, problems, ArtifactRef(**spec["index_ref"]))

        def progress(row: dict) -> None:
            print(
                f"[oger-train] step {row['step']}/{t.steps} reward={row['reward']:.3f} "
                f"acc={row['env_reward']:.2f} {row['seconds_step']:.1f}s",
                flush=True,
            )

        try:
            train(t, model, tokenizer, inputs, Path(spec["run_dir"]), progress=progress, dist=dist)
        except StageError as e:  # why the run stopped (the weight guard, say), where `launch` reports it
            if dist.main:
                print(f"{STOPPED}{e}", flush=True)
            raise
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
