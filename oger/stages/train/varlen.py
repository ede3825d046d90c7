"""Attention within each packed sample, without the (T x T) mask: a varlen attention for sdpa/eager.

Why: given a packed row and no 2D mask, transformers' sdpa and eager paths build a block-diagonal
causal mask over the whole row and attend over all T x T pairs (the mask only zeroes the cross-sample
ones), so a 4096-token row costs as much attention as one 4096-token sample: on SmolLM2 a packed row
of 4096 tokens updated slower than two of 2048 (`bench update`). The flash-attention kernels (CUDA)
read the sample boundaries (`cu_seq_lens_*`) and skip those pairs; this does the same with one causal
SDPA call per sample, on any device. Padded inputs (a 2D mask) and generation (a KV cache) go to
transformers' own sdpa, unchanged.
"""

from __future__ import annotations

import contextlib
import threading

import torch

NAME = "oger_varlen"
_SWITCHABLE = {"sdpa", "eager"}  # flash_attention_* are varlen already; flex and others left as they are
_lock = threading.Lock()
_holders: dict[int, list] = {}  # id(config) -> [implementation to restore, holders]


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """(B, T, H, D) attention output; per sample when `cu_seq_lens_q` marks a packed row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each KV head serves `groups`
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            is_causal=True,
            scale=scaling,
            dropout_p=dropout if module.training else 0.0,
        )
        for s, e in zip(bounds, bounds[1:])
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _mask(*, attention_mask=None, **kwargs):
    """No mask for a packed row (the attention above keeps each sample to itself); sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _mask)


def cu_seq_lens(position_ids: torch.Tensor) -> torch.Tensor:
    """Sample boundaries [0, end_1, ..., T] of a packed (1, T) row from its position restarts."""
    pos = position_ids[0]
    starts = torch.nonzero(pos == 0).flatten()
    return torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)


@contextlib.contextmanager
def per_sample_attention(model):
    """While held (by any number of threads), `model` attends within each packed sample; the model's
    own implementation is restored when the last holder leaves (never saved with the model)."""
    config = model.config
    with _lock:
        held = _holders.get(id(config))
        if held is None:
            if config._attn_implementation not in _SWITCHABLE:
                held = None
            else:
                _register()
                held = _holders[id(config)] = [config._attn_implementation, 0]
                config._attn_implementation = NAME
        if held is not None:
            held[1] += 1
    try:
        yield
    finally:
        if held is not None:
            with _lock:
                held[1] -= 1
                if held[1] == 0:
                    config._attn_implementation = held[0]
                    del _holders[id(config)]
