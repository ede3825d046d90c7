"""Rollouts with HF `generate` (KV cache, CPU or GPU) that also record each step's entropy, and
the dispatch to the other engine (`engine="paged"`: continuous batching, `oger.generation.paged`);
`TransformersEngine` puts both behind the engine interface (`oger.generation.base`).

The entropy of the policy's next-token distribution is taken from the logits `generate` already
computes (a logits processor reads them before sampling), so the OGER reward needs no extra
forward pass for it.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from oger import seeds
from oger.algorithm.core import sampling_entropy
from oger.generation import paged
from oger.generation.base import Request, chat_messages, number_samples, prompt_ids
from oger.generation.entropy_window import EntropyWindow, as_window
from oger.generation.records import Rollout, eos_ids
from oger.runtime.device import for_decoding, of_model

ENGINES = ("hf", "paged")


class _EntropyRecorder:
    """A logits processor that stores, at each step, the entropy of the distribution the rollout samples
    from: softmax(logits / T) (`core.sampling_entropy`'s definition; raw logits for greedy decoding)."""

    def __init__(self, temperature: float = 1.0):
        self.steps: list[torch.Tensor] = []
        self.temperature = temperature if temperature > 0 else 1.0

    def __call__(self, input_ids, scores):
        self.steps.append(sampling_entropy(scores, self.temperature).detach())  # on device: no sync per step
        return scores


class RowSampler:
    """The last logits processor of a greedy `generate`: draws each row's next token from
    softmax(logits / temperature) (nucleus `top_p`) with the row's own uniform numbers, seeded by
    the rollout, and leaves only that token, which greedy decoding then takes.

    Why not `do_sample=True`: it draws from torch's one global generator for the whole batch, so a
    rollout's tokens depend on which batch it is in and on who else draws (a change of batch_size,
    of rollout.batch_prompts or of the evaluation's chunks changes every sample, and threads
    decoding side by side would interleave their draws). Here they depend only on its seed."""

    def __init__(self, seeds: list[int], max_new_tokens: int, temperature: float, top_p: float, device):
        self.u = torch.stack(
            [torch.rand(max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in seeds]
        ).to(device)
        self.temperature, self.top_p, self.step = temperature, top_p, 0

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:  # keep the smallest set of most likely tokens with mass >= top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        cdf = probs.double().cumsum(-1)
        u = self.u[:, self.step : self.step + 1] * cdf[:, -1:]  # inverse CDF of the (kept) mass
        token = torch.searchsorted(cdf, u, right=True).clamp(max=scores.shape[-1] - 1)
        self.step += 1
        return torch.full_like(scores, float("-inf")).scatter(-1, token, 0.0)


def chat_prompt_ids(
    tokenizer, question: str, instruction: str = "{question}", system_prompt: str | None = None
) -> list[int]:
    return prompt_ids(tokenizer, chat_messages(question, instruction, system_prompt))


class TransformersEngine:
    """`hf` (padded generate) or `paged` (continuous batching) over a model in this process: the
    live policy while training, a loaded model for teachers and evaluation.

    `batch_size`: jobs per padded batch (None: the whole call in one); `synced_gpus` keeps FSDP
    ranks decoding in step (hf only). A loaded engine's weights never change, so it keeps its
    model's packed linear weights (`Runtime.packed_weights`) until `close`, instead of packing them again in
    every call (teachers and evaluation call once per chunk); the live policy is packed per call."""

    def __init__(self, model, tokenizer, kind: str = "hf", batch_size: int | None = None, synced_gpus: bool = False):
        if kind not in ENGINES:
            raise ValueError(f"unknown transformers engine {kind!r}; choose from {ENGINES}")
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.batch_size, self.synced_gpus = batch_size, synced_gpus
        self.context = int(getattr(model.config, "max_position_embeddings", 4096))
        self._held = contextlib.ExitStack()

    @classmethod
    def load(
        cls, model_ref, dtype: str = "float32", kind: str = "hf", batch_size: int | None = None
    ) -> "TransformersEngine":
        """From an HF folder, GGUF file or hub id (`oger.models`), on the GPU when there is one."""
        from oger.models import load_causal_lm

        model, tokenizer = load_causal_lm(str(model_ref), dtype)
        runtime = for_decoding()
        model = runtime.place(model)
        engine = cls(model, tokenizer, kind, batch_size)
        engine._held.enter_context(runtime.packed_weights(model))
        return engine

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        rolls = generate(
            self.model,
            self.tokenizer,
            ids,
            n=request.n,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            first_job=request.first_job,
            batch_size=self.batch_size or max(1, len(ids) * request.n),
            record_entropy=request.record_entropy,
            entropy_window=request.entropy_window,
            synced_gpus=self.synced_gpus,
            engine=self.kind,
        )
        if progress is not None:
            progress(len(rolls))
        return number_samples(rolls)

    def close(self) -> None:
        import gc

        self._held.close()
        self.model = None
        gc.collect()


@torch.no_grad()
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
    synced_gpus: bool = False,
    engine: str = "hf",
    first_job: int = 0,
    share_prefill: bool = True,
    pack_linears: bool = True,
) -> list[Rollout]:
    """n samples per prompt (temperature 0 = greedy), in prompt-major order. `share_prefill` runs
    each distinct prompt of a batch once (`shared_prefill_cache`); `pack_linears` decodes a CPU
    model with its linear weights packed for oneDNN (`oger.runtime.packed_linear`). `synced_gpus` keeps
    decoding until max_new_tokens so FSDP ranks run the same number of forward passes (the
    paged engine cannot: its number of steps depends on the data, see TrainConfig's check).

    Rollout j of this call draws with seed `seeds.for_item(seed, first_job + j)`: a caller that cuts
    one job list into calls passes each call's offset in it, and every rollout keeps its numbers
    whatever the cut (the paged engine seeds one generator per call with `first_job` added).
    `entropy_window` (an `EntropyWindow`, or m for the last m tokens): each rollout keeps the entropies
    at the bonus's positions only."""
    with of_model(model).decode(model, pack_linears=pack_linears):
        return _generate(
            model,
            tokenizer,
            prompts,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            record_entropy=record_entropy,
            entropy_window=as_window(entropy_window),
            synced_gpus=synced_gpus,
            engine=engine,
            first_job=first_job,
            share_prefill=share_prefill,
        )


def _generate(
    model,
    tokenizer,
    prompts,
    *,
    n,
    max_new_tokens,
    temperature,
    top_p,
    seed,
    batch_size,
    record_entropy,
    entropy_window,
    synced_gpus,
    engine,
    first_job,
    share_prefill,
) -> list[Rollout]:
    if engine == "paged":
        if synced_gpus:
            raise ValueError(
                "the paged rollout engine cannot keep FSDP ranks in step (synced_gpus); use engine 'hf' with fsdp"
            )
        return paged.generate(
            model,
            tokenizer,
            prompts,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seeds.for_item(seed, first_job) if first_job else seed,
            batch_size=batch_size,
            record_entropy=record_entropy,
            entropy_window=entropy_window,
        )
    if engine != "hf":
        raise ValueError(f"unknown rollout engine {engine!r}; choose from {ENGINES}")
    from transformers import LogitsProcessorList

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = eos_ids(model, tokenizer)
    jobs = [i for i in range(len(prompts)) for _ in range(n)]
    out: list[Rollout] = []
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):  # left padding
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attn[r, width - len(prompts[i]) :] = 1
        recorder = _EntropyRecorder(temperature)
        processors = [recorder] if record_entropy else []
        if temperature > 0:
            processors.append(
                RowSampler(
                    [seeds.for_item(seed, first_job + b + r) for r in range(len(batch))],
                    max_new_tokens,
                    temperature,
                    top_p,
                    device,
                )
            )
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            do_sample=False,
            eos_token_id=sorted(stops),
            attention_mask=attn.to(device),
            logits_processor=LogitsProcessorList(processors),
        )
        if synced_gpus:
            kwargs["synced_gpus"] = True
        cache = shared_prefill_cache(model, ids.to(device), attn.to(device), batch) if share_prefill else None
        if cache is not None:
            kwargs["past_key_values"] = cache
        seqs = model.generate(ids.to(device), **kwargs).cpu()
        new = seqs[:, width:]
        ent = torch.stack(recorder.steps, dim=1).cpu() if recorder.steps else None
        for r, i in enumerate(batch):
            row = new[r].tolist()
            stop_at = next((j for j, t in enumerate(row) if t in stops), None)
            resp = row[: stop_at + 1] if stop_at is not None else row
            text = tokenizer.decode(resp[:-1] if stop_at is not None else resp, skip_special_tokens=True)
            ents = []
            if ent is not None:
                window = entropy_window.positions(resp, tokenizer) if entropy_window else range(len(resp))
                ents = ent[r, window.start : window.stop].tolist()
            out.append(Rollout(i, resp, text, "stop" if stop_at is not None else "length", ents))
    if was_training:
        model.train()
    return out


_prefill_shareable: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def distinct_rows(keys) -> tuple[list[int], list[int]]:
    """(the first row of each distinct key, in first-seen order; each row's index into them), for
    hashable keys: a batch's prompts (as tuples) or its job numbers."""
    slot: dict = {}
    first: list[int] = []
    row_of = []
    for r, key in enumerate(keys):
        if key not in slot:
            slot[key] = len(first)
            first.append(r)
        row_of.append(slot[key])
    return first, row_of


def rows_copyable(cache) -> bool:
    """Whether `batch_select_indices` copies every state the cache's layers keep: key/value layers
    (full or sliding-window) yes; the conv and recurrent states of linear-attention layers
    (Qwen3-Next-style hybrids) have no such copy, and their mixed layers would copy only keys and
    values."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def shared_prefill_cache(model, ids: torch.Tensor, attn: torch.Tensor, jobs: list[int]):
    """The KV cache of a left-padded batch's prompts but their last token, each distinct prompt
    run once and its keys and values copied to the rows that sample it; `generate` given it runs
    only the last prompt token, then decodes as usual (same positions and mask).

    Why: a group's n rollouts share one prompt, and a padded `generate` prefills it n times.
    SmolLM2, 2 prompts x 4 rollouts of ~55-token chat prompts: prefilling the 8 rows took 1.16 s of
    a 7.3 s generate on this CPU (docs/PERFORMANCE.md, "trl_step"); here 2 rows. vLLM does the
    same with its prefix cache. None (the caller prefills per row) where nothing is shared (every
    prompt distinct, or one token wide), where the model's generation config names its own cache,
    or where the cache's rows cannot be copied (`rows_copyable`; found once per model)."""
    heads, row_of = distinct_rows(jobs)
    if (
        len(heads) == len(jobs)
        or ids.shape[1] < 2
        or not _prefill_shareable.get(model, True)
        or getattr(model.generation_config, "cache_implementation", None) is not None
    ):
        return None
    u_ids, u_attn = ids[heads, :-1], attn[heads, :-1]
    pos = (u_attn.cumsum(-1) - 1).masked_fill(u_attn == 0, 0)
    cache = model(
        input_ids=u_ids, attention_mask=u_attn, position_ids=pos, use_cache=True, logits_to_keep=1
    ).past_key_values
    _prefill_shareable[model] = rows_copyable(cache)  # a model's kind of cache does not change
    if not _prefill_shareable[model]:
        return None
    cache.batch_select_indices(torch.tensor(row_of, device=ids.device))
    return cache


def greedy_rollouts(
    model,
    tokenizer,
    questions: list[str],
    *,
    instruction: str = "{question}",
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 64,
) -> list:
    """The greedy response to each question, in the questions' order (`heldout.heldout_responses` scores
    them)."""
    prompts = [chat_prompt_ids(tokenizer, q, instruction, system_prompt) for q in questions]
    home, decoding = next(model.parameters()).device, for_decoding()
    if home.type == "cpu":  # a stage's model lives on the CPU; it decodes where loaded models do
        decoding.place(model)
    try:
        rolls = TransformersEngine(model, tokenizer, batch_size=batch_size).generate(
            prompts, Request(max_new_tokens=max_new_tokens, temperature=0.0)
        )
    finally:
        model.to(home)
    return sorted(rolls, key=lambda r: r.prompt_index)
