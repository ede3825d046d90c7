"""The run's report.md: a table of the stages, each stage's own section (its `report_section`
hook: plots of what it measured) and the comparison with the previous round."""

from __future__ import annotations

from pathlib import Path

from oger import contract
from oger.contract.artifacts import atomic_write
from oger.rounds import round_comparison_section, run_summaries


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str) and len(v) > 20:
        return v[:16] + "…"
    return str(v)


def flat_metrics(metrics: dict) -> dict:
    """Scalar metrics, one level of nesting flattened (evaluate's per-benchmark dicts become
    `synthetic.trained`, ...); lists are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if not isinstance(vv, (dict, list))})
        elif not isinstance(v, list):
            out[k] = v
    return out


def write_report(record) -> Path:
    data = record.data
    lines = [
        f"# OGER run {data['run_id']}",
        "",
        f"config `{data['config']}` (round `{data['round']}`), workdir `{data['workdir']}`",
        "",
        "| stage | key | cached | seconds | metrics |",
        "|---|---|---|---|---|",
    ]
    for name, s in data["stages"].items():
        flat = ", ".join(f"{k}={_fmt(v)}" for k, v in flat_metrics(s["metrics"]).items())
        lines.append(f"| {name} | `{s['key'][:16]}` | {s['cached']} | {s['seconds']:.2f} | {flat} |")
    for name, entry in data["stages"].items():
        stage = contract.REGISTRY.get(name)
        if stage is not None and stage.report_section is not None:
            lines += stage.report_section(entry, record.dir)
    lines += round_comparison_section(data)
    lines += interrupted_section(data)
    text = "\n".join(lines) + "\n"
    return atomic_write(record.dir / "report.md", lambda tmp: tmp.write_text(text))


def interrupted_section(data: dict) -> list[str]:
    """The workdir's earlier runs that were killed or crashed (`oger.rounds.run_state`): their
    stages may have left resumable checkpoints, never a corrupt cache."""

    gone = [
        d
        for d in run_summaries(Path(data["workdir"]))
        if d.get("status") in ("interrupted", "failed") and d.get("run_id") != data["run_id"]
    ]
    if not gone:
        return []
    lines = ["", "## Earlier runs that did not finish", "", "| run | started | state | error |", "|---|---|---|---|"]
    for d in gone:
        lines.append(
            f"| {d.get('run_id')} | {d.get('started_at', '?')} | {d['status']} | {(d.get('error') or '-')[:200]} |"
        )
    return lines
