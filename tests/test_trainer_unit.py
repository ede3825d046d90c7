"""Trainer plumbing on a random tiny Qwen2: batched response log-probs equal per-sequence ones,
and micro-batched gradients equal the full-batch gradient for every loss aggregation."""

import pytest
import torch

from oger.config import TrainConfig
from oger.rl import core
from oger.rl.trainer import Sample, _batch_tensors, response_logits, update
from oger.tiny_model import build_model, train_tokenizer


@pytest.fixture(scope="module")
def model_tok():
    tok = train_tokenizer(["Compute 1 + 2.", "Answer: \\boxed{3}", "Terms: 4, -5."] * 10, 300)
    model = build_model(tok, 32, 2, 2, 64, 128, seed=0).double()
    return model, tok


def samples(tok):
    texts = [("Compute 1 + 2.", "1 + 2 = 3. \\boxed{3}"), ("Compute 4 - 5 + 6.", "Terms: 4, -5, 6."),
             ("Compute 7.", "\\boxed{7}"), ("Compute 12 + 3 - 4 + 5.", "Answer: 16")]
    out = []
    for g, (q, a) in enumerate(texts):
        p = tok(q, add_special_tokens=False)["input_ids"]
        r = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(Sample(g // 2, str(g), p, r, a, off_policy=(g == 3)))
    return out


def test_batched_response_logprobs_equal_unpadded(model_tok):
    model, tok = model_tok
    ss = samples(tok)
    with torch.no_grad():
        ids, attn, pos, resp = _batch_tensors(ss, tok.pad_token_id)
        R = resp.shape[1]
        batched = (core.token_logprobs(response_logits(model, ids, attn, pos, R), ids[:, -R:]) * resp).sum(-1)
        for i, s in enumerate(ss):
            seq = torch.tensor([s.prompt_ids + s.response_ids])
            lp = core.token_logprobs(model(input_ids=seq).logits[:, :-1], seq[:, 1:])[0]
            assert torch.allclose(batched[i], lp[len(s.prompt_ids) - 1:].sum(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant_len"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(model_tok, agg):
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    grads = []
    for mb in (4, 1, 3):
        cfg = TrainConfig(micro_batch_size=mb, loss_agg=agg, max_new_tokens=12, temperature=1.0)
        model.zero_grad()
        update(model, None, ss, adv, cfg, tok.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    assert torch.allclose(grads[0], grads[2], rtol=1e-9, atol=1e-12)
    assert grads[0].abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradient(model_tok):
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(micro_batch_size=2, max_new_tokens=12)
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        update(model, None, ss, adv, cfg, tok.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.gradient_checkpointing_disable()
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_ranks_take_whole_generation_calls_of_the_step():
    from oger.rl.distributed import Dist
    from oger.rl.trainer import _rank_slice

    cfg = TrainConfig(prompts_per_step=8, rollout_batch_prompts=2, num_processes=2)
    assert _rank_slice(8, cfg, Dist()) == (0, 8)
    assert [_rank_slice(8, cfg, Dist(rank=r, world=2)) for r in (0, 1)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="num_processes x rollout_batch_prompts = 4"):
        _rank_slice(6, cfg, Dist(rank=0, world=2))  # a pool smaller than prompts_per_step


def test_entropy_agg_token_mean_is_a_per_micro_batch_token_mean(model_tok):
    """LUFFY/verl: entropy = token mean within each micro-batch, micro-batches weighted equally (their row
    share under constant_len); the gradient equals that of the hand-built objective."""
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.zeros(4, dtype=torch.float64)  # only the entropy term acts
    cfg = TrainConfig(micro_batch_size=2, loss_agg="constant_len", max_new_tokens=12, entropy_coef=0.5,
                      entropy_agg="token_mean")
    model.zero_grad()
    update(model, None, ss, adv, cfg, tok.pad_token_id)
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    order = sorted(range(4), key=lambda i: len(ss[i].prompt_ids) + len(ss[i].response_ids))
    total = 0
    for b in (0, 2):
        mb = [ss[i] for i in order[b:b + 2]]
        ids, attn, pos, resp = _batch_tensors(mb, tok.pad_token_id)
        ent = core.entropy_from_logits(response_logits(model, ids, attn, pos, resp.shape[1]))
        total = total + 0.5 * (-0.5 * (ent * resp).sum() / resp.sum())
    total.backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
