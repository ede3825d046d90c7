"""Building an engine by name from a model folder or reference, and fitting prompts to its context.

The engines themselves: `hf` and `paged` (`oger.generation.hf.TransformersEngine`), `vllm`
(`oger.generation.vllm`), an OpenAI-compatible server (`oger.generation.openai`); all share the
interface of `oger.generation.base`."""

from __future__ import annotations

from pathlib import Path

from oger.contract.errors import ConfigError

KINDS = ("hf", "paged", "vllm")  # the engines that load a model themselves


def fit_prompt(ids: list[int], context: int, max_new_tokens: int) -> tuple[list[int], bool]:
    """Keep the prompt's last tokens so prompt + generation budget fit the model's context.

    The end holds the question's last words and the assistant turn marker, which the model needs
    to answer at all; a cut prompt is flagged in the per-sample results, never hidden.
    """
    room = context - max_new_tokens
    if room < 1:
        raise ConfigError(
            f"evaluate.max_new_tokens={max_new_tokens} leaves no room for a prompt in "
            f"the model's context of {context} tokens"
        )
    return (ids, False) if len(ids) <= room else (ids[-room:], True)


def make_engine(
    kind: str,
    model: str | Path,
    *,
    dtype: str = "float32",
    batch_size: int | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.85,
    seed: int = 0,
    what: str = "engine",
):
    """An engine of `kind` over `model` (HF folder, GGUF file or hub id)."""
    if kind == "vllm":
        from oger.generation.vllm import VLLMEngine

        return VLLMEngine.load(
            str(model),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            what=f"{what} 'vllm'",
        )
    if kind not in KINDS:
        raise ConfigError(f"{what}: unknown engine {kind!r}; choose from {KINDS}")
    from oger.generation.hf import TransformersEngine

    return TransformersEngine.load(model, dtype, kind, batch_size)
