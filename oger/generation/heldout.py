"""The held-out greedy check the policy and train stages report (`evaluate.heldout`), through the engine
`evaluate.heldout.engine` names: transformers `generate` on the stage's model in memory (`hf`,
`hf.greedy_rollouts`), or vLLM's offline engine over the model folder the stage has just written (`vllm`,
`engines.make_engine`).

Why a choice: at the paper scale the check is 64 questions x 8,192 greedy tokens of a 7B model, which
transformers decodes step by step over padded rows while vLLM batches them continuously, as the evaluate
stage's benchmarks already do. The vLLM check loads the folder in `policy.dtype` (what the evaluate stage
loads it in, so the check and the benchmarks read the same numerics), on one GPU, taking
`evaluate.gpu_memory_utilization` of it: it runs in the stage's own process after training, when the
trainer's ranks and engine are gone, and the stage's model waits in host memory meanwhile (a GPU holds
one copy of the weights at a time).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oger.generation.records import Rollout

ENGINES = ("hf", "vllm")


def engine_label(cfg) -> str:
    """The held-out check's engine as `oger plan` names it for the policy and train stages (`cfg`: an
    OgerConfig; nothing is imported or loaded)."""
    if cfg.evaluate.heldout.engine == "vllm":
        return f"vLLM offline engine ({cfg.policy.dtype}, {cfg.evaluate.gpu_memory_utilization:g} of one GPU)"
    return "transformers generate"


def heldout_accuracy(
    engine: str,
    model,
    tokenizer,
    model_dir: str | Path,
    questions: list[str],
    answers: list[str],
    **check,
) -> float:
    """Share of `questions` whose greedy response's final answer verifies against the gold one (`check`:
    `heldout_responses`'s keywords)."""
    if engine not in ENGINES:  # before the empty case, so a misspelt engine is named even with no questions
        raise ValueError(f"evaluate.heldout.engine: unknown engine {engine!r}; choose from {ENGINES}")
    if not questions:
        return float("nan")
    rolls = heldout_responses(engine, model, tokenizer, model_dir, questions, **check)
    return accuracy([r.text for r in rolls], answers)


def heldout_responses(
    engine: str,
    model,
    tokenizer,
    model_dir: str | Path,
    questions: list[str],
    *,
    instruction: str = "{question}",
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    dtype: str = "float32",
    gpu_memory_utilization: float = 0.85,
) -> list[Rollout]:
    """The greedy response to each question, in the questions' order, through `engine`. `model` and
    `tokenizer`: the stage's, in memory (what `hf` decodes with); `model_dir`: the same model saved (what
    `vllm` loads)."""
    if engine not in ENGINES:
        raise ValueError(f"evaluate.heldout.engine: unknown engine {engine!r}; choose from {ENGINES}")
    if engine == "hf":
        from oger.generation.hf import greedy_rollouts  # imports torch

        return greedy_rollouts(
            model,
            tokenizer,
            questions,
            instruction=instruction,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    with _off_the_gpu(model):
        return vllm_greedy(
            model_dir,
            tokenizer,
            questions,
            instruction=instruction,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
        )


def accuracy(texts: list[str], answers: list[str]) -> float:
    """Share of responses whose final answer verifies against its gold one (math-verify)."""
    from oger.verify import score_response

    return sum(score_response(t, a)[1] for t, a in zip(texts, answers)) / len(answers)


def vllm_greedy(
    model_dir: str | Path,
    tokenizer,
    questions: list[str],
    *,
    instruction: str = "{question}",
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    dtype: str = "float32",
    gpu_memory_utilization: float = 0.85,
) -> list[Rollout]:
    """The greedy response to each question, in the questions' order, from a vLLM engine over `model_dir`
    (one device, closed before returning). `tokenizer`: the stage's, which makes the prompt ids
    (`hf.chat_prompt_ids`, as the transformers check and training do) and the response texts (as
    transformers' engine decodes them). Why not vLLM's own: it loads the folder with AutoTokenizer, which for
    a qwen2 model builds Qwen2Tokenizer with that class's pre-tokenizer, not the saved one; the tiny policy
    (`pretokenize: digits`) then reads " 1" as two pieces it never saw (`models.tokenizer_from_folder`), and
    vLLM answered 4 of 32 sums its transformers check answered 24 of."""
    from oger.generation.base import Request
    from oger.generation.engines import make_engine
    from oger.generation.hf import chat_prompt_ids

    engine = make_engine(
        "vllm",
        model_dir,
        dtype=dtype,
        tensor_parallel_size=1,
        gpu_memory_utilization=gpu_memory_utilization,
        what="evaluate.heldout.engine",
    )
    try:
        prompts = [chat_prompt_ids(tokenizer, q, instruction, system_prompt) for q in questions]
        rolls = engine.generate(prompts, Request(max_new_tokens=max_new_tokens, temperature=0.0))
    finally:
        engine.close()
    for r in rolls:  # as `hf._generate` decodes: without the stop token, special tokens skipped
        ids = r.response_ids[:-1] if r.finish_reason == "stop" else r.response_ids
        r.text = tokenizer.decode(ids, skip_special_tokens=True)
    return sorted(rolls, key=lambda r: r.prompt_index)


@contextmanager
def _off_the_gpu(model):
    """The stage's model in host memory while a vLLM engine has the GPU, then back where it was; what an
    engine of the trainer left unreferenced is collected first, so its memory is free too."""
    home = next(model.parameters()).device if model is not None else None
    if home is not None and home.type == "cuda":
        model.to("cpu")
    gc.collect()
    _empty_cuda_cache()
    try:
        yield
    finally:
        if home is not None and home.type == "cuda":
            model.to(home)


def _empty_cuda_cache() -> None:
    from oger.runtime.device import cuda_available

    if cuda_available():
        import torch

        torch.cuda.empty_cache()
