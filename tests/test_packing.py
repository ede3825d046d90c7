"""Padding-free updates and token-budget micro-batches (oger.stages.train.packing): the packed row
scores every response token as the padded rows do, its loss and gradient equal the padded path's in
float32, and the gradient does not depend on how a token budget splits the batch."""

import pytest
import torch

from oger.contract.config import TrainConfig
from oger.stages.policy.tiny_model import build_model, train_tokenizer
from oger.stages.train import packing, varlen
from oger.stages.train.update import token_scores, update
from tests.builders import sample

AGGS = ["token_mean", "seq_mean", "constant_len"]


def _qwen2():
    tok = train_tokenizer(["Compute 1 + 2.", "Answer: \\boxed{3}", "Terms: 4, -5."] * 10, 300)
    return build_model(tok, 32, 2, 2, 64, 128, seed=0).float(), tok.pad_token_id


def _llama():
    # SmolLM2's architecture (Llama, tied embeddings), random weights at a tiny size.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).float(), 0


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_pad(request):
    return _qwen2() if request.param == "qwen2" else _llama()


def spread_samples(vocab: int, n=6, seed=0):
    """Samples of very different lengths: prompts 2-20 tokens, responses 1-90 (one of each extreme)."""
    g = torch.Generator().manual_seed(seed)
    plens = [2, 20, 7, 13, 4, 9][:n]
    rlens = [1, 90, 33, 5, 61, 12][:n]
    out = []
    for i, (p, r) in enumerate(zip(plens, rlens)):
        ids = torch.randint(5, vocab, (p + r,), generator=g).tolist()
        out.append(
            sample("x", group=i // 2, problem_id=str(i), prompt_ids=ids[:p], response_ids=ids[p:], off_policy=(i == 3))
        )
    return out


# ------------------------------------------------------------------ grouping, by hand


def test_token_budget_groups_consecutive_samples_within_the_budget():
    lengths = [3, 4, 5, 9, 12]
    # 3+4 = 7 <= 8; 5 alone (5+9 > 8); 9 > 8 alone; 12 > 8 alone
    assert packing.group_by_tokens([0, 1, 2, 3, 4], lengths, 8) == [[0, 1], [2], [3], [4]]
    # 3+4+5 = 12 <= 12; 9 (9+12 > 12); 12
    assert packing.group_by_tokens([0, 1, 2, 3, 4], lengths, 12) == [[0, 1, 2], [3], [4]]
    assert packing.group_by_tokens([0, 1, 2, 3, 4], lengths, 100) == [[0, 1, 2, 3, 4]]


def test_split_to_count_halves_the_largest_group_first():
    lengths = [3, 4, 5, 9, 12]
    groups = [[0, 1, 2], [3, 4]]  # 12 tokens, 21 tokens: [3, 4] splits first
    assert packing.split_to_count(groups, lengths, 3) == [[0, 1, 2], [3], [4]]
    # then [0, 1, 2] (12) is the only splittable one: halves [0], [1, 2]
    assert packing.split_to_count(groups, lengths, 4) == [[0], [1, 2], [3], [4]]
    with pytest.raises(ValueError, match="single samples"):
        packing.split_to_count([[0], [1]], lengths, 3)


def test_pack_layout_by_hand():
    row = packing.pack([[10, 11], [20]], [[12, 13, 14], [21]])
    # row: 10 11 12 13 14 | 20 21, positions restart at each sample
    assert row.ids.tolist() == [[10, 11, 12, 13, 14, 20, 21]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    # logits at 1, 2, 3 predict 12, 13, 14; at 5 predicts 21
    assert row.keep.tolist() == [1, 2, 3, 5]
    assert row.targets.tolist() == [12, 13, 14, 21]
    assert (row.rows.tolist(), row.cols.tolist(), row.shape) == ([0, 0, 0, 1], [0, 1, 2, 0], (2, 3))
    assert row.unpack(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [[1, 2, 3], [4, 0, 0]]


# ------------------------------------------------------------------ numerics, float32


@pytest.mark.parametrize("layout", ["packed", "shared_prompts"])
def test_other_layouts_score_as_the_padded_one(model_pad, layout):
    # packed: samples of very different lengths; shared prompts: groups of three sharing a prompt
    model, pad = model_pad
    ss = (spread_samples if layout == "packed" else group_samples)(model.config.vocab_size)
    with torch.no_grad():
        lp_pad, ent_pad, m_pad = token_scores(model, ss, pad, 0.7, layout="padded", entropy_grad=False)
        lp, ent, m = token_scores(model, ss, pad, 0.7, layout=layout, entropy_grad=False)
    assert torch.equal(m_pad, m)
    assert m_pad.sum() == sum(len(s.response_ids) for s in ss)
    assert (lp_pad - lp).mul(m_pad).abs().max() < 1e-5
    assert (ent_pad - ent).mul(m_pad).abs().max() < 1e-5
    assert lp.mul(m_pad).abs().sum() > 0


def _grad(model, ss, cfg, pad, adv):
    model.zero_grad()
    metrics = update(model, None, ss, adv, cfg, pad)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), metrics


@pytest.mark.parametrize("agg", AGGS)
def test_packed_update_gives_the_padded_loss_and_gradient(model_pad, agg):
    model, pad = model_pad
    ss = spread_samples(model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3, 0.8])
    base = dict(loss={"loss_agg": agg, "entropy_coef": 0.01}, rollout={"max_new_tokens": 96})
    g_pad, m_pad = _grad(model, ss, TrainConfig(optim={"micro_batch_size": 2}, **base), pad, adv)
    g_pack, m_pack = _grad(
        model, ss, TrainConfig(optim={"micro_batch_size": 2, "padding_free": True}, **base), pad, adv
    )
    assert g_pad.abs().max() > 0
    assert (g_pad - g_pack).abs().max() < 1e-5
    assert abs(m_pad["pg_loss"] - m_pack["pg_loss"]) < 1e-5
    assert abs(m_pad["token_entropy"] - m_pack["token_entropy"]) < 1e-5


def test_packed_update_under_gradient_checkpointing_gives_the_same_gradient(model_pad):
    """Gradient checkpointing recomputes each layer's forward in backward: the per-sample attention of the
    packed row must still hold there (it was switched back to the model's own attention as the forward
    ended, and the recompute then saved other tensors than the forward did: a CheckpointError)."""
    model, pad = model_pad
    ss = spread_samples(model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3, 0.8])
    cfg = TrainConfig(
        optim={"max_tokens_per_micro_batch": 256, "padding_free": True},
        loss={"entropy_coef": 0.01},
        rollout={"max_new_tokens": 96},
    )
    plain, _ = _grad(model, ss, cfg, pad, adv)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        checkpointed, _ = _grad(model, ss, cfg, pad, adv)
    finally:
        model.gradient_checkpointing_disable()
    assert plain.abs().max() > 0 and (plain - checkpointed).abs().max() < 1e-6


@pytest.mark.parametrize("agg", AGGS)
def test_token_budgets_that_split_the_batch_differently_give_one_gradient(model_pad, agg):
    model, pad = model_pad
    ss = spread_samples(model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3, 0.8])
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in ss]
    grads = []
    splits = set()
    for budget, free in ((10_000, True), (120, True), (60, True), (1, True), (120, False)):
        cfg = TrainConfig(
            optim={"max_tokens_per_micro_batch": budget, "padding_free": free},
            loss={"loss_agg": agg},
            rollout={"max_new_tokens": 96},
        )
        order = sorted(range(len(ss)), key=lengths.__getitem__)
        splits.add(len(packing.group_by_tokens(order, lengths, budget)))
        grads.append(_grad(model, ss, cfg, pad, adv)[0])
    assert splits == {1, 3, 4, 6}  # the budgets really split the batch differently
    for g in grads[1:]:
        assert (grads[0] - g).abs().max() < 1e-5


# ------------------------------------------------------------------ varlen attention


def test_cu_seq_lens_from_position_restarts():
    row = packing.pack([[1, 2], [3]], [[4], [5, 6, 7]])  # lengths 3 and 4
    assert varlen.cu_seq_lens(row.position_ids).tolist() == [0, 3, 7]


def test_packed_forward_attends_per_sample_and_restores_the_model(model_pad, monkeypatch):
    """The packed forward runs one causal SDPA per sample (never the row's T x T), gives the logits
    transformers' own block-diagonal mask gives, and leaves the model's implementation as it was."""
    model, pad = model_pad
    ss = spread_samples(model.config.vocab_size)
    row = packing.pack([s.prompt_ids for s in ss], [s.response_ids for s in ss])
    before = model.config._attn_implementation
    with torch.no_grad():  # transformers' path: no 2D mask, the block mask from the position restarts
        reference = model(
            input_ids=row.ids, position_ids=row.position_ids, logits_to_keep=row.keep, use_cache=False
        ).logits[0]
    widths = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *a, **kw):
        widths.append(q.shape[2])
        return sdpa(q, *a, **kw)

    monkeypatch.setattr(varlen.torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        ours = packing.packed_logits(model, row)
    monkeypatch.undo()
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in ss]
    assert widths == lengths * model.config.num_hidden_layers  # per sample, per layer
    assert (ours - reference).abs().max() < 1e-5
    assert model.config._attn_implementation == before


# ------------------------------------------------------------------ micro-batches on CPU threads


@pytest.mark.parametrize("agg", AGGS)
def test_one_micro_batch_split_over_threads_gives_the_one_pass_gradient(model_pad, agg):
    from oger.runtime.cpu_threads import BatchThreads
    from oger.stages.train.update import micro_batch_indices

    model, pad = model_pad
    ss = spread_samples(model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3, 0.8])
    cfg = TrainConfig(
        optim={"micro_batch_size": 6}, loss={"loss_agg": agg, "entropy_coef": 0.01}, rollout={"max_new_tokens": 96}
    )
    assert len(micro_batch_indices(ss, cfg)) == 1
    assert len(micro_batch_indices(ss, cfg, workers=2)) == 4  # 2 x workers parts for the threads
    whole, _ = _grad(model, ss, cfg, pad, adv)
    model.zero_grad()
    with BatchThreads(2) as threads:
        metrics = update(model, None, ss, adv, cfg, pad, threads=threads)
    split = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert (whole - split).abs().max() < 1e-5
    assert metrics["token_entropy"] > 0


def test_entropy_averaged_per_micro_batch_keeps_its_micro_batches_whole():
    from oger.stages.train.update import micro_batch_indices

    ss = spread_samples(300)
    # LUFFY/verl's token mean of the entropy per micro-batch: four parts would be another loss
    cfg = TrainConfig(optim={"micro_batch_size": 6}, loss={"entropy_coef": 0.01, "entropy_agg": "token_mean"})
    assert len(micro_batch_indices(ss, cfg, workers=2)) == 1
    assert len(micro_batch_indices(ss[:1], TrainConfig(), workers=2)) == 1  # one sample: one part


# ------------------------------------------------------------------ each distinct prompt once


def group_samples(vocab: int, seed=0):
    """Three groups of three (one prompt each, 3, 17 and 9 tokens), responses 1-40 tokens, a teacher
    row in the second group."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for grp, (plen, rlens) in enumerate([(3, [1, 40, 12]), (17, [40, 7, 25]), (9, [12, 25, 3])]):
        prompt = torch.randint(5, vocab, (plen,), generator=g).tolist()
        for k, r in enumerate(rlens):
            out.append(
                sample(
                    "x",
                    group=grp,
                    problem_id=str(grp),
                    prompt_ids=prompt,
                    response_ids=torch.randint(5, vocab, (r,), generator=g).tolist(),
                    off_policy=(grp, k) == (1, 2),
                )
            )
    return out


def test_distinct_rows_by_hand():
    from oger.generation.hf import distinct_rows

    # distinct keys (1, 2), (3,), (4,) first seen in rows 0, 1 and 4
    assert distinct_rows([(1, 2), (3,), (1, 2), (3,), (4,)]) == ([0, 1, 4], [0, 1, 0, 1, 2])


@pytest.mark.parametrize("agg", AGGS)
def test_shared_prompt_update_gives_the_padded_loss_and_gradient(model_pad, agg):
    model, pad = model_pad
    ss = group_samples(model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3, 0.8, -1.2, 0.4, 0.9])
    base = dict(loss={"loss_agg": agg, "entropy_coef": 0.01}, rollout={"max_new_tokens": 96})
    g_pad, m_pad = _grad(model, ss, TrainConfig(optim={"micro_batch_size": 4}, **base), pad, adv)
    g_sh, m_sh = _grad(model, ss, TrainConfig(optim={"micro_batch_size": 4, "share_prompts": True}, **base), pad, adv)
    assert g_pad.abs().max() > 0
    assert (g_pad - g_sh).abs().max() < 1e-5
    assert abs(m_pad["pg_loss"] - m_sh["pg_loss"]) < 1e-5


def test_sharing_prompts_keeps_a_group_in_one_micro_batch():
    from oger.stages.train.update import micro_batch_indices

    ss = group_samples(300)
    by_length = micro_batch_indices(ss, TrainConfig(optim={"micro_batch_size": 3}))
    by_group = micro_batch_indices(ss, TrainConfig(optim={"micro_batch_size": 3, "share_prompts": True}))
    assert any(len({ss[i].group for i in mb}) > 1 for mb in by_length)
    # groups shortest first (longest member: 2 -> 9+25, 0 -> 3+40, 1 -> 17+40), each whole
    assert [[ss[i].group for i in mb] for mb in by_group] == [[2, 2, 2], [0, 0, 0], [1, 1, 1]]


def test_two_layouts_at_once_are_refused():
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(optim={"share_prompts": True, "padding_free": True})


def test_shared_prompts_refuse_gradient_checkpointing():
    # checkpointed layers run without a KV cache, so the shared prompt's keys could not reach its rows
    with pytest.raises(ValueError, match="share_prompts"):
        TrainConfig(optim={"share_prompts": True}, distributed={"gradient_checkpointing": True})


def test_shared_prompts_refuse_a_model_whose_cache_rows_cannot_be_copied():
    from tests.test_row_sampler import tiny_hybrid_model

    ss = group_samples(64)
    with pytest.raises(ValueError, match="share_prompts.*Qwen3Next"):
        token_scores(tiny_hybrid_model(), ss, 0, 1.0, layout="shared_prompts", entropy_grad=False)
