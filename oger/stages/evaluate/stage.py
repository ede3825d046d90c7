"""evaluate stage: the policy-stage model ("base") and the trained model on the configured benchmarks.

Per benchmark and model, k samples per problem under the protocol (LUFFY/OGER: T=0.6, top_p=1,
avg@32 on AIME24/25 and AMC, one sample elsewhere; or greedy), scored with math-verify, summarised
as avg@k, unbiased pass@k and maj@k. Each (model, benchmark) result file is cached under
`<workdir>/cache/evaluate/`, keyed by the model's artifact key and everything that changes its
samples: a new training run re-evaluates only the trained model, and an interrupted stage resumes
at the first missing result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from oger import seeds
from oger.contract import Budget, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, atomic_write, cache_root, canonical_json, file_fingerprint
from oger.contract.config import LUFFY_SYSTEM_PROMPT, BenchmarkSpec, EvaluateConfig, OgerConfig
from oger.contract.errors import StageError
from oger.contract.fanout import Job, run_in_process
from oger.generation.base import Request, generate_sorted
from oger.generation.engines import fit_prompt, make_engine
from oger.published import comparison_markdown, published_for_run
from oger.sample_metrics import benchmark_scores
from oger.stages.evaluate import STAGE
from oger.stages.evaluate.benchmarks import REGISTRY, SYNTHETIC, benchmark_path, load_benchmark, local_benchmark_size
from oger.stages.evaluate.files import BENCHMARK_GROUPS, FILES, SAMPLE_SCHEMA, SAMPLES_FILE, SCORES_FILE, SCORES_PNG
from oger.stages.evaluate.scoring import Scorer
from oger.stages.policy.files import model_dir as policy_model_dir
from oger.stages.problems.files import read_problems
from oger.stages.train.files import model_dir as trained_model_dir

STAGE_VERSION = 2  # 2: per-sample seeds independent of evaluate.batch_size (and the RowSampler)
MODELS = ("base", "trained")
MODEL_DIRS = {"base": policy_model_dir, "trained": trained_model_dir}  # per model: its artifact's reader


def prompt_format(cfg: OgerConfig) -> tuple[str, str | None]:
    """(instruction, system prompt) the evaluation asks with."""
    e = cfg.evaluate
    if e.prompt == "luffy":
        return e.instruction or "{question}", LUFFY_SYSTEM_PROMPT
    return e.instruction or cfg.policy.instruction, cfg.policy.system_prompt


def sampling_setup(e: EvaluateConfig, spec: BenchmarkSpec) -> dict:
    """What decides one (model, benchmark) result's samples, besides the model itself."""
    return {
        "benchmark": spec.name,
        "limit": spec.limit,
        "k": e.samples_for(spec),
        "temperature": e.temperature_for(spec),
        "top_p": e.top_p,
        "max_new_tokens": spec.max_new_tokens or e.max_new_tokens,
        "seed": e.seed,
        "engine": e.engine,
        # vllm draws each sample with its own seed since the engines share one interface (before:
        # one seed per call); the other engines' keys stay as they were.
        **({"seeding": "per_sample"} if e.engine == "vllm" else {}),
    }


def _data_identity(name: str) -> str:
    if name == SYNTHETIC:
        return "problems-stage"  # the problems key is an upstream key already
    path = benchmark_path(name)
    return file_fingerprint(path) if path is not None else "missing"


def key_inputs(cfg: OgerConfig) -> tuple[dict, dict]:
    e = cfg.evaluate
    instruction, system = prompt_format(cfg)
    # "plans": the field's name since version 1 (renaming it would change every evaluate key)
    slice_ = {
        "plans": [sampling_setup(e, s) for s in e.benchmarks],
        "prompt": {"instruction": instruction, "system": system},
        "score_timeout_s": e.score_timeout_s,
        "heldout_split": cfg.evaluate.heldout.split,
    }
    identity = {"data": {s.name: _data_identity(s.name) for s in e.benchmarks}}
    return slice_, identity


def benchmark_rows(cfg: OgerConfig, spec: BenchmarkSpec, problems: pl.DataFrame) -> pl.DataFrame:
    """{problem_id, question, answer} of one benchmark, first `limit` rows."""
    if spec.name != SYNTHETIC:
        return load_benchmark(spec.name, spec.limit)
    synthetic = [s.name for s in cfg.problems.sources if s.kind == "synthetic"]
    rows = problems.filter(pl.col("source").is_in(synthetic) & (pl.col("split") == cfg.evaluate.heldout.split))
    if rows.height == 0:
        raise StageError(
            f"evaluate: benchmark 'synthetic' needs a synthetic problem source with a "
            f"{cfg.evaluate.heldout.split!r} split (evaluate.heldout.split); sources: "
            f"{[s.name for s in cfg.problems.sources]}"
        )
    rows = rows.select("problem_id", "question", "answer")
    return rows.head(spec.limit) if spec.limit else rows


def _result_path(workdir: Path, model_key: str, setup: dict, prompt: tuple, data_id: str) -> Path:
    h = hashlib.sha256(
        canonical_json({"v": STAGE_VERSION, "plan": setup, "prompt": list(prompt), "data": data_id}).encode()
    ).hexdigest()[:16]
    return cache_root(workdir, STAGE) / model_key[:16] / f"{setup['benchmark']}-{h}.parquet"


def sample_benchmark(
    engine, tokenizer, rows: pl.DataFrame, setup: dict, prompt: tuple[str, str | None], model: str, scorer
) -> pl.DataFrame:
    """k completions per problem, scored; one row per sample."""
    from tqdm.auto import tqdm

    from oger.generation.hf import chat_prompt_ids  # imports torch

    instruction, system = prompt
    prompts, cut = [], []
    for q in rows["question"].to_list():
        ids, was_cut = fit_prompt(
            chat_prompt_ids(tokenizer, q, instruction, system), engine.context, setup["max_new_tokens"]
        )
        prompts.append(ids)
        cut.append(was_cut)
    k = setup["k"]
    bar = tqdm(total=len(prompts) * k, desc=f"eval {model} {setup['benchmark']}", unit="sample")
    request = Request(
        n=k,
        temperature=setup["temperature"],
        top_p=setup["top_p"],
        max_new_tokens=setup["max_new_tokens"],
        seed=seeds.for_step(setup["seed"], 0),
    )
    comps = generate_sorted(engine, prompts, request, progress=bar.update)
    bar.close()
    golds = rows["answer"].to_list()
    scores = scorer.score(
        [c.text for c in comps], [golds[c.prompt_index] for c in comps], desc=f"score {model} {setup['benchmark']}"
    )
    pids = rows["problem_id"].to_list()
    return pl.DataFrame(
        [
            {
                "benchmark": setup["benchmark"],
                "model": model,
                "problem_id": pids[c.prompt_index],
                "sample_index": c.sample_index,
                "response": c.text,
                "extracted_answer": s.answer,
                "correct": s.correct,
                "tokens": c.n_tokens,
                "finish_reason": c.finish_reason,
                "prompt_truncated": cut[c.prompt_index],
                "score_status": s.status,
            }
            for c, s in zip(comps, scores)
        ],
        schema=SAMPLE_SCHEMA,
    )


def summarize(samples: pl.DataFrame, specs: list[BenchmarkSpec], e: EvaluateConfig) -> dict:
    """Per benchmark: base/trained avg@k (the headline accuracy), unbiased pass@k, maj@k, n, k and
    how many prompts were cut to fit the context."""
    out: dict = {}
    for spec in specs:
        k = e.samples_for(spec)
        entry: dict = {"n": 0, "k": k, "metric": f"avg@{k}" if k > 1 else "accuracy"}
        for model in MODELS:
            sub = samples.filter((pl.col("benchmark") == spec.name) & (pl.col("model") == model))
            per: dict[str, list] = {}
            for pid, ans, ok in sub.select("problem_id", "extracted_answer", "correct").iter_rows():
                per.setdefault(pid, []).append((ans, ok))
            sc = benchmark_scores(per, k)
            entry[model] = round(sc["avg"], 4)
            entry[f"{model}_pass@{k}"] = round(sc["pass"], 4)
            entry[f"{model}_maj@{k}"] = round(sc["maj"], 4)
            entry["n"] = max(entry["n"], sc["n"])
            cut = int(sub.filter(pl.col("sample_index") == 0)["prompt_truncated"].sum())
            entry["prompt_truncated"] = max(entry.get("prompt_truncated", 0), cut)
        out[spec.name] = entry
    return out


def group_averages(per_bench: dict) -> dict:
    """{"math_avg": ..., "ood_avg": ...} over the benchmarks present (how many is in `of`)."""
    out = {}
    for label, group in BENCHMARK_GROUPS:
        present = [b for b in group if b in per_bench]
        if present:
            out[label] = {m: round(sum(per_bench[b][m] for b in present) / len(present), 4) for m in MODELS}
            out[label].update(n=sum(per_bench[b]["n"] for b in present), of=present)
    return out


def plot_scores(per_bench: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_bench)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.8))
    width = 0.38
    for j, model in enumerate(MODELS):
        vals = [100 * per_bench[n][model] for n in names]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(names))], vals, width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(
        range(len(names)), [f"{n}\n({per_bench[n]['metric']}, n={per_bench[n]['n']})" for n in names], fontsize=8
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _results(cfg: OgerConfig, workdir: Path, model_key: str, problems_key: str, identity: dict) -> list:
    """(spec, result file) of every configured benchmark for the model with this artifact key."""
    e, prompt = cfg.evaluate, prompt_format(cfg)
    out = []
    for spec in e.benchmarks:
        data_id = problems_key if spec.name == SYNTHETIC else identity["data"][spec.name]
        out.append((spec, _result_path(workdir, model_key, sampling_setup(e, spec), prompt, data_id)))
    return out


def sample_model_dir(cfg: OgerConfig, model_dir: Path, problems: pl.DataFrame, model: str, specs: list[BenchmarkSpec]):
    """Yield (spec, scored samples) of one model folder on each benchmark, with this stage's engine,
    prompt, sampling and scorer: what the stage caches, and how `bench trl_learning` scores a model
    another trainer wrote (so two trainers are compared by one evaluation, not two)."""
    e = cfg.evaluate
    scorer = Scorer(e.score_timeout_s, e.score_workers)
    scorer.warm()  # math-verify workers spawn while the model loads and generates
    engine = make_engine(
        e.engine,
        model_dir,
        dtype=cfg.policy.dtype,
        batch_size=e.batch_size,
        tensor_parallel_size=e.tensor_parallel_size,
        gpu_memory_utilization=e.gpu_memory_utilization,
        seed=e.seed,
        what="evaluate.engine",
    )
    try:
        for spec in specs:
            yield (
                spec,
                sample_benchmark(
                    engine,
                    engine.tokenizer,
                    benchmark_rows(cfg, spec, problems),
                    sampling_setup(e, spec),
                    prompt_format(cfg),
                    model,
                    scorer,
                ),
            )
    finally:
        engine.close()
        scorer.close()


def sample_model(
    cfg: OgerConfig,
    workdir: Path,
    model: str,
    ref: ArtifactRef,
    problems_ref: ArtifactRef,
    identity: dict,
    refresh: bool,
) -> int:
    """Sample, score and cache every missing benchmark result of one model with one engine; returns
    how many it wrote. One fan-out job: on Ray each model gets its own worker and GPUs."""
    todo = dict(
        (spec.name, path)
        for spec, path in _results(cfg, workdir, ref.key, problems_ref.key, identity)
        if refresh or not path.exists()
    )
    if not todo:
        return 0
    specs = [s for s in cfg.evaluate.benchmarks if s.name in todo]
    for spec, df in sample_model_dir(cfg, MODEL_DIRS[model](ref), read_problems(problems_ref), model, specs):
        atomic_write(todo[spec.name], df.write_parquet)
    return len(todo)


def run_evaluate(
    cfg: OgerConfig, ctx: StageContext, problems_ref: ArtifactRef, policy_ref: ArtifactRef, train_ref: ArtifactRef
) -> ArtifactRef:
    """`ctx.fan_out` (`oger.contract.fanout`) runs one job per model (default: one after the other, in process)."""
    e, workdir, identity, refresh, fan_out = cfg.evaluate, ctx.workdir, ctx.identity, ctx.refresh, ctx.fan_out
    models = (("base", policy_ref), ("trained", train_ref))
    gpus = e.num_gpus if e.num_gpus is not None else (e.tensor_parallel_size if e.engine == "vllm" else 0)
    jobs = [
        Job(f"evaluate-{model}", (cfg, workdir, model, ref, problems_ref, identity, refresh), num_gpus=gpus)
        for model, ref in models
    ]
    for _job, _written in (fan_out or run_in_process)(sample_model, jobs):
        pass
    parts = []
    for model, ref in models:  # results are keyed by the model's artifact key, not its role
        for _spec, path in _results(cfg, workdir, ref.key, problems_ref.key, identity):
            parts.append(pl.read_parquet(path).with_columns(model=pl.lit(model)))
    samples = pl.concat(parts)
    per_bench = summarize(samples, e.benchmarks, e)
    metrics = {**per_bench, **group_averages(per_bench)}
    with ctx.output() as out:
        samples.write_parquet(out.file(SAMPLES_FILE))
        out.file(SCORES_FILE).write_text(json.dumps(metrics, indent=2))
        plot_scores(per_bench, out.file(SCORES_PNG), f"{cfg.name}: policy stage vs trained")
        out.metrics = metrics
    return ctx.ref(out)


def plan_info(cfg: OgerConfig, counts):
    """`oger plan`: the engine, and per benchmark problems x k samples x max tokens for both models."""
    e = cfg.evaluate
    budget, missing = [], []
    for spec in e.benchmarks:
        if spec.name == SYNTHETIC:
            synthetic = [s.name for s in cfg.problems.sources if s.kind == "synthetic"]
            n = counts.count(cfg.evaluate.heldout.split, synthetic, limit=spec.limit)
        else:
            n = local_benchmark_size(spec.name, spec.limit)  # never the hub: a plan only looks
            if n is None:
                missing.append(
                    f"{spec.name}: {REGISTRY[spec.name].path} not in data/ or OGER_DATA_DIR; "
                    f"the run would fetch {REGISTRY[spec.name].hub_id} from the hub"
                )
                n = spec.limit  # unknown size, bounded by the limit if any
        setup = sampling_setup(e, spec)
        budget.append(
            Budget(
                f"{spec.name} (base + trained, T={setup['temperature']})", n, 2 * setup["k"], setup["max_new_tokens"]
            )
        )
    engine = {
        "vllm": f"vLLM offline engine ({cfg.policy.dtype}, {e.gpu_memory_utilization:g} of each GPU)",
        "paged": "transformers continuous batching (paged)",
    }.get(e.engine, "transformers generate") + f"; math-verify in {e.score_workers} process(es)"
    resources = (
        f"{e.tensor_parallel_size} GPU(s) (tensor parallel)"
        if e.engine == "vllm"
        else "1 process (GPU if CUDA is available)"
    )
    return StageInfo(
        engine=engine, resources=resources, budget=budget, notes=[f"protocol {e.protocol}, prompt {e.prompt}", *missing]
    )


def run_summary(ref: ArtifactRef) -> dict:
    """The headline numbers a run's summary.json carries: base/trained/n per benchmark."""
    return {b: {"base": m["base"], "trained": m["trained"], "n": m["n"]} for b, m in ref.metrics.items() if "k" in m}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def report_section(stage: dict, run_dir: Path) -> list[str]:
    """Per benchmark base vs trained with the delta, the group averages, and the bar chart."""
    m = stage["metrics"]
    lines = [
        "",
        "## Evaluation: policy stage (base) vs trained",
        "",
        "| benchmark | metric | n | base | trained | Δ | pass@k base → trained | prompts cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in m.items():
        if "k" not in e:
            continue
        k = e["k"]
        pass_cell = f"{_pct(e.get(f'base_pass@{k}'))} → {_pct(e.get(f'trained_pass@{k}'))}" if k > 1 else ""
        lines.append(
            f"| {name} | {e['metric']} | {e['n']} | {_pct(e['base'])} | {_pct(e['trained'])} "
            f"| {100 * (e['trained'] - e['base']):+.1f} | {pass_cell} | {e.get('prompt_truncated', 0)} |"
        )
    for label, title in (("math_avg", "math average"), ("ood_avg", "out-of-domain average")):
        if label in m:
            g = m[label]
            lines.append(
                f"| **{title}** ({', '.join(g['of'])}) | mean | {g['n']} | {_pct(g['base'])} "
                f"| {_pct(g['trained'])} | {100 * (g['trained'] - g['base']):+.1f} | | |"
            )
    png = Path(stage["path"]) / SCORES_PNG
    if png.exists():
        atomic_write(run_dir / "evaluate_scores.png", lambda tmp: shutil.copyfile(png, tmp))
        lines += ["", "![base vs trained](evaluate_scores.png)"]
    lines += ["", f"Per-sample results: `{Path(stage['path']) / SAMPLES_FILE}`"]
    lines += comparison_markdown(m, published_for_run(run_dir))
    return lines


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems", "policy", "train"),
    files=FILES,
    key_inputs=key_inputs,
    plan_info=plan_info,
    run_summary=run_summary,
    report_section=report_section,
    per_pair=True,
    scores=lambda metrics: metrics,
    run=lambda ctx, inputs: run_evaluate(ctx.cfg, ctx, inputs["problems"], inputs["policy"], inputs["train"]),
)
