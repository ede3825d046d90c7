"""Checks that a prompt format can do what the config asks, before a model runs on it.

Why: a prompt that cannot work does not fail, it trains nothing. An instruction without `{question}`
asks every problem the same thing; `\\boxed{}` written with single braces is read as a format field
and fails deep inside a rollout; a tokenizer with no chat template, or one whose template drops a
system turn, gives prompts the model never saw; a tokenizer with no end-of-sequence token lets every
rollout run to the budget. LUFFY's users met these as "reward stuck at 0" (its issue #43); here each
is an error naming the field and the model, raised at config load (the instruction) or when the
policy's tokenizer is loaded (the rest).
"""

from __future__ import annotations

from oger.contract.errors import ConfigError

PROBE = "Compute 40 + 2."  # a question whose text survives any template


def check_instruction(instruction: str) -> str:
    """The instruction as given, if `.format(question=...)` renders and puts the question in it."""
    try:
        rendered = instruction.format(question="\x00")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{instruction!r} is a str.format template with `{{question}}` as its only field; "
            f"write literal braces doubled, e.g. \\boxed{{{{}}}} ({type(exc).__name__}: {exc})"
        ) from None
    if "\x00" not in rendered:
        raise ValueError(f"{instruction!r} has no {{question}}: it is where each problem goes")
    return instruction


def check_chat_format(tokenizer, instruction: str, system_prompt: str | None, model: str, field: str) -> None:
    """Render one probe question through the tokenizer's chat template as every stage does, and fail
    with the field (`<field>.instruction`, ...: the config section asking) and the model named where
    the template or tokenizer cannot carry it."""
    from oger.generation.base import chat_messages

    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"{field}.model {model!r}: its tokenizer has no chat template; prompts are "
            f"rendered as chat turns (set one in the model folder's tokenizer_config.json)"
        )
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"{field}.model {model!r}: its tokenizer has no end-of-sequence token, so no rollout "
            f"can stop before the token budget"
        )
    messages = chat_messages(PROBE, instruction, system_prompt)
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # templates raise their own errors (e.g. "System role not supported")
        what = f"{field}.system_prompt" if system_prompt else f"{field}.instruction"
        raise ConfigError(
            f"{what}: the chat template of {model!r} cannot render the prompt ({type(exc).__name__}: {exc})"
        ) from None
    if PROBE not in text:
        raise ConfigError(f"{field}.instruction: the chat template of {model!r} drops the user turn's text")
    if system_prompt and system_prompt.strip() not in text:
        raise ConfigError(f"{field}.system_prompt: the chat template of {model!r} drops the system turn")
