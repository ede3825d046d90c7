"""Token-by-token decoding on a CPU with the linear layers' weights packed for oneDNN.

Why: a decoding step multiplies a few rows (the batch) by every weight matrix. torch's float32
`F.linear` on the CPU goes to MKL's sgemm, which repacks the weight on every call and splits a
skinny product poorly over threads: SmolLM2-135M's 211 matrices of a step ran at ~7 GB/s of
weights on a machine that reads 100 GB/s. With each weight packed into oneDNN's blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing uses) once per
`generate` call, or once for a loaded engine's life (`TransformersEngine.load`), the same products
of 8 rows take half the time (docs/PERFORMANCE.md, "decode").

The packed copy lives only inside the block: weights change after every update, and the copy costs
the linear weights' memory once more, so models above `MAX_PACKED_BYTES` are left as they are.
Inputs wider than `MAX_ROWS` rows (a prefill) take the plain path. The results equal `F.linear`'s
up to float rounding (another summation order), tested.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
import torch.nn.functional as F

from oger.runtime.cpu_threads import small_cpu_model

# The largest input (rows = all dimensions but the last) sent to the packed weights, which are laid
# out for it: decoding steps of a batch. Wider inputs gain less (0.48 of plain's time at 8 rows, 0.77
# at 64, 0.91 at 256 under load; SmolLM2's float32 shapes): a prefill's hundreds of rows stay on `F.linear`.
MAX_ROWS = 64
# Above this many bytes of linear weights the packed copy is not made (memory over speed).
MAX_PACKED_BYTES = 2 << 30
PACKED_DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
# model -> [depth, packed modules]: nested or concurrent blocks on one model share one copy.
_active: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def available() -> bool:
    """Whether this torch build has oneDNN and its packed linear ops."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def packable(module: torch.nn.Module) -> bool:
    """A plain nn.Linear on the CPU in float32/bf16 whose `forward` nobody else has replaced (an
    accelerate offload hook does that) and whose weight is an ordinary tensor (not a DTensor)."""
    w = getattr(module, "weight", None)
    return (
        isinstance(module, torch.nn.Linear)
        and "forward" not in module.__dict__
        and isinstance(w, torch.Tensor)
        and type(w.data) is torch.Tensor
        and w.device.type == "cpu"
        and w.dtype in PACKED_DTYPES
        and w.dim() == 2
    )


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if (
            x.dtype == packed.dtype
            and x.numel() <= MAX_ROWS * x.shape[-1]
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
        return F.linear(x, module.weight, module.bias)

    return forward


def _pack(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for m in model.modules() if packable(m)]
    if not mods or sum(m.weight.numel() * m.weight.element_size() for m in mods) > MAX_PACKED_BYTES:
        return []
    done = []
    try:
        for m in mods:
            packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), MAX_ROWS)
            m.forward = _packed_forward(m, packed)
            done.append(m)
    except RuntimeError:  # a shape or dtype this oneDNN build does not pack: leave the model as it is
        _unpack(done)
        return []
    return done


def _unpack(mods: list[torch.nn.Module]) -> None:
    for m in mods:
        m.__dict__.pop("forward", None)


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Inside the block the model's CPU linear layers compute few-row, no-grad inputs with packed
    weights; yields whether any layer was packed. Leaves the model as it was on exit."""
    if not enabled or not available():
        yield False
        return
    with _lock:
        entry = _active.get(model)
        if entry is None:
            entry = _active[model] = [0, _pack(model)]
        entry[0] += 1
    try:
        yield bool(entry[1])
    finally:
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                _unpack(entry[1])
                del _active[model]


def decode_linears(model: torch.nn.Module, enabled: bool = True) -> contextlib.AbstractContextManager:
    """`packed_linears` for decoding `model`, except a small CPU model (`small_cpu_model`): its
    decode is bound by Python, not its matmuls (the tiny policy's 64 rollouts: 0.20-0.24 s plain,
    0.23-0.31 s packed), so it stays plain, as `cpu_threads.decode_threads` keeps it on one thread."""
    return packed_linears(model, enabled=enabled and not small_cpu_model(model))
