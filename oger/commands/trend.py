"""`oger rounds CONFIG [--json]`: is the model getting better round after round?

One row per round (oldest first), from the round's latest completed run with an evaluation (its
summary.json, which outlives the artifacts): teacher traces added, index rows, train summaries, and per
benchmark the base and trained scores with a 95% interval over problems (from the evaluation's
samples.parquet while it exists). A round whose trained score is below the previous round's by more
than the interval of the difference is flagged as a regression. Also a PNG of scores per round, and
the same table as a Prefect artifact after every run of the pipeline (`flows.ui.publish_rounds`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from oger.rounds import latest_completed, round_order, run_summaries
from oger.stages.evaluate import STAGE as EVALUATE
from oger.stages.evaluate.files import SAMPLES_FILE
from oger.stages.index import STAGE as INDEX
from oger.stages.teachers import STAGE as TEACHERS
from oger.stages.train import STAGE as TRAIN

Z95 = 1.96


def _problem_scores(eval_path: str | None) -> dict[tuple[str, str], list[float]]:
    """{(benchmark, model): avg@k per problem} of an evaluation, {} when its samples are gone (retention)."""
    if not eval_path or not (Path(eval_path) / SAMPLES_FILE).is_file():
        return {}
    import polars as pl

    from oger.stages.evaluate.files import read_samples

    per = (
        read_samples(eval_path)
        .group_by("benchmark", "model", "problem_id")
        .agg(pl.col("correct").cast(pl.Float64).mean())
    )
    out: dict[tuple[str, str], list[float]] = {}
    for bench, model, _, score in per.iter_rows():
        out.setdefault((bench, model), []).append(score)
    return out


def _half_width(scores: list[float] | None) -> float | None:
    if not scores or len(scores) < 2:
        return None
    m = sum(scores) / len(scores)
    var = sum((x - m) ** 2 for x in scores) / (len(scores) - 1)
    return Z95 * math.sqrt(var / len(scores))


def round_rows(workdir: Path) -> list[dict]:
    """The trend table's rows, oldest round first (rounds in first-seen order)."""
    runs = run_summaries(workdir)
    rows = []
    for r in round_order(runs):
        d = latest_completed(runs, r, needs=EVALUATE)
        if d is None:
            continue
        st = d["stages"]
        ev = st[EVALUATE]
        row = {
            "round": r,
            "run_id": d.get("run_id"),
            "finished_at": d.get("finished_at"),
            "teacher_traces": st.get(TEACHERS, {}).get("metrics", {}).get("traces"),
            "index_rows": st.get(INDEX, {}).get("metrics", {}).get("rows"),
            "training": {
                k: st.get(TRAIN, {}).get("metrics", {}).get(k)
                for k in ("algorithm", "env_reward_last_20pct", "heldout_accuracy")
            },
            "benchmarks": {},
        }
        scores = _problem_scores(ev.get("path"))
        for bench, m in ev.get("metrics", {}).items():
            if not isinstance(m, dict) or "trained" not in m:
                continue
            row["benchmarks"][bench] = {
                "metric": m.get("metric"),
                "base": m.get("base"),
                "trained": m.get("trained"),
                "trained_ci": _half_width(scores.get((bench, "trained"))),
                "base_ci": _half_width(scores.get((bench, "base"))),
            }
        rows.append(row)
    flag_regressions(rows)
    return rows


def flag_regressions(rows: list[dict]) -> None:
    """Mark `regression` on each benchmark of a round whose trained score fell below the previous
    round's by more than 1.96 x the standard error of the difference (both intervals known);
    unknown intervals flag nothing."""
    for prev, cur in zip(rows, rows[1:]):
        for bench, c in cur["benchmarks"].items():
            p = prev["benchmarks"].get(bench)
            c["regression"] = False
            if not p or None in (p["trained"], c["trained"], p["trained_ci"], c["trained_ci"]):
                continue
            margin = math.hypot(p["trained_ci"], c["trained_ci"])
            c["regression"] = p["trained"] - c["trained"] > margin


def regressions(rows: list[dict]) -> list[str]:
    """One line per flagged (round, benchmark)."""
    out = []
    for prev, cur in zip(rows, rows[1:]):
        for bench, c in cur["benchmarks"].items():
            if c.get("regression"):
                p = prev["benchmarks"][bench]
                out.append(
                    f"round {cur['round']}: {bench} {c['trained']:.4f} is below round {prev['round']}'s "
                    f"{p['trained']:.4f} beyond the interval (run {cur['run_id']})"
                )
    return out


class RoundRegression(RuntimeError):
    """A round's trained score fell below the previous round's beyond the interval
    (`retention.fail_on_regression`): the run's stages are complete and cached, the run fails."""


def check_round(rows: list[dict], run_id: str) -> None:
    """Raise RoundRegression naming each benchmark where run `run_id`'s round regressed; a run that
    is not its round's latest completed one (the trend's row for the round) checks nothing."""
    mine = [r for r in rows if r["run_id"] == run_id]
    flagged = [line for line in regressions(rows) if mine and line.startswith(f"round {mine[0]['round']}:")]
    if flagged:
        raise RoundRegression("retention.fail_on_regression: " + "; ".join(flagged))


def _score(b: dict, side: str) -> str:
    v, ci = b.get(side), b.get(f"{side}_ci")
    if v is None:
        return "—"
    return f"{100 * v:.1f}" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def markdown(rows: list[dict], png: str | None = None) -> str:
    benches = sorted({b for r in rows for b in r["benchmarks"]})
    head = [
        "round",
        "run",
        "traces",
        "index rows",
        "train reward (last 20%)",
        *[f"{b} base → trained" for b in benches],
    ]
    lines = ["# Rounds", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["round"],
            str(r["run_id"]),
            str(r["teacher_traces"]),
            str(r["index_rows"]),
            str(r["training"].get("env_reward_last_20pct")),
        ]
        for b in benches:
            x = r["benchmarks"].get(b)
            cells.append(
                "—"
                if x is None
                else f"{_score(x, 'base')} → {_score(x, 'trained')}"
                + (" **regression**" if x.get("regression") else "")
            )
        lines.append("| " + " | ".join(cells) + " |")
    flagged = regressions(rows)
    lines += (
        ["", *(f"- {f}" for f in flagged)]
        if flagged
        else ["", "No round fell below the previous one beyond the interval."]
    )
    if png:
        lines += ["", f"![scores per round]({png})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path | None:
    benches = sorted({b for r in rows for b in r["benchmarks"]})
    if not rows or not benches:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rows) + 2), 3.2))
    xs = list(range(len(rows)))
    for b in benches:
        ys = [100 * r["benchmarks"][b]["trained"] if b in r["benchmarks"] else float("nan") for r in rows]
        err = [100 * (r["benchmarks"].get(b, {}).get("trained_ci") or 0) for r in rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{b} (trained)")
    ax.set_xticks(xs, [r["round"] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("score (%)")
    ax.set_title("scores per round\n(95% interval over problems)", fontsize=9)  # fits the narrowest figure
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cmd_rounds(args) -> int:
    from oger.contract.config import load_config

    cfg = load_config(args.config, args.overrides)
    rows = round_rows(cfg.workdir_path)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    png = plot(rows, cfg.workdir_path / "rounds.png")
    print(markdown(rows, str(png) if png else None), end="")
    return 0
