"""The policy stage's section: the model to start from (a tiny one built here, or a given one) and its
SFT warm start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from oger.contract.config.base import Instruction, Strict
from oger.contract.keys import inert, omitted_at_default, resolved


class TinyPolicy(Strict):
    """A Qwen2-architecture model built from scratch, with a BPE tokenizer trained on the corpus."""

    vocab_size: int = Field(
        384, ge=300, description="size of the BPE vocabulary trained on the problems and kept traces"
    )
    pretokenize: Literal["words", "digits"] = Field(
        "words",
        description="where BPE may not merge: `words` splits at spaces and punctuation "
        "(GPT-2's regex) and around every digit; `digits` only before every digit (a space and the "
        "digit after it stay one piece), so template phrases become single tokens: the demo's SFT data "
        "in 30% fewer tokens",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
    hidden_size: int = Field(128, ge=16, description="width of the model (embedding and residual stream)")
    num_layers: int = Field(4, ge=1, description="transformer layers")
    num_heads: int = Field(
        4, ge=1, description="attention heads per layer (hidden_size a multiple of it; half as many key-value heads)"
    )
    intermediate_size: int = Field(384, ge=16, description="width of each layer's MLP")
    max_position: int = Field(
        512, ge=64, description="the model's context in tokens: prompt plus response must fit in it"
    )
    seed: int = Field(0, description="seed of the random initial weights")


class SFTConfig(Strict):
    """Warm start: supervised fine-tuning on filtered traces of chosen teachers."""

    enabled: bool = Field(True, description="false: RL starts from the model as built or loaded, without SFT")
    teachers: list[str] | None = Field(None, description="teacher names; default all")
    epochs: float = Field(2.0, gt=0, description="passes over the SFT examples (fractions allowed)")
    lr: float = Field(
        2e-3,
        gt=0,
        description="AdamW's peak learning rate (linear warmup, then cosine decay to 0 over the epochs); the "
        "default is for the tiny model built from scratch",
    )
    batch_size: int = Field(32, ge=1, description="examples per optimizer step")
    max_tokens: int = Field(256, ge=8, description="prompt + trace tokens; longer are dropped")
    warmup_steps: int = Field(10, ge=0, description="optimizer steps of linear learning-rate warmup")
    precision: Literal["float32", "bf16-mixed", "auto"] = Field(
        "float32",
        description="bf16-mixed: bf16 matmuls, float32 weights and optimizer (autocast); "
        "faster on CPUs with native bf16 (AVX512-BF16/AMX), slower on other CPUs. auto: bf16-mixed "
        "where the CPU has it, else float32 (the key records which)",
        json_schema_extra=resolved(
            "the precision that runs on this machine; float32 (the old behaviour) leaves it out"
        ),
    )
    seed: int = Field(0, description="seed of the order the examples are drawn in")


class PolicyConfig(Strict):
    source: Literal["tiny", "model"] = Field(
        "tiny",
        description="tiny: a small Qwen2-architecture model built here from `tiny`, with its own tokenizer; model: "
        "a given model (`model`)",
    )
    model: str | None = Field(
        None,
        description="HF folder, .gguf file or hub id (source: model)",
        json_schema_extra=resolved("with source: model, keyed by its content fingerprint; unused with source: tiny"),
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype the policy's weights are loaded in: a given model here, the policy artifact in the "
        "train and evaluate stages (and evaluate's vLLM engine); bfloat16 halves the weights' memory",
    )
    max_position_embeddings: int | None = Field(
        None,
        ge=1,
        description="the policy's context in positions, set in its config before the model is built and "
        "saved in the policy artifact's config.json, so train, evaluate and vLLM read it too: for a budget "
        "past the model's own context (Qwen2.5-Math has 4096; LUFFY's 7B base was raised to 16384 with "
        "rope_theta 40000). Default: the model's own (tiny: tiny.max_position)",
        json_schema_extra=omitted_at_default("keys from before the option; unset keeps the model's own"),
    )
    rope_theta: float | None = Field(
        None,
        gt=0,
        description="the rotary embedding's base frequency, set like max_position_embeddings (transformers 5 "
        "keeps it in rope_parameters); a larger base stretches the positions the model was trained on over a "
        "longer context. Default: the model's own",
        json_schema_extra=omitted_at_default("keys from before the option; unset keeps the model's own"),
    )
    tiny: TinyPolicy = Field(
        TinyPolicy(),
        description="the model built with source: tiny",
        json_schema_extra=inert("unused with source: model"),
    )
    sft: SFTConfig = Field(SFTConfig(), description="the SFT warm start on kept teacher traces")
    instruction: Instruction = Field("{question}", description="user turn; the trainer uses the same")
    system_prompt: str | None = Field(
        None,
        description="system message before the user turn, in SFT, RL and (evaluate.prompt: policy) evaluation alike; "
        "default: none",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data):
        """The quick held-out check's settings moved to `evaluate.heldout`: an error naming the place."""
        if isinstance(data, dict):
            moved = [
                f"policy.{k} is now evaluate.heldout.{k.removeprefix('eval_')}"
                for k in data
                if k in ("eval_split", "eval_limit", "eval_max_new_tokens", "eval_batch_size")
            ]
            if moved:
                raise ValueError("; ".join(moved))
        return data

    @model_validator(mode="after")
    def _check(self) -> "PolicyConfig":
        if self.source == "model" and not self.model:
            raise ValueError("policy.source 'model' needs policy.model")
        return self

    def config_overrides(self) -> dict:
        """The model-config values this section sets, by their transformers names ({} when none): what
        the policy stage writes into the model it builds, and what a check of the context reads."""
        out = {"max_position_embeddings": self.max_position_embeddings, "rope_theta": self.rope_theta}
        return {k: v for k, v in out.items() if v is not None}

    def inert_fields(self) -> set[str]:
        return {"tiny"} if self.source == "model" else set()
