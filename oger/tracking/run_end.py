"""The end of a run: the evaluation table and the report's plots added to the tracker runs the training
opened, and the report's links to them."""

from __future__ import annotations

import re
from pathlib import Path

from oger.tracking.base import warn
from oger.tracking.trackers import Trackers

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def report_images(report: Path) -> list[tuple[str, Path]]:
    """(name, path) of each plot the report shows, in order (its file's stem names it)."""
    report = Path(report)
    out = []
    for m in _IMAGE.finditer(report.read_text()):
        path = Path(m[2]) if Path(m[2]).is_absolute() else report.parent / m[2]
        if path.is_file():
            out.append((path.stem, path))
    return out


def summary_tables(data: dict) -> dict[str, list[dict]]:
    """{stage: rows} of the stages whose headline numbers the run record holds beside their entry
    (a `run_summary` hook: the evaluation's {benchmark: {base, trained, n}}), one row per entry."""
    tables = {}
    for stage in data.get("stages", {}):
        summary = data.get(stage)
        if isinstance(summary, dict) and summary and all(isinstance(v, dict) for v in summary.values()):
            tables[stage] = [{"name": k, **v} for k, v in summary.items()]
    return tables


def runs_of(data: dict) -> list[dict[str, dict]]:
    """The tracker runs the run's stages recorded (their artifacts' `trackers` metric)."""
    out = []
    for entry in data.get("stages", {}).values():
        runs = (entry.get("metrics") or {}).get("trackers")
        if isinstance(runs, dict) and runs:
            out.append(runs)
    return out


def log_run_end(data: dict, report: Path) -> int:
    """At the end of a pipeline run: the evaluation table (the run record's headline tables) and the
    report's plots, logged to the tracker runs the training opened. Returns how many runs it reached;
    like every tracker call it never raises."""
    runs = runs_of(data)
    if not runs:
        return 0
    try:
        tables, images = summary_tables(data), report_images(report)
    except Exception as exc:  # a report it cannot read costs the trackers, not the run
        warn("all", "reading the run's results", exc)
        return 0
    reached = 0
    for recorded in runs:
        trackers = Trackers.reopen(recorded)
        for name, rows in tables.items():
            trackers.log_table(name, rows)
        for name, path in images:
            trackers.log_image(name, path)
        reached += len(trackers.names)
        trackers.close()
    return reached


TITLES = {"wandb": "W&B", "mlflow": "MLflow"}


def links_markdown(runs: dict[str, dict] | None) -> list[str]:
    """The report's line pointing at the tracker runs (a link where the run has a page)."""
    if not runs:
        return []
    items = []
    for name, info in runs.items():
        title = TITLES.get(name, name)
        rid = info.get("id") or info.get("run_id")
        if info.get("url"):
            items.append(f"[{title} run `{rid}`]({info['url']})")
        elif name == "wandb" and info.get("dir"):
            items.append(f"{title} run `{rid}`, offline (`wandb sync {info['dir']}`)")
        elif info.get("tracking_uri"):
            items.append(f"{title} run `{rid}` in `{info['tracking_uri']}`")
        else:
            items.append(f"{title} run `{rid}`")
    return ["", "Tracker runs: " + "; ".join(items)]
