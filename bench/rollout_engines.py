"""Rollout engines side by side on CPU: padded HF `generate`, paged continuous batching and vLLM (beside
the module, as `train.rollout.engine: vllm` runs it), sampled
tokens/s for half an RL step's rollouts (4 prompts x 8, T=1) of the tiny policy's shape and of SmolLM2.

The tiny policy here is random-init at configs/tiny.yaml's shape (every rollout runs to the budget);
SmolLM2 is the real model, whose rollouts stop at different lengths (what paging is for). Entropy
recording is on, as in training (the paged engine pays one extra forward pass for it).
"""

from __future__ import annotations

import time

from bench.common import machine, result, table


def timed_request(n: int, max_new_tokens: int):
    """The timed call's Request: n samples per prompt at T=1, entropies recorded as in training."""
    from oger.generation.base import Request

    return Request(n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=1, record_entropy=True)


def build(prompts_n: int = 4, n: int = 8, tiny_tokens: int = 56, smollm_tokens: int = 48) -> dict:
    """The questions, the tiny policy's tokenizer and prompts and each model's Request, built without a
    model or an engine (tests/test_bench.py)."""
    from oger.generation.hf import chat_prompt_ids
    from oger.stages.policy.tiny_model import train_tokenizer
    from oger.synthetic import generate_problems

    questions = [p.question for p in generate_problems(5, prompts_n, 2, 3, 9, "+-")]
    tok = train_tokenizer([p.question for p in generate_problems(0, 300, 2, 3, 9, "+-")], 384)
    return {
        "questions": questions,
        "tiny_tokenizer": tok,
        "tiny_prompts": [chat_prompt_ids(tok, q) for q in questions],
        "requests": {"tiny": timed_request(n, tiny_tokens), "smollm2": timed_request(n, smollm_tokens)},
    }


def _time(model, tok, prompts, engine: str, request) -> tuple[float, float]:
    from oger.generation.base import Request
    from oger.generation.hf import TransformersEngine

    if engine == "vllm":  # as in training: beside the module, entropies by one no-grad pass
        from oger.generation.vllm import ColocatedEngine

        eng = ColocatedEngine(model, tok, dtype="float32")
    else:
        eng = TransformersEngine(model, tok, engine)
    eng.generate(prompts[:1], Request(max_new_tokens=4))  # warm-up
    t = time.perf_counter()
    rolls = eng.generate(prompts, request)
    seconds = time.perf_counter() - t
    eng.close()
    tokens = sum(len(r.response_ids) for r in rolls)
    return tokens / seconds, tokens / len(rolls)


def main(prompts_n: int = 4, n: int = 8, tiny_tokens: int = 56, smollm_tokens: int = 48) -> None:
    import torch

    from oger.generation.hf import chat_prompt_ids
    from oger.models import load_causal_lm
    from oger.stages.policy.tiny_model import build_model

    built = build(prompts_n, n, tiny_tokens, smollm_tokens)
    questions, tok, requests = built["questions"], built["tiny_tokenizer"], built["requests"]
    tiny = build_model(tok, 128, 4, 4, 384, 512, seed=0)
    smol, smol_tok = load_causal_lm("smollm2", "float32")
    rows, figures = [], {}
    try:
        import vllm  # noqa: F401

        engines = ("hf", "paged", "vllm")
    except ImportError:
        engines = ("hf", "paged")
        print("rollout_engines: vllm is not installed here; hf and paged only", flush=True)
    models = (("tiny", tiny, tok), ("smollm2", smol, smol_tok))
    # vLLM last: an in-process engine replaces torch.set_num_threads for the rest of the process
    for engine in engines:
        for name, model, tk in models:
            prompts = [chat_prompt_ids(tk, q) for q in questions]
            tps, mean_len = _time(model, tk, prompts, engine, requests[name])
            print(f"rollout_engines: {name} {engine} {tps:.1f} tokens/s, {mean_len:.1f} tokens per rollout", flush=True)
            rows.append([name, engine, tps, mean_len])
            figures[f"{name}_{engine}_tokens_per_s"] = tps
    table(
        f"rollout engines, {prompts_n} prompts x {n}, T=1 ({machine()}, {torch.get_num_threads()} threads)",
        ["model", "engine", "tokens/s", "mean response tokens"],
        rows,
    )
    result("rollout_engines", **figures)
