"""bf16 mixed precision for SFT: matmuls in bfloat16, weights, optimizer state, attention,
normalisation and loss in float32.

Why: on a CPU with native bf16 dot products (AVX512-BF16, AMX) a bf16 matmul of the tiny
policy's shapes runs 2.3x faster than float32 (3200x128 @ 128x384: 1.48 ms vs 3.43 ms on one
core here), and matmuls are ~60% of an SFT step. Attention stays float32 on the CPU: torch's
flash-attention backward in bf16 took 3.7x longer than in float32 and ate the whole gain.
Master weights stay float32 (autocast casts a copy per op), so AdamW's small updates are not
rounded away. A CPU without native bf16 does bf16 dot products in software, expected to be slower
(not measured: this machine has them): float32 there, which is what `auto` picks (`resolve`).
torch is imported only where a model runs, so planning a stage (its key records the resolved
precision) stays light.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

Precision = Literal["float32", "bf16-mixed"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPU flags of bf16 dot-product instructions


CPU_FLAGS_ENV = "OGER_CPU_FLAGS"  # space-separated flags standing in for /proc/cpuinfo's


@lru_cache(maxsize=4)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux), read once (every plan resolves `auto`); empty where
    /proc/cpuinfo is not there. `OGER_CPU_FLAGS` replaces them, so a run can plan as another CPU
    would (`OGER_BENCH_AS_AVX2=1 python -m bench demo` plans as a CPU without native bf16)."""
    if os.environ.get(CPU_FLAGS_ENV) is not None:
        return frozenset(os.environ[CPU_FLAGS_ENV].split())
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve(precision: str, flags: set[str] | frozenset[str] | None = None) -> Precision:
    """`auto`: bf16-mixed on a CPU with native bf16 dot products, else float32 (bf16 done in
    software is expected to be slower; not measured here). Other values stand as they are."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    flags = cpu_flags() if flags is None else flags
    return "bf16-mixed" if any(f in flags for f in NATIVE_BF16_FLAGS) else "float32"


def resolve_training(precision: str, flags=None, gpu: bool | None = None) -> Precision:
    """The train stage's `auto`: bf16-mixed on an NVIDIA GPU (where the trainer runs there) or a CPU
    with native bf16, else float32. Resolved once, when the stage is planned: the key holds the result
    and the ranks get it in the launch spec, so no process resolves it again."""
    if precision == "auto" and (has_nvidia_gpu() if gpu is None else gpu):
        return "bf16-mixed"
    return resolve(precision, flags)


def resolve_rollout_dtype(dtype: str, gpu: bool | None = None) -> str:
    """`train.rollout.dtype` as it runs: auto is bfloat16 on an NVIDIA GPU (vLLM's own default there, and
    what verl and TRL roll out in beside float32 training state) and float32 on a CPU (vLLM's CPU build
    is tested here in float32). Resolved when the stage is planned, like `resolve_training`."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if (has_nvidia_gpu() if gpu is None else gpu) else "float32"


def has_nvidia_gpu(proc: Path = Path("/proc/driver/nvidia/gpus")) -> bool:
    """Whether the NVIDIA driver lists a GPU (no torch import: planning stays light)."""
    try:
        return any(proc.iterdir())
    except OSError:
        return False


def native_dtype(dtype: str, flags: set[str] | frozenset[str] | None = None, gpu: bool | None = None) -> str:
    """A generation dtype as it runs here: `native` is bfloat16 where bf16 is computed natively (an
    NVIDIA GPU, where the transformers engine puts the model, or a CPU with AVX512-BF16/AMX) and
    float32 elsewhere. Why: without native bf16 a CPU's bf16 matmuls are done in software, and on
    the demo's AVX2-only machine SmolLM2's bf16 decode made the teachers stage 3x this machine's.
    Other values stand as they are."""
    if dtype != "native":
        return dtype
    gpu = has_nvidia_gpu() if gpu is None else gpu
    return "bfloat16" if gpu or resolve("auto", flags) == "bf16-mixed" else "float32"


# An attention function for transformers' AttentionInterface: SDPA on float32 inputs whatever the
# autocast dtype of q, k and v; the output projection casts back to bf16 under autocast.
FLOAT32_SDPA = "sdpa_float32"
_registered = False


def _sdpa_float32(module, query, key, value, attention_mask, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(FLOAT32_SDPA, _sdpa_float32)
        _registered = True


@contextlib.contextmanager
def float32_attention(model, precision: Precision) -> Iterator[None]:
    """Inside the block a CPU model under bf16 autocast computes attention in float32 (see the
    module docstring); the model's own attention implementation is restored after, so a saved
    model does not name a function that only this process registered."""
    device = next(model.parameters()).device.type
    if precision == "float32" or device != "cpu":
        yield
        return
    _register()
    before = model.config._attn_implementation
    model.set_attn_implementation(FLOAT32_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
