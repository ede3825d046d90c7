"""The bonus's entropy positions (`train.oger.entropy_at`): `answer_span` finds the final `\\boxed{}`
answer's tokens with real tokenizers (the tiny policy's byte-level BPE, SmolLM2's), as `verify.last_boxed`
reads the text; and the engines keep the entropies at exactly those positions (hf while sampling, the
paged/vLLM pass and the update's behaviour pass afterwards), equal to a full forward's there."""

import pytest
import torch

from oger.algorithm import core
from oger.contract.config import TrainConfig
from oger.generation.entropy_window import TAIL_TOKENS, EntropyWindow, answer_span
from oger.generation.hf import generate
from oger.generation.paged import response_entropies
from oger.stages.policy.tiny_model import build_model, train_tokenizer
from oger.stages.train.update import behaviour_scores
from oger.synthetic import generate_problems
from oger.verify import last_boxed
from tests.builders import sample


@pytest.fixture(scope="module")
def tiny_tokenizer():
    corpus = [p.question + f" Answer: \\boxed{{{p.answer}}}" for p in generate_problems(0, 200, 2, 4, 9, "+-")]
    return train_tokenizer(corpus, 300)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from oger.models import load_tokenizer

    return load_tokenizer("smollm2")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # a stopped response


@pytest.mark.parametrize("which", ["tiny_tokenizer", "smollm2_tokenizer"])
def test_answer_span_finds_the_boxed_answer_tokens(request, which):
    tok = request.getfixturevalue(which)
    ids = _ids(tok, "Add them: 40 + 2 = 42, so \\boxed{42}")
    tag, start, end = answer_span(tok, ids)
    assert tok.decode(ids[start:end]) == "42"  # the answer's own tokens, nothing else
    assert tok.decode(ids[tag:start]).strip() == "\\boxed{"  # the tag's tokens
    assert tok.decode(ids[:tag]).rstrip().endswith("so")
    assert tok.decode(ids[end:], skip_special_tokens=True) == "}"
    assert EntropyWindow(2, "answer").positions(ids, tok) == range(start, end)
    assert EntropyWindow(2, "before_answer").positions(ids, tok) == range(tag - 2, tag)
    assert EntropyWindow(2, "last").positions(ids, tok) == range(len(ids) - 2, len(ids))

    # The answer verify reads, wherever it sits: a later, unbalanced `\boxed{` (truncated) is skipped;
    # an answer further from the end than the first suffix searched is found all the same.
    tail = " Then some more words that go on and on" * (TAIL_TOKENS // 4)
    for text in ["x \\boxed{ 7 } y \\boxed{3", "so \\boxed 9$ ok", "\\boxed{\\frac{1}{2}} so" + tail]:
        ids = _ids(tok, text)
        _, start, end = answer_span(tok, ids)
        got, want = tok.decode(ids[start:end]), last_boxed(text)
        # exactly the answer, but for a token straddling its braces (SmolLM2's `{\` and `}}`): the answer's
        assert want in got and got.replace(want, "", 1).strip("{} ") == ""
    assert len(ids) - end > TAIL_TOKENS  # the last one: found past the first suffix searched
    for text in ["no answer here", "cut at \\boxed{4", ""]:  # none: every option reads the last m tokens
        ids = _ids(tok, text)
        assert answer_span(tok, ids) is None
        assert EntropyWindow(1, "answer").positions(ids, tok) == range(len(ids) - 1, len(ids))


@pytest.fixture(scope="module")
def scripted_policy(tiny_tokenizer):
    """The tiny policy (random wide weights, so its entropies are far from 0 and differ by position)
    made to continue any `.` with " so \\boxed{42}" and stop: a forward hook lifts the scripted next
    token of each position's input token 1 nat above the best logit, so greedy decoding follows the
    script while every position keeps an entropy of its own. The hook acts on every forward (the hf
    engine's cached steps, the paged pass's kept positions, the update's), so all read one model."""
    tok = tiny_tokenizer
    model = build_model(tok, 32, 2, 2, 64, 256, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    script = tok("." + " so \\boxed{42}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(set(script)) == len(script)  # each token names its successor
    successor = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    successor[script[:-1]] = torch.tensor(script[1:])

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        keep = kwargs.get("logits_to_keep")
        logits = output.logits
        prev = ids[:, keep] if isinstance(keep, torch.Tensor) else ids[:, ids.shape[1] - logits.shape[1] :]
        target = successor.to(ids.device)[prev]
        lifted = logits.scatter(-1, target.clamp(min=0).unsqueeze(-1), logits.amax(-1, keepdim=True) + 1.0)
        output.logits = torch.where((target >= 0).unsqueeze(-1), lifted, logits)
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    yield model, tok
    handle.remove()


def test_engines_keep_the_entropies_at_the_answer_positions(scripted_policy):
    model, tok = scripted_policy
    prompts = [
        tok("Compute 7 + 5.", add_special_tokens=False)["input_ids"],
        tok("Add 3.", add_special_tokens=False)["input_ids"],
    ]
    full = generate(model, tok, prompts, n=2, max_new_tokens=16, temperature=0.0)  # every position's H
    assert {r.text for r in full} == {" so \\boxed{42}"} and {r.finish_reason for r in full} == {"stop"}
    resp = full[0].response_ids  # " so \boxed{42}" + end-of-sequence: 10 tokens in this tokenizer
    assert [tok.decode([t]) for t in resp[3:9]] == [" \\", "boxed", "{", "4", "2", "}"]
    assert answer_span(tok, resp) == (3, 6, 8)

    hand = []  # H by hand: the full forward's entropies at each response position
    with torch.no_grad():
        for r in full:
            p = prompts[r.prompt_index]
            logits = model(input_ids=torch.tensor([p + r.response_ids])).logits[0]
            hand.append(core.sampling_entropy(logits[len(p) - 1 : len(p) - 1 + len(r.response_ids)]).tolist())
    for r, h in zip(full, hand):
        assert r.entropies == pytest.approx(h, abs=1e-4)
        assert len(set(round(x, 3) for x in h)) > 5  # the positions differ: picking the wrong ones would show

    jobs = [prompts[r.prompt_index] for r in full]
    samples = [
        sample(group=r.prompt_index, prompt_ids=jobs[i], response_ids=r.response_ids) for i, r in enumerate(full)
    ]
    cfg = TrainConfig(optim={"padding_free": False, "share_prompts": False})
    for window, at in [(EntropyWindow(2, "answer"), [6, 7]), (EntropyWindow(2, "before_answer"), [1, 2])]:
        hf = generate(model, tok, prompts, n=2, max_new_tokens=16, temperature=0.0, entropy_window=window)
        paged = response_entropies(
            model, jobs, [r.response_ids for r in full], 8, tok.pad_token_id, window=window, tokenizer=tok
        )
        was = model.training
        try:
            _, behaviour = behaviour_scores(model, samples, cfg, tok.pad_token_id, entropy_window=window, tokenizer=tok)
        finally:
            model.train(was)
        for r, f, h, p, b in zip(hf, full, hand, paged, behaviour):
            assert r.response_ids == f.response_ids == resp
            assert r.entropies == [f.entropies[j] for j in at]  # hf: the values it recorded, kept there
            assert p == pytest.approx([h[j] for j in at], abs=1e-4)  # paged / vLLM's pass
            assert b == pytest.approx([h[j] for j in at], abs=1e-4)  # the update's behaviour pass
