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
    small_config.write(
        folder,
        "pol",
        n_train=24,
        n_test=4,
        source={"max_operands": 2},
        teachers=[small_config.scripted("terms")],
        evaluate={"heldout": {"limit": 2, "max_new_tokens": 8}},
        policy={
            "tiny": {"vocab_size": 320, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
            "sft": {"epochs": 1, "batch_size": 8},
        },
    )

    def _run(*overrides):
        cfg = load_config(folder / "pol.yaml", [f"workdir={folder / 'w'}", *overrides])
        return pipeline.run_local(cfg, until="policy")["policy"]

    return _run


def test_gguf_source_is_dequantised_and_loadable(run_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = run_policy("policy.source=model", "policy.model=smollm2", "policy.sft.epochs=0.25", "policy.sft.batch_size=2")
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
    again = run_policy("policy.source=model", f"policy.model={folder}", "policy.sft.enabled=false")
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


def test_digits_pretokenize_keeps_a_space_and_its_digit_one_piece_and_merges_phrases():
    from oger.stages.policy.tiny_model import train_tokenizer

    texts = [
        "Let's evaluate 6 + 2 - 6.\nNext, 6 + 2 = 8.\nNext, 8 - 6 = 2.\nThe result is \\boxed{2}.",
        "Compute 12 + 345.",
        "Split 4 - 7 into signed terms: +4 -7.\nAnswer: \\boxed{-3}",
    ]
    words, digits = train_tokenizer(texts * 20, 320), train_tokenizer(texts * 20, 320, "digits")
    for t in texts + ["unseen words ünïcode 9876"]:
        assert digits.decode(digits(t)["input_ids"]) == t
    assert digits.tokenize(" 345") == ["Ġ3", "4", "5"]  # one digit a token, the space kept with the first
    assert words.tokenize(" 345") == ["Ġ", "3", "4", "5"]
    # the stepwise trace: "Next, 6 + 2 = 8." is 7 pieces in `words` mode ("Next", ",", "Ġ", "6", "Ġ+",
    # "Ġ", "2", ...) but BPE may merge ".\nNext," across the space in `digits` mode: fewer tokens
    assert len(digits(texts[0])["input_ids"]) < 0.8 * len(words(texts[0])["input_ids"])
    with pytest.raises(ValueError, match="pretokenize"):
        train_tokenizer(texts, 320, "bytes")


def test_a_saved_tiny_policy_reloads_the_tokenizer_it_was_saved_with(tmp_path):
    """transformers 5 loads a qwen2 folder's tokenizer as Qwen2Tokenizer, whose own pre-tokenizer
    cuts " 4" into "Ġ", "4": a `digits` policy would then read prompts it never saw in SFT."""
    from oger.models import load_causal_lm, tokenizer_from_folder
    from oger.stages.policy.tiny_model import build_model, save_policy, train_tokenizer

    texts = ["Compute 4 - 2.", "Next, 6 + 2 = 8.\nThe result is \\boxed{8}."] * 20
    tok = train_tokenizer(texts, 320, "digits")
    save_policy(build_model(tok, 32, 1, 2, 64, 128, seed=0), tok, tmp_path / "model")
    probe = "Compute 4 - 2.\nNext, 6 + 2 = 8."
    assert tokenizer_from_folder(tmp_path / "model")(probe)["input_ids"] == tok(probe)["input_ids"]
    assert load_causal_lm(str(tmp_path / "model"))[1](probe)["input_ids"] == tok(probe)["input_ids"]
