"""Sampling with one seeded generator per rollout (`oger.generation.hf.RowSampler`): the right
distribution, and the same rollouts whatever the batch size."""

import math

import pytest
import torch

from oger.generation.hf import RowSampler, generate


class IdsTok:
    """Token ids are the vocabulary; 1 ends a response, 0 pads."""

    pad_token_id, eos_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _sampler(us: list[float], temperature=1.0, top_p=1.0) -> RowSampler:
    s = RowSampler([0] * len(us), 1, temperature, top_p, "cpu")
    s.u = torch.tensor(us, dtype=torch.float64)[:, None]  # the uniforms, by hand
    return s


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_inverse_cdf_picks_the_token_whose_interval_holds_u():
    # probs 0.5, 0.3, 0.2 -> cdf 0.5, 0.8, 1.0: u 0.1 -> 0, 0.6 -> 1, 0.85 -> 2
    out = _sampler([0.1, 0.6, 0.85])(None, _logits([0.5, 0.3, 0.2]).repeat(3, 1))
    assert out.argmax(-1).tolist() == [0, 1, 2]
    assert torch.isinf(out).sum().item() == 6  # every row keeps exactly its drawn token


def test_top_p_drops_the_tail_and_rescales_u_to_the_kept_mass():
    # top_p 0.7: mass before token 2 is 0.8 >= 0.7, so token 2 goes; kept mass 0.8.
    # u 0.85 -> 0.85 x 0.8 = 0.68 -> token 1 (cdf 0.5, 0.8); u 0.99 -> 0.792 -> token 1, never 2
    out = _sampler([0.85, 0.99, 0.2], top_p=0.7)(None, _logits([0.5, 0.3, 0.2]).repeat(3, 1))
    assert out.argmax(-1).tolist() == [1, 1, 0]


def test_temperature_sharpens_before_drawing():
    # T = 0.5 squares the odds: 0.6, 0.4 -> 0.36 / 0.52 = 0.6923, so u 0.65 -> token 0 (T=1: token 1)
    logits = _logits([0.6, 0.4])
    assert _sampler([0.65])(None, logits).argmax().item() == 1
    assert _sampler([0.65], temperature=0.5)(None, logits).argmax().item() == 0


def test_frequencies_match_the_distribution():
    n = 20_000
    s = RowSampler(list(range(n)), 1, 1.0, 1.0, "cpu")
    counts = torch.bincount(s(None, _logits([0.5, 0.3, 0.2]).repeat(n, 1)).argmax(-1), minlength=3)
    for got, p in zip((counts / n).tolist(), (0.5, 0.3, 0.2)):
        assert got == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))  # 4 sigma


def test_rollouts_do_not_depend_on_the_batch_size():
    from tests.test_sft import _tiny_model

    model = _tiny_model()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    kw = dict(n=3, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    by_batch = {
        bs: [r.response_ids for r in generate(model, IdsTok(), prompts, batch_size=bs, **kw)] for bs in (12, 5, 1)
    }  # one batch; 5 + 5 + 2 (other paddings); one rollout each
    assert by_batch[12] == by_batch[5] == by_batch[1]
    assert len({tuple(r) for r in by_batch[12]}) > 3  # the samples do differ
    assert [r.response_ids for r in generate(model, IdsTok(), prompts, batch_size=12, **{**kw, "seed": 8})] != by_batch[
        12
    ]


def test_evaluation_samples_do_not_depend_on_evaluate_batch_size(tmp_path):
    # evaluate.batch_size is not in the evaluate key, so it must not change what is sampled: the
    # engine's calls cut the prompts into chunks of batch_size // k and give every chunk its offset in
    # the job list (first_job), so sample j of prompt i draws the same numbers in any chunking.
    from oger.generation.base import Request, generate_sorted
    from oger.generation.hf import TransformersEngine
    from oger.stages.policy.tiny_model import build_model, save_policy, train_tokenizer

    texts = [f"{a} + {b} = {a + b}" for a in range(10) for b in range(10)]
    tok = train_tokenizer(texts, 300)
    save_policy(build_model(tok, 32, 2, 2, 64, 128, seed=0), tok, tmp_path / "m")
    prompts = [tok(t)["input_ids"] for t in ("1 + 2", "3 + 4 =", "9", "7 + 7 + 7", "5 +")]
    request = Request(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=4)
    texts_by_bs = {}
    for bs in (64, 6, 3):  # one chunk; chunks of 2 prompts; of 1 prompt
        engine = TransformersEngine.load(tmp_path / "m", batch_size=bs)
        texts_by_bs[bs] = [(c.prompt_index, c.sample_index, c.text) for c in generate_sorted(engine, prompts, request)]
        engine.close()
    assert texts_by_bs[64] == texts_by_bs[6] == texts_by_bs[3]
    assert len({t for _, _, t in texts_by_bs[64]}) > 5  # random model, T=1: the samples differ


def test_a_shared_prefill_samples_what_one_prefill_per_row_samples():
    # n = 3 rows share each prompt: the prompt (but its last token) runs once and its cache is
    # copied to the rows (`shared_prefill_cache`); the tokens must be those of a prefill per row
    # and the recorded entropies equal up to float rounding. The one-token prompt [14] has only
    # padding before its last token.
    from tests.test_sft import _tiny_model

    model = _tiny_model()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    kw = dict(n=3, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, batch_size=12)
    shared = generate(model, IdsTok(), prompts, **kw)
    per_row = generate(model, IdsTok(), prompts, share_prefill=False, **kw)
    assert [r.response_ids for r in shared] == [r.response_ids for r in per_row]
    assert len({tuple(r.response_ids) for r in shared}) > 3
    for a, b in zip(shared, per_row):
        assert a.entropies == pytest.approx(b.entropies, abs=1e-5)
    greedy = dict(kw, temperature=0.0)
    assert [r.response_ids for r in generate(model, IdsTok(), prompts, **greedy)] == [
        r.response_ids for r in generate(model, IdsTok(), prompts, share_prefill=False, **greedy)
    ]


def tiny_hybrid_model():
    """A 2-layer Qwen3-Next (one linear-attention layer, one full-attention layer): its cache keeps
    conv and recurrent states that `batch_select_indices` cannot copy per row."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(0)
    return Qwen3NextForCausalLM(
        Qwen3NextConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            linear_num_value_heads=2,
            linear_num_key_heads=1,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            layer_types=["linear_attention", "full_attention"],
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
        )
    ).eval()


def test_a_cache_whose_rows_cannot_be_copied_is_prefilled_per_row():
    from oger.generation.hf import _prefill_shareable

    model = tiny_hybrid_model()
    kw = dict(n=3, max_new_tokens=6, temperature=1.0, seed=3, batch_size=6)
    shared = generate(model, IdsTok(), [[5, 6, 7], [8, 9]], **kw)  # would raise without the check
    assert _prefill_shareable[model] is False  # found once, then not tried again for this model
    per_row = generate(model, IdsTok(), [[5, 6, 7], [8, 9]], share_prefill=False, **kw)
    assert [r.response_ids for r in shared] == [r.response_ids for r in per_row]
