"""Training on several processes with torch.distributed: the rank context the trainer uses, the
DDP / FSDP2 wrapping, the full state a rollout engine starts from, and the launcher command
(`torchrun` or `accelerate launch`) the train stage runs.

Design (docs/ALGORITHM.md, "Training on several processes"): every rank draws the same prompts
for a step and rolls out its own contiguous slice of them, in whole generation calls, each seeded
by its global index; a group never spans ranks, so rewards and group advantages are computed
locally over the whole group. The loss of each rank is normalised by the global token (or sample)
count and scaled by the world size, so DDP's gradient average equals the one-process gradient.
Per-sample records and loss metrics are gathered to rank 0, which alone writes logs; every rank writes
its own shard of a checkpoint (`checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from oger.contract.artifacts import artifact_path, atomic_write
from oger.contract.errors import ConfigError, StageError
from oger.runtime.device import Runtime, cuda_available, for_rank, for_training
from oger.stages.train.files import read_metrics


@dataclass
class Dist:
    """This process's place among the ranks; the default is the single-process case."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False
    precision: str = "float32"  # resolved at plan time; bf16-mixed: autocast, or FSDP2's MixedPrecisionPolicy
    rollout_dtype: str | None = None  # a vLLM rollout engine's dtype as the plan resolved it; None: the policy's
    closers: list = field(default_factory=list)  # run by `close` before the process group goes

    def on_close(self, fn) -> None:
        """Run `fn` at `close`, before the process group is destroyed (a vLLM engine that joined it
        must shut down first: its shutdown tears the group down too)."""
        self.closers.append(fn)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def runtime(self) -> Runtime:
        """This rank's device and precision answers (`oger.runtime.device`)."""
        return Runtime(str(self.device), self.precision, sharded_mixed=self.fsdp and self.precision != "float32")

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def no_sync(self, model, last: bool):
        """Skip the gradient all-reduce on every micro-batch but the last one of a step."""
        if not self.active or last:
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(False)
            return _restore_sync(model)
        return model.no_sync()

    # ------------------------------------------------------------------ wrapping and state

    def wrap(self, model):
        """DDP (replicated parameters) or FSDP2 (sharded), on this rank's device."""
        if not self.active:
            return model
        model.to(self.device)
        if self.fsdp:
            return shard(model, self.precision)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # the gradients are views into the all-reduce buckets: one copy of them, not two
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def model_state(self, model) -> dict | None:
        """The full state dict on rank 0 (called on every rank: FSDP gathers the shards): the weights a
        vLLM engine starts from. Checkpoints are sharded instead (`checkpoint.save_checkpoint`)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return sd if self.main else None
        return unwrap(model).state_dict() if self.main else None

    def from_main(self, obj):
        """Rank 0's `obj` on every rank (a path rank 0 chose, say)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _restore_sync(model):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap(model):
    """The HF model inside a DDP wrapper (FSDP2 shards the module in place)."""
    return getattr(model, "module", model)


def _decoder_layers(model) -> list:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise StageError(f"train.distributed.fsdp: {type(model).__name__} has no model.layers to shard")
    return list(layers)


def shard(model, precision: str = "float32"):
    """FSDP2 over the process group: each decoder layer, then the whole model. bf16-mixed: bf16
    compute with float32 master weights, optimizer state and gradient reduction (`MixedPrecisionPolicy`:
    FSDP2 casts the gathered parameters itself, so no autocast runs over its forward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if precision == "bf16-mixed":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in _decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if cuda_available() else "gloo"
    if backend == "nccl" and not cuda_available():
        raise StageError("train.distributed.backend: nccl needs CUDA GPUs; use gloo (or auto) on CPU")
    return backend


def init_from_env(
    backend: str, fsdp: bool = False, precision: str = "float32", rollout_dtype: str | None = None
) -> Dist:
    """Join the process group a launcher set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
    `precision` and `rollout_dtype` as the plan resolved them (the launch spec carries them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        runtime = for_training(precision)
        return Dist(device=runtime.torch_device(), precision=precision, rollout_dtype=rollout_dtype)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = resolve_backend(backend)
    device = for_rank(backend, local).torch_device()  # the rank's GPU under NCCL (oger.runtime.device)
    torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local, device, fsdp, precision, rollout_dtype)


# --------------------------------------------------------------------------- launching

STOPPED = "[oger-train] stopped: "  # rank 0's line with the StageError that stopped the ranks (`worker`)


def launcher_command(launcher: str, num_processes: int, spec: Path) -> list[str]:
    """The command that starts `oger.stages.train.worker SPEC` on `num_processes` local ranks."""
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={num_processes}",
            "-m",
            "oger.stages.train.worker",
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
            "oger.stages.train.worker",
            str(spec),
        ]
    raise ValueError(launcher)


def launch(launcher: str, num_processes: int, spec: dict, run_dir: Path) -> None:
    """Run the ranks to completion, echoing rank 0's progress; the output goes to launch.log."""
    spec_path = run_dir / "launch.json"
    spec_text = json.dumps(spec, indent=1)
    atomic_write(spec_path, lambda tmp: tmp.write_text(spec_text))
    cmd = launcher_command(launcher, num_processes, spec_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # torchrun would pin every rank to one thread; share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    log_path = run_dir / "launch.log"
    tail: deque[str] = deque(maxlen=40)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[3],
        )  # the repository root
        stopped = None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            if line.startswith("[oger-train]"):
                print(line.rstrip(), flush=True)
            if line.startswith(STOPPED):
                stopped = line.rstrip().removeprefix(STOPPED)
        rc = proc.wait()
    if rc != 0 and stopped is not None:  # the ranks' own reason, not the launcher's summary of their exit
        raise StageError(f"{stopped}\n({launcher} with {num_processes} processes stopped; full log: {log_path})")
    if rc != 0:
        raise StageError(
            f"train: {launcher} with {num_processes} processes exited with status {rc}; "
            f"last lines:\n" + "\n".join(tail) + f"\n(full log: {log_path})"
        )


def launch_spec(
    cfg,
    init_dir: Path,
    problems_ref,
    index_ref,
    run_dir: Path,
    precision: str = "float32",
    rollout_dtype: str | None = None,
) -> dict:
    """What every rank reads (`worker`): the resolved config, the model to start from, the problems and
    index artifacts, the run folder, and the precision and rollout engine dtype as the plan resolved them."""
    return {
        "precision": precision,
        "rollout_dtype": rollout_dtype,
        "config": cfg.model_dump(mode="json"),
        "init_dir": str(init_dir),
        "problems": str(artifact_path(problems_ref)),
        "index_ref": index_ref.model_dump(mode="json"),
        "run_dir": str(run_dir),
    }


def train_distributed(
    cfg,
    init_dir: Path,
    problems_ref,
    index_ref,
    run_dir: Path,
    precision: str = "float32",
    rollout_dtype: str | None = None,
) -> list[dict]:
    """The train stage's multi-process path: launch the ranks on the resolved config and return
    the metrics history rank 0 wrote (the model they end with is exported to `final_model_dir`).
    `problems_ref`: the problems artifact (its `ArtifactRef` or folder), which every rank reads;
    `precision`, `rollout_dtype`: as the plan resolved them, sent to the ranks (they never resolve `auto`
    themselves)."""
    spec = launch_spec(cfg, init_dir, problems_ref, index_ref, run_dir, precision, rollout_dtype)
    launch(cfg.train.distributed.launcher, cfg.train.distributed.num_processes, spec, run_dir)
    return read_metrics(run_dir)
