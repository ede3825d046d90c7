"""The train stage's checks before a run starts (its `Stage.check_inputs`, which `oger run` calls before
the flow when the stage will compute): the GPUs the run asks for, the policy's context against its
token budgets, and free disk against what the stage writes. One error each, naming the field and the
fix.

Why before the flow: each of these otherwise shows only after hours of set-up and a model load on
rented GPUs (NCCL failing to find a device, a rank without a GPU), or never (HF `generate` runs past
the model's context silently; vLLM refuses it). A CPU run does not import torch here (no GPU driver:
nothing to check), so the check stays well under a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from oger.contract.config import DistributedConfig, OgerConfig
from oger.contract.errors import ConfigError
from oger.runtime.estimate import fmt_bytes
from oger.runtime.model_shapes import policy_shape
from oger.runtime.precision import has_nvidia_gpu
from oger.stages.train.resources import disk, prompt_estimate, trace_budget

LUFFY_CONTEXT = "LUFFY's 7B base raises rope_theta 10000 -> 40000 and max_position_embeddings to 16384"


def check_inputs(cfg: OgerConfig) -> None:
    """Every check, GPUs first (the cheapest to get wrong on a new machine)."""
    check_gpus(cfg.train.distributed)
    check_context(cfg)
    check_disk(cfg)


def check_gpus(d: DistributedConfig) -> None:
    """With `backend: nccl` (or `auto` where CUDA is present, which resolves to it): CUDA and NCCL in
    this torch, and as many visible GPUs as `num_processes` (one per rank). `gloo`, and `auto` without
    CUDA, train on the CPU: nothing to check. Without an NVIDIA driver torch is not imported."""
    if d.backend == "gloo":
        return
    driver = has_nvidia_gpu()  # no driver, no CUDA: torch is imported only where one lists a GPU
    if driver:
        from oger.runtime.device import cuda_available, nccl_available, visible_gpus
    cuda = driver and cuda_available()
    if d.backend == "auto" and not cuda:
        return
    if not cuda:
        raise ConfigError(
            "train.distributed.backend: nccl runs on CUDA GPUs and none is usable here ("
            + ("torch.cuda.is_available() is False" if driver else "no NVIDIA driver lists a GPU")
            + "): use backend gloo (or auto) to train on the CPU, or run where the GPUs are"
        )
    if (d.backend == "nccl" or d.num_processes > 1) and not nccl_available():
        raise ConfigError(
            "train.distributed.backend: this torch has no NCCL (torch.distributed.is_nccl_available() is "
            "False): install a CUDA build of torch, or set train.distributed.backend: gloo"
        )
    visible = visible_gpus()
    if visible < d.num_processes:
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"{visible} GPU(s) are visible" + (f" (CUDA_VISIBLE_DEVICES={mask})" if mask is not None else "")
        raise ConfigError(
            f"train.distributed.num_processes is {d.num_processes}, one GPU per rank, but {seen}: set "
            f"train.distributed.num_processes to {visible} (prompts_per_step stays a multiple of it x "
            f"rollout.batch_prompts) or make {d.num_processes} GPUs visible"
        )


def check_context(cfg: OgerConfig) -> None:
    """The policy's context (its config.json's max_position_embeddings, the shipped table's, or the
    policy section's override) holds the longest prompt (`resources.prompt_estimate`) plus each budget:
    rollouts, the teacher traces the update scores, the held-out check. A model whose shape is unknown
    here is not checked (`oger plan` says "unknown model shape")."""
    shape = policy_shape(cfg.policy)
    if shape is None:
        return
    prompt, positions = prompt_estimate(cfg), shape.max_position_embeddings
    budgets = [
        ("train.rollout.max_new_tokens", cfg.train.rollout.max_new_tokens),
        ("filter.max_tokens", trace_budget(cfg)),  # the longest teacher trace a replaced row holds
        ("evaluate.heldout.max_new_tokens", cfg.evaluate.heldout.max_new_tokens),
    ]
    for field, budget in budgets:
        if budget is None or prompt.tokens + budget <= positions:
            continue
        longer = (
            "raise policy.tiny.max_position (the tiny model is built with it)"
            if cfg.policy.source == "tiny"
            else f"set policy.max_position_embeddings and policy.rope_theta to a longer context ({LUFFY_CONTEXT})"
        )
        raise ConfigError(
            f"{field}: {budget:,} tokens after the prompt ({prompt.how}) need {prompt.tokens + budget:,} "
            f"positions, but the policy's context is {positions:,} ({shape.source}): {longer}, or lower "
            f"{field} to at most {max(0, positions - prompt.tokens):,}"
        )


def check_disk(cfg: OgerConfig) -> None:
    """Free space on the workdir's disk against what the train stage writes at its peak (`resources.disk`:
    checkpoints of model and optimizer state, the final model twice, the rollouts log at most)."""
    shape = policy_shape(cfg.policy)
    if shape is None:
        return
    dk = disk(cfg, shape)
    root = _existing(cfg.workdir_path)
    free = shutil.disk_usage(root).free
    if free >= dk.stage_peak:
        return
    raise ConfigError(
        f"workdir: {root} has {fmt_bytes(free)} free, but the train stage writes up to {fmt_bytes(dk.stage_peak)} "
        f"({dk.checkpoints} checkpoint(s) of {fmt_bytes(dk.checkpoint)}, the final model twice at "
        f"{fmt_bytes(dk.model)}, rollouts.jsonl up to {fmt_bytes(dk.rollout_log)}): point workdir at a larger disk "
        f"or free space; train.logging.log_rollouts: false drops the log"
    )


def _existing(path: Path) -> Path:
    """The workdir, or its nearest existing parent (a first run has not made it yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
