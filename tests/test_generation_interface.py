"""The one engine interface (oger.generation.base): prompts as ids or chat messages, results in
prompt-major order with sample indices, and evaluation's sorted calls equal one call."""

import pytest

from oger.generation.base import Request, chat_messages, generate_sorted, number_samples, prompt_ids
from oger.generation.hf import TransformersEngine, chat_prompt_ids
from oger.generation.records import Rollout


@pytest.fixture(scope="module")
def engine():
    from oger.stages.policy.tiny_model import build_model, train_tokenizer

    tok = train_tokenizer([f"{a} + {b} = {a + b}" for a in range(10) for b in range(10)], 300)
    return TransformersEngine(build_model(tok, 32, 2, 2, 64, 128, seed=0), tok, "hf")


def test_chat_messages_and_their_ids_sample_the_same(engine):
    tok = engine.tokenizer
    messages = [chat_messages(q, "Q: {question}", "be brief") for q in ("1 + 2", "7 + 7 + 7")]
    ids = [prompt_ids(tok, m) for m in messages]
    assert ids[0] == chat_prompt_ids(tok, "1 + 2", "Q: {question}", "be brief")
    request = Request(n=2, max_new_tokens=6, temperature=1.0, seed=3)
    by_messages = engine.generate(messages, request)
    by_ids = engine.generate(ids, request)
    assert [(r.prompt_index, r.sample_index, r.response_ids) for r in by_messages] == [
        (r.prompt_index, r.sample_index, r.response_ids) for r in by_ids
    ]
    # prompt-major, n per prompt, numbered; n_tokens counts the response's ids
    assert [(r.prompt_index, r.sample_index) for r in by_ids] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r.n_tokens == len(r.response_ids) > 0 for r in by_ids)


def test_sorted_calls_sample_what_one_call_samples(engine):
    tok = engine.tokenizer
    prompts = [tok(t)["input_ids"] for t in ("1 + 2 + 3 + 4", "5", "6 + 7", "8 + 9 + 1")]
    request = Request(n=2, max_new_tokens=6, temperature=1.0, seed=11)
    whole = generate_sorted(engine, prompts, request)
    engine.batch_size = 2  # one prompt (2 jobs) per call, shortest first
    try:
        cut = generate_sorted(engine, prompts, request)
    finally:
        engine.batch_size = None
    assert [(r.prompt_index, r.sample_index, r.text) for r in whole] == [
        (r.prompt_index, r.sample_index, r.text) for r in cut
    ]
    assert [r.prompt_index for r in whole] == [0, 0, 1, 1, 2, 2, 3, 3]  # back in prompt order


def test_number_samples_counts_per_prompt():
    rolls = [Rollout(p, [1], "x", "stop") for p in (0, 1, 0, 1, 0)]
    assert [r.sample_index for r in number_samples(rolls)] == [0, 0, 1, 1, 2]


def test_a_chat_server_refuses_token_ids():
    from oger.generation.openai import OpenAIEngine

    with pytest.raises(ValueError, match="takes chat messages, not token ids"):
        OpenAIEngine("http://127.0.0.1:9", "m", label="teacher 't'").generate([[1, 2, 3]], Request())


def test_vllm_missing_is_a_clear_error(monkeypatch):
    import sys

    from oger.contract.errors import ConfigError
    from oger.generation.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(ConfigError, match="teacher 't' uses vLLM, which is not installed here"):
        import_vllm("teacher 't'")
