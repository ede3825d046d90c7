"""Teachers that sample from a model through a generation engine (`oger.generation`): backend
`transformers` (engine `hf` or `paged`), `vllm` (the offline engine) and `openai` (any
OpenAI-compatible server). One function for all three; only the engine and its seeding unit differ."""

from __future__ import annotations

from dataclasses import replace

from oger import seeds
from oger.contract.config import TeacherConfig
from oger.generation.base import Request, chat_messages
from oger.runtime.precision import native_dtype
from oger.stages.teachers.base import Generation, Prompt


def engine_for(tcfg: TeacherConfig):
    """The engine a teacher samples with (loads its model)."""
    if tcfg.backend == "openai":
        from oger.generation.openai import OpenAIEngine

        return OpenAIEngine(
            tcfg.base_url,
            tcfg.model,
            api_key_env=tcfg.api_key_env,
            max_concurrency=tcfg.max_concurrency,
            timeout_s=tcfg.request_timeout_s,
            label=f"teacher {tcfg.name!r}",
        )
    from oger.generation.engines import make_engine

    kind = "vllm" if tcfg.backend == "vllm" else tcfg.engine
    # the stage resolves `native` before a shard leaves it; a direct caller gets this machine's
    return make_engine(
        kind,
        tcfg.model,
        dtype=native_dtype(tcfg.dtype),
        batch_size=tcfg.batch_size,
        tensor_parallel_size=tcfg.tensor_parallel_size,
        seed=tcfg.sampling.seed,
        what=f"teacher {tcfg.name!r}",
    )


def seeding_block(tcfg: TeacherConfig) -> int:
    """Prompts that share one random stream: a shard boundary must not cut such a block. The
    transformers backend seeds per call of batch_size // n prompts; vLLM and servers per sample."""
    return max(1, tcfg.batch_size // tcfg.n) if tcfg.backend == "transformers" else 1


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    from tqdm.auto import tqdm

    s = tcfg.sampling
    request = Request(n=tcfg.n, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    if tcfg.backend == "transformers":  # a seed per call of `block` prompts, by its first prompt's place
        block = seeding_block(tcfg)
        calls = [
            (c, c + block, replace(request, seed=seeds.for_step(s.seed, prompts[c].position)))
            for c in range(0, len(prompts), block)
        ]
    else:  # one call; each sample seeded by its place in the teacher's whole job list (shards agree)
        calls = [(0, len(prompts), replace(request, seed=s.seed, first_job=prompts[0].position * tcfg.n))]
    messages = [chat_messages(p.question, tcfg.instruction, tcfg.system_prompt) for p in prompts]
    engine = engine_for(tcfg)
    bar = tqdm(total=len(prompts) * tcfg.n, desc=f"teacher {tcfg.name}", unit="trace")
    out: list[Generation] = []
    try:
        for lo, hi, call in calls:
            rolls = engine.generate(messages[lo:hi], call, progress=bar.update)
            out += [
                Generation(
                    prompts[lo + r.prompt_index].problem_id, r.sample_index, r.text.strip(), r.n_tokens, r.finish_reason
                )
                for r in rolls
            ]
    finally:
        bar.close()
        engine.close()
    return out
