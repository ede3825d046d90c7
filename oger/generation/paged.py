"""Rollouts with transformers' continuous batching (paged attention), on the policy module itself.

Padded HF `generate` keeps every sequence of a batch until the longest one ends and pads every
prompt to the longest one: at RL scale (groups of long, uneven rollouts) most of its KV cache and
compute is padding. Continuous batching packs the live requests' tokens into one varlen batch,
stores the KV cache in pages and retires a request the moment it ends. It runs the same module
the trainer updates (no weight copy or sync) and returns the same `Rollout` records as
`oger.generation.hf.generate`.

What the engine cannot do, and what we do instead:
- It samples inside its own loop and only reports the chosen token's log-probability, so the
  per-token entropies OGER needs are computed afterwards by one no-grad forward pass of the
  policy over prompt + response (entropy of softmax(raw logits), the quantity the HF engine's
  logits processor records), in micro-batches of `batch_size` sequences.
- Its loop runs in a background thread that would pick requests up while they are still being
  queued (batch composition, hence the sampled tokens, would depend on timing): we queue every
  request before the loop starts, fix the cache size from the workload instead of free memory,
  and seed the engine's generator, so a seed gives the same rollouts on the same device.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from oger.algorithm.core import sampling_entropy
from oger.generation.entropy_window import EntropyWindow, as_window
from oger.generation.records import Rollout, eos_ids

# Cache pages of this many tokens; smaller than transformers' 256 so short rollouts waste less.
PAGE_SIZE = 64
# Upper bound on the tokens one engine step packs (prefill chunks + one token per decoding request).
# Under sdpa the engine builds a (batch tokens x cache tokens) mask: both caps bound it (~1 GB bf16).
MAX_BATCH_TOKENS = 2048
# Cap on the KV cache (tokens) one call reserves: past it requests wait for free pages.
MAX_CACHE_TOKENS = 1 << 18
# Cap on the logits (elements) the entropy pass holds at once: 64 rollouts x 256 tokens x a
# 152k vocabulary would be 10 GB in fp32.
ENTROPY_LOGITS = 1 << 28


def cb_config(n_requests: int, tokens_per_request: int, seed: int):
    """A ContinuousBatchingConfig sized from the workload, never from free memory (which varies
    between calls and would change how requests are batched, hence what is sampled)."""
    from transformers import ContinuousBatchingConfig

    pages = n_requests * math.ceil(tokens_per_request / PAGE_SIZE)
    pages = max(2, min(pages, MAX_CACHE_TOKENS // PAGE_SIZE))
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kwargs = dict(
        num_blocks=pages,
        max_batch_tokens=min(MAX_BATCH_TOKENS, n_requests * tokens_per_request),
        max_requests_per_batch=n_requests,
        seed=seed,
        return_logprobs=False,
        auto_switch_to_flash=False,
        use_cuda_graph=False,
        use_async_batching=False,
        allow_block_sharing=False,
    )  # prefix sharing of a group's prompt pages: not yet tried
    # CUDA graphs, async batching and the switch to flash attention stay off: graph capture on every
    # call (the weights change between steps) would cost more than it saves, and flash would make the
    # attention path (hence the sampled tokens) depend on what happens to be installed.
    # transformers 5.17 names the page size block_size, later versions page_size
    kwargs["page_size" if "page_size" in fields else "block_size"] = PAGE_SIZE
    return ContinuousBatchingConfig(**{k: v for k, v in kwargs.items() if k in fields})


def _generation_config(stops: set[int], pad: int, max_new_tokens: int, temperature: float, top_p: float):
    from transformers import GenerationConfig

    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(stops), pad_token_id=pad)
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False)
    return GenerationConfig(**kw)


def _run_engine(model, jobs: list[list[int]], gen_config, cbc, max_new_tokens: int) -> list[list[int]]:
    """Generated token ids per job, in job order. Every request is queued before the engine's
    loop starts, so the first batch (and every one after it) does not depend on thread timing."""
    from transformers.generation.continuous_batching.utils import WorkloadHints

    hints = WorkloadHints(
        max_prompt_length=max(len(j) for j in jobs), max_generated_length=max_new_tokens, num_requests=len(jobs)
    )
    manager = model.init_continuous_batching(
        generation_config=gen_config, continuous_batching_config=cbc, workload_hints=hints
    )
    results = {}
    try:
        manager.warmup()  # builds the cache and seeds the engine's generator, in this thread
        request_ids = manager.add_requests(inputs=jobs, max_new_tokens=max_new_tokens)
        manager.start()
        while len(results) < len(request_ids):
            out = manager.get_result(timeout=1)
            if out is None:
                if not manager.is_running():
                    break
                continue
            if out.is_finished():
                results[out.request_id] = out
    finally:
        manager.stop(block=True)
        manager.destroy()
    failed = [r for r in request_ids if r not in results or results[r].error is not None]
    if failed:
        first = results.get(failed[0])
        raise RuntimeError(
            f"paged rollout engine: {len(failed)} of {len(jobs)} requests failed"
            + (f" ({first.error})" if first is not None and first.error else "")
        )
    return [list(results[r].generated_tokens) for r in request_ids]


@torch.no_grad()
def response_entropies(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    batch_size: int,
    pad: int,
    longest: int | None = None,
    window: EntropyWindow | int | None = None,
    temperature: float = 1.0,
    tokenizer=None,
) -> list[list[float]]:
    """Entropy of softmax(logits / temperature), the distribution the rollouts were sampled from
    (`core.sampling_entropy`), at every response position, or with `window` (an `EntropyWindow`, or m
    for the last m tokens) at each response's bonus positions only (`core.bonus_entropy_window`; the
    answer options find the answer with `tokenizer`), by one forward pass per micro-batch (left-padded
    prompts, right-padded responses). The LM head runs on the responses, or with a window on the union
    of the rows' window positions only (`logits_to_keep` as indices, through the model's own forward so
    FSDP2's hooks run): (rows, <= the rows' window positions, V) logits instead of (rows, T, V).
    Micro-batches hold at most `batch_size` sequences and ENTROPY_LOGITS logits.

    `longest` (the most tokens a response can have): every micro-batch then holds the number of rows
    that bound allows (with the most positions a window can have, `EntropyWindow.most`), whatever the
    responses, so ranks with as many rows run as many forward passes — FSDP's per-layer all-gathers
    hang when one rank runs a pass the other does not."""
    out: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    window = as_window(window)
    # response token j is predicted at sequence position P + j - 1
    wanted = [range(len(y)) if window is None else window.positions(y, tokenizer) for y in responses]

    def logits_of(rows: list[int] | int, response_len: int) -> int:  # the LM head's output for these rows
        if isinstance(rows, int):  # `rows` rows of a response_len bound, whatever they hold
            kept = rows * (response_len if window is None else window.most(response_len))
            return rows * min(response_len + 1, kept) * vocab
        return len(rows) * min(response_len + 1, sum(len(wanted[i]) for i in rows)) * vocab

    order = sorted(range(len(prompts)), key=lambda i: len(responses[i]))
    if longest is None:
        order = [i for i in order if responses[i]]
    fixed = None
    if longest:
        fixed = 1
        while fixed < batch_size and logits_of(fixed + 1, longest) <= ENTROPY_LOGITS:
            fixed += 1
    while order:  # rows sorted by response length: grow a micro-batch while the cap allows
        rows = 1 if fixed is None else min(fixed, len(order))
        while (
            fixed is None
            and rows < min(batch_size, len(order))
            and logits_of(order[: rows + 1], len(responses[order[rows]])) <= ENTROPY_LOGITS
        ):
            rows += 1
        idx, order = order[:rows], order[rows:]
        P = max(len(prompts[i]) for i in idx)
        R = max(len(responses[i]) for i in idx)
        ids = torch.full((len(idx), P + R), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), P + R), dtype=torch.long)
        for r, i in enumerate(idx):
            p, y = prompts[i], responses[i]
            ids[r, P - len(p) : P] = torch.tensor(p)
            ids[r, P : P + len(y)] = torch.tensor(y)
            attn[r, P - len(p) : P + len(y)] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        keep = sorted({P + j - 1 for i in idx for j in wanted[i]}) or [P - 1]
        column = {position: c for c, position in enumerate(keep)}
        logits = model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            position_ids=pos.to(device),
            logits_to_keep=torch.tensor(keep, device=device),
        ).logits
        ent = sampling_entropy(logits, temperature).cpu()
        for r, i in enumerate(idx):
            out[i] = ent[r, [column[P + j - 1] for j in wanted[i]]].tolist()
    return out


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    record_entropy: bool = True,
    entropy_window: EntropyWindow | int | None = None,
) -> list[Rollout]:
    """n samples per prompt (temperature 0 = greedy), in prompt-major order, like the HF engine.
    `batch_size` bounds the entropy pass only: the engine packs requests by tokens itself."""
    prompt_of = [i for i in range(len(prompts)) for _ in range(n)]
    jobs = [list(prompts[i]) for i in prompt_of]
    out: list[Rollout] = []
    if not jobs:
        return out
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = eos_ids(model, tokenizer)
    tokens_per_request = max(len(j) for j in jobs) + max_new_tokens
    cbc = cb_config(len(jobs), tokens_per_request, seed=seed % (1 << 62))
    gen_config = _generation_config(stops, pad, max_new_tokens, temperature, top_p)
    try:
        # no_grad, not inference_mode: the engine's warm-up makes its static tensors in this mode and
        # its thread zeroes them outside it, which transformers 5.19 refuses for inference tensors.
        with torch.no_grad():
            generated = _run_engine(model, jobs, gen_config, cbc, max_new_tokens)
        responses = []
        for row in generated:
            row = row[:max_new_tokens]
            stop_at = next((j for j, t in enumerate(row) if t in stops), None)
            responses.append(row[: stop_at + 1] if stop_at is not None else row)
        ents = (
            response_entropies(
                model,
                jobs,
                responses,
                batch_size,
                pad,
                window=entropy_window,
                temperature=temperature,
                tokenizer=tokenizer,
            )
            if record_entropy
            else [[] for _ in jobs]
        )
    finally:
        if was_training:
            model.train()
    for i, resp in enumerate(responses):
        stopped = bool(resp) and resp[-1] in stops
        text = tokenizer.decode(resp[:-1] if stopped else resp, skip_special_tokens=True)
        out.append(Rollout(prompt_of[i], resp, text, "stop" if stopped else "length", ents[i]))
    return out
