"""The one interface of every generation engine: `engine.generate(prompts, request) -> [Rollout]`.

Teachers, training rollouts and evaluation all sample through it, whatever runs underneath
(`hf` padded generate, `paged` continuous batching, `vllm`, an OpenAI-compatible server). A prompt is
token ids or chat messages (the engine renders messages with the model's chat template; a server
applies its own). Results come in prompt-major order, `n` per prompt, each numbered by its sample
index, so a caller never needs to know which engine ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union

from oger.generation.entropy_window import EntropyWindow
from oger.generation.records import Rollout

Prompt = Union[list[int], list[dict]]  # token ids, or chat messages [{"role", "content"}]


@dataclass(frozen=True)
class Request:
    """What one `generate` call samples. Temperature 0 is greedy.

    Randomness: in `hf` and `vllm`, job j of the call (prompt-major, n per prompt) draws with
    `seeds.for_item(seed, first_job + j)`, so a caller that cuts one job list into calls passes each
    call's offset and every sample keeps its numbers whatever the cut; `paged` seeds one generator
    per call; a server gets one request per sample, seeded by (seed, sample index)."""

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    first_job: int = 0
    record_entropy: bool = False  # per-token entropies of the sampling distribution (hf, paged)
    # with record_entropy: the bonus's positions only (EntropyWindow, core.bonus_entropy_window); None: all
    entropy_window: EntropyWindow | None = None
    record_logprobs: bool = False  # each sampled token's log-prob under the engine's own sampler (vllm)


class Engine(Protocol):
    kind: str  # "hf" | "paged" | "vllm" | "openai"
    batch_size: int | None  # jobs per forward batch; None: the engine batches by itself
    context: int | None  # prompt + generation tokens the model takes (None: unknown, a server)

    def generate(self, prompts: Sequence[Prompt], request: Request, progress=None) -> list[Rollout]: ...

    def close(self) -> None: ...


def chat_messages(question: str, instruction: str = "{question}", system_prompt: str | None = None) -> list[dict]:
    """The chat turns every stage asks with: an optional system prompt, the instruction as user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": instruction.format(question=question)})
    return messages


def is_chat(prompt: Prompt) -> bool:
    return bool(prompt) and isinstance(prompt[0], dict)


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: ids as given, messages through the chat template (generation turn open)."""
    if not is_chat(prompt):
        return list(prompt)
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def number_samples(rolls: list[Rollout]) -> list[Rollout]:
    """Set each rollout's sample index: its place among its prompt's rollouts, in order."""
    seen: dict[int, int] = {}
    for r in rolls:
        r.sample_index = seen.get(r.prompt_index, 0)
        seen[r.prompt_index] = r.sample_index + 1
    return rolls


def generate_sorted(engine: Engine, prompts: Sequence[list[int]], request: Request, progress=None) -> list[Rollout]:
    """`request.n` samples of each of many prompts, shortest prompts first in calls of the engine's
    batch size (less padding), returned in prompt-major order with the original prompt indices.

    Job j of the sorted list draws as job `request.first_job + j` would in one call, so the batch
    size (not in any key) does not change what is sampled."""
    from dataclasses import replace

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_call = max(1, engine.batch_size // request.n) if engine.batch_size else max(1, len(order))
    out: list[Rollout] = []
    for c in range(0, len(order), per_call):
        chunk = order[c : c + per_call]
        rolls = engine.generate(
            [prompts[i] for i in chunk], replace(request, first_job=request.first_job + c * request.n)
        )
        for r in rolls:
            r.prompt_index = chunk[r.prompt_index]
        out += rolls
        if progress is not None:
            progress(len(rolls))
    out.sort(key=lambda r: (r.prompt_index, r.sample_index))
    return out
