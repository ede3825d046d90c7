"""Sampling engines for evaluation: HF `generate` (CPU or GPU, batched, or paged continuous batching)
and vLLM (optional, lazy).

Both take token-id prompts and return k completions per prompt in prompt-major order, so the
evaluate stage does not care which one ran.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from oger.contract.errors import ConfigError
from oger import seeds


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"


def fit_prompt(ids: list[int], context: int, max_new_tokens: int) -> tuple[list[int], bool]:
    """Keep the prompt's last tokens so prompt + generation budget fit the model's context.

    The end holds the question's last words and the assistant turn marker, which the model needs
    to answer at all; a cut prompt is flagged in the per-sample results, never hidden.
    """
    room = context - max_new_tokens
    if room < 1:
        raise ConfigError(f"evaluate.max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                          f"the model's context of {context} tokens")
    return (ids, False) if len(ids) <= room else (ids[-room:], True)


class HFEngine:
    """transformers with the KV cache: padded `generate` (prompts sorted by length to waste less
    padding) or, with `rollout_engine="paged"`, continuous batching with paged attention."""

    def __init__(self, model_dir: Path, dtype: str = "float32", batch_size: int = 64,
                 rollout_engine: str = "hf"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.batch_size = batch_size
        self.rollout_engine = rollout_engine
        self.context = int(getattr(self.model.config, "max_position_embeddings", 4096))

    def generate(self, prompts: list[list[int]], *, k: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, progress=None) -> list[Completion]:
        from oger.generation.hf import generate

        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_chunk = max(1, self.batch_size // k)
        out: list[Completion] = []
        for c in range(0, len(order), per_chunk):
            chunk = order[c:c + per_chunk]
            # Each sample's seed follows from its place in `order` (first_job), not from the
            # chunking, so evaluate.batch_size (not in the key) does not change what is sampled.
            rolls = generate(self.model, self.tokenizer, [prompts[i] for i in chunk], n=k,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             seed=seeds.for_step(seed, 0), first_job=c * k, batch_size=self.batch_size,
                             record_entropy=False, engine=self.rollout_engine)
            counters: dict[int, int] = {}
            for r in rolls:
                j = counters.get(r.prompt_index, 0)
                counters[r.prompt_index] = j + 1
                out.append(Completion(chunk[r.prompt_index], j, r.text, len(r.response_ids),
                                      r.finish_reason))
            if progress is not None:
                progress(len(rolls))
        out.sort(key=lambda x: (x.prompt_index, x.sample_index))
        return out

    def close(self) -> None:
        del self.model
        gc.collect()


class VLLMEngine:
    """vLLM's offline engine (the `gpu` extra); one engine per model, torn down before the next."""

    def __init__(self, model_dir: Path, dtype: str = "float32", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, seed: int = 0):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("evaluate.engine 'vllm' needs the gpu extra: pip install 'oger[gpu]' "
                              "(on a CUDA machine)") from None
        self.llm = LLM(model=str(model_dir), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self.context = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(self, prompts: list[list[int]], *, k: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, progress=None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=k, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, seed=seed)
        results = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                    use_tqdm=True)
        out = []
        for i, res in enumerate(results):
            for j, o in enumerate(res.outputs):
                reason = "length" if o.finish_reason == "length" else "stop"
                out.append(Completion(i, j, o.text, len(o.token_ids), reason))
        if progress is not None:
            progress(len(out))
        return out

    def close(self) -> None:
        import torch

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def make_engine(kind: str, model_dir: Path, *, dtype: str, batch_size: int,
                tensor_parallel_size: int, gpu_memory_utilization: float, seed: int):
    if kind == "vllm":
        return VLLMEngine(model_dir, dtype, tensor_parallel_size, gpu_memory_utilization, seed)
    return HFEngine(model_dir, dtype, batch_size, rollout_engine="paged" if kind == "paged" else "hf")
