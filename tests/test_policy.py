"""The policy stage from each source: a GGUF file (SmolLM2), a local HF folder, a tiny built model."""

from pathlib import Path

import pytest

from oger import pipeline
from oger.contract.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_policy(tmp_path_factory, small_config):
    """run_policy(*overrides): the policy stage's ref; one workdir for the module (shared upstream)."""
    folder = tmp_path_factory.mktemp("pol")
    small_config.write(folder, "pol", n_train=24, n_test=4, source={"max_operands": 2},
                       teachers=[small_config.scripted("terms")],
                       evaluate={"heldout": {"limit": 2, "max_new_tokens": 8}},
                       policy={"tiny": {"vocab_size": 320, "hidden_size": 32, "num_layers": 1,
                                        "num_heads": 2, "intermediate_size": 64},
                               "sft": {"epochs": 1, "batch_size": 8}})

    def _run(*overrides):
        cfg = load_config(folder / "pol.yaml", [f"workdir={folder / 'w'}", *overrides])
        return pipeline.run_local(cfg, until="policy")["policy"]

    return _run


def test_gguf_source_is_dequantised_and_loadable(run_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = run_policy("policy.source=model", "policy.model=smollm2",
                     "policy.sft.epochs=0.25", "policy.sft.batch_size=2")
    folder = Path(ref.path) / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.chat_template
    assert ref.metrics["sft_steps"] >= 1 and ref.metrics["source"] == "model"


def test_local_folder_source_and_tiny_source(run_policy):
    from transformers import AutoModelForCausalLM

    tiny = run_policy()
    assert tiny.metrics["source"] == "tiny" and tiny.metrics["vocab_size"] <= 320
    folder = Path(tiny.path) / "model"
    assert AutoModelForCausalLM.from_pretrained(folder).config.architectures == ["Qwen2ForCausalLM"]
    again = run_policy("policy.source=model", f"policy.model={folder}",
                       "policy.sft.enabled=false")
    assert again.key != tiny.key and "sft_steps" not in again.metrics
    assert AutoModelForCausalLM.from_pretrained(Path(again.path) / "model") is not None


def test_tiny_tokenizer_roundtrips_and_splits_digits():
    from oger.stages.policy.tiny_model import train_tokenizer

    texts = ["Compute 12 + 345.", "Split 12 + 345 into signed terms: +12 +345.\nAnswer: \\boxed{357}"]
    tok = train_tokenizer(texts * 20, 300)
    for t in texts + ["unseen words ünïcode 9876"]:
        assert tok.decode(tok(t)["input_ids"]) == t
    pieces = tok.tokenize("345")
    assert [p.replace("Ġ", "") for p in pieces] == ["3", "4", "5"]
