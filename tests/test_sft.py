"""SFT batches: right padding lets the step skip the padding mask without changing the loss."""

import torch

from oger.stages.policy.sft import pad_batch, sft


def _tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


EXAMPLES = [([5, 6, 7], [8, 9, 1]), ([5, 6], [10, 11, 12, 13, 14, 1]), ([7, 8, 9, 10], [1])]


def test_pad_batch_right_pads_and_masks_prompt_and_padding():
    ids, attn, labels = pad_batch(EXAMPLES, pad_id=0)
    assert ids.shape == (3, 8)  # widest: 2 prompt + 6 response
    assert ids[2].tolist() == [7, 8, 9, 10, 1, 0, 0, 0]
    assert attn[2].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert labels[2].tolist() == [-100, -100, -100, -100, 1, -100, -100, -100]


def test_causal_loss_without_padding_mask_equals_masked_loss():
    # The step drops attention_mask: with right padding no real token can attend to a pad under
    # the causal mask, so the loss must match the masked one. A left-padded batch would differ.
    model = _tiny_model().eval()
    ids, attn, labels = pad_batch(EXAMPLES, pad_id=0)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        unmasked = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-6)


def test_sft_lowers_the_loss():
    model = _tiny_model()
    losses = sft(model, EXAMPLES * 8, pad_id=0, epochs=6, lr=0.01, batch_size=8, warmup_steps=2, seed=0)
    assert len(losses) == 18  # ceil(24 / 8) = 3 steps per epoch x 6 epochs
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
