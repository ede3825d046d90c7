"""A training run's setup: resume from the last checkpoint, the reference model, DDP/FSDP2 wrapping,
optimizer and schedule, the metrics history, the bonus's encoder and the rollout engine, built once
into the `TrainRun` every step part reads."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from oger.algorithm.reward import cached_embedder
from oger.contract.config import TrainConfig
from oger.generation.hf import TransformersEngine
from oger.labels import Labeller
from oger.runtime.cpu_threads import BatchThreads
from oger.runtime.device import Runtime
from oger.stages.train.checkpoint import latest_checkpoint, load_checkpoint, read_history
from oger.stages.train.distributed import Dist, unwrap
from oger.stages.train.files import METRICS_FILE, ROLLOUTS_FILE, TENSORBOARD_DIR, TRACKERS_FILE, rank_rollout_files
from oger.stages.train.metrics import Metric, with_labels


@dataclass
class TrainInputs:
    """What the trainer reads: problems to sample from and, for luffy/oger, the teacher index."""

    questions: dict[str, str]
    answers: dict[str, str]
    problem_ids: list[str]
    index: object | None = None  # oger.stages.index.stage.TeacherIndex at the index stage's tag
    encoder: str = "minilm"
    long_text: str = "chunk_mean"
    instruction: str = "{question}"
    system_prompt: str | None = None
    labeller_of: dict[str, Labeller] = field(default_factory=dict)  # problem_id -> its source's labeller

    @property
    def labellers(self) -> tuple[Labeller, ...]:
        """The labellers of the pool's tasks, each once, in a fixed order (their metrics' order)."""
        return tuple({lb.name: lb for lb in sorted(self.labeller_of.values(), key=lambda lb: lb.name)}.values())


@dataclass
class TrainRun:
    """Everything the step functions share, built once by `setup`."""

    cfg: TrainConfig
    model: object  # wrapped for DDP / FSDP2 on several ranks
    policy: object  # the HF model: generation and saving
    ref_model: object | None
    tokenizer: object
    inputs: TrainInputs
    dist: Dist
    opt: torch.optim.Optimizer
    sched: object
    start: int
    history: list[dict]
    writer: object | None  # rank 0: oger.tracking.Trackers (TensorBoard and the experiment trackers)
    threads: BatchThreads  # micro-batches side by side on a CPU (one process, small model)
    embed: object | None  # texts -> unit vectors (oger.algorithm.reward.Embed), None without the bonus
    needs_index: bool
    run_dir: Path
    engine: object  # where rollouts come from (oger.generation: policy itself, or vLLM beside it, `sync()`ed)
    guard: object | None = None  # a vLLM engine's stale-weight guard (engine_guard.PushGuard), checked after pushes

    @property
    def runtime(self) -> Runtime:
        """This process's device and precision (`oger.runtime.device`), from its place among the ranks."""
        return self.dist.runtime

    @cached_property
    def metrics(self) -> tuple[Metric, ...]:
        """The run's step-metric table: the registry's and its task's labels' (`metrics.with_labels`),
        built once per run."""
        return with_labels(self.inputs.labellers)

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id


def setup(cfg: TrainConfig, model, tokenizer, inputs: TrainInputs, run_dir: Path, dist: Dist) -> TrainRun:
    """Resume from the last checkpoint, reference model, DDP/FSDP wrap, optimizer and schedule,
    history and TensorBoard (rank 0), the encoder for the bonus (or its monitor)."""
    torch.manual_seed(cfg.seed)
    dist.runtime.configure()  # TF32 for what stays float32 on a GPU
    ref_model = None
    if cfg.loss.beta:  # the KL's anchor is the policy the run starts from: copied before a resume loads
        sharded = dist.fsdp and dist.active
        ref_model = reference_model(model, dist.device, dist.precision, sharded=sharded, mesh=dist.mesh)
    if cfg.distributed.gradient_checkpointing:  # non-reentrant: works with DDP's hooks and no_sync
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = dist.wrap(model)  # DDP / FSDP2 on several ranks, the model itself on one
    o = cfg.optim
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    start = 0 if ckpt is None else load_checkpoint(ckpt, model, opt, sched, dist)  # each rank its shards
    history, writer = [], None
    if dist.main:
        history = read_history(run_dir / METRICS_FILE, start)
        for path in [run_dir / ROLLOUTS_FILE, *rank_rollout_files(run_dir)]:  # every rank's, this world's or not
            read_history(path, start)  # drop rollouts of steps after the checkpoint
        writer = open_trackers(run_dir)
    dist.barrier()
    measures = cfg.bonus_lambda > 0 or cfg.oger.monitor
    needs_index = inputs.index is not None and (cfg.replaces or measures)
    embed = None
    if measures and inputs.index is not None:
        from oger.encoder import load_encoder

        # on the rank's device: ~100 long rollouts per rank and step to embed at the paper's scale
        embed = cached_embedder(load_encoder(inputs.encoder, device=str(dist.device)), inputs.long_text)
    threads = dist.runtime.batch_threads(model, distributed=dist.active)
    engine = rollout_engine(cfg, unwrap(model), tokenizer, dist, run_dir)
    guard = push_guard(cfg, engine, unwrap(model), tokenizer, dist)  # vLLM: checked once built
    return TrainRun(
        cfg,
        model,
        unwrap(model),
        ref_model,
        tokenizer,
        inputs,
        dist,
        opt,
        sched,
        start,
        history,
        writer,
        threads,
        embed,
        needs_index,
        run_dir,
        engine,
        guard,
    )


def reference_model(model, device, precision: str = "float32", sharded: bool = False, mesh=None):
    """A frozen copy of `model` for the KL term, on `device`; `sharded`: under FSDP2 it is sharded like
    the policy (`distributed.shard`), not a full copy on every GPU (7B: 28 GB of float32 per GPU). Its
    no-grad forwards run wherever the policy's do, so the ranks' all-gathers stay in step."""
    import copy

    from oger.stages.train.distributed import shard

    ref = copy.deepcopy(model).eval().to(device)
    ref.requires_grad_(False)
    return shard(ref, precision, mesh) if sharded else ref


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.optim.warmup_steps:
            return (step + 1) / cfg.optim.warmup_steps
        if cfg.optim.lr_schedule == "cosine":
            frac = (step - cfg.optim.warmup_steps) / max(1, cfg.steps - cfg.optim.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return 1.0

    return f


def rollout_engine(cfg: TrainConfig, policy, tokenizer, dist: Dist, run_dir: Path):
    """The engine rollouts come from: the trained module itself (hf, paged), or a vLLM engine beside it
    (vllm), built from the weights the policy has now (a resumed run's checkpoint included: rank 0 writes
    them once for all ranks). Under torchrun each rank builds its engine with vLLM's external_launcher
    executor, in the trainer's process group on the rank's device; rollout.tensor_parallel_size > 1 splits
    one engine over each run of that many consecutive ranks (vLLM's own layout of its groups). The
    engine's dtype is the plan's (`Dist.rollout_dtype`), else the policy's; pushes stream the weights,
    a sharded parameter gathered one at a time (`weight_sync`)."""
    if cfg.rollout.engine != "vllm":
        return TransformersEngine(policy, tokenizer, cfg.rollout.engine, synced_gpus=dist.fsdp)
    import shutil

    from oger.generation.vllm import EXTERNAL_LAUNCHER, ColocatedEngine
    from oger.stages.train.resources import VLLM_GPU_SHARE  # the share the plan counts

    ro = cfg.rollout
    folder = run_dir / "rollout-engine"  # scratch: the weights the engines start from
    full = dist.model_state(policy) if dist.fsdp else None  # FSDP2: gathered on every rank, kept on 0
    if dist.main:
        shutil.rmtree(folder, ignore_errors=True)
        policy.save_pretrained(folder, state_dict=full)
        tokenizer.save_pretrained(folder)
    del full
    dist.barrier()
    tp_group = None
    if dist.active and ro.tensor_parallel_size > 1:  # every rank creates every group, in the same order
        tp = ro.tensor_parallel_size
        tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
            [list(range(first, first + tp)) for first in range(0, dist.world, tp)]
        )
    dtype = dist.rollout_dtype or str(next(policy.parameters()).dtype).removeprefix("torch.")
    executor = EXTERNAL_LAUNCHER if dist.active else None
    started = time.perf_counter()
    engine = ColocatedEngine(
        policy,
        tokenizer,
        dtype=dtype,
        seed=cfg.seed,
        kv_cache_gib=ro.kv_cache_gib,
        model_dir=folder,
        sleep=ro.sleep,
        sleep_level=2 if ro.sync_every == 1 else 1,  # level 2 drops the weights: a push must refill them
        gpu_memory_utilization=ro.gpu_memory_utilization or VLLM_GPU_SHARE,
        tensor_parallel_size=ro.tensor_parallel_size,
        tp_group=tp_group,
        executor=executor,
        synced_forward=dist.fsdp,
    )
    if dist.main:
        print(
            f"[oger-train] rollout engine: vLLM {executor or 'in-process'}, tensor parallel "
            f"{ro.tensor_parallel_size}, {dtype}, built in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    # closed with the run (`Dist.close`): before the process group goes, as vLLM's shutdown tears it down;
    # on one process before the stage's held-out check builds an engine of its own on the same GPU
    dist.on_close(engine.close)
    dist.barrier()
    if dist.main:
        shutil.rmtree(folder, ignore_errors=True)
    return engine


def push_guard(cfg: TrainConfig, engine, policy, tokenizer, dist: Dist):
    """A vLLM engine's stale-weight guard (None for the engines that are the policy itself), checked
    once on the engine as built: it must start from the trainer's weights."""
    if not hasattr(engine, "fingerprint"):
        return None
    from oger.stages.train.engine_guard import PushGuard

    guard = PushGuard.build(policy, tokenizer, engine.dtype, dist.precision, cfg.rollout.max_push_logp_diff)
    guard.check(engine, policy, "after the rollout engine's build", dist, dist.runtime.autocast)
    return guard


def open_trackers(run_dir: Path):
    """TensorBoard and the experiment trackers the train stage chose for this run (`oger.tracking`: the
    stage writes TRACKERS_FILE before it trains; without it, TensorBoard alone). One that fails warns
    and is dropped: a tracker never stops training."""
    from oger.tracking import Trackers

    return Trackers.open(run_dir / TRACKERS_FILE, tensorboard_dir=run_dir / TENSORBOARD_DIR)
