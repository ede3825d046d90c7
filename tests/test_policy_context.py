"""The policy's context override (policy.max_position_embeddings, policy.rope_theta): set on a model
loaded from a folder, it is what the model runs with (the rotary frequencies) and what the policy
artifact's config.json says for every later stage; unset, the model and the stage key are as before."""

import json

import pytest
import torch

from oger.contract.config import HeldoutConfig, PolicyConfig
from oger.stages.policy.stage import _load_base, key_inputs
from oger.stages.policy.tiny_model import build_model, save_policy, train_tokenizer

CORPUS = ["What is 2 + 3?", "Cumulative sum: 5. The answer is 5."] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Qwen2 model folder with its own context: 128 positions, rope_theta 10000."""
    tok = train_tokenizer(CORPUS, 300)
    out = tmp_path_factory.mktemp("base") / "model"
    save_policy(build_model(tok, 32, 1, 2, 64, 128, seed=0), tok, out)
    return out


def saved_config(model, tokenizer, out) -> dict:
    save_policy(model, tokenizer, out)
    return json.loads((out / "config.json").read_text())


def theta_of(config: dict) -> float:
    return (config.get("rope_parameters") or config)["rope_theta"]


def inv_freq(model) -> torch.Tensor:
    return model.model.rotary_emb.inv_freq


def expected_inv_freq(model, theta: float) -> torch.Tensor:
    dim = model.config.hidden_size // model.config.num_attention_heads
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)


def policy(folder, **overrides) -> PolicyConfig:
    return PolicyConfig(source="model", model=str(folder), sft={"enabled": False}, **overrides)


def test_the_override_is_what_the_model_runs_with_and_what_its_saved_config_says(folder, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = _load_base(policy(folder, max_position_embeddings=1024, rope_theta=40000.0), [])
    assert torch.allclose(inv_freq(model), expected_inv_freq(model, 40000.0))
    config = saved_config(model, tok, tmp_path / "policy")
    assert config["max_position_embeddings"] == 1024 and theta_of(config) == 40000.0
    # a later stage loading the artifact gets the same context and frequencies
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert again.config.max_position_embeddings == 1024
    assert torch.equal(inv_freq(again), inv_freq(model))


def test_without_the_override_the_model_keeps_its_own_context(folder, tmp_path):
    model, tok = _load_base(policy(folder), [])
    config = saved_config(model, tok, tmp_path / "policy")
    assert config["max_position_embeddings"] == 128 and theta_of(config) == 10000.0
    assert torch.allclose(inv_freq(model), expected_inv_freq(model, 10000.0))


def test_one_override_leaves_the_other_value_alone(folder, tmp_path):
    model, tok = _load_base(policy(folder, rope_theta=20000.0), [])
    config = saved_config(model, tok, tmp_path / "policy")
    assert config["max_position_embeddings"] == 128 and theta_of(config) == 20000.0


def test_the_tiny_source_takes_the_override_too():
    model, _ = _load_base(
        PolicyConfig(tiny={"vocab_size": 300, "hidden_size": 32, "num_layers": 1}, rope_theta=5000.0), CORPUS
    )
    assert model.config.rope_parameters["rope_theta"] == 5000.0
    assert torch.allclose(inv_freq(model), expected_inv_freq(model, 5000.0))


def test_the_stage_key_holds_the_override_only_when_set(folder):
    heldout = HeldoutConfig()
    before, _ = key_inputs(policy(folder), heldout)
    # the slice a source-model policy had before the option existed: the keys stay valid
    assert sorted(before) == [
        "dtype",
        "eval_limit",
        "eval_max_new_tokens",
        "eval_split",
        "instruction",
        "model",
        "sft",
        "source",
        "system_prompt",
    ]
    assert key_inputs(PolicyConfig(), heldout)[0] == key_inputs(PolicyConfig(rope_theta=None), heldout)[0]
    longer, _ = key_inputs(policy(folder, max_position_embeddings=16384, rope_theta=40000.0), heldout)
    assert longer == {**before, "max_position_embeddings": 16384, "rope_theta": 40000.0}
    assert key_inputs(policy(folder, rope_theta=40000.0), heldout)[0] == {**before, "rope_theta": 40000.0}
