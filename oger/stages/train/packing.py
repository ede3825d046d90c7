"""Micro-batches for the update: how samples are grouped (by count or by a token budget) and how a
group is laid out (padded rows, or one packed row with no pad tokens).

Why: a padded micro-batch costs (rows x its longest sequence) whatever its samples' lengths; at the
paper's 8k-token budget, with responses from a few hundred to 8k tokens, most of that is pad. A packed
row concatenates the samples, restarts the position ids at 0 for each and keeps attention within each
sample (`varlen`: one causal attention per sample, never the row's T x T), so every FLOP lands on a
real token. Grouping by tokens (verl's dynamic batch size) keeps each forward's memory bounded
instead of its row count. Neither changes the gradient: the loss is normalised over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from oger.stages.train import varlen


def sample_tokens(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> int:
    return len(prompt_ids) + len(response_ids)


def group_by_count(order: list[int], size: int) -> list[list[int]]:
    """Consecutive runs of `size` indices."""
    return [order[b : b + size] for b in range(0, len(order), size)]


def group_by_tokens(order: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive runs of `order` whose lengths sum to at most `budget` tokens; a sample longer than
    the budget gets a micro-batch of its own (it cannot be split: its tokens attend to each other)."""
    groups: list[list[int]] = []
    used = 0
    for i in order:
        if groups and used + lengths[i] <= budget:
            groups[-1].append(i)
            used += lengths[i]
        else:
            groups.append([i])
            used = lengths[i]
    return groups


def split_to_count(groups: list[list[int]], lengths: Sequence[int], count: int) -> list[list[int]]:
    """`groups` split (the one with most tokens first, in halves) until there are `count` of them.

    Ranks of a distributed update must run as many forwards: FSDP all-gathers every layer's shards in
    each forward, and one rank with a forward the others do not make hangs them all. Every rank holds
    as many samples, so any rank can reach the largest rank's count."""
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [k for k, g in enumerate(groups) if len(g) > 1]
        if not splittable:
            raise ValueError(f"cannot split {len(groups)} micro-batches of single samples into {count}")
        k = max(splittable, key=lambda k: sum(lengths[i] for i in groups[k]))
        g = groups.pop(k)
        half = len(g) // 2
        groups[k:k] = [g[:half], g[half:]]
    return groups


def micro_batches(
    order: list[int],
    lengths: Sequence[int],
    size: int,
    max_tokens: int | None,
    count_over_ranks: Callable[[int], int] | None = None,
) -> list[list[int]]:
    """Micro-batches of `order` (indices sorted by length): at most `max_tokens` prompt + response
    tokens each when set, else `size` samples each; `count_over_ranks(n)` (the largest n over the ranks)
    makes every rank run as many."""
    groups = group_by_tokens(order, lengths, max_tokens) if max_tokens else group_by_count(order, size)
    if count_over_ranks is not None:
        groups = split_to_count(groups, lengths, count_over_ranks(len(groups)))
    return groups


@dataclass
class PackedRow:
    """Samples concatenated into one row (1, T), and where each response token's logits come from.

    `keep` are the positions whose logits predict a response token (the position before it), `rows` and
    `cols` the (sample, response position) each kept logit belongs to, `targets` the token predicted."""

    ids: torch.Tensor
    position_ids: torch.Tensor
    keep: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    shape: tuple[int, int]  # (samples, longest response): the padded layout the loss works on

    def to(self, device) -> "PackedRow":
        return PackedRow(
            *(t.to(device) for t in (self.ids, self.position_ids, self.keep, self.rows, self.cols, self.targets)),
            self.shape,
        )

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """Per-kept-token values (K,) into the padded (samples, longest response) layout, 0 elsewhere;
        differentiable (the loss's gradient flows back into the packed forward)."""
        out = values.new_zeros(self.shape)
        return out.index_put((self.rows, self.cols), values)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> PackedRow:
    ids: list[int] = []
    pos: list[int] = []
    keep: list[int] = []
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for r, (p, y) in enumerate(zip(prompts, responses)):
        start = len(ids)
        seq = list(p) + list(y)
        ids += seq
        pos += range(len(seq))
        first = start + len(p)  # the first response token's position
        keep += range(first - 1, first - 1 + len(y))
        rows += [r] * len(y)
        cols += range(len(y))
        targets += y
    longest = max((len(y) for y in responses), default=0)
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PackedRow(
        t(ids).unsqueeze(0), t(pos).unsqueeze(0), t(keep), t(rows), t(cols), t(targets), (len(responses), longest)
    )


def response_mask(responses: Sequence[Sequence[int]]) -> torch.Tensor:
    """(samples, longest response) mask of real response tokens: the padded layout's mask."""
    longest = max((len(y) for y in responses), default=0)
    mask = torch.zeros((len(responses), longest))
    for r, y in enumerate(responses):
        mask[r, : len(y)] = 1
    return mask


def packed_logits(model, row: PackedRow) -> torch.Tensor:
    """Logits (K, V) at `row.keep`: one forward over the packed row with the sample boundaries
    (`cu_seq_lens_*`) and no 2D mask, attention within each sample (`varlen`: one causal SDPA per
    sample for sdpa/eager models, the flash kernels' own varlen path on CUDA), the LM head on the kept
    positions only. Under gradient checkpointing the backward recomputes this forward: the caller holds
    `varlen.per_sample_attention` over the backward too (`update.update`), or the recompute would take
    the model's own attention and save other tensors than the forward did."""
    cu = varlen.cu_seq_lens(row.position_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    with varlen.per_sample_attention(model):
        out = model(
            input_ids=row.ids,
            position_ids=row.position_ids,
            logits_to_keep=row.keep,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=longest,
            max_length_k=longest,
            use_cache=False,
        ).logits[0]
    return out  # in the model's dtype (bf16 under autocast): `core.token_scores_chunked` upcasts per chunk
