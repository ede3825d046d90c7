"""The run's report.md: a table per stage and PNG plots of what the stages measured."""

from __future__ import annotations

import shutil
from pathlib import Path


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
            lines += ["", f"## Training ({m.get('algorithm')})", "",
                      f"reward over the first 20% of steps {m.get('reward_first_20pct')}, over the last "
                      f"20% {m.get('reward_last_20pct')}; held-out accuracy {m.get('heldout_accuracy_policy')}"
                      f" (policy stage) -> {m.get('heldout_accuracy')} (trained)", "",
                      "![training curves](train_curves.png)"]
    path = record.dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
