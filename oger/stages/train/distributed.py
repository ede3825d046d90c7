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
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch

from oger.contract.artifacts import artifact_path
from oger.contract.errors import ConfigError, StageError
from oger.runtime.device import Runtime, cuda_available, for_rank, for_training
from oger.stages.train.agent import agent_env, launcher_command, rdzv_id, run_agent, write_spec
from oger.stages.train.files import merge_rank_rollouts, read_metrics
from oger.stages.train.shared_paths import write_shared_token


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
    mesh: object | None = None  # HSDP (`fsdp: hybrid`): the (nodes, ranks per node) device mesh FSDP2 shards on

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
            return shard(model, self.precision, self.mesh)
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


def shard(model, precision: str = "float32", mesh=None):
    """FSDP2 over the process group: each decoder layer, then the whole model. bf16-mixed: bf16
    compute with float32 master weights, optimizer state and gradient reduction (`MixedPrecisionPolicy`:
    FSDP2 casts the gathered parameters itself, so no autocast runs over its forward). `mesh`: a 2-D
    (replicate, shard) device mesh for HSDP, where FSDP2 shards along a row (one node's ranks) and
    all-reduces the gradient shards down the columns (across nodes), so only that reduction leaves a node."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {} if mesh is None else {"mesh": mesh}
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
    backend: str,
    fsdp: bool | str = False,
    precision: str = "float32",
    rollout_dtype: str | None = None,
    nnodes: int = 1,
    timeout_s: int = 1800,
) -> Dist:
    """Join the process group a launcher set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
    `precision` and `rollout_dtype` as the plan resolved them (the launch spec carries them). A
    collective that waits longer than `timeout_s` raises (a dead node fails the run instead of hanging
    it). `fsdp: hybrid`: the (nnodes, ranks per node) mesh; torchrun numbers a node's ranks
    consecutively, so a mesh row is a node."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        runtime = for_training(precision)
        return Dist(device=runtime.torch_device(), precision=precision, rollout_dtype=rollout_dtype)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = resolve_backend(backend)
    device = for_rank(backend, local).torch_device()  # the rank's GPU under NCCL (oger.runtime.device)
    torch.distributed.init_process_group(
        backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    mesh = hybrid_mesh(device.type, nnodes, world) if fsdp == "hybrid" else None
    return Dist(rank, world, local, device, bool(fsdp), precision, rollout_dtype, mesh=mesh)


def hybrid_mesh(device_type: str, nnodes: int, world: int):
    """The HSDP device mesh: rows are nodes (replicas), columns a node's ranks (shards)."""
    from torch.distributed.device_mesh import init_device_mesh

    if world % nnodes:
        raise StageError(f"train.distributed.fsdp hybrid: {world} ranks do not split into {nnodes} nodes")
    return init_device_mesh(device_type, (nnodes, world // nnodes), mesh_dim_names=("replicate", "shard"))


# --------------------------------------------------------------------------- launching


def launch(
    launcher: str,
    num_processes: int,
    spec: dict,
    run_dir: Path,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    timeout_s: int = 1800,
) -> None:
    """Run this node's ranks to completion, echoing rank 0's progress; the output goes to launch.log.
    With `nnodes` > 1 this is the first node's agent: the others join its rendezvous (their commands:
    `node_commands`)."""
    path = write_spec(spec, run_dir)
    cmd = launcher_command(launcher, num_processes, path, nnodes, rdzv_endpoint, rdzv_id(run_dir), timeout_s)
    log_path = run_dir / "launch.log"
    res = run_agent(cmd, log_path, agent_env(num_processes, {"OGER_NODE": "0"}), echo=lambda x: print(x, flush=True))
    what = f"{launcher} with {num_processes} processes" + (f" (node 0 of {nnodes})" if nnodes > 1 else "")
    if res.rc != 0 and res.stopped is not None:  # the ranks' own reason, not the launcher's summary of their exit
        raise StageError(f"{res.stopped}\n({what} stopped; full log: {log_path})")
    if res.rc != 0:
        raise StageError(
            f"train: {what} exited with status {res.rc}; last lines:\n"
            + "\n".join(res.tail)
            + f"\n(full log: {log_path})"
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


def train_distributed(cfg, spec: dict) -> list[dict]:
    """The train stage's multi-process path: launch the ranks on `spec` (`launch_spec`: the resolved
    config, the starting model, the inputs, the run folder, the precision and rollout dtype as the plan
    resolved them — the ranks never resolve `auto` themselves) and return the metrics history rank 0 wrote
    (the model they end with is exported to `final_model_dir`). Several nodes: on the Ray cluster with
    `runner.kind: ray` (`ray_nodes`), else this process runs the first node's agent and the others run
    `node_commands`."""
    d, run_dir = cfg.train.distributed, Path(spec["run_dir"])
    spec = {**spec, "shared_token": write_shared_token(run_dir)}  # every rank checks it sees this file
    if d.nnodes > 1 and cfg.runner.kind == "ray":
        from oger.stages.train.ray_nodes import launch_on_ray

        # `auto` is the nodes' answer, not this process's (a CPU head node drives GPU nodes)
        launch_on_ray(cfg.runner, d, spec, run_dir, gpus=None if d.backend == "auto" else d.backend == "nccl")
    elif d.nnodes > 1:
        if d.rdzv_endpoint is None:
            raise ConfigError(
                "train.distributed.nnodes > 1 without Ray: set train.distributed.rdzv_endpoint to this node's "
                "host:port (the other nodes run the commands `oger plan` prints), or use runner.kind: ray"
            )
        launch(d.launcher, d.num_processes, spec, run_dir, d.nnodes, d.rdzv_endpoint, d.timeout_s)
    else:
        launch(d.launcher, d.num_processes, spec, run_dir)
    merge_rank_rollouts(run_dir)
    return read_metrics(run_dir)
