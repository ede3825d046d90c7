"""Typed experiment configs loaded from YAML, with `--set a.b=value` overrides.

Every section forbids unknown keys so a typo fails loudly, naming the key, the value and the file.
"""

from __future__ import annotations

import copy
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oger.contract.errors import ConfigError
from oger.contract.keys import flat_in_key, inert, not_in_key, omitted_at_default, resolved
from oger.prompt_check import check_instruction


# A user turn: a str.format template that must hold {question} (oger.prompt_check), checked at load.
Instruction = Annotated[str, AfterValidator(check_instruction)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- problems


class FieldMap(Strict):
    """Column names in a local or HF dataset; None means 'use the format's default'."""

    question: str | None = None
    answer: str | None = None
    reference: str | None = None


class SyntheticSource(Strict):
    """The project's own verifiable arithmetic task (deterministic by seed)."""

    kind: Literal["synthetic"]
    name: str = "arith"
    seed: int = 0
    n_train: int = Field(400, ge=0)
    n_test: int = Field(200, ge=0)
    min_operands: int = Field(2, ge=2)
    max_operands: int = Field(3, ge=2)
    max_value: int = Field(20, ge=1)
    ops: str = "+-*"
    smallest_at_most: int | None = Field(None, ge=1, description="only problems with an operand at most "
                                         "this (the explore task, configs/explore.yaml); default: all",
                                  json_schema_extra=omitted_at_default("keys from before the option"))

    sft_split_first_above: int | None = Field(
        None, ge=1, description="problems whose first operand exceeds this get the split 'sft' instead "
        "of train/test: out of the RL pool and the held-out split, seen only by teachers with split: sft "
        "(the explore task: where strategy B cannot fit, yet its additions are learned)",
        json_schema_extra=omitted_at_default("keys from before the option"))

    @model_validator(mode="after")
    def _check(self) -> "SyntheticSource":
        if self.max_operands < self.min_operands:
            raise ValueError("max_operands must be >= min_operands")
        bad = set(self.ops) - set("+-*")
        if not self.ops or bad:
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        return self


class _FileLikeSource(Strict):
    name: str
    format: Literal["auto", "gsm8k", "math", "luffy", "plain"] = "auto"
    fields: FieldMap = FieldMap()
    split: str = Field("train", description="split label written to the problems table")
    limit: int | None = Field(None, ge=1)


class LocalSource(_FileLikeSource):
    """A local jsonl or parquet file; `${OGER_DATA_DIR}` and `~` are expanded."""

    kind: Literal["local"]
    path: str = Field(json_schema_extra=not_in_key("the file's content fingerprint is in the identity: "
                                                   "a moved copy is the same data"))


class HFSource(_FileLikeSource):
    """A Hugging Face dataset by id, read from `OGER_DATA_DIR` when a local copy is laid out there."""

    kind: Literal["hf"]
    dataset: str
    subset: str | None = None
    hf_split: str | None = Field(None, description="dataset split to read; default: `split`")


Source = Annotated[Union[SyntheticSource, LocalSource, HFSource], Field(discriminator="kind")]


class ProblemsConfig(Strict):
    sources: list[Source] = Field(min_length=1)


# --------------------------------------------------------------------------- teachers


class Sampling(Strict):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    seed: int = 0


Backend = Literal["scripted", "transformers", "dataset", "openai", "vllm"]


class TeacherConfig(Strict):
    """One teacher. `model` is a scripted style, a model path/alias, a column, or a served model name."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backend: Backend
    model: str | None = Field(None, json_schema_extra=resolved(
        "a model the backend loads is keyed by its content fingerprint, not its path or alias"))
    n: int = Field(1, ge=1)
    sampling: Sampling = Sampling()
    split: str = "train"
    sources: list[str] | None = Field(None, description="problem source names; default all")
    limit: int | None = Field(None, ge=1, description="first N problems (deterministic)")
    batch_size: int = Field(8, ge=1)
    instruction: Instruction = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"
    system_prompt: str | None = None
    # scripted
    slip_rate: float = Field(0.0, ge=0.0, le=1.0)
    # transformers / vllm
    dtype: Literal["float32", "bfloat16", "float16", "auto", "native"] = Field(
        "float32", description="auto: the checkpoint's; native: bfloat16 where computed natively (NVIDIA GPU, "
        "CPU with AVX512-BF16/AMX), else float32", json_schema_extra=resolved("native is keyed as what it "
                                                                               "resolves to on this machine"))
    engine: Literal["hf", "paged"] = Field("hf", description="transformers backend: padded generate "
                                           "(hf) or continuous batching with paged attention (paged)",
                                           json_schema_extra=omitted_at_default("keys from before the option"))
    tensor_parallel_size: int = Field(1, ge=1)
    # openai: where the served model is and how to talk to it, not what it writes
    base_url: str | None = Field(None, json_schema_extra=not_in_key("the server's address"))
    api_key_env: str | None = Field("OPENAI_API_KEY", json_schema_extra=not_in_key("credentials"))
    max_concurrency: int = Field(4, ge=1, json_schema_extra=not_in_key("requests in flight; each is seeded"))
    request_timeout_s: float = Field(300.0, gt=0, json_schema_extra=not_in_key("a resource bound"))
    # fan-out (runner.kind: ray); not in the key: shards give the same traces as one run
    shards: int = Field(1, ge=1, description="split this teacher's problems into N shards, run "
                        "as separate tasks (in parallel on Ray)",
                        json_schema_extra=not_in_key("shards sample as one run (seeded by position)"))
    num_gpus: float | None = Field(None, ge=0, description="GPUs each shard asks Ray for; default: "
                                   "tensor_parallel_size for vllm, 0 otherwise",
                                   json_schema_extra=not_in_key("a resource request"))
    num_cpus: float = Field(1.0, ge=0, description="CPUs each shard asks Ray for",
                            json_schema_extra=not_in_key("a resource request"))

    @model_validator(mode="after")
    def _check_backend(self) -> "TeacherConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend in ("scripted", "transformers", "openai", "vllm") and not self.model:
            raise ValueError(f"backend {self.backend!r} needs model")
        if self.engine != "hf" and self.backend != "transformers":
            raise ValueError(f"engine {self.engine!r} applies to backend 'transformers' only, "
                             f"not {self.backend!r}")
        return self


class TeachersConfig(Strict):
    round: str = Field("r1", pattern=r"^[A-Za-z0-9_.:-]+$")
    teachers: list[TeacherConfig] = Field(min_length=1)

    @field_validator("round", mode="before")
    @classmethod
    def _round_as_text(cls, v: Any) -> Any:
        # YAML reads `round: 2026-11-27` as a date and `round: 3` as an int: both mean the string.
        return v.isoformat() if isinstance(v, (date, datetime)) else str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _unique(self) -> "TeachersConfig":
        names = [t.name for t in self.teachers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"teacher names must be unique, repeated: {sorted(dup)}")
        return self


# --------------------------------------------------------------------------- filter / index


class FilterConfig(Strict):
    tokenizer: str = Field("smollm2", description="model whose tokenizer measures trace length",
                           json_schema_extra=resolved("keyed by its content fingerprint"))
    min_tokens: int = Field(1, ge=0)
    max_tokens: int = Field(1024, ge=1)
    require_stop: bool = True
    dedupe: bool = True
    max_per_problem_teacher: int | None = Field(None, ge=1)
    verify_timeout_s: float = Field(5.0, gt=0, json_schema_extra=not_in_key("a resource bound"))

    @model_validator(mode="after")
    def _bounds(self) -> "FilterConfig":
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        return self


class IndexConfig(Strict):
    encoder: str = Field("minilm", json_schema_extra=resolved("keyed by its content fingerprint"))
    batch_size: int = Field(64, ge=1, json_schema_extra=not_in_key(
        "batching changes the vectors in the last float32 bits only (|diff| <= 1.2e-7 measured)"))
    long_text: Literal["chunk_mean", "head"] = "chunk_mean"
    table: str = "teacher_traces"
    problems: Literal["all", "train_pool"] = Field(
        "all", description="whose traces to index: all kept traces, or only those of the RL pool "
        "(train.split, first train.max_prompts), the only problems the train stage looks up",
        json_schema_extra=omitted_at_default("keys from before the option; train_pool adds the pool"))
    teachers: list[str] | None = Field(
        None, description="whose traces to index (what divergence is measured against and LUFFY "
        "replaces rollouts with): these teachers' only; default all. A teacher may then train the "
        "policy (policy.sft.teachers) without being a reference (configs/explore.yaml)",
        json_schema_extra=omitted_at_default("keys from before the option"))


# --------------------------------------------------------------------------- policy / train


class TinyPolicy(Strict):
    """A Qwen2-architecture model built from scratch, with a BPE tokenizer trained on the corpus."""

    vocab_size: int = Field(384, ge=300)
    pretokenize: Literal["words", "digits"] = Field(
        "words", description="where BPE may not merge: `words` splits at spaces and punctuation "
        "(GPT-2's regex) and around every digit; `digits` only before every digit (a space and the "
        "digit after it stay one piece), so template phrases become single tokens: the demo's SFT data "
        "in 30% fewer tokens",
        json_schema_extra=omitted_at_default("keys from before the option"))
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=16)
    max_position: int = Field(512, ge=64)
    seed: int = 0


class SFTConfig(Strict):
    """Warm start: supervised fine-tuning on filtered traces of chosen teachers."""

    enabled: bool = True
    teachers: list[str] | None = Field(None, description="teacher names; default all")
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    max_tokens: int = Field(256, ge=8, description="prompt + trace tokens; longer are dropped")
    warmup_steps: int = Field(10, ge=0)
    precision: Literal["float32", "bf16-mixed", "auto"] = Field(
        "float32", description="bf16-mixed: bf16 matmuls, float32 weights and optimizer (autocast); "
        "faster on CPUs with native bf16 (AVX512-BF16/AMX), slower on other CPUs. auto: bf16-mixed "
        "where the CPU has it, else float32 (the key records which)",
        json_schema_extra=resolved("the precision that runs on this machine; float32 (the old "
                                   "behaviour) leaves it out"))
    seed: int = 0


class PolicyConfig(Strict):
    source: Literal["tiny", "model"] = "tiny"
    model: str | None = Field(None, description="HF folder, .gguf file or hub id (source: model)",
                              json_schema_extra=resolved("with source: model, keyed by its content "
                                                         "fingerprint; unused with source: tiny"))
    dtype: Literal["float32", "bfloat16"] = "float32"
    tiny: TinyPolicy = Field(TinyPolicy(), json_schema_extra=inert("unused with source: model"))
    sft: SFTConfig = SFTConfig()
    instruction: Instruction = Field("{question}", description="user turn; the trainer uses the same")
    system_prompt: str | None = None


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

    def inert_fields(self) -> set[str]:
        return {"tiny"} if self.source == "model" else set()


class BonusGuards(Strict):
    """Verdicts that zero the bonus of a degenerate correct rollout (docs/ALGORITHM.md, "Hack-resistant
    bonus"); null disables a bound. Defaults are reconstructions tuned on tests/bonus_cases.py."""

    min_reasoning_words: int = Field(3, ge=0, description="words left once the answer tag is "
                                     "removed; a bare answer has none")
    length_ratio_min: float | None = Field(0.3, ge=0, description="rollout words / median "
                                           "teacher-trace words of the problem, lower bound")
    length_ratio_max: float | None = Field(3.0, gt=0, description="upper bound (padding)")
    language: bool = Field(True, description="same script and (Latin) stop-word language as "
                           "the teacher traces")
    max_repetition: float | None = Field(0.3, ge=0, le=1, description="share of repeated word "
                                         "n-grams above which the bonus is 0")
    repetition_ngram: int = Field(4, ge=1)
    think_format: bool = Field(True, description="no bonus without </think> when the reward "
                               "requires the think format (train.reward_format: think)")
    max_divergence: float | None = Field(0.45, gt=0, le=1, description="off-topic guard: d above "
                                         "this means the reasoning left the problem (padding, "
                                         "essay), bonus 0")


class OgerRewardConfig(Strict):
    """The exploration bonus r = c + lam * c * d * g(H) (DESIGN §4) and how it enters the advantage."""

    lam: float = Field(0.5, ge=0)
    similarity: Literal["max", "mean"] = "max"
    entropy_tokens: int = Field(1, ge=1, description="H over the last m generated tokens")
    modulation: Literal["exp", "linear", "none"] = "exp"
    tau: float = Field(1.0, gt=0)
    embed_text: Literal["reasoning", "full"] = Field(
        "reasoning", description="reasoning: embed rollouts and teacher traces without the answer "
                                 "tag (before </think>, else before the \\boxed sentence); full: "
                                 "the whole text (teacher vectors straight from the index)")
    guards: BonusGuards = BonusGuards()
    baseline: Literal["none", "group"] = Field(
        "none", description="group: centre the bonus over the group's correct on-policy rollouts")
    teacher_rows: Literal["group_mean", "zero"] = Field(
        "group_mean", description="bonus of teacher rows: the group's mean on-policy bonus "
                                  "(neutral: advantage 0 in an all-correct group, as in LUFFY) or 0")
    advantage: Literal["separate", "joint"] = Field(
        "separate", description="separate: A = adv(c) (scaled per scale_rewards) + (b - mean b), "
                                "the bonus on its own scale; joint: adv(c + b), std-scaled together")
    shuffle_bonus: bool = Field(False, description="control arm: permute the step's bonus values "
                                "among the bonus-eligible rollouts (seeded)")
    monitor: bool = Field(True, description="embed and log divergence and every bonus signal even "
                          "when lambda is 0 (grpo/luffy), so divergence has a baseline")


_NO_CLIP = "with one optimizer step per batch the ratio is 1: the clip cannot act"
_SAME_MODEL = "the same model either way (how the update is spread over processes and memory)"


class OptimConfig(Strict):
    """The optimizer and its schedule."""

    lr: float = Field(1e-4, gt=0)
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="sgd (momentum 0.9): steps scale with the gradient, so noisy "
                             "directions of a tiny model drift less than under Adam")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(16, ge=1, json_schema_extra=not_in_key(
        "the loss is normalised over the whole batch: the same gradient, other rounding"))
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="micro-batches of at most this many prompt + response tokens instead of "
        "micro_batch_size samples (verl's dynamic batch size; a longer sample gets one of its own)",
        json_schema_extra=not_in_key("the loss is normalised over the whole batch: the same gradient, "
                                     "other rounding"))
    padding_free: bool = Field(
        False, description="each micro-batch as one packed row (per-sample position ids, attention "
        "kept within each sample) instead of padded rows: no FLOPs on pad tokens",
        json_schema_extra=not_in_key("the same log-probs and gradient, other rounding"))
    share_prompts: bool = Field(
        False, description="run each distinct prompt of a micro-batch once, its KV cache shared by the "
        "group's responses, instead of once per response (padded layout; not with padding_free)",
        json_schema_extra=not_in_key("the same log-probs and gradient, other rounding"))

    @model_validator(mode="after")
    def _one_layout(self):
        if self.share_prompts and self.padding_free:
            raise ValueError("optim.share_prompts and optim.padding_free are two layouts of the update; "
                             "choose one")
        return self


class LossConfig(Strict):
    """The policy-gradient loss: clipping, aggregation, advantage scaling, entropy, KL, shaping."""

    ppo_mini_batches: int = Field(
        1, ge=1, description="optimizer steps per batch (LUFFY/verl: train_batch_size / "
                             "ppo_mini_batch_size): the batch's groups split into this many mini-batches, "
                             "old log-probs computed once before the first; >1 makes clip* act",
        json_schema_extra=inert("1 (the default): keys from before the option"))
    clip: bool = Field(True, json_schema_extra=inert(_NO_CLIP))
    clip_eps_low: float = Field(0.2, ge=0, json_schema_extra=inert(_NO_CLIP))
    clip_eps_high: float = Field(0.2, ge=0, json_schema_extra=inert(_NO_CLIP))
    loss_agg: Literal["token_mean", "seq_mean", "constant_len"] = "token_mean"
    scale_rewards: Literal["group", "none"] = "group"
    entropy_coef: float = 0.0
    entropy_agg: Literal["loss_agg", "token_mean"] = Field(
        "loss_agg", description="how the entropy bonus is averaged: like the loss (loss_agg) or, as "
                                "LUFFY/verl, a token mean per micro-batch (token_mean; micro-batches "
                                "then weigh by their row share under seq_mean / constant_len)")
    beta: float = Field(0.0, ge=0, description="KL to the initial policy (k3)")
    gamma: float = Field(0.1, gt=0, description="policy shaping of teacher rows f(p) = p / (p + gamma)")

    def inert_fields(self) -> set[str]:
        if self.ppo_mini_batches == 1:
            return {"clip", "clip_eps_low", "clip_eps_high", "ppo_mini_batches"}
        return set()


_VLLM_ONLY = "acts with rollout.engine vllm only (and the cap with a correction)"


class RolloutConfig(Strict):
    """How on-policy rollouts are sampled, and by which engine."""

    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_prompts: int = Field(8, ge=1, serialization_alias="rollout_batch_prompts",
                               description="prompts per generation call; each call is seeded by its "
                                           "global index, so results do not depend on num_processes")
    # In the key only when not hf.
    engine: Literal["hf", "paged", "vllm"] = Field(
        "hf", serialization_alias="rollout_engine",
        description="hf: padded transformers generate; paged: transformers continuous "
                    "batching with paged attention (no padding, finished rollouts leave the "
                    "batch; entropies from one extra no-grad forward pass); both sample from the "
                    "module being trained. vllm: an in-process vLLM engine beside it, given the "
                    "weights every sync_every optimizer steps, entropies from one no-grad pass",
        json_schema_extra=omitted_at_default("keys from before the option; paged and vllm sample "
                                             "other random streams"))
    sync_every: int = Field(1, ge=1, description="vllm: optimizer steps between weight pushes (1: "
                            "every rollout comes from the current policy)",
                            json_schema_extra=inert(_VLLM_ONLY))
    correction: Literal["token", "sequence", "none"] = Field(
        "token", description="vllm: truncated importance sampling of the on-policy loss by "
                             "min(pi_train / pi_vllm, correction_cap), per token or per sequence "
                             "(TRL's vllm_importance_sampling_correction, verl's rollout_is)",
        json_schema_extra=inert(_VLLM_ONLY))
    correction_cap: float = Field(3.0, gt=0, description="the cap C (TRL's default)",
                                  json_schema_extra=inert(_VLLM_ONLY))
    kv_cache_gib: float | None = Field(None, gt=0, description="vllm: KV cache size (default on a CPU: "
                                       "1 GiB; on a GPU: vLLM's share of its memory)",
                                       json_schema_extra=not_in_key("a memory bound"))
    sleep: bool = Field(False, description="vllm on a GPU: put the engine to sleep (vLLM's sleep mode, "
                        "level 1: weights offloaded to host memory, KV cache freed) during the "
                        "update and wake it before the next rollouts, so the update has the memory; "
                        "an error where vLLM has no sleep mode (its CPU build)",
                        json_schema_extra=not_in_key("memory only: the weights come back as they were"))

    def inert_fields(self) -> set[str]:
        if self.engine != "vllm":
            return {"sync_every", "correction", "correction_cap"}
        return {"correction_cap"} if self.correction == "none" else set()


class DistributedConfig(Strict):
    """Multi-process training (DDP; FSDP2 on GPU): the same model either way, so not in the key."""

    num_processes: int = Field(1, ge=1, description=">1: launch the trainer on this many ranks")
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl with CUDA, else gloo")
    fsdp: bool = Field(False, description="shard parameters, gradients and optimizer state "
                       "(FSDP2) instead of replicating them (DDP)")
    gradient_checkpointing: bool = False


class TrainLogging(Strict):
    """What a run writes besides the model: checkpoints and per-sample logs."""

    checkpoint_every: int = Field(10, ge=1, description="steps between resumable checkpoints")
    log_rollouts: bool = Field(True, description="write every sample's text, reward and bonus")


# Where the fields of the flat TrainConfig went (its sections came later); see `_moved_fields`.
MOVED_TRAIN_FIELDS = {
    **{f: f"optim.{f}" for f in ("lr", "optimizer", "weight_decay", "warmup_steps", "lr_schedule",
                                 "max_grad_norm", "micro_batch_size", "max_tokens_per_micro_batch",
                                 "padding_free")},
    **{f: f"loss.{f}" for f in ("ppo_mini_batches", "clip", "clip_eps_low", "clip_eps_high", "loss_agg",
                                "scale_rewards", "entropy_coef", "entropy_agg", "beta", "gamma")},
    **{f: f"rollout.{f}" for f in ("max_new_tokens", "temperature", "top_p")},
    "rollout_batch_prompts": "rollout.batch_prompts", "rollout_engine": "rollout.engine",
    **{f: f"distributed.{f}" for f in ("num_processes", "launcher", "backend", "fsdp",
                                       "gradient_checkpointing")},
    **{f: f"logging.{f}" for f in ("checkpoint_every", "log_rollouts")},
}

# The sections keep their fields' flat names in the key: keys from before the sections stay valid.
_FLAT = flat_in_key("keys from before the sections: its fields keep their flat names")


class TrainConfig(Strict):
    algorithm: Literal["grpo", "luffy", "oger"] = "oger"
    steps: int = Field(40, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2)
    replace_k: int = Field(1, ge=0)
    replace_policy: Literal["always", "when_all_fail"] = "always"
    oger: OgerRewardConfig = OgerRewardConfig()
    reward_format: Literal["plain", "think"] = Field(
        "plain", description="think (LUFFY): no </think> -> reward 0; only the text after it is "
                             "verified")
    teacher_think_prefix: Literal["strip", "keep"] = Field(
        "strip", description="strip (LUFFY): a teacher trace starting with '<think>\\n' loses it when "
                             "the prompt already ends with '<think>\\n'")
    split: str = "train"
    max_prompts: int | None = Field(None, ge=1, description="RL prompt pool: the first N problems "
                                    "of the split (a small pool learns visibly faster)")
    seed: int = 0
    init_from: Literal["policy", "previous_round"] = Field(
        "policy", description="policy: start from the policy-stage model; previous_round: continue "
                              "from the latest trained model of an earlier teachers.round in this "
                              "workdir (same policy recipe), the policy model when there is none",
        json_schema_extra=omitted_at_default("keys from before the option; the start checkpoint's "
                                             "key is an input"))
    optim: OptimConfig = Field(OptimConfig(), json_schema_extra=_FLAT)
    loss: LossConfig = Field(LossConfig(), json_schema_extra=_FLAT)
    rollout: RolloutConfig = Field(RolloutConfig(), json_schema_extra=_FLAT)
    distributed: DistributedConfig = Field(DistributedConfig(), json_schema_extra=not_in_key(_SAME_MODEL))
    logging: TrainLogging = Field(TrainLogging(), json_schema_extra=not_in_key(
        "logging; a resumed run continues the same random streams"))

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data):
        """A field from before the sections is an error naming its new place (not a second spelling)."""
        if isinstance(data, dict):
            moved = [
                f"train.{k} is now train.{MOVED_TRAIN_FIELDS[k]}" for k in data if k in MOVED_TRAIN_FIELDS
            ]
            if moved:
                raise ValueError("; ".join(moved))
        return data

    @model_validator(mode="after")
    def _shardable(self) -> "TrainConfig":
        problem = self.sharding_problem(self.prompts_per_step)
        if problem:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}): {problem}")
        if self.distributed.fsdp and self.distributed.num_processes < 2:
            raise ValueError("distributed.fsdp needs distributed.num_processes > 1")
        if self.rollout.sleep and self.rollout.engine != "vllm":
            raise ValueError("rollout.sleep acts on a vLLM engine: set rollout.engine 'vllm' or drop it")
        if self.distributed.fsdp and self.rollout.engine == "paged":
            raise ValueError("rollout.engine 'paged' runs a data-dependent number of forward passes "
                             "per rank, which FSDP's parameter all-gathers cannot follow: use "
                             "rollout.engine 'hf' (synced_gpus) with fsdp, or DDP")
        if self.optim.share_prompts and self.distributed.gradient_checkpointing:
            raise ValueError("optim.share_prompts keeps each prompt's KV cache for its group's rows, "
                             "which gradient checkpointing turns off (use_cache): drop one of them")
        return self

    def sharding_problem(self, prompts: int) -> str | None:
        """Why `prompts` per step cannot be spread over the ranks (None: it can). The one place the
        rule lives: the config checks prompts_per_step, the train stage the pool-capped count."""
        ranks, batch = self.distributed.num_processes, self.rollout.batch_prompts
        if ranks > 1 and prompts % (ranks * batch):
            return (
                f"{prompts} prompts per step is not a multiple of distributed.num_processes x rollout.batch_prompts "
                f"({ranks} x {batch}): every rank rolls out whole "
                f"generation calls, so the result does not depend on the number of processes"
            )
        return None

    @property
    def replaces(self) -> bool:
        return self.algorithm in ("luffy", "oger") and self.replace_k > 0

    @property
    def bonus_lambda(self) -> float:
        return self.oger.lam if self.algorithm == "oger" else 0.0


# --------------------------------------------------------------------------- evaluate

# LUFFY's system prompt, as in its valid.all.parquet (and its `apply_qwen_math_template`).
LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final "
    "solution. This involves analyzing, summarizing, exploring, reassessing, and refining your thought "
    "process through multiple iterations. Structure your response into two sections: Thought and "
    "Solution. In the Thought section, present your reasoning using the format: \"<think>\n {thoughts} "
    "</think>\n\". Each thought should include detailed analysis, brainstorming, verification, and "
    "refinement of ideas. After \"</think>\n,\" in the Solution section, provide the final, logical, and "
    "accurate answer, clearly derived from the exploration in the Thought section. If applicable, "
    "include the answer in \\boxed{} for closed-form results like multiple choices or mathematical "
    "solutions.")
# The LUFFY/OGER protocol samples 32 times on the small competition sets, once elsewhere.
LUFFY_MULTI_SAMPLE = {"aime24": 32, "aime25": 32, "amc": 32}


class BenchmarkSpec(Strict):
    """One benchmark to evaluate; `samples`/`temperature` override the protocol for it."""

    name: str
    limit: int | None = Field(None, ge=1, description="first N problems (deterministic subset)")
    samples: int | None = Field(None, ge=1, description="k samples per problem")
    temperature: float | None = Field(None, ge=0.0)
    max_new_tokens: int | None = Field(None, ge=1, description="generation budget; default: evaluate's")


# Every benchmark `evaluate.benchmarks` may name: "synthetic" (the synthetic task's held-out split)
# and the files of `oger.stages.evaluate.benchmarks.REGISTRY` (tests/test_contract.py keeps them equal;
# listed here so the config does not import the evaluation code).
BENCHMARK_NAMES = ("synthetic", "aime24", "aime25", "amc", "math500", "minerva", "olympiadbench",
                   "gsm8k", "arc_c", "gpqa_diamond", "mmlu_pro")


class HeldoutConfig(Strict):
    """The quick greedy check on the task's held-out split that the policy and train stages report
    (keyed there); the evaluate stage reads only `split`, for the synthetic benchmark."""

    split: str = "test"
    limit: int = Field(200, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(64, ge=1, json_schema_extra=not_in_key(
        "each sample is seeded by its place in the job list, not by its batch"))


class EvaluateConfig(Strict):
    """Benchmarks scored for the policy-stage model ("base") and the trained one."""

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="synthetic")], min_length=1)
    protocol: Literal["luffy", "greedy"] = Field(
        "luffy", description="luffy: T=0.6, top_p=1.0, avg@32 on aime24/aime25/amc, 1 sample "
                             "elsewhere; greedy: T=0, 1 sample")
    engine: Literal["hf", "paged", "vllm"] = Field(
        "hf", description="hf: padded transformers generate; paged: transformers continuous "
                          "batching (paged attention); vllm: the gpu extra")
    max_new_tokens: int = Field(1024, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    prompt: Literal["policy", "luffy"] = Field(
        "policy", description="policy: the policy's instruction and system prompt (as trained); "
                              "luffy: LUFFY's system prompt with the question as the user turn")
    instruction: Instruction | None = Field(None, description="user turn; overrides the prompt preset's")
    backbone: str | None = Field(
        None, description="the backbone whose published results (data/reference/published_results.json) "
                          "the report shows beside ours, e.g. Qwen2.5-Math-7B; default: inferred from "
                          "policy.model. Not part of any stage key",
        json_schema_extra=not_in_key("which published numbers the report shows beside ours"))
    heldout: HeldoutConfig = HeldoutConfig()
    seed: int = 0
    batch_size: int = Field(64, ge=1, json_schema_extra=not_in_key(
        "each sample is seeded by its place in the job list, not by its batch"))
    score_timeout_s: float = Field(5.0, gt=0)
    score_workers: int = Field(2, ge=1, description="math-verify processes",
                               json_schema_extra=not_in_key("processes scoring the same answers"))
    tensor_parallel_size: int = Field(1, ge=1, description="vllm engine", json_schema_extra=not_in_key(
        "how the model is spread over GPUs"))
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm engine",
                                          json_schema_extra=not_in_key("a memory bound"))
    num_gpus: float | None = Field(None, ge=0, description="GPUs each model's job asks Ray for "
                                   "(runner.kind: ray); default: tensor_parallel_size for vllm, 0 for hf",
                                   json_schema_extra=not_in_key("a resource request"))

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _names_as_specs(cls, v):
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _known_unique(self):
        names = [b.name for b in self.benchmarks]
        for i, n in enumerate(names):
            if n not in BENCHMARK_NAMES:
                raise ValueError(f"benchmarks.{i}.name: unknown benchmark {n!r}; known: "
                                 f"{sorted(BENCHMARK_NAMES)}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmarks listed twice: {dup}")
        return self

    def samples_for(self, spec: BenchmarkSpec) -> int:
        if spec.samples:
            return spec.samples
        return LUFFY_MULTI_SAMPLE.get(spec.name, 1) if self.protocol == "luffy" else 1

    def temperature_for(self, spec: BenchmarkSpec) -> float:
        if spec.temperature is not None:
            return spec.temperature
        return 0.6 if self.protocol == "luffy" else 0.0


# --------------------------------------------------------------------------- runner


class RunnerConfig(Strict):
    """Where fan-out stages run their jobs (teacher shards; one evaluation job per model):
    Prefect's default task runner in this process (`local`) or prefect-ray's RayTaskRunner
    (`ray`). Not in any key."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster (e.g. ray://head:10001 or auto); "
                                "none starts a local Ray instance")
    num_cpus: int | None = Field(None, ge=1, description="local Ray instance only")
    num_gpus: int | None = Field(None, ge=0, description="local Ray instance only")


# --------------------------------------------------------------------------- sweep


class SweepConfig(Strict):
    """Arms x seeds (`oger sweep`, flow `oger-sweep`): each arm is a named set of overrides
    (`{"train.oger.lam": 1.0}`) on top of this config; presets grpo, luffy, oger, shuffled-bonus
    and lam-0-monitor are built in (an arm defined here with a preset's name replaces it). Not in
    any stage key: every (arm, seed) is an ordinary train/evaluate artifact."""

    arms: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> {dotted.config.key: value}, e.g. "
        "oger-lam-1.0: {train.algorithm: oger, train.oger.lam: 1.0}")
    default_arms: list[str] = Field(["grpo", "luffy", "oger"], min_length=1,
                                    description="arms when --arms is not given")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds when --seeds is not given")
    baseline: str = Field("luffy", description="arm every other arm is compared with (paired "
                          "differences); when it is not in the sweep, the first arm")
    seed_fields: list[str] = Field(
        ["train.seed", "evaluate.seed"], min_length=1,
        description="config fields a sweep seed sets: RL sampling/order and evaluation sampling. "
                    "Upstream seeds (policy.sft.seed, policy.tiny.seed) stay shared unless added here")
    interval: Literal["bootstrap", "t"] = Field(
        "bootstrap", description="interval the verdicts use: percentile bootstrap over seeds and "
                                 "problems, or Student-t over per-seed means (needs >= 2 seeds)")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(2000, ge=100)
    num_gpus: float | None = Field(None, ge=0, description="GPUs each (arm, seed) job asks Ray for "
                                   "(runner.kind: ray); default: train.distributed.num_processes when "
                                   "train.distributed.backend is nccl, else 0")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each (arm, seed) job asks Ray for")

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict) -> dict:
        for name, overrides in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"arm name {name!r}: use letters, digits, '_', '.', '-'")
            if not isinstance(overrides, dict):
                raise ValueError(f"arm {name!r}: expected a mapping of config keys to values")
            for key in overrides:
                if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                    raise ValueError(f"arm {name!r}: {key!r} is not a dotted config key")
                if key.split(".")[0] == "sweep":
                    raise ValueError(f"arm {name!r}: an arm cannot change the sweep section ({key})")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "SweepConfig":
        for what, items in (("seeds", self.seeds), ("default_arms", self.default_arms)):
            dup = sorted({x for x in items if items.count(x) > 1})
            if dup:
                raise ValueError(f"{what} listed twice: {dup}")
        return self


# --------------------------------------------------------------------------- top level


class RetentionConfig(Strict):
    """What `oger gc` keeps (and the nightly deployment applies after each round): never in a key."""

    keep_rounds: int = Field(3, ge=1, description="the last N rounds keep their artifacts (by their latest "
                             "completed run) and stay cached")
    keep_runs: int = Field(10, ge=1, description="the last M run folders (older ones: summary archived)")
    keep_checkpoints: bool = Field(False, description="keep the resumable checkpoints of finished train "
                                   "stages of kept rounds (they are only needed by an unfinished one)")
    fail_on_regression: bool = Field(False, description="fail the run (after its stages are recorded and "
                                     "cached) when its round's trained score fell below the previous "
                                     "round's beyond the interval (`oger rounds`); off: a warning only")


class OgerConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", json_schema_extra=not_in_key(
        "a label: the default workdir, run names, plot titles"))
    workdir: str = Field("work/{name}", json_schema_extra=not_in_key("where artifacts are kept"))
    problems: ProblemsConfig
    teachers: TeachersConfig
    filter: FilterConfig = FilterConfig()
    index: IndexConfig = IndexConfig()
    policy: PolicyConfig = PolicyConfig()
    train: TrainConfig = TrainConfig()
    runner: RunnerConfig = Field(RunnerConfig(), json_schema_extra=not_in_key(
        "where fan-out jobs run; every job is seeded by its place, not by its worker"))
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)  # lazy: validates against the registry
    lock_timeout_s: float = Field(600.0, ge=0, description="a run that finds its workdir held by "
                                  "another run waits this long for it, then fails naming the holder "
                                  "(0: fail at once); `oger run --lock-timeout` overrides it",
                                  json_schema_extra=not_in_key("how long a run waits for another"))
    retention: RetentionConfig = Field(RetentionConfig(), json_schema_extra=not_in_key(
        "what gc keeps: no stage's output"))
    sweep: SweepConfig = Field(SweepConfig(), json_schema_extra=not_in_key(
        "a sweep's arms and seeds become ordinary stage configs, keyed as such"))

    # Set by the loader, not by YAML.
    source_file: str | None = Field(None, exclude=True, json_schema_extra=not_in_key("where the YAML was read"))

    @model_validator(mode="after")
    def _teacher_names(self) -> "OgerConfig":
        """A teacher named in index.teachers or policy.sft.teachers is one of teachers.teachers (a typo
        would silently index or train on nothing of it)."""
        names = {t.name for t in self.teachers.teachers}
        for where, listed in (("index.teachers", self.index.teachers), ("policy.sft.teachers",
                                                                         self.policy.sft.teachers)):
            unknown = sorted(set(listed or ()) - names)
            if unknown:
                raise ValueError(f"{where}: no teacher named {unknown}; teachers: {sorted(names)}")
        return self

    @property
    def workdir_path(self) -> Path:
        return Path(os.path.expanduser(self.workdir.format(name=self.name))).resolve()


# --------------------------------------------------------------------------- loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.0.c=value`; the value is parsed as a YAML scalar (so 3 is int, true is bool)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any, item: str) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not an index of a "
                                  f"list of {len(node)}")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])} is a value, not a section")


def _format_validation_error(exc: ValidationError, data: dict, where: str) -> str:
    lines = [f"{where}: invalid config"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # Pydantic puts union tags in loc (e.g. sources.0.synthetic.n_tain); drop them.
        loc = ".".join(p for p in loc.split(".") if p not in ("synthetic", "local", "hf"))
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> OgerConfig:
    """Read YAML, apply `--set` overrides, validate; errors name the key, value and file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item)
    where = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    try:
        cfg = OgerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, data, where)) from None
    cfg.source_file = str(path.resolve())
    return cfg


def expand_path(p: str) -> Path:
    """Expand `~` and environment variables; an unset variable is an error, not an empty string."""
    expanded = os.path.expandvars(os.path.expanduser(p))
    if "$" in expanded:
        raise ConfigError(f"path {p!r} uses an unset environment variable (e.g. OGER_DATA_DIR)")
    return Path(expanded)
