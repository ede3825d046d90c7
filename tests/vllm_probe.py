"""What the vLLM tests check, run in a process of its own (`python -m tests.vllm_probe MODEL OUT`):
an in-process vLLM engine replaces torch.set_num_threads for the rest of its process, which must not
leak into the pytest worker's other tests. Builds a float32 engine beside the model (a trainer's
`ColocatedEngine`), then a bf16 one for the stale-weight guard, and writes every measurement to OUT
(JSON)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter


def main(model_dir: str, out_path: str) -> None:
    import torch

    from oger.generation.base import Request
    from oger.generation.hf import TransformersEngine
    from oger.generation.vllm import ColocatedEngine
    from oger.models import load_causal_lm

    out: dict = {}
    questions = ["1 + 2", "3 + 4 + 5 =", "9", "7 + 7 + 7 - 2 + 1", "5 +", "8 - 3", "2 + 2 + 2 + 2 + 2 + 2", "6"]
    greedy = Request(max_new_tokens=24, temperature=0.0)
    # A random model never says its EOS: make the token it emits most often its EOS (tokenizer, config
    # and generation config), so greedy responses stop at different lengths and finish reasons differ.
    model, tok = load_causal_lm(model_dir, "float32")
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in questions]
    counts = Counter(t for r in TransformersEngine(model, tok).generate(prompts, greedy) for t in r.response_ids[2:])
    stop = counts.most_common(1)[0][0]
    tok.eos_token = tok.convert_ids_to_tokens(stop)
    model.config.eos_token_id = model.generation_config.eos_token_id = stop
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    model, tok = load_causal_lm(model_dir, "float32")
    hf = TransformersEngine(model, tok, "hf")
    t = time.perf_counter()
    colocated = ColocatedEngine(model, tok, dtype="float32", model_dir=model_dir)
    engine = colocated.vllm
    out["build_seconds"] = time.perf_counter() - t

    # 1. greedy token ids, prompts of different lengths
    out["greedy_vllm"] = [r.response_ids for r in engine.generate(prompts, greedy)]
    out["greedy_hf"] = [r.response_ids for r in hf.generate(prompts, greedy)]
    out["finish_vllm"] = [r.finish_reason for r in engine.generate(prompts, greedy)]
    out["finish_hf"] = [r.finish_reason for r in hf.generate(prompts, greedy)]

    # 2. sampling: reproducible by seed, other seeds differ, and a job keeps its draws when the
    # caller cuts the job list (first_job)
    sample = Request(n=2, max_new_tokens=12, temperature=1.0, seed=5)
    a = [r.response_ids for r in engine.generate(prompts, sample)]
    b = [r.response_ids for r in engine.generate(prompts, sample)]
    other = [r.response_ids for r in engine.generate(prompts, Request(n=2, max_new_tokens=12, temperature=1.0, seed=6))]
    tail = [
        r.response_ids
        for r in engine.generate(prompts[3:], Request(n=2, max_new_tokens=12, temperature=1.0, seed=5, first_job=6))
    ]
    out["sampling"] = {
        "same_seed_equal": a == b,
        "other_seed_equal": a == other,
        "cut_equal": a[6:] == tail,
        "distinct": len({tuple(x) for x in a}),
    }

    # 3. weight push: vLLM's log-probs of a fixed continuation against the HF model's
    continuation = tok(" = 12 and 3", add_special_tokens=False)["input_ids"]

    def hf_logprobs() -> list[list[float]]:
        rows = []
        with torch.no_grad():
            for p in prompts[:4]:
                ids = torch.tensor([p + continuation])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                rows.append([float(logp[len(p) - 1 + j, t]) for j, t in enumerate(continuation)])
        return rows

    def vllm_logprobs() -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        res = engine.llm.generate(
            [TokensPrompt(prompt_token_ids=p + continuation) for p in prompts[:4]], params, use_tqdm=False
        )
        return [
            [float(r.prompt_logprobs[len(p) + j][t].logprob) for j, t in enumerate(continuation)]
            for p, r in zip(prompts[:4], res)
        ]

    def max_diff(x, y) -> float:
        return max(abs(u - v) for rx, ry in zip(x, y) for u, v in zip(rx, ry))

    before = vllm_logprobs()
    out["push"] = {"before_vs_hf": max_diff(before, hf_logprobs())}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # a large "optimizer step" on every weight, the tied embedding too
            p.add_(torch.randn_like(p) * 0.05)
    from oger.generation.weight_sync import weight_stream

    out["push"]["seconds"] = engine.push_weights(weight_stream(model))  # streamed: a generator
    after, hf_after = vllm_logprobs(), hf_logprobs()
    out["push"]["after_vs_hf"] = max_diff(after, hf_after)
    out["push"]["after_vs_before"] = max_diff(after, before)
    out["push"]["tied"] = bool(model.config.tie_word_embeddings)
    # processed log-probs of sampled tokens against the trainer's log_softmax(logits / T)
    T = 0.7
    rolls = engine.generate(prompts[:4], Request(max_new_tokens=8, temperature=T, seed=3, record_logprobs=True))
    diffs = []
    with torch.no_grad():
        for r in rolls:
            p = prompts[r.prompt_index]
            ids = torch.tensor([p + r.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float() / T, -1)
            diffs += [
                abs(float(logp[len(p) - 1 + j, t]) - lp) for j, (t, lp) in enumerate(zip(r.response_ids, r.logprobs))
            ]
    out["sampled_logprob_max_diff"] = max(diffs)

    # 3b. the stale-weight guard, as the trainer runs it after each push, on this float32 engine and on a
    # bf16 one: it passes on pushed weights, and an AdamW step at lr 1e-6 left unpushed (a skipped push)
    # trips it
    out["guard"] = {"float32": _guard(colocated, model, tok, prompts)}
    colocated.close()
    bf16 = ColocatedEngine(model, tok, dtype="bfloat16")
    out["guard"]["bfloat16"] = _guard(bf16, model, tok, prompts)
    bf16.close()

    # 4. the teachers' vllm backend (the offline engine through oger.generation) against the
    # transformers backend, greedy, through the teachers' one sampling function
    from oger.contract.config import TeacherConfig
    from oger.stages.teachers import sampled
    from oger.stages.teachers.base import Prompt

    teacher_prompts = [Prompt(f"p{i}", q, position=i) for i, q in enumerate(questions[:4])]
    kw = dict(model=model_dir, n=1, sampling={"temperature": 0.0, "max_new_tokens": 16})
    by_backend = {
        b: sampled.generate(TeacherConfig(name=b, backend=b, **kw), teacher_prompts, "r1")
        for b in ("transformers", "vllm")
    }
    out["teachers"] = {
        b: [(g.problem_id, g.sample_index, g.text, g.n_tokens, g.finish_reason) for g in gens]
        for b, gens in by_backend.items()
    }

    # 5. sleep mode is a GPU feature: asked for on this CPU build, a config error before any build
    from oger.contract.errors import ConfigError
    from oger.generation.vllm import VLLMEngine

    try:
        VLLMEngine(model_dir, sleep=True, what="train.rollout.engine")
        out["sleep_error"] = None
    except ConfigError as e:
        out["sleep_error"] = str(e)
    with open(out_path, "w") as f:
        json.dump(out, f)


def _guard(engine, model, tok, prompts) -> dict:
    """The guard on `engine` (`engine_guard.PushGuard`, one process): after its build, after a step left
    unpushed (its error), and after the push that follows."""
    import contextlib

    import torch

    from oger.contract.errors import StageError
    from oger.stages.train.distributed import Dist
    from oger.stages.train.engine_guard import PushGuard, trainer_logprobs

    guard = PushGuard.build(model, tok, engine.dtype, "float32", None)

    def check(when: str):
        return guard.check(engine, model, when, Dist(), contextlib.nullcontext)

    out = {"limit": guard.limit, "probes": len(guard.probes), "build": check("after the rollout engine's build")}
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.tensor([prompts[3] + prompts[6]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    e = engine.score(guard.prompt, guard.continuation)
    t = trainer_logprobs(model, guard.prompt, guard.continuation, contextlib.nullcontext)
    out["skipped_logp_diff"] = max(abs(a - b) for a, b in zip(e, t))  # what the log-probs alone would see
    try:
        check("after the weight push of step 7")  # the push skipped
        out["skipped_error"] = None
    except StageError as err:
        out["skipped_error"] = str(err)
    engine.sync()
    out["pushed"] = check("after the weight push of step 8")
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
