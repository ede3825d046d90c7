"""Memory, time and disk of a training step per GPU, by arithmetic on a model's shape: no torch, nothing
runs. Everything here is an estimate, and every memory term is a tensor the code holds (its docstring
names which and why), so when an estimate and a measurement disagree the wrong term can be found; there
is no fitted factor.

Checked against a measurement: one SmolLM2-135M update on this project's CPU (`bench/update_memory.py`,
docs/PERFORMANCE.md "update_memory"): `update_peak` of that setup is 0.99 of the measured peak in chunks
and 0.93-0.99 of it all at once (tests/test_estimate.py holds it within 25%). The activation terms were
read off autograd's saved tensors of transformers' Llama/Qwen2 layers (float32, bf16 autocast, bf16
parameters; tests/test_estimate.py checks them exactly); the log-prob terms off
`oger.algorithm.core.token_scores_chunked`, and measured on their own with the allocator.

Bytes throughout; `compute` is the bytes of the dtype the matmuls run in (4 float32, 2 bf16).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from oger.runtime.model_shapes import ModelShape

GiB = 2**30
FLOAT32 = 4


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Gpu(_Frozen):
    """What the time estimates assume of a GPU (its data sheet's dense peak numbers)."""

    name: str
    bf16_flops: float
    tf32_flops: float
    hbm_bytes_per_s: float
    link_bytes_per_s: float  # per direction, to the other GPUs of the node


H100 = Gpu(name="H100 SXM", bf16_flops=989e12, tf32_flops=494e12, hbm_bytes_per_s=3.35e12, link_bytes_per_s=450e9)
MFU = 0.35  # share of the peak the update's matmuls reach (an assumption; verl/TRL report 0.3-0.5)
HBM_EFFICIENCY = 0.6  # share of HBM bandwidth a decode step reads at (an assumption; HF generate's per-step
# Python overhead comes on top, so the decode time is a lower bound)
LINK_EFFICIENCY = 0.6  # share of NVLink bandwidth an all-gather reaches (an assumption)


# --------------------------------------------------------------------------- what stays in memory


def adam_states(optimizer: str) -> int:
    """Optimizer states per parameter: AdamW's two moments, SGD's momentum."""
    return {"adamw": 2, "sgd": 1}[optimizer]


# --------------------------------------------------------------------------- activations


def layer_activations_per_token(shape: ModelShape, compute: int, norm: int = FLOAT32, kv_repeated: bool = False) -> int:
    """Bytes one decoder layer keeps for backward per token, as autograd saves them in transformers'
    Llama / Qwen2 layer (read with saved-tensor hooks on SmolLM2, float32 and bf16 autocast):
    - each of the two RMSNorms: its input in float32 (it upcasts), its float32 rsqrt (one per token) and
      the normalised tensor (`norm`: float32 beside float32 weights, autocast included; bf16 where the
      parameters are bf16);
    - in the compute dtype: each norm's output as the projections' input (one tensor for q/k/v and one
      for gate/up when the norm's output is already in the compute dtype; under autocast each of those
      five projections casts and saves its own copy), the queries and the attention output (o_proj's
      input, the same tensor), keys and values (at the query width when `repeat_kv` copies them: with a
      padding mask SDPA cannot take the grouped heads), and the MLP's gate, silu(gate), up and their
      product (the down projection's input);
    - SDPA's log-sum-exp, one float32 per head. RoPE keeps nothing per layer (its cos/sin are shared)."""
    d, q, i = shape.hidden_size, shape.q_width, shape.intermediate_size
    kv = q if kv_repeated else shape.kv_width
    norms = 2 * (d * (FLOAT32 + norm) + FLOAT32)
    inputs = (2 if norm == compute else 5) * d
    return norms + compute * (inputs + 2 * q + 2 * kv + 4 * i) + FLOAT32 * shape.num_heads


def activation_bytes(
    shape: ModelShape,
    tokens: int,
    head_positions: int,
    compute: int,
    norm: int = FLOAT32,
    residual: int = FLOAT32,
    kv_repeated: bool = False,
    gradient_checkpointing: bool = False,
) -> int:
    """What the forward over `tokens` positions (padding included) keeps until backward: every layer's
    activations (`layer_activations_per_token`), or with gradient checkpointing only each layer's input
    (the residual stream, `residual` bytes); then the final norm's input and output, the LM head's input
    at its `head_positions` and the rotary cos/sin shared by the layers."""
    d = shape.hidden_size
    full = layer_activations_per_token(shape, compute, norm, kv_repeated)
    per_layer = residual * d if gradient_checkpointing else full
    layers = shape.num_layers * tokens * per_layer
    final = tokens * d * (FLOAT32 + norm) + head_positions * d * compute
    rotary = 2 * tokens * shape.head_dim * residual
    return layers + final + rotary


def recompute_bytes(shape: ModelShape, tokens: int, compute: int, norm: int = FLOAT32, kv_repeated=False) -> int:
    """With gradient checkpointing, what backward adds for the layer it is in: that layer's activations
    recomputed, and its gradients (at most as large again)."""
    return 2 * tokens * layer_activations_per_token(shape, compute, norm, kv_repeated)


def padding_mask_bytes(rows: int, seq: int) -> int:
    """The 4D boolean attention mask transformers builds for a padded batch, (rows, 1, T, T), kept for
    every layer's backward. None is built when no row is padded (`padded_mask` False)."""
    return rows * seq * seq


# --------------------------------------------------------------------------- the log-probs and entropies

# (positions, V) float32 buffers alive at once in one pass of `core.token_scores_chunked`'s `scores`:
# forward: z = logits / T, log_softmax (clamped: a second one), its exp, the entropy product (4 at once);
# with the entropy's gradient (recomputed in backward under checkpoint), z, the log-softmax, its clamp and
# exp are kept and two gradients are made beside them (6); without it, z and three gradient buffers (4).
# An unchunked pass keeps what it saves: z, log_softmax, clamp, exp and the product are alive together at
# the end of the forward (5), 4 without the entropy's gradient.
SCORES_FORWARD_BUFFERS = 4
SCORES_BACKWARD_BUFFERS = {True: 6, False: 4}
UNCHUNKED_BUFFERS = {True: 5, False: 4}


class ScoresPeak(_Frozen):
    """The LM head's output and the log-prob/entropy work, by phase (bytes above the activations)."""

    forward: int  # end of the forward: the head's output (and its copy) and one chunk's float32 work
    backward: int  # backward through a chunk: the kept input, the running gradient and a chunk's work
    head: int  # backward into the LM head: the gradient of the kept input and of the head's output

    @property
    def peak(self) -> int:
        return max(self.forward, self.backward, self.head)


def scores_peak(
    rows: int,
    response: int,
    vocab: int,
    compute: int,
    chunk: int | None,
    entropy_grad: bool,
    packed: bool = False,
) -> ScoresPeak:
    """The memory of the response positions' logits and of `core.token_scores_chunked` on them.

    Padded layout (`update.response_logits`): the head runs on the last R+1 positions, (rows, R+1, V) in
    the compute dtype; the chunks read `logits[:, :-1].reshape(-1, V)`, a copy when rows > 1 (the slice is
    not contiguous across rows), the head's own storage when rows == 1. Packed (`packing.packed_logits`):
    (K, V) for K = rows x R kept positions, in the compute dtype (the chunks upcast their own part).

    Chunked (`chunk` < N = rows x R positions): each chunk's float32 work runs under activation
    checkpointing, so the forward holds the head's output (and its copy) and one chunk's buffers; the
    backward recomputes a chunk while the kept input and the chunks' gradients so far (N x V in the
    compute dtype at the last chunk) are alive; `split`'s backward then joins them into one (N, V)
    gradient (both alive), which the padded layout's slice writes into a (rows, R+1, V) one. Unchunked:
    the float32 work of all N positions is saved at once (`UNCHUNKED_BUFFERS`)."""
    n_pos = rows * response
    full = n_pos * vocab
    head = (n_pos if packed else rows * (response + 1)) * vocab * compute
    copy = full * compute if rows > 1 and not packed else 0
    kept = copy or head  # what the chunks read
    at_forward = head + copy
    if not chunk or chunk >= n_pos:
        forward = at_forward + UNCHUNKED_BUFFERS[entropy_grad] * full * FLOAT32
        cast_back = full * compute if compute != FLOAT32 else 0  # the float32 gradient cast to the logits' dtype
        return ScoresPeak(forward=forward, backward=0, head=full * FLOAT32 + max(cast_back, 0 if packed else head))
    unit = chunk * vocab * FLOAT32
    grads = full * compute  # the chunks' gradients, in the logits' dtype
    return ScoresPeak(
        forward=at_forward + SCORES_FORWARD_BUFFERS * unit,
        backward=kept + grads + SCORES_BACKWARD_BUFFERS[entropy_grad] * unit,
        head=grads + max(grads, 0 if packed else head),
    )


# --------------------------------------------------------------------------- one micro-batch's update


class MicroBatch(_Frozen):
    """One micro-batch of the update as the model sees it: `rows` padded sequences of `seq` positions, or
    (packed) one row of `packed_tokens` positions holding samples of `seq` positions each."""

    rows: int  # sequences (packed: ignored, the row holds packed_tokens / seq samples)
    seq: int  # positions per sequence: prompt + response (padded to the longest)
    response: int  # positions the LM head scores per sequence
    packed: bool = False
    packed_tokens: int | None = None  # packed: the row's length (default rows x seq)
    padded_mask: bool = False  # rows of different lengths: a 4D mask, keys and values repeated

    @property
    def tokens(self) -> int:
        """Positions the model runs over."""
        return (self.packed_tokens or self.rows * self.seq) if self.packed else self.rows * self.seq

    @property
    def scored(self) -> int:
        """Positions the LM head scores: each row's responses (packed: the response share of the row)."""
        return self.tokens * self.response // self.seq if self.packed else self.rows * self.response

    @property
    def head_positions(self) -> int:
        """Positions the LM head runs on: padded rows keep one more each (`logits_to_keep` R + 1)."""
        return self.scored if self.packed else self.rows * (self.response + 1)


class Numerics(_Frozen):
    """The dtypes a rank computes in (bytes): matmuls, RMSNorm outputs, the residual stream, weights."""

    compute: int = FLOAT32
    norm: int = FLOAT32
    residual: int = FLOAT32
    weights: int = FLOAT32


def update_peak(
    shape: ModelShape,
    mb: MicroBatch,
    num: Numerics,
    resident: dict[str, int],
    chunk: int | None,
    entropy_grad: bool,
    gradient_checkpointing: bool = False,
    during_update: dict[str, int] | None = None,
) -> dict[str, int]:
    """The peak of one micro-batch's forward and backward, by piece: `resident` (weights, gradients,
    optimizer state, ... as the caller counts them for this rank), `during_update` (what exists only
    while a micro-batch runs: autocast's bf16 weight copies that the matmuls save, FSDP2's gathered
    parameters), the activations, the padding mask and the larger of the log-prob work and the layer
    backward (recomputed layer under gradient checkpointing). The peak is reached at the end of the
    forward or early in the backward, when every layer's activations are still held."""
    acts = activation_bytes(
        shape,
        mb.tokens,
        mb.head_positions,
        num.compute,
        num.norm,
        num.residual,
        mb.padded_mask,
        gradient_checkpointing,
    )
    rows, response = (1, mb.scored) if mb.packed else (mb.rows, mb.response)
    scores = scores_peak(rows, response, shape.vocab_size, num.compute, chunk, entropy_grad, mb.packed)
    layer = recompute_bytes(shape, mb.tokens, num.compute, num.norm, mb.padded_mask) if gradient_checkpointing else 0
    pieces = dict(resident)
    pieces.update(during_update or {})
    pieces["activations"] = acts
    if mb.padded_mask and not mb.packed:
        pieces["padding mask"] = padding_mask_bytes(mb.rows, mb.seq)
    if scores.peak >= layer:
        pieces["logits and log-prob chunks"] = scores.peak
    else:
        pieces["recomputed layer (gradient checkpointing)"] = layer
    return pieces


# --------------------------------------------------------------------------- rollouts (transformers generate)


def kv_cache_bytes(shape: ModelShape, rows: int, positions: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `rows` sequences of `positions` tokens."""
    return rows * positions * shape.kv_bytes_per_token * dtype_bytes


def prefill_bytes(shape: ModelShape, rows: int, prompt: int, dtype_bytes: int) -> int:
    """The largest transient of a no-grad prefill: one layer's MLP over every prompt token (silu(gate),
    up and their product alive together) and the left-padding mask (rows, 1, P, P)."""
    return 3 * rows * prompt * shape.intermediate_size * dtype_bytes + rows * prompt * prompt


def sampling_bytes(shape: ModelShape, rows: int) -> int:
    """A decode step's sampling: a few (4) float32 (rows, V) tensors (logits, softmax, top-p's sorted copy
    and its mask)."""
    return 4 * rows * shape.vocab_size * FLOAT32


# --------------------------------------------------------------------------- rollouts (vLLM)

# vLLM 0.32.0's defaults for its offline `LLM` on a GPU of 70 GiB or more other than an A100
# (`EngineArgs.get_batch_defaults`): tokens one forward may take, and rows one step may run.
VLLM_BATCHED_TOKENS = 16384
VLLM_MAX_SEQS = 1024


def vllm_activation_bytes(
    shape: ModelShape,
    dtype_bytes: int,
    tensor_parallel: int = 1,
    batched_tokens: int = VLLM_BATCHED_TOKENS,
    seqs: int = VLLM_MAX_SEQS,
) -> int:
    """What vLLM's start-up profile run takes beyond the weights, which it keeps out of the KV cache
    inside its `gpu_memory_utilization` share: one layer's MLP over `batched_tokens` tokens (gate, up
    and their product; the intermediate width split over the tensor-parallel ranks) and a sampling
    step of `seqs` rows (`sampling_bytes`). vLLM measures its own; this is the estimate the plan uses
    to say how much of the share is KV cache (its CUDA graphs, a few hundred MiB, are not counted)."""
    mlp = 3 * batched_tokens * (shape.intermediate_size // tensor_parallel) * dtype_bytes
    return mlp + sampling_bytes(shape, seqs)


# --------------------------------------------------------------------------- time


def update_flops(params: int, tokens: int, gradient_checkpointing: bool = False) -> float:
    """Forward and backward matmuls: 6 N per token (2 forward, 4 backward), plus one forward more
    when gradient checkpointing recomputes the layers."""
    return (8 if gradient_checkpointing else 6) * params * tokens


def forward_flops(params: int, tokens: int) -> float:
    """A no-grad forward (old log-probs, the KL reference, an entropy pass, a prefill): 2 N per token."""
    return 2.0 * params * tokens


def attention_flops(shape: ModelShape, sequences: int, seq: int, passes: float) -> float:
    """Causal attention's own matmuls (QK^T and AV, half of T x T each): 2 T^2 x query width per layer
    and sequence for one forward; `passes` forwards' worth (3 for forward + backward)."""
    return passes * 2.0 * seq * seq * shape.q_width * shape.num_layers * sequences


def decode_seconds(
    weight_bytes: int, kv_per_token: int, rows: int, prompt: int, new_tokens: int, bytes_per_s: float
) -> float:
    """`new_tokens` decode steps of `rows` sequences, each step reading every weight once and the KV
    cache so far (prompt + t tokens per row), at `bytes_per_s`: a bandwidth bound, the time at least."""
    m = new_tokens
    kv_reads = rows * kv_per_token * (m * prompt + m * (m - 1) / 2)
    return (m * weight_bytes + kv_reads) / bytes_per_s


# --------------------------------------------------------------------------- disk


def checkpoint_bytes(params: int, weight_bytes: int, optimizer_states: int) -> int:
    """One resumable checkpoint: the model and the optimizer's state (DCP: the same bytes whatever the
    sharding), each state as large as the weights."""
    return params * weight_bytes * (1 + optimizer_states)


def checkpoints_on_disk(steps: int, every: int, keep: int) -> int:
    """How many checkpoints exist at once: all but the newest `keep` are pruned once the next one is
    whole, so keep + 1 while one is written."""
    return min(steps // every, keep + 1)


ROLLOUT_ROW_BYTES = 620  # a rollouts.jsonl row without its text (as measured on the demo's rows)
TEXT_BYTES_PER_TOKEN = 4  # characters of English/LaTeX text per token, roughly


def rollout_log_bytes(samples: int, max_tokens: int) -> int:
    """rollouts.jsonl at most: every sample's fields and its text at the full generation budget."""
    return samples * (ROLLOUT_ROW_BYTES + TEXT_BYTES_PER_TOKEN * max_tokens)


def fmt_bytes(n: float) -> str:
    """Bytes for a human: GiB with one decimal from 1 GiB, else MiB (KiB below one)."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"
