"""What the train stage needs of a GPU and a disk, estimated from the config (nothing loads, no torch):
per-rank memory of the rollouts and of the update, step time, and the disk a round writes and keeps.
`oger plan` prints it (`plan_info`), the preflight checks free disk against it (`preflight`).

Why here: the arithmetic lives in `oger.runtime.estimate`; what this module knows is how the train
stage's code lays a step out, read from the config: micro-batches, the rollout engine's rows, which
dtype each part runs in under `train.precision` and the DDP / FSDP2 choice, what a checkpoint holds.
The plan is for GPUs: `precision: auto` is bf16-mixed there (`runtime.precision.resolve_training`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oger.contract import EngineShare, GpuEstimate
from oger.contract.config import OgerConfig, SyntheticSource, TrainConfig
from oger.runtime import estimate as est
from oger.runtime.estimate import FLOAT32, GiB, fmt_bytes, fmt_seconds
from oger.runtime.model_shapes import ModelShape, policy_shape
from oger.runtime.precision import resolve_rollout_dtype
from oger.synthetic import QUESTION_TEMPLATE

KEEP_CHECKPOINTS = 2  # checkpoint.save_checkpoint's `keep` (tests/test_estimate.py holds them equal)
CHARS_PER_TOKEN = 2.5  # MATH-500's questions: 2.57 characters per token (SmolLM2's GPT-2-style BPE)
CHAT_TOKENS = 48  # a chat template's role markers, and the default system line Qwen2.5's adds
# `rollout.gpu_memory_utilization: null`: vLLM takes this share of each GPU (TRL's colocate default)
VLLM_GPU_SHARE = 0.3


# --------------------------------------------------------------------------- the sequence lengths


@dataclass(frozen=True)
class PromptEstimate:
    tokens: int
    how: str


def prompt_estimate(cfg: OgerConfig) -> PromptEstimate:
    """The longest prompt, in tokens, as far as the config tells: the system prompt and the instruction
    template at `CHARS_PER_TOKEN`, the chat template's markers, and the longest question of the synthetic
    sources (their generator's longest expression). A question from a file or the hub is not counted:
    its length is known only once the problems stage has read it, so this is then a lower bound (LUFFY
    caps whole prompts at 1,024 tokens, `data.max_prompt_length`)."""
    template = len(cfg.policy.system_prompt or "") + len(cfg.policy.instruction.format(question=""))
    longest, unknown = 0, []
    for src in cfg.problems.sources:
        if isinstance(src, SyntheticSource):
            operand = str(src.max_value)
            expr = " + ".join([operand] * src.max_operands)  # every operator renders as one character
            longest = max(longest, len(QUESTION_TEMPLATE.format(expr=expr)))
        else:
            unknown.append(src.name)
    tokens = math.ceil((template + longest) / CHARS_PER_TOKEN) + CHAT_TOKENS
    how = f"prompt ~{tokens} tokens: the template at {CHARS_PER_TOKEN} characters a token"
    how += ", with the longest synthetic question," if longest else ","
    how += f" and {CHAT_TOKENS} for the chat markers"
    if unknown:
        how += f"; questions of {', '.join(unknown)} not counted (known once the problems stage has run)"
    return PromptEstimate(tokens, how)


def trace_budget(cfg: OgerConfig) -> int | None:
    """The longest teacher trace a replaced row can hold, in the policy's tokens: `filter.max_tokens`
    when the filter measures in the policy's own tokenizer (the paper configs), else unknown."""
    if not cfg.train.replaces or cfg.policy.source != "model" or cfg.filter.tokenizer != cfg.policy.model:
        return None
    return cfg.filter.max_tokens


def response_budget(cfg: OgerConfig) -> int:
    """The longest response row of the update: a rollout at `max_new_tokens`, or a longer teacher trace."""
    return max(cfg.train.rollout.max_new_tokens, trace_budget(cfg) or 0)


# --------------------------------------------------------------------------- one rank's layout


@dataclass(frozen=True)
class Layout:
    """How one rank runs the step: its shape, dtypes, sharding and sequence lengths."""

    shape: ModelShape
    t: TrainConfig
    prompt: int
    response: int
    precision: str  # as it runs on a GPU: float32 or bf16-mixed
    weight_bytes: int

    @property
    def ranks(self) -> int:
        """All ranks (nnodes x num_processes): the step's prompts are split over them."""
        return self.t.distributed.world

    @property
    def fsdp(self) -> bool:
        return bool(self.t.distributed.fsdp) and self.ranks > 1

    @property
    def shards(self) -> int:
        """How many parts one copy of the weights is cut into: all ranks under FSDP2, a node's under HSDP
        (`fsdp: hybrid` replicates across nodes), one under DDP."""
        if not self.fsdp:
            return 1
        return self.t.distributed.num_processes if self.t.distributed.fsdp == "hybrid" else self.ranks

    @property
    def numerics(self) -> est.Numerics:
        """bf16-mixed under autocast (one process, DDP) keeps the residual stream and RMSNorm in float32
        beside float32 weights; under FSDP2 the parameters themselves are cast to bf16, and so is the
        stream. float32 computes in the weights' dtype."""
        w = self.weight_bytes
        if self.precision != "bf16-mixed":
            return est.Numerics(compute=w, norm=w, residual=w, weights=w)
        stream = 2 if self.fsdp or w == 2 else FLOAT32
        return est.Numerics(compute=2, norm=stream, residual=stream, weights=w)

    @property
    def micro_batch(self) -> est.MicroBatch:
        """The largest micro-batch: `micro_batch_size` rows of prompt + the longest response, or the
        token budget `max_tokens_per_micro_batch` (padded: as many whole rows as it holds, at least one;
        packed: the budget filled, a longer sample alone); padded rows of different lengths carry a mask
        (assumed whenever a micro-batch has several rows)."""
        o, seq = self.t.optim, self.prompt + self.response
        budget = o.max_tokens_per_micro_batch
        rows = max(1, budget // seq) if budget else o.micro_batch_size
        return est.MicroBatch(
            rows=rows,
            seq=seq,
            response=self.response,
            packed=o.padding_free,
            packed_tokens=max(budget, seq) if budget and o.padding_free else None,
            padded_mask=rows > 1 and not o.padding_free,
        )

    @property
    def rollout_rows(self) -> int:
        return self.t.rollout.batch_prompts * self.t.group_size

    @property
    def kv_bytes(self) -> int:
        """Rollouts run outside autocast: the KV cache is in the weights' dtype, bf16 only where FSDP2
        casts the parameters."""
        return 2 if self.precision == "bf16-mixed" and self.fsdp else self.weight_bytes

    @property
    def vllm(self) -> bool:
        return self.t.rollout.engine == "vllm"

    @property
    def engine_dtype(self) -> str:
        """The vLLM engine's dtype as on a GPU (`rollout.dtype: auto` is bfloat16 there)."""
        return resolve_rollout_dtype(self.t.rollout.dtype, gpu=True)

    @property
    def engine_bytes(self) -> int:
        """Bytes of the vLLM engine's weights, activations and KV cache per element."""
        return FLOAT32 if self.engine_dtype == "float32" else 2

    @property
    def tp(self) -> int:
        """GPUs one vLLM engine spans (`rollout.tensor_parallel_size`): its weights and KV heads split
        over them, its rows the prompts of all of them."""
        return self.t.rollout.tensor_parallel_size


def layout(cfg: OgerConfig, t: TrainConfig | None = None) -> Layout | None:
    """The rank layout of `cfg` (with another train section `t`, to estimate a change); None when the
    policy's shape is unknown."""
    shape = policy_shape(cfg.policy)
    if shape is None:
        return None
    t = t or cfg.train
    return Layout(
        shape=shape,
        t=t,
        prompt=prompt_estimate(cfg).tokens,
        response=response_budget(cfg),
        precision="float32" if t.precision == "float32" else "bf16-mixed",
        weight_bytes=FLOAT32 if cfg.policy.dtype == "float32" else 2,
    )


# --------------------------------------------------------------------------- memory by phase


def resident(lay: Layout) -> dict[str, int]:
    """What a rank holds through the whole step: its weights and optimizer state, sharded over the ranks
    under FSDP2; under DDP the all-reduce buckets, which hold the gradients (`gradient_as_bucket_view`)
    and stay allocated between steps; the KL reference's full weights when `loss.beta` > 0."""
    n, w, t = lay.shape.params, lay.weight_bytes, lay.t
    shards = lay.shards
    out = {
        "weights": n * w // shards,
        "optimizer state": n * w * est.adam_states(t.optim.optimizer) // shards,
    }
    if lay.ranks > 1 and not lay.fsdp:
        out["DDP gradient buckets (the gradients)"] = n * w
    if t.loss.beta > 0:
        out["KL reference weights"] = n * w // shards  # sharded like the policy under FSDP2
    return out


def gradients(lay: Layout) -> dict[str, int]:
    """The gradients while the update runs (set to None after each optimizer step, so the rollouts do
    not hold them); under DDP they live in the buckets `resident` counts."""
    if lay.ranks > 1 and not lay.fsdp:
        return {}
    return {"gradients": lay.shape.params * lay.weight_bytes // lay.shards}


def gathered(lay: Layout) -> dict[str, int]:
    """What exists only while the model computes: under FSDP2 the unsharded parameters of the root
    (embeddings, head) and of two layers (the one computing, the one prefetched), and one layer's
    float32 gradient before its reduce-scatter; under autocast the bf16 copies of the matmul weights
    that the forward's matmuls save for backward."""
    s, pb = lay.shape, 2 if lay.precision == "bf16-mixed" else lay.weight_bytes
    if lay.fsdp:
        root = s.embedding_params * (1 if s.tie_word_embeddings else 2) + s.hidden_size
        return {"FSDP2 gathered parameters": (2 * s.layer_params + root) * pb + s.layer_params * FLOAT32}
    if lay.precision == "bf16-mixed" and lay.weight_bytes == FLOAT32:
        matmul = s.params - (0 if s.tie_word_embeddings else s.embedding_params)
        return {"autocast bf16 weight copies": matmul * 2}
    return {}


def vllm_share(lay: Layout) -> float:
    """The share of each GPU's total memory the vLLM engine takes: `rollout.gpu_memory_utilization`."""
    return lay.t.rollout.gpu_memory_utilization or VLLM_GPU_SHARE


def vllm_weights(lay: Layout) -> int:
    """One GPU's part of the vLLM engine's weights, in the engine's dtype (not the master weights')."""
    return lay.shape.params * lay.engine_bytes // lay.tp


def vllm_activations(lay: Layout) -> int:
    return est.vllm_activation_bytes(lay.shape, lay.engine_bytes, lay.tp)


def vllm_kv_per_token(lay: Layout) -> int:
    """KV-cache bytes a token takes on one GPU of the engine: its share of the KV heads (vLLM replicates
    them when the engine spans more GPUs than there are heads), every layer, keys and values."""
    s = lay.shape
    return 2 * s.num_layers * max(1, s.num_kv_heads // lay.tp) * s.head_dim * lay.engine_bytes


def engine_share(lay: Layout) -> EngineShare | None:
    """What vLLM's share of a GPU must hold (None: no vLLM, or one sized by `kv_cache_gib`). vLLM 0.32
    asks for `gpu_memory_utilization` x the GPU's total memory at start-up (and refuses to start when
    less is free), puts its weights and its profiled activations in it and makes the rest KV cache
    (`Worker.determine_available_memory`); it refuses to start when that cache cannot hold one sequence
    at the model's context (the engine is built without a shorter `max_model_len`). Under tensor
    parallelism each GPU holds 1/tp of the weights and of the KV heads, for the rows of all tp ranks."""
    ro = lay.t.rollout
    if not lay.vllm or ro.kv_cache_gib is not None:
        return None
    return EngineShare(
        share=vllm_share(lay),
        fixed=vllm_weights(lay) + vllm_activations(lay),
        per_token=vllm_kv_per_token(lay),
        tokens=lay.tp * lay.rollout_rows * (lay.prompt + ro.max_new_tokens),
        min_tokens=lay.shape.max_position_embeddings,
    )


def push_memory(lay: Layout) -> dict[str, int]:
    """The weight push into vLLM (`generation.weight_sync`): streamed one tensor at a time, so under FSDP2
    each parameter is gathered whole just before the engine takes it, and vLLM's layer-wise reload holds a
    decoder layer's tensors (or the embedding) until it loads them: the larger of the two, in the master
    dtype. DDP and one process stream the module's own tensors (no copy; vLLM casts as it loads)."""
    if not lay.vllm or not lay.fsdp:
        return {}
    s = lay.shape
    largest = max(s.embedding_params, s.layer_params)
    return {"weight push (one layer or the embedding, gathered)": largest * lay.weight_bytes}


def engine_memory(lay: Layout) -> tuple[dict[str, int], float]:
    """The rollout engine beside the resident state: ({piece: bytes}, share of the GPU). transformers
    (hf, paged) decodes with the trained module: its KV cache for batch_prompts x group_size rows of
    prompt + max_new_tokens, and the larger of the prefill's and a sampling step's transients. vLLM holds
    its own weights (in `rollout.dtype`), activations and cache: `rollout.gpu_memory_utilization` of the
    GPU's total memory for all three (`engine_share`), or with `rollout.kv_cache_gib` that much cache
    beside its weights and activations (vLLM then ignores the share)."""
    s, ro = lay.shape, lay.t.rollout
    if ro.engine == "vllm":
        if ro.kv_cache_gib is None:
            return {}, vllm_share(lay)
        return {
            f"vLLM weights ({lay.engine_dtype}{f', 1/{lay.tp}' if lay.tp > 1 else ''})": vllm_weights(lay),
            "vLLM activations": vllm_activations(lay),
            "vLLM KV cache (rollout.kv_cache_gib)": int(ro.kv_cache_gib * GiB),
        }, 0.0
    rows = lay.rollout_rows
    return {
        f"KV cache ({rows} rows x {lay.prompt + ro.max_new_tokens} tokens)": est.kv_cache_bytes(
            s, rows, lay.prompt + ro.max_new_tokens, lay.kv_bytes
        ),
        "prefill / sampling transients": max(
            est.prefill_bytes(s, rows, lay.prompt, lay.kv_bytes), est.sampling_bytes(s, rows)
        ),
    }, 0.0


def phases(lay: Layout) -> dict[str, tuple[dict[str, int], float]]:
    """{phase: ({piece: bytes}, GPU share)} for the rollouts and the update. transformers decodes with the
    trained module (FSDP2 gathers its parameters); vLLM decodes with its own weights, after a push. vLLM
    keeps its memory through the update unless `rollout.sleep` (level 1: weights to host memory, KV cache
    freed; woken weights first, then the push, then the cache, so the push peaks below the rollouts)."""
    base = resident(lay)
    engine, share = engine_memory(lay)
    trainer = push_memory(lay) if lay.vllm else gathered(lay) if lay.fsdp else {}
    rollout = {**base, **trainer, **engine}
    t = lay.t
    update = est.update_peak(
        lay.shape,
        lay.micro_batch,
        lay.numerics,
        {**base, **gradients(lay)},
        t.optim.logprob_chunk,
        entropy_grad=bool(t.loss.entropy_coef),
        gradient_checkpointing=t.distributed.gradient_checkpointing,
        during_update=gathered(lay),
    )
    kept = lay.vllm and not t.rollout.sleep  # vLLM's memory stays through the update
    if kept:
        update.update(engine)
    return {"rollouts": (rollout, share), "update": (update, share if kept else 0.0)}


# --------------------------------------------------------------------------- fixes


def _fixes(cfg: OgerConfig, lay: Layout) -> list[tuple[str, dict]]:
    """Single changes that lower the peak, least drastic first within a field: (the change, the train
    section's update as nested dicts)."""
    t, out = lay.t, []
    d, o, ro = t.distributed, t.optim, t.rollout
    if not d.gradient_checkpointing and not o.share_prompts:
        out.append(
            ("train.distributed.gradient_checkpointing: true", {"distributed": {"gradient_checkpointing": True}})
        )
    if lay.ranks > 1 and not d.fsdp and ro.engine != "paged":
        out.append(("train.distributed.fsdp: true", {"distributed": {"fsdp": True}}))
    if t.precision == "float32":
        out.append(("train.precision: auto (bf16-mixed on a GPU)", {"precision": "auto"}))
    if o.max_tokens_per_micro_batch is None and o.micro_batch_size > 1:
        for mbs in _halvings(o.micro_batch_size):
            out.append((f"train.optim.micro_batch_size: {mbs}", {"optim": {"micro_batch_size": mbs}}))
    seq = lay.prompt + lay.response
    if o.max_tokens_per_micro_batch is not None and o.max_tokens_per_micro_batch > seq:
        for budget in _halvings(o.max_tokens_per_micro_batch):  # down to one sample a micro-batch
            out.append(
                (
                    f"train.optim.max_tokens_per_micro_batch: {budget}",
                    {"optim": {"max_tokens_per_micro_batch": budget}},
                )
            )
            if budget < seq:
                break
    if o.logprob_chunk is None or o.logprob_chunk > 256:
        out.append(("train.optim.logprob_chunk: 256", {"optim": {"logprob_chunk": 256}}))
    if ro.engine != "vllm":
        for bp in _halvings(ro.batch_prompts):
            out.append((f"train.rollout.batch_prompts: {bp}", {"rollout": {"batch_prompts": bp}}))
        out.append(
            ("train.rollout.engine: vllm, train.rollout.sleep: true", {"rollout": {"engine": "vllm", "sleep": True}})
        )
    elif not ro.sleep:
        out.append(("train.rollout.sleep: true", {"rollout": {"sleep": True}}))
    return out


def _halvings(n: int) -> list[int]:
    out, k = [], n // 2
    while k >= 1:
        out.append(k)
        k //= 2
    return out


def _changed(t: TrainConfig, update: dict) -> TrainConfig:
    fields = {}
    for k, v in update.items():
        fields[k] = getattr(t, k).model_copy(update=v) if isinstance(v, dict) else v
    return t.model_copy(update=fields)


# --------------------------------------------------------------------------- time and disk


def time_lines(lay: Layout, gpu: est.Gpu = est.H100) -> list[str]:
    """One step's time on one rank, from FLOPs at `MFU` and from bytes read per decode step at
    `HBM_EFFICIENCY` of the GPU's bandwidth (FSDP2 rollouts of transformers also all-gather the weights
    every step; vLLM reads its own weights, in its dtype, 1/tp of them per GPU for the rows of tp ranks)."""
    s, t = lay.shape, lay.t
    n, ranks = s.params, lay.ranks
    seq = lay.prompt + lay.response
    seqs = t.prompts_per_step * t.group_size
    tokens = seqs * seq
    peak = gpu.bf16_flops if lay.precision == "bf16-mixed" else gpu.tf32_flops
    rate = peak * est.MFU
    gc = t.distributed.gradient_checkpointing
    upd = (est.update_flops(n, tokens, gc) + est.attention_flops(s, seqs, seq, 4 if gc else 3)) / ranks
    forwards = (t.loss.ppo_mini_batches > 1) + (t.loss.beta > 0)
    # an entropy pass of paged / vLLM rollouts (rollout.needs_rollout_entropy), unless the behaviour pass
    # of several optimizer steps a batch gives the entropies (rollout.entropy_from_behaviour_pass)
    needs_entropy = t.bonus_lambda > 0 or t.oger.monitor
    forwards += t.rollout.engine != "hf" and needs_entropy and t.loss.ppo_mini_batches == 1
    fwd = forwards * (est.forward_flops(n, tokens) + est.attention_flops(s, seqs, seq, 1)) / ranks
    calls = math.ceil(t.prompts_per_step / (ranks * t.rollout.batch_prompts))
    rows, m = lay.rollout_rows, t.rollout.max_new_tokens
    bw = gpu.hbm_bytes_per_s * est.HBM_EFFICIENCY
    if lay.vllm:  # per GPU: 1/tp of the weights and of the KV heads, for the rows of tp ranks
        eb = lay.engine_bytes
        decode = est.decode_seconds(
            vllm_weights(lay), s.kv_bytes_per_token * eb // lay.tp, lay.tp * rows, lay.prompt, m, bw
        )
    else:
        wread = n * (lay.kv_bytes if lay.fsdp else lay.weight_bytes)
        decode = est.decode_seconds(wread, s.kv_bytes_per_token * lay.kv_bytes, rows, lay.prompt, m, bw)
    if lay.fsdp and not lay.vllm:  # synced_gpus: every decode step all-gathers each layer's parameters
        decode += m * n * lay.kv_bytes * (ranks - 1) / ranks / (gpu.link_bytes_per_s * est.LINK_EFFICIENCY)
    prefill = est.forward_flops(n, rows * lay.prompt) / rate
    u, f, r = upd / rate, fwd / rate, calls * (decode + prefill)
    unit = "bf16" if lay.precision == "bf16-mixed" else "TF32"
    return [
        f"time per step and GPU (estimates on one {gpu.name}: {unit} peak {peak / 1e12:.0f} TFLOP/s at MFU "
        f"{est.MFU}; decode at {est.HBM_EFFICIENCY:.0%} of {gpu.hbm_bytes_per_s / 1e12:.2f} TB/s HBM):",
        f"  rollouts: {calls} generate call(s) of {lay.tp * rows if lay.vllm else rows} rows x {m} new tokens, "
        f"bytes-bound "
        f"{fmt_seconds(r)} at least"
        + (" (FSDP2 all-gathers the weights each decode step)" if lay.fsdp and not lay.vllm else "")
        + (
            f" (vLLM, {lay.engine_dtype}" + (f", {lay.tp} GPUs an engine" if lay.tp > 1 else "") + ")"
            if lay.vllm
            else ""
        ),
        f"  update: {tokens / ranks:,.0f} tokens x {(8 if gc else 6)}N FLOPs + attention = {fmt_seconds(u)}"
        + (f"; {forwards} no-grad forward(s) {fmt_seconds(f)}" if forwards else ""),
        f"  step ~{fmt_seconds(u + f + r)}; {t.steps} steps ~{fmt_seconds(t.steps * (u + f + r))}",
    ]


@dataclass(frozen=True)
class Disk:
    checkpoint: int  # one resumable checkpoint
    checkpoints: int  # how many at once
    model: int  # the final model (HF folder)
    rollout_log: int  # rollouts.jsonl at most
    round_kept: int  # what a finished round keeps: the train and policy artifacts
    rounds_kept: int  # rounds whose artifacts retention keeps

    @property
    def stage_peak(self) -> int:
        """The train stage's disk at its peak: the checkpoints, the final model twice (exported, then
        copied into the artifact before the run folder's copy goes) and the rollouts log."""
        return self.checkpoint * self.checkpoints + 2 * self.model + self.rollout_log

    @property
    def retained(self) -> int:
        return self.round_kept * self.rounds_kept


def disk(cfg: OgerConfig, shape: ModelShape) -> Disk:
    """The train stage's disk: checkpoints every `logging.checkpoint_every` steps of model + optimizer
    state (`KEEP_CHECKPOINTS` kept), the final model, rollouts.jsonl; a round keeps its train artifact
    (model and log) and a policy artifact (the starting model, saved per round); `retention` keeps the
    rounds of the last keep_rounds rounds and of the last keep_runs run folders (a nightly round per run:
    the larger of the two)."""
    t, r = cfg.train, cfg.retention
    w = FLOAT32 if cfg.policy.dtype == "float32" else 2
    model = shape.params * w
    log = est.rollout_log_bytes(t.steps * t.prompts_per_step * t.group_size, response_budget(cfg))
    return Disk(
        checkpoint=est.checkpoint_bytes(shape.params, w, est.adam_states(t.optim.optimizer)),
        checkpoints=est.checkpoints_on_disk(t.steps, t.logging.checkpoint_every, KEEP_CHECKPOINTS),
        model=model,
        rollout_log=log if t.logging.log_rollouts else 0,
        round_kept=2 * model + (log if t.logging.log_rollouts else 0),
        rounds_kept=max(r.keep_rounds, r.keep_runs),
    )


def disk_lines(cfg: OgerConfig, dk: Disk) -> list[str]:
    r = cfg.retention
    return [
        f"disk (estimates): a checkpoint {fmt_bytes(dk.checkpoint)} (model + optimizer state), {dk.checkpoints} at "
        f"once; final model {fmt_bytes(dk.model)}; rollouts.jsonl at most {fmt_bytes(dk.rollout_log)}: the train "
        f"stage peaks at {fmt_bytes(dk.stage_peak)}",
        f"  a round keeps {fmt_bytes(dk.round_kept)} (trained model, rollouts log, its policy artifact); "
        f"retention (keep_rounds {r.keep_rounds}, keep_runs {r.keep_runs}) pins up to {dk.rounds_kept} rounds: "
        f"{fmt_bytes(dk.retained)}",
    ]


# --------------------------------------------------------------------------- the plan's section


def rollout_engine_label(t: TrainConfig) -> str:
    """The engine the rollouts come from, as `oger plan` names it: vLLM with its dtype (auto: bf16 on a
    GPU, float32 on a CPU, `precision.resolve_rollout_dtype`), its share of each GPU and the GPUs one
    engine spans; or transformers on the trained module."""
    ro = t.rollout
    if ro.engine == "vllm":
        dtype = "auto: bf16 on a GPU, float32 on a CPU" if ro.dtype == "auto" else ro.dtype
        share = ro.gpu_memory_utilization or VLLM_GPU_SHARE
        sleep = ", asleep during the update" if ro.sleep else ""
        return f"vLLM colocated ({dtype}; {share:g} of each GPU; tensor parallel {ro.tensor_parallel_size}{sleep})"
    if ro.engine == "paged":
        return "transformers continuous batching (paged)"
    return "transformers generate"


def _phase_line(name: str, pieces: dict[str, int], share: float) -> str:
    parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in pieces.items() if v)
    if share:
        parts += f", vLLM {share:.0%} of the GPU"
    return (
        f"  {name} {fmt_bytes(sum(pieces.values()))}" + (f" + {share:.0%} of the GPU" if share else "") + f": {parts}"
    )


def _engine_lines(lay: Layout) -> list[str]:
    """What the vLLM engine holds on each GPU: its share and what the share is for (the plan command
    says how much of it is KV cache on the GPU it is given, `engine_share`), or its fixed cache."""
    if not lay.vllm:
        return []
    ro, share, per_token = lay.t.rollout, engine_share(lay), vllm_kv_per_token(lay)
    tokens = lay.tp * lay.rollout_rows * (lay.prompt + ro.max_new_tokens)
    split = f" on each of the engine's {lay.tp} GPUs (1/{lay.tp} of them)" if lay.tp > 1 else ""
    held = (
        f"{share.share:g} of each GPU's memory (rollout.gpu_memory_utilization) for its weights, activations "
        f"and KV cache: {lay.engine_dtype} weights {fmt_bytes(vllm_weights(lay))}{split}, activations "
        f"~{fmt_bytes(vllm_activations(lay))} (estimate), the rest KV cache"
        if share
        else f"its {lay.engine_dtype} weights {fmt_bytes(vllm_weights(lay))}{split} and a "
        f"{ro.kv_cache_gib:g} GiB KV cache (rollout.kv_cache_gib: {int(ro.kv_cache_gib * GiB // per_token):,} tokens)"
    )
    return [
        f"  vLLM rollout engine: {held}; {fmt_bytes(per_token)} of cache a token, {tokens:,} tokens when its "
        f"{lay.tp * lay.rollout_rows} rows run at full length; "
        + ("asleep during the update (rollout.sleep)" if ro.sleep else "kept through the update")
    ]


def _micro_batch_line(lay: Layout) -> str:
    """The update's terms that change with the micro-batch: activations with and without gradient
    checkpointing, the LM head's logits and one log-prob chunk."""
    s, mb, num, chunk = lay.shape, lay.micro_batch, lay.numerics, lay.t.optim.logprob_chunk

    def acts(gc: bool) -> int:
        args = (num.compute, num.norm, num.residual, mb.padded_mask)
        extra = est.recompute_bytes(s, mb.tokens, num.compute, num.norm, mb.padded_mask) if gc else 0
        return est.activation_bytes(s, mb.tokens, mb.head_positions, *args, gradient_checkpointing=gc) + extra

    n = min(chunk or mb.scored, mb.scored)
    return (
        f"  the update's micro-batch ({mb.tokens:,} tokens): activations {fmt_bytes(acts(False))} without gradient "
        f"checkpointing, {fmt_bytes(acts(True))} with it (a layer recomputed in backward included); logits "
        f"{mb.head_positions:,} x {s.vocab_size:,} {fmt_bytes(mb.head_positions * s.vocab_size * num.compute)}; "
        f"a log-prob chunk of {n:,} positions in float32 {fmt_bytes(n * s.vocab_size * FLOAT32)}"
    )


def gpu_estimate(cfg: OgerConfig) -> GpuEstimate | None:
    """The train stage's per-GPU estimate for `oger plan`: each phase's pieces, the peak, the changes
    that would lower it (each the estimate re-run with that change), time and disk; None when the
    policy's shape is unknown."""
    lay = layout(cfg)
    if lay is None:
        return None
    ph = phases(lay)
    mb, s, t = lay.micro_batch, lay.shape, lay.t
    size = f"{s.params / 1e9:.2f}B" if s.params >= 1e9 else f"{s.params / 1e6:.3g}M"
    auto = " (precision auto, as on a GPU)" if t.precision == "auto" else ""
    lines = [
        f"model: {size} parameters, {s.num_layers} layers, vocabulary {s.vocab_size:,}, "
        f"{s.max_position_embeddings:,} positions; shape from {s.source}",
        f"{lay.ranks} rank(s), {_sharding(lay)}; {lay.precision}{auto}, "
        f"{cfg.policy.dtype} weights; gradient checkpointing {'on' if t.distributed.gradient_checkpointing else 'off'}"
        f"; log-prob chunk {t.optim.logprob_chunk or 'off'}",
        f"sequences: {prompt_estimate(cfg).how}; "
        + (
            f"micro-batches packed to {mb.tokens:,} tokens"
            if mb.packed
            else f"micro-batches of {mb.rows} x {mb.seq:,} tokens"
        ),
        "memory (estimates):",
        *(_phase_line(name, pieces, share) for name, (pieces, share) in ph.items()),
        *_engine_lines(lay),
        _micro_batch_line(lay),
    ]
    singles = _fixes(cfg, lay)
    last: dict[str, tuple[str, dict]] = {}  # each field's most drastic change; the engine switch apart
    for text, update in singles:
        if not text.startswith("train.rollout.engine"):
            last[text.split(":")[0]] = (text, update)
    if len(last) > 1:
        together: dict = {}
        for _, update in last.values():
            for k, v in update.items():
                together[k] = {**together.get(k, {}), **v} if isinstance(v, dict) else v
        singles.append(("together: " + "; ".join(text for text, _ in last.values()), together))
    fixes = [(text, _totals(phases(layout(cfg, _changed(t, update))))) for text, update in singles]
    return GpuEstimate(
        phases=_totals(ph),
        lines=lines + time_lines(lay) + disk_lines(cfg, disk(cfg, s)),
        fixes=fixes,
        engine=engine_share(lay),
    )


def _totals(ph: dict[str, tuple[dict[str, int], float]]) -> dict[str, tuple[int, float]]:
    return {name: (sum(pieces.values()), share) for name, (pieces, share) in ph.items()}


def _sharding(lay: Layout) -> str:
    if not lay.fsdp:
        return "replicated"
    if lay.t.distributed.fsdp == "hybrid":
        return f"HSDP (sharded over a node's {lay.shards}, replicated over {lay.t.distributed.nnodes} nodes)"
    return "FSDP2-sharded"
