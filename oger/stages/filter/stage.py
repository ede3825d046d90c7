"""filter stage: keep teacher traces that are correct, finished, of sane length and not repeated.

Each trace gets exactly one decision (the first rule it fails, in the order: truncated, incorrect,
length, duplicate, cap), so the per-teacher counts add up to the number of traces.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from oger.contract import ModelUse, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, atomic_write
from oger.contract.config import FilterConfig
from oger.contract.errors import StageError
from oger.contract.keys import key_dump
from oger.models import key_model_ref, load_tokenizer, model_identity
from oger.stages.filter import STAGE
from oger.stages.filter.files import DECISIONS_FILE, FILES, KEPT_FILE
from oger.stages.problems.files import read_problems
from oger.stages.teachers.files import read_traces
from oger.verify import extract_answer, is_equivalent

STAGE_VERSION = 1
REASONS = ["kept", "dropped_truncated", "dropped_incorrect", "dropped_length", "dropped_duplicate", "dropped_cap"]


def key_inputs(cfg: FilterConfig) -> tuple[dict, dict]:
    slice_ = key_dump(cfg)
    slice_["tokenizer"] = key_model_ref(cfg.tokenizer)
    return slice_, {"tokenizer": model_identity(cfg.tokenizer)}


def count_tokens(tokenizer, texts: list[str], batch: int = 256) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in enc)
    return out


def decide(
    traces: pl.DataFrame, gold: dict[str, str], n_tokens: list[int], cfg: FilterConfig, progress=None
) -> pl.DataFrame:
    """One decision per trace (pure given token counts): reason, extracted answer, correct."""
    seen_text: set[tuple[str, str]] = set()
    per_group: dict[tuple[str, str], int] = {}
    reasons, answers, correct = [], [], []
    for row, ntok in zip(traces.iter_rows(named=True), n_tokens):
        pred = extract_answer(row["text"])
        ok = is_equivalent(pred, gold[row["problem_id"]], cfg.verify_timeout_s)
        answers.append(pred)
        correct.append(ok)
        if cfg.require_stop and row["finish_reason"] != "stop":
            reason = "dropped_truncated"
        elif not ok:
            reason = "dropped_incorrect"
        elif not (cfg.min_tokens <= ntok <= cfg.max_tokens):
            reason = "dropped_length"
        elif cfg.dedupe and (row["problem_id"], row["text"].strip()) in seen_text:
            reason = "dropped_duplicate"
        elif (
            cfg.max_per_problem_teacher is not None
            and per_group.get((row["problem_id"], row["teacher"]), 0) >= cfg.max_per_problem_teacher
        ):
            reason = "dropped_cap"
        else:
            reason = "kept"
            seen_text.add((row["problem_id"], row["text"].strip()))
            key = (row["problem_id"], row["teacher"])
            per_group[key] = per_group.get(key, 0) + 1
        reasons.append(reason)
        if progress is not None:
            progress()
    return traces.with_columns(
        pl.Series("reason", reasons, pl.Utf8),
        pl.Series("extracted_answer", answers, pl.Utf8),
        pl.Series("correct", correct, pl.Boolean),
        pl.Series("n_tokens_policy", n_tokens, pl.Int64),
    )


def summarize(decisions: pl.DataFrame) -> dict:
    """Totals and per-teacher counts of each decision."""

    def counts(df: pl.DataFrame) -> dict:
        vc = dict(zip(*df["reason"].value_counts().to_dict(as_series=False).values()))
        return {r: int(vc.get(r, 0)) for r in REASONS}

    per_teacher = {
        t: counts(decisions.filter(pl.col("teacher") == t))
        for t in decisions["teacher"].unique(maintain_order=True).to_list()
    }
    return {"traces": decisions.height, **counts(decisions), "per_teacher": per_teacher}


def print_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="filter: decisions per teacher")
    table.add_column("teacher")
    for r in REASONS:
        table.add_column(r.replace("dropped_", "drop "), justify="right")
    for t, c in metrics["per_teacher"].items():
        table.add_row(t, *[str(c[r]) for r in REASONS])
    table.add_row("[b]total[/b]", *[f"[b]{metrics[r]}[/b]" for r in REASONS])
    Console(stderr=True).print(table)


def run_filter(
    cfg: FilterConfig, ctx: StageContext, problems_ref: ArtifactRef, teachers_ref: ArtifactRef
) -> ArtifactRef:
    from tqdm.auto import tqdm

    problems = read_problems(problems_ref)
    traces = read_traces(teachers_ref)
    gold = dict(zip(problems["problem_id"].to_list(), problems["answer"].to_list()))
    tokenizer = load_tokenizer(cfg.tokenizer)
    n_tokens = count_tokens(tokenizer, traces["text"].to_list())
    bar = tqdm(total=traces.height, desc="filter: verify", unit="trace")
    decisions = decide(traces, gold, n_tokens, cfg, progress=lambda: bar.update(1))
    bar.close()
    metrics = summarize(decisions)
    print_table(metrics)
    if metrics["kept"] == 0:
        drops = ", ".join(f"{r}={metrics[r]}" for r in REASONS[1:] if metrics[r])
        raise StageError(
            f"filter stage kept 0 of {decisions.height} traces ({drops}); loosen "
            f"filter.min_tokens/max_tokens ({cfg.min_tokens}/{cfg.max_tokens}) or "
            "check the teachers' answers"
        )
    kept = decisions.filter(pl.col("reason") == "kept").drop("reason")
    with ctx.output() as out:
        kept.write_parquet(out.file(KEPT_FILE))
        decisions.select(
            "trace_id", "teacher", "problem_id", "reason", "extracted_answer", "correct", "n_tokens_policy"
        ).write_parquet(out.file(DECISIONS_FILE))
        out.metrics = {**metrics, "problems_covered": kept["problem_id"].n_unique()}
    return ctx.ref(out)


def plan_info(cfg, counts):
    """`oger plan`: what the filter runs (no generation)."""
    f = cfg.filter
    return StageInfo(
        engine=f"math-verify; lengths by the {f.tokenizer} tokenizer",
        resources="CPU",
        notes=[
            f"keeps correct traces of {f.min_tokens}-{f.max_tokens} tokens"
            + (", stopped" if f.require_stop else "")
            + (", de-duplicated" if f.dedupe else "")
        ],
    )


def _filter_plot(metrics: dict, out: Path) -> str | None:
    per = metrics.get("per_teacher") or {}
    if not per:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(per)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0] * len(teachers)
    for reason in REASONS:
        vals = [per[t][reason] for t in teachers]
        if any(vals):
            ax.bar(teachers, vals, bottom=bottom, label=reason.replace("dropped_", "dropped: "))
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("traces")
    ax.set_title("filter decisions per teacher")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:  # into the run folder, outside any artifact: a temp sibling, renamed
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return out.name


def report_section(entry: dict, run_dir: Path) -> list[str]:
    """report.md: decisions per teacher as a stacked bar chart."""
    png = _filter_plot(entry["metrics"], run_dir / "filter.png")
    return ["", "## Filter", "", f"![filter decisions]({png})"] if png else []


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems", "teachers"),
    files=FILES,
    key_inputs=lambda cfg: key_inputs(cfg.filter),
    run=lambda ctx, inputs: run_filter(ctx.cfg.filter, ctx, inputs["problems"], inputs["teachers"]),
    plan_info=plan_info,
    report_section=report_section,
    # it counts tokens: the tokenizer only
    models=lambda cfg: [ModelUse("filter.tokenizer", cfg.filter.tokenizer, weights=False)],
)
