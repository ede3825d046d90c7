"""What a sweep's artifacts measured, and the statistics over it.

Per (arm, seed) it reads the evaluate artifact's `samples.parquet` (per problem: samples n and
correct c of the trained model; the policy-stage model as the `base` row) and the train artifact's
`metrics.jsonl`. Scores per problem are avg@k (c / n); problems are aligned across pairs by id.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from oger.stages.evaluate import STAGE as EVALUATE
from oger.stages.evaluate.files import BENCHMARK_GROUPS, read_samples
from oger.stages.train import STAGE as TRAIN
from oger.stages.train.files import read_metrics
from oger.sweep import stats

BASE = "base"  # the policy-stage model every arm starts from (evaluated with each seed's sampling)
GROUPS = BENCHMARK_GROUPS  # the evaluate stage's group averages (math_avg, ood_avg), over the same benchmarks


def problem_counts(samples: pl.DataFrame, model: str, benchmark: str) -> dict[str, tuple[int, int]]:
    """{problem_id: (samples, correct)} of one model on one benchmark."""
    sub = samples.filter((pl.col("model") == model) & (pl.col("benchmark") == benchmark))
    agg = sub.group_by("problem_id").agg(pl.len().alias("n"), pl.col("correct").cast(pl.Int64).sum().alias("c"))
    return {pid: (int(n), int(c)) for pid, n, c in agg.iter_rows()}


def read_history(train_path: str | Path) -> list[dict]:
    """The per-step metrics of a train artifact ([] if it logged none)."""
    return read_metrics(train_path)


def curve(history: list[dict], metric: str) -> dict[int, float]:
    """{step: value} of `metric`; NaN and rows without it dropped."""
    out = {}
    for row in history:
        v = row.get(metric)
        if isinstance(v, (int, float)) and not math.isnan(v):
            out[int(row["step"])] = float(v)
    return out


def collect(arms: list[str], pairs: list[dict], classes: dict[str, str] | None = None) -> dict:
    """Per benchmark: {arm or base: {seed: {problem_id: (n, c)}}}; per arm: {seed: train history}.
    `classes` ({problem_id: class}, the explore task's A-feasible / A-infeasible): each benchmark
    with classified problems is also split into "<benchmark> (<class>)" rows, analysed as benchmarks."""
    counts: dict[str, dict[str, dict[int, dict]]] = {}
    histories: dict[str, dict[int, list[dict]]] = {a: {} for a in arms}
    for pair in pairs:
        arm, seed, st = pair["arm"], pair["seed"], pair["stages"]
        histories[arm][seed] = read_history(st[TRAIN]["path"])
        samples = read_samples(st[EVALUATE]["path"])
        for bench in samples["benchmark"].unique(maintain_order=True).to_list():
            by = counts.setdefault(bench, {})
            by.setdefault(arm, {})[seed] = problem_counts(samples, "trained", bench)
            by.setdefault(BASE, {}).setdefault(seed, problem_counts(samples, "base", bench))
    return {"counts": split_by_class(counts, classes or {}), "histories": histories}


def split_by_class(counts: dict, classes: dict[str, str]) -> dict:
    """`counts` plus, per benchmark and class, a "<benchmark> (<class>)" entry holding only the
    problems of that class (benchmarks without classified problems get none)."""
    out = dict(counts)
    for bench, by_row in counts.items():
        for cls in sorted(set(classes.values())):
            split = {
                row: {seed: {p: v for p, v in c.items() if classes.get(p) == cls} for seed, c in by_seed.items()}
                for row, by_seed in by_row.items()
            }
            if any(c for by_seed in split.values() for c in by_seed.values()):
                out[f"{bench} ({cls})"] = split
    return out


def _matrix(per_seed: dict[int, dict], seeds: list[int], problems: list[str]) -> np.ndarray:
    return np.array([[per_seed[s][p][1] / per_seed[s][p][0] for p in problems] for s in seeds])


def analyse(collected: dict, arms: list[str], baseline: str, method: str, confidence: float, resamples: int) -> dict:
    """Means and intervals per benchmark (and math/OOD average) and row, paired differences vs the
    baseline with verdicts, pass@k curves; everything summary.json and report.md show."""
    counts = collected["counts"]
    rows = [BASE, *arms]
    blocks: dict[str, dict[str, tuple[list[int], np.ndarray]]] = {}  # bench -> row -> (seeds, S x P)
    ks: dict[str, int] = {}
    for bench, by in counts.items():
        present = [r for r in rows if by.get(r)]
        problems = sorted(set.intersection(*[set(c) for r in present for c in by[r].values()]))
        if not problems:
            continue
        blocks[bench] = {}
        for r in present:
            seeds = sorted(by[r])
            blocks[bench][r] = (seeds, _matrix(by[r], seeds, problems))
        ks[bench] = min(n for r in present for c in by[r].values() for n, _ in c.values())
    targets = {b: [b] for b in blocks}
    for label, group in GROUPS:
        members = [b for b in group if b in blocks]
        if members:
            targets[label] = members

    def describe(blist: list[np.ndarray]) -> dict:
        both = {m: stats.interval(blist, m, confidence, resamples).as_dict() for m in ("bootstrap", "t")}
        return {
            "mean": round(stats.block_mean(blist), 6),
            "ci": both[method],
            "ci_bootstrap": both["bootstrap"],
            "ci_t": both["t"],
            "per_seed": [round(float(x), 6) for x in stats.seed_means(blist)],
        }

    results: dict = {}
    comparisons: list[dict] = []
    for target, members in targets.items():
        entry = {}
        for r in rows:
            if not all(r in blocks[b] for b in members):
                continue
            seeds = blocks[members[0]][r][0]
            entry[r] = {
                "seeds": seeds,
                "n_problems": sum(blocks[b][r][1].shape[1] for b in members),
                **describe([blocks[b][r][1] for b in members]),
            }
        results[target] = {"benchmarks": members, "k": {b: ks[b] for b in members}, "rows": entry}
        if baseline not in entry:
            continue
        for arm in arms:
            if arm == baseline or arm not in entry:
                continue
            common = sorted(set(entry[arm]["seeds"]) & set(entry[baseline]["seeds"]))
            if not common:
                continue
            pick = lambda r, b, seeds=common: blocks[b][r][1][[blocks[b][r][0].index(s) for s in seeds]]
            diff = stats.paired_blocks([pick(arm, b) for b in members], [pick(baseline, b) for b in members])
            d = describe(diff)
            chosen = stats.Interval(d["ci"]["mean"], d["ci"]["lo"], d["ci"]["hi"], method)
            comparisons.append(
                {
                    "benchmark": target,
                    "arm": arm,
                    "baseline": baseline,
                    "seeds": common,
                    "diff": d["mean"],
                    "ci": d["ci"],
                    "ci_bootstrap": d["ci_bootstrap"],
                    "ci_t": d["ci_t"],
                    "per_seed": d["per_seed"],
                    "verdict": stats.verdict(arm, baseline, target, chosen, confidence),
                }
            )
    pass_k = {}
    for bench, by in counts.items():
        if ks.get(bench, 1) < 2:
            continue
        pass_k[bench] = {
            r: [
                round(v, 6)
                for v in np.mean([stats.pass_at_k_curve(list(c.values()), ks[bench]) for c in by[r].values()], axis=0)
            ]
            for r in rows
            if by.get(r)
        }
    return {"results": results, "comparisons": comparisons, "pass_at_k": pass_k}


def training_curves(
    histories: dict[str, dict[int, list[dict]]], metrics: tuple[str, ...]
) -> dict[str, dict[str, dict]]:
    """{metric: {arm: {"step": [...], "mean": [...], "lo": [...], "hi": [...]}}}: mean, min and max
    over seeds at each step, for `metrics` (those the train stage's table marks for the sweep under
    the sweep's config: `oger.stages.train.files.swept_metrics`); metrics no arm logged are left out."""
    out: dict[str, dict] = {}
    for metric in metrics:
        per_arm = {}
        for arm, by_seed in histories.items():
            curves = [curve(h, metric) for h in by_seed.values()]
            steps = sorted(set().union(*curves)) if curves else []
            if not steps:
                continue
            vals = [[c[s] for c in curves if s in c] for s in steps]
            per_arm[arm] = {
                "step": steps,
                "mean": [float(np.mean(v)) for v in vals],
                "lo": [float(np.min(v)) for v in vals],
                "hi": [float(np.max(v)) for v in vals],
            }
        if per_arm:
            out[metric] = per_arm
    return out


def last_fraction_means(curves: dict, fraction: float = 0.2) -> dict[str, dict[str, float]]:
    """{arm: {metric: mean of the seed-mean curve over the last `fraction` of steps}}."""
    out: dict[str, dict[str, float]] = {}
    for metric, per_arm in curves.items():
        for arm, c in per_arm.items():
            tail = c["mean"][-max(1, round(len(c["mean"]) * fraction)) :]
            out.setdefault(arm, {})[metric] = round(float(np.mean(tail)), 6)
    return out
