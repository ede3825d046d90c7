"""One forward of each group's prompt in the update, however many rollouts share it.

Why: a GRPO group is n responses to one prompt, and the padded (or packed) update runs the prompt's
tokens once per response: n times the same keys and values. Here the distinct prompts of a
micro-batch run once (with their KV cache kept, and the gradient through it), the cache is copied
to the rows that share each prompt, and only the responses run per row. The autograd graph adds
the rows' gradients into the one prompt pass, so log-probs and gradient equal the padded path's up
to float rounding (tests/test_packing.py). It saves (n - 1) / n of the prompt tokens' FLOPs: with
SmolLM2's 55-token chat prompts and 30-48-token responses in groups of 4, the update took 3.3-3.8 s
instead of 4.4-4.9 (docs/PERFORMANCE.md, "trl_step"). On the tiny policy (short prompts, threaded
parts that each pay two forwards) it saved nothing: a choice per model, off by default.

Layout: prompts left-padded to width P (one row per distinct prompt), responses right-padded to
width R (one row per sample), positions counting real tokens only, as `_batch_tensors` lays them
out, so the attention sees exactly the padded path's keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from oger.generation.hf import distinct_rows, rows_copyable


def shared_prompt_logits(
    model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits predicting each response token (B, R, V), those tokens (B, R), response mask (B, R))
    for rows (prompt, response), each distinct prompt run once."""
    device = next(model.parameters()).device
    heads, row_of = distinct_rows(tuple(p) for p in prompts)
    unique = [prompts[r] for r in heads]
    P = max(len(p) for p in unique)
    R = max(len(r) for r in responses)
    B = len(responses)
    p_ids = torch.full((len(unique), P), pad_id, dtype=torch.long)
    p_attn = torch.zeros((len(unique), P), dtype=torch.long)
    for u, p in enumerate(unique):
        p_ids[u, P - len(p) :] = torch.tensor(p)
        p_attn[u, P - len(p) :] = 1
    r_ids = torch.full((B, R), pad_id, dtype=torch.long)
    resp = torch.zeros((B, R))
    for b, r in enumerate(responses):
        r_ids[b, : len(r)] = torch.tensor(r)
        resp[b, : len(r)] = 1
    p_ids, p_attn, r_ids, resp = (x.to(device) for x in (p_ids, p_attn, r_ids, resp))
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if not rows_copyable(cache):
        raise ValueError(
            f"optim.share_prompts: the cache of {type(model).__name__} keeps states that "
            "cannot be copied per row (linear attention): set it to false for this model"
        )
    rows = torch.tensor(row_of, device=device)
    cache.batch_select_indices(rows)  # each row gets its prompt's keys and values (a gather: grads add up)
    attn = torch.cat([p_attn[rows], torch.ones((B, R), dtype=torch.long, device=device)], dim=1)
    pos = p_attn[rows].sum(-1, keepdim=True) + torch.arange(R, device=device)
    r_logits = model(
        input_ids=r_ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=R
    ).logits
    # the last prompt position predicts the first response token; response token j predicts j + 1
    logits = torch.cat([out.logits[rows, -1:], r_logits[:, :-1]], dim=1)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return logits, r_ids, resp
