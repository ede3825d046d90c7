"""The run's report.md: a table per stage and PNG plots of what the stages measured."""

from __future__ import annotations

import shutil
from pathlib import Path

from oger import published
from oger.rounds import round_comparison_section


def _filter_plot(metrics: dict, out: Path) -> str | None:
    per = metrics.get("per_teacher") or {}
    if not per:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oger.filter import REASONS

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
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str) and len(v) > 20:
        return v[:16] + "…"
    return str(v)


def write_report(record) -> Path:
    data = record.data
    lines = [f"# OGER run {data['run_id']}", "",
             f"config `{data['config']}` (round `{data['round']}`), workdir `{data['workdir']}`", "",
             "| stage | key | cached | seconds | metrics |", "|---|---|---|---|---|"]
    for name, s in data["stages"].items():
        flat = ", ".join(f"{k}={_fmt(v)}" for k, v in s["metrics"].items() if not isinstance(v, dict))
        lines.append(f"| {name} | `{s['key'][:16]}` | {s['cached']} | {s['seconds']:.2f} | {flat} |")
    if "filter" in data["stages"]:
        png = _filter_plot(data["stages"]["filter"]["metrics"], record.dir / "filter.png")
        if png:
            lines += ["", "## Filter", "", f"![filter decisions]({png})"]
    if "train" in data["stages"]:
        stage = data["stages"]["train"]
        curves = Path(stage["path"]) / "curves.png"
        if curves.exists():
            shutil.copy(curves, record.dir / "train_curves.png")
            m = stage["metrics"]
            start = (f"{m.get('heldout_accuracy_policy')} (policy stage)"
                     if m.get("init_from", "policy") == "policy" else
                     f"{m.get('heldout_accuracy_init')} (round {m.get('init_round')}'s trained model "
                     f"`{m['init_from'][:16]}`, continued from)")
            lines += ["", f"## Training ({m.get('algorithm')})", "",
                      f"reward over the first 20% of steps {m.get('reward_first_20pct')}, over the last "
                      f"20% {m.get('reward_last_20pct')}; held-out accuracy {start}"
                      f" -> {m.get('heldout_accuracy')} (trained)", "",
                      "![training curves](train_curves.png)"]
    if "evaluate" in data["stages"]:
        lines += _evaluate_section(data["stages"]["evaluate"], record.dir)
        lines += published.comparison_markdown(data["stages"]["evaluate"]["metrics"], _published(data))
    lines += round_comparison_section(data)
    path = record.dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _published(data: dict) -> published.Published:
    """The published rows for the run's config (its backbone), read from the config file."""
    from oger.config import load_config

    try:
        cfg = load_config(data["config"], data.get("overrides") or [])
    except Exception:  # the config file moved since the run: say so rather than fail the report
        return published.Published(None)
    return published.published_for_config(cfg)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _evaluate_section(stage: dict, run_dir: Path) -> list[str]:
    """Per benchmark base vs trained with the delta, the group averages, and the bar chart."""
    m = stage["metrics"]
    lines = ["", "## Evaluation: policy stage (base) vs trained", "",
             "| benchmark | metric | n | base | trained | Δ | pass@k base → trained | prompts cut |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in m.items():
        if "k" not in e:
            continue
        k = e["k"]
        pass_cell = (f"{_pct(e.get(f'base_pass@{k}'))} → {_pct(e.get(f'trained_pass@{k}'))}"
                     if k > 1 else "")
        lines.append(f"| {name} | {e['metric']} | {e['n']} | {_pct(e['base'])} | {_pct(e['trained'])} "
                     f"| {100 * (e['trained'] - e['base']):+.1f} | {pass_cell} | {e.get('prompt_truncated', 0)} |")
    for label, title in (("math_avg", "math average"), ("ood_avg", "out-of-domain average")):
        if label in m:
            g = m[label]
            lines.append(f"| **{title}** ({', '.join(g['of'])}) | mean | {g['n']} | {_pct(g['base'])} "
                         f"| {_pct(g['trained'])} | {100 * (g['trained'] - g['base']):+.1f} | | |")
    png = Path(stage["path"]) / "scores.png"
    if png.exists():
        shutil.copy(png, run_dir / "evaluate_scores.png")
        lines += ["", "![base vs trained](evaluate_scores.png)"]
    lines += ["", f"Per-sample results: `{Path(stage['path']) / 'samples.parquet'}`"]
    return lines
