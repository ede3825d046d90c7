"""Parity of oger.algorithm.core with TRL's GRPOTrainer (trl 1.16) loss and advantage arithmetic.

A real GRPOTrainer is built on a tiny, randomly initialised Qwen2 model and a word-level tokenizer made here
(no network). For the loss, only the method that runs the model forward (`_get_per_token_logps_and_entropies`)
is replaced, by one returning fixed float64 log-probs and entropies that require grad; everything after that is
TRL's own `_compute_loss`. For the advantages, TRL's real `_generate_and_score_completions` runs (the tiny model
really generates), with a reward function that returns fixed rewards.

Loss-type map (see docs/ALGORITHM.md): grpo -> seq_mean, bnpo -> token_mean, dapo -> token_mean (one process,
no gradient accumulation, num_items_in_batch = valid tokens), dr_grpo -> constant_len(max_completion_length).
TRL's entropy bonus is a token mean for every loss type, hence entropy_agg="token_mean". TRL multiplies the KL
by the importance ratio by default (use_bias_correction_kl=True); our k3 KL is the plain one, so the KL case
turns that off.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from oger.algorithm.core import group_advantages, policy_loss  # noqa: E402

pytestmark = pytest.mark.slow  # imports trl/transformers and builds trainers: several seconds

MAX_LEN = 8
LOSS_TO_AGG = {"grpo": "seq_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "constant_len"}
WORDS = ["<pad>", "<eos>", "<unk>"] + [str(i) for i in range(10)] + ["+", "=", "?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny_qwen2")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(d)
    cfg = Qwen2Config(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def make_trainer(model_dir, reward_fn, batch, **cfg):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(model_dir / "out"),
        per_device_train_batch_size=batch,
        num_generations=4,
        max_completion_length=MAX_LEN,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        **cfg,
    )
    ds = Dataset.from_dict({"prompt": ["1 + 2 =", "3 + 4 =", "5 + 6 =", "7 + 8 ="] * 3})
    return GRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward_fn,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def fixed_batch(B=8, T=MAX_LEN, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.float64
    lengths = torch.tensor([8, 5, 3, 1, 8, 7, 2, 6])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    logp = -torch.rand(B, T, generator=g, dtype=D) * 3.0
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=D)  # ratios well outside [0.8, 1.28] for some tokens
    ref = logp + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    ent = torch.rand(B, T, generator=g, dtype=D) * 2.0
    adv = group_advantages(torch.randint(0, 2, (B // 4, 4), generator=g).to(D), "group", eps=1e-4).flatten()
    return dict(
        mask=mask,
        logp=logp,
        old=old,
        ref=ref,
        ent=ent,
        adv=adv,
        prompt_ids=torch.randint(3, len(WORDS), (B, 4), generator=g),
        completion_ids=torch.randint(3, len(WORDS), (B, T), generator=g),
    )


VARIANTS = {
    # TRL defaults apart from the loss type: beta 0, epsilon 0.2 both sides, token-level importance sampling.
    "defaults": dict(cfg={}, ours=dict(eps_low=0.2, eps_high=0.2)),
    # Clip-higher, entropy bonus and KL (without TRL's ratio-weighted "bias corrected" KL).
    "kl_entropy_cliphigh": dict(
        cfg=dict(beta=0.04, use_bias_correction_kl=False, entropy_coef=0.01, epsilon=0.2, epsilon_high=0.28),
        ours=dict(eps_low=0.2, eps_high=0.28, beta=0.04, entropy_coef=0.01, entropy_agg="token_mean"),
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("loss_type", list(LOSS_TO_AGG))
def test_loss_and_gradient_match_trl(model_dir, loss_type, variant):
    v = VARIANTS[variant]
    trainer = make_trainer(model_dir, zero_reward, batch=8, loss_type=loss_type, **v["cfg"])
    assert trainer.importance_sampling_level == "token" and trainer.args.delta is None
    assert trainer.top_entropy_quantile == 1.0 and trainer.off_policy_mask_threshold is None
    b = fixed_batch()

    # TRL: identical leaves; the trainer's forward pass is replaced by the fixed log-probs/entropies.
    trl_logp = b["logp"].clone().requires_grad_()
    trl_ent = b["ent"].clone().requires_grad_()

    def fixed_forward(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == MAX_LEN and input_ids.shape == (8, 4 + MAX_LEN)
        return trl_logp, trl_ent, None

    trainer._get_per_token_logps_and_entropies = fixed_forward
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets for gradient_accumulation_steps=1
    inputs = dict(
        prompt_ids=b["prompt_ids"],
        prompt_mask=torch.ones_like(b["prompt_ids"]),
        completion_ids=b["completion_ids"],
        completion_mask=b["mask"],
        advantages=b["adv"],
        old_per_token_logps=b["old"],
        ref_per_token_logps=b["ref"],
        num_items_in_batch=b["mask"].sum(),
    )
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_grad_logp, trl_grad_ent = torch.autograd.grad(trl_loss, [trl_logp, trl_ent], allow_unused=True)

    # Ours, on the same numbers.
    logp = b["logp"].clone().requires_grad_()
    ent = b["ent"].clone().requires_grad_()
    ours = v["ours"]
    loss, met = policy_loss(
        logp,
        b["old"],
        b["adv"],
        b["mask"],
        torch.zeros(8, dtype=torch.bool),
        agg=LOSS_TO_AGG[loss_type],
        max_len=MAX_LEN,
        entropy=ent,
        ref_logp=b["ref"] if ours.get("beta") else None,
        **ours,
    )
    grad_logp, grad_ent = torch.autograd.grad(loss, [logp, ent], allow_unused=True)

    assert trl_loss.dtype == torch.float64
    torch.testing.assert_close(loss, trl_loss, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(grad_logp, trl_grad_logp, rtol=1e-6, atol=1e-12)
    assert grad_logp.abs().sum() > 0
    if ours.get("entropy_coef"):
        torch.testing.assert_close(grad_ent, trl_grad_ent, rtol=1e-6, atol=1e-12)
    else:
        assert grad_ent is None and trl_grad_ent is None

    # The clip fractions and KL that TRL logs agree with our metrics (same token set: on-policy valid tokens).
    logged = {k: vals[-1] for k, vals in trainer._metrics["train"].items() if vals}
    assert 0 < met["clip_frac"] < 1
    for trl_key, our_key in [
        ("clip_ratio/low_mean", "clip_frac_low"),
        ("clip_ratio/high_mean", "clip_frac_high"),
        ("clip_ratio/region_mean", "clip_frac"),
        ("entropy", "entropy"),
    ]:
        assert logged[trl_key] == pytest.approx(met[our_key], rel=1e-6), trl_key
    if ours.get("beta"):
        assert logged["kl"] == pytest.approx(met["kl"], rel=1e-6)


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_advantages_match_trl(model_dir, scale_rewards):
    # three groups of four: mixed, graded, and all-equal (zero std -> zero advantage)
    rewards = [1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    calls = []

    def fixed_reward(completions, **kwargs):
        calls.append(len(completions))
        return list(rewards)

    trainer = make_trainer(model_dir, fixed_reward, batch=12, scale_rewards=scale_rewards)
    prompts = [{"prompt": p} for p in ["1 + 2 =", "3 + 4 =", "5 + 6 ="] for _ in range(4)]
    out = trainer._generate_and_score_completions(prompts)
    assert calls == [12]
    ours = group_advantages(torch.tensor(rewards, dtype=torch.float64).view(3, 4), scale_rewards, eps=1e-4)
    torch.testing.assert_close(out["advantages"].to(torch.float64), ours.flatten(), rtol=1e-6, atol=1e-6)
    assert out["advantages"][8:].abs().max() == 0
