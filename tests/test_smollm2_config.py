"""configs/smollm2-arith.yaml: the policy, the prompt as SmolLM2's chat template renders it, and the reward
on hand-written completions (correct, wrong, truncated, no answer); the prompt checks that stop a config
which cannot work (oger.prompt_check)."""

import pytest

from oger.contract.config import load_config
from oger.contract.errors import ConfigError
from oger.prompt_check import check_chat_format
from oger.stages.train.reward import is_correct

CONFIG = "configs/smollm2-arith.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from oger.models import materialize_gguf

    return AutoTokenizer.from_pretrained(materialize_gguf("smollm2"))


def test_config_trains_smollm2_from_its_package_without_sft(cfg):
    assert cfg.policy.source == "model" and cfg.policy.model == "smollm2" and not cfg.policy.sft.enabled
    assert cfg.train.rollout.engine == "hf"
    assert set(cfg.sweep.default_arms) == {"grpo", "luffy", "oger"}


def test_prompt_renders_through_smollm2_chat_template(cfg, smollm2_tokenizer):
    from oger.generation.hf import chat_prompt_ids

    tok = smollm2_tokenizer
    check_chat_format(tok, cfg.policy.instruction, cfg.policy.system_prompt, cfg.policy.model, "policy")
    text = tok.decode(chat_prompt_ids(tok, "Compute 13 + 12.", cfg.policy.instruction, cfg.policy.system_prompt))
    # the worked example with its literal \boxed{5} (braces doubled in the YAML), then the question, then the
    # open assistant turn the model completes
    assert "Solution: 2 + 3 = 5. The final answer is \\boxed{5}." in text
    assert "ending with the final answer in \\boxed{}.\nCompute 13 + 12.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "completion, correct",
    [
        ("13 + 12 = 25. The final answer is \\boxed{25}.", True),  # the example's format
        ("Compute 13 + 12 = 25. The final answer is \\boxed{25}.", True),  # what SmolLM2 often writes
        ("13 + 12 = 24. The final answer is \\boxed{24}.", False),  # wrong
        ("13 + 12 = 25. The final answer is \\boxed{2", False),  # cut by the token budget inside the box
        ("To add 13 and 12 we first add the tens, 10 + 10 = 20, then the ones, 3 + 2 =", False),  # truncated
        ("13 + 12 = 25. The final answer is 25.", False),  # no \boxed: the verifier reads none
    ],
)
def test_reward_on_hand_written_completions(cfg, completion, correct):
    assert is_correct(completion, "25", cfg.train.reward_format) is correct


def test_instruction_that_cannot_carry_the_question_fails_at_load():
    with pytest.raises(ConfigError, match=r"policy.instruction.*has no \{question\}"):
        load_config(CONFIG, ["policy.instruction='Add the numbers.'"])
    with pytest.raises(ConfigError, match=r"policy.instruction.*braces doubled"):
        load_config(CONFIG, ["policy.instruction='Put it in \\boxed{}: {question}'"])
    with pytest.raises(ConfigError, match=r"teachers.teachers.0.instruction"):
        load_config(CONFIG, ["teachers.teachers.0.instruction='{q}'"])


class _Tok:
    """A tokenizer stand-in for the template cases transformers' own tokenizers do not ship with."""

    def __init__(self, template, eos=2, render=None):
        self.chat_template, self.eos_token_id, self._render = template, eos, render

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return self._render(messages)


def test_templates_and_tokenizers_that_cannot_do_what_the_config_asks(smollm2_tokenizer):
    import copy

    no_template = copy.copy(smollm2_tokenizer)
    no_template.chat_template = None
    with pytest.raises(ConfigError, match="policy.model 'm': its tokenizer has no chat template"):
        check_chat_format(no_template, "{question}", None, "m", "policy")
    with pytest.raises(ConfigError, match="no end-of-sequence token"):
        check_chat_format(_Tok("t", eos=None), "{question}", None, "m", "policy")

    def no_system(messages):  # as Gemma's template does
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return "".join(m["content"] for m in messages)

    with pytest.raises(ConfigError, match=r"policy.system_prompt: .*System role not supported"):
        check_chat_format(_Tok("t", render=no_system), "{question}", "Be brief.", "m", "policy")
    check_chat_format(_Tok("t", render=no_system), "{question}", None, "m", "policy")  # without one it renders
    with pytest.raises(ConfigError, match="drops the system turn"):
        check_chat_format(_Tok("t", render=lambda ms: ms[-1]["content"]), "{question}", "Be brief.", "m", "policy")
    with pytest.raises(ConfigError, match="drops the user turn"):
        check_chat_format(_Tok("t", render=lambda ms: "<user>"), "{question}", None, "m", "policy")


def test_trl_learning_bench_gives_trl_our_reward_and_our_prompt_tokens(cfg, smollm2_tokenizer):
    """bench trl_learning compares trainers, not rewards or prompts: TRL's reward function is our verdict,
    and TRL's rendering of each prompt is the token ids our rollouts start from (the bench stops if not)."""
    from types import SimpleNamespace

    from bench.trl_learning import reward_function, trl_dataset

    reward = reward_function(cfg.train.reward_format)
    completions = [
        [{"role": "assistant", "content": c}]
        for c in ("13 + 12 = 25. The final answer is \\boxed{25}.", "The final answer is \\boxed{24}.", "13 + 12 =")
    ]
    assert reward(completions, answer=["25", "25", "25"], prompts=None) == [1.0, 0.0, 0.0]
    inputs = SimpleNamespace(
        problem_ids=["a", "b"],
        questions={"a": "Compute 1 + 2.", "b": "Compute 13 + 12."},
        answers={"a": "3", "b": "25"},
        instruction=cfg.policy.instruction,
        system_prompt=cfg.policy.system_prompt,
    )
    ds = trl_dataset(inputs, smollm2_tokenizer)
    assert ds["answer"] == ["3", "25"] and ds[1]["prompt"][-1]["content"].endswith("Compute 13 + 12.")
    with pytest.raises(AssertionError, match="problem a"):  # a system prompt only TRL's rows carried
        trl_dataset(
            SimpleNamespace(**{**vars(inputs), "system_prompt": None}), _TemplateWithSystem(smollm2_tokenizer, "x")
        )


class _TemplateWithSystem:
    """A tokenizer whose batched chat rendering (the one TRL calls) adds a system turn ours does not."""

    def __init__(self, tok, system):
        self.tok, self.system = tok, system

    def apply_chat_template(self, conversations, **kw):
        if isinstance(conversations[0], dict):  # one conversation: how ours renders
            return self.tok.apply_chat_template(conversations, **kw)
        return self.tok.apply_chat_template(
            [[{"role": "system", "content": self.system}, *c] for c in conversations], **kw
        )

    def __call__(self, *a, **kw):
        return self.tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)
