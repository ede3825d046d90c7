"""policy stage: the initial policy as an HF folder, optionally warm-started by SFT on traces.

Sources: a local HF folder or hub id, a GGUF file (dequantised, quantizer dropped, architectures
set), or a tiny Qwen2 model with a BPE tokenizer trained on the task corpus (problem texts and
filtered traces). The output folder loads with `AutoModelForCausalLM.from_pretrained` (and vLLM).
"""

from __future__ import annotations

import time

import polars as pl

from oger.contract import Budget, ModelUse, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef
from oger.contract.config import HeldoutConfig, PolicyConfig
from oger.contract.errors import StageError
from oger.contract.keys import key_dump
from oger.generation.heldout import engine_label as heldout_engine_label
from oger.models import key_model_ref, load_causal_lm, model_identity
from oger.prompt_check import check_chat_format
from oger.runtime.precision import resolve as resolve_precision
from oger.stages.filter.files import read_kept
from oger.stages.policy import STAGE
from oger.stages.policy.files import FILES, MODEL_DIR
from oger.stages.policy.tiny_model import build_model, save_policy, train_tokenizer
from oger.stages.problems.files import read_problems

STAGE_VERSION = 4  # 2: SFT without the padding mask, foreach AdamW; 3: batch parts on threads;
# 4: parts of similar length (same math, other rounding)


def key_inputs(cfg: PolicyConfig, heldout: HeldoutConfig) -> tuple[dict, dict]:
    slice_ = key_dump(cfg)
    # The held-out check's settings under the names they had in the policy section (same keys).
    slice_.update({f"eval_{k}": v for k, v in key_dump(heldout).items()})
    precision = resolve_precision(cfg.sft.precision)  # what runs on this machine
    if precision != "float32":  # float32 is left out: the keys from before the option stay
        slice_["sft"]["precision"] = precision
    if cfg.source == "tiny":
        identity = {"tiny": True}
    else:
        slice_["model"] = key_model_ref(cfg.model)
        identity = {"model": model_identity(cfg.model)}
    return slice_, identity


def _load_base(cfg: PolicyConfig, corpus: list[str]):
    """The policy before SFT, its context as the section overrides it (the artifact's config.json then
    carries the override to every later stage)."""
    overrides = cfg.config_overrides()
    if cfg.source == "tiny":
        t = cfg.tiny
        tokenizer = train_tokenizer(corpus, t.vocab_size, t.pretokenize)
        model = build_model(
            tokenizer, t.hidden_size, t.num_layers, t.num_heads, t.intermediate_size, t.max_position, t.seed, overrides
        )
        return model, tokenizer
    return load_causal_lm(cfg.model, cfg.dtype, overrides)


def sft_examples(tokenizer, cfg: PolicyConfig, traces: pl.DataFrame, questions: dict[str, str]):
    """(prompt ids, response ids + eos) per kept trace of the chosen teachers, within max_tokens."""
    from oger.generation.hf import chat_prompt_ids  # imports torch

    if cfg.sft.teachers:
        traces = traces.filter(pl.col("teacher").is_in(cfg.sft.teachers))
    out, dropped = [], 0
    for row in traces.iter_rows(named=True):
        p = chat_prompt_ids(tokenizer, questions[row["problem_id"]], cfg.instruction, cfg.system_prompt)
        r = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(p) + len(r) > cfg.sft.max_tokens:
            dropped += 1
            continue
        out.append((p, r))
    return out, dropped


def run_policy(
    cfg: PolicyConfig,
    heldout_cfg: HeldoutConfig,
    ctx: StageContext,
    problems_ref: ArtifactRef,
    filter_ref: ArtifactRef,
    gpu_memory_utilization: float = 0.85,
) -> ArtifactRef:
    """The base model (SFT-trained when `sft.enabled`), saved, and its held-out greedy accuracy, checked
    through `heldout_cfg.engine` on the saved folder (`generation.heldout`; `gpu_memory_utilization`:
    the vLLM check's share of the GPU, `evaluate.gpu_memory_utilization`)."""
    from tqdm.auto import tqdm

    from oger.generation.heldout import heldout_accuracy  # imports torch

    problems = read_problems(problems_ref)
    traces = read_kept(filter_ref)
    corpus = problems["question"].to_list() + traces["text"].to_list()
    model, tokenizer = _load_base(cfg, corpus)
    label = cfg.model if cfg.source == "model" else "tiny"  # policy.model is not read (nor keyed) for tiny
    check_chat_format(tokenizer, cfg.instruction, cfg.system_prompt, label, STAGE)  # before any step
    questions = dict(zip(problems["problem_id"].to_list(), problems["question"].to_list()))
    heldout = problems.filter(pl.col("split") == heldout_cfg.split).head(heldout_cfg.limit)
    metrics: dict = {
        "source": cfg.source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
    }
    if cfg.sft.enabled:
        examples, dropped = sft_examples(tokenizer, cfg, traces, questions)
        if not examples:
            raise StageError(
                f"policy stage: no SFT example fits sft.max_tokens={cfg.sft.max_tokens} "
                f"for teachers {cfg.sft.teachers or 'all'}"
            )
        from oger.stages.policy.sft import sft  # imports torch

        precision = resolve_precision(cfg.sft.precision)  # as keyed
        started = time.time()
        bar = tqdm(desc="policy: sft", unit="step")
        losses = sft(
            model,
            examples,
            pad_id=tokenizer.pad_token_id,
            epochs=cfg.sft.epochs,
            lr=cfg.sft.lr,
            batch_size=cfg.sft.batch_size,
            warmup_steps=cfg.sft.warmup_steps,
            seed=cfg.sft.seed,
            precision=precision,
            progress=lambda loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
        )
        bar.close()
        metrics.update(
            sft_examples=len(examples),
            sft_dropped_long=dropped,
            sft_steps=len(losses),
            sft_loss_first=round(losses[0], 4),
            sft_loss_last=round(losses[-1], 4),
            sft_seconds=round(time.time() - started, 1),
            sft_precision=precision,
        )
    with ctx.output() as out:
        save_policy(model, tokenizer, out.tmp / MODEL_DIR)
        if heldout.height:  # after the save: a vLLM check loads the saved folder
            metrics["heldout_accuracy"] = round(
                heldout_accuracy(
                    heldout_cfg.engine,
                    model,
                    tokenizer,
                    out.tmp / MODEL_DIR,
                    heldout["question"].to_list(),
                    heldout["answer"].to_list(),
                    instruction=cfg.instruction,
                    system_prompt=cfg.system_prompt,
                    max_new_tokens=heldout_cfg.max_new_tokens,
                    batch_size=heldout_cfg.batch_size,
                    dtype=cfg.dtype,
                    gpu_memory_utilization=gpu_memory_utilization,
                ),
                4,
            )
            metrics["heldout_n"] = heldout.height
        out.metrics = metrics
    return ctx.ref(out)


def plan_info(cfg, counts):
    """`oger plan`: base model, SFT warm start and the held-out greedy evaluation."""
    p = cfg.policy
    base = "tiny Qwen2 + BPE tokenizer" if p.source == "tiny" else f"transformers {p.model} ({p.dtype})"
    if p.config_overrides():
        base += "; config " + ", ".join(f"{k} {v:g}" for k, v in p.config_overrides().items())
    notes = []
    if p.sft.enabled:
        notes.append(
            f"SFT {p.sft.epochs:g} epochs on filtered traces of "
            f"{', '.join(p.sft.teachers) if p.sft.teachers else 'all teachers'}"
        )
    h = cfg.evaluate.heldout
    heldout = counts.count(h.split, limit=h.limit)
    return StageInfo(
        engine=base + ("; SFT (torch)" if p.sft.enabled else "") + f"; held-out check: {heldout_engine_label(cfg)}",
        resources="1 process" + (", 1 GPU for the held-out check" if h.engine == "vllm" else ""),
        budget=[Budget("held-out eval (greedy)", heldout, 1, h.max_new_tokens)],
        notes=notes,
    )


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems", "filter"),
    files=FILES,
    key_inputs=lambda cfg: key_inputs(cfg.policy, cfg.evaluate.heldout),
    run=lambda ctx, inputs: run_policy(
        ctx.cfg.policy,
        ctx.cfg.evaluate.heldout,
        ctx,
        inputs["problems"],
        inputs["filter"],
        ctx.cfg.evaluate.gpu_memory_utilization,
    ),
    plan_info=plan_info,
    models=lambda cfg: [ModelUse("policy.model", cfg.policy.model)] if cfg.policy.source == "model" else [],
)
