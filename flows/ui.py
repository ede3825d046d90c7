"""What a run shows in the Prefect UI: a flow-run name that carries the run id, tags for config,
round and algorithm, one log line per stage through the run logger, and three artifacts per run:
the report (markdown), the stage metrics (table) and where the run's files are (markdown).

Called from `flows/pipeline.py` (start, stage, publish); the terminal keeps its progress bars.
Artifact keys are per config (`oger-report-tiny`, ...), so the Artifacts page shows each config's
latest report with the earlier runs as its history.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from oger.commands.report import flat_metrics
from oger.contract.config import OgerConfig


def artifact_key(kind: str, config_name: str) -> str:
    """`oger-<kind>-<config>` in the alphabet Prefect allows (lowercase, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"oger-{kind}-{config_name}".lower()).strip("-")


def run_tags(cfg: OgerConfig) -> list[str]:
    return [f"config:{cfg.name}", f"round:{cfg.teachers.round}", f"algorithm:{cfg.train.algorithm}"]


def start(cfg: OgerConfig, record) -> None:
    """Name the flow run `<config>-<round>-<run id>` (a cached rerun no longer looks like the run
    it reused) and add the config/round/algorithm tags to the deployment's."""
    name = f"{cfg.name}-{cfg.teachers.round}-{record.run_id}"
    tags = sorted(set(flow_run.tags or []) | set(run_tags(cfg)))
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name, tags=tags)
    record.data["prefect_flow_run"]["name"] = name
    get_run_logger().info("run %s: %s (workdir %s)", record.run_id, record.summary_path, record.data["workdir"])


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_images(markdown: str, folder: Path) -> str:
    """The markdown with every PNG it points at (relative to `folder`, or absolute) inlined as a
    data URI: the Prefect UI cannot reach files in a workdir, and showed each plot as its alt text."""
    import base64

    def embed(m: re.Match) -> str:
        path = Path(m[2]) if Path(m[2]).is_absolute() else Path(folder) / m[2]
        if not path.is_file():
            return f"*({m[1]}: {m[2]} is missing)*"
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{m[1]}](data:image/png;base64,{data})"

    return _IMAGE.sub(embed, markdown)


def stage_rows(record) -> list[dict]:
    """One row per stage as summary.json holds it: key, cached, seconds, scalar metrics."""
    rows = []
    for name, s in record.data["stages"].items():
        metrics = flat_metrics(s["metrics"])
        rows.append(
            {
                "stage": name,
                "key": s["key"][:16],
                "cached": s["cached"],
                "seconds": s["seconds"],
                "metrics": json.dumps(metrics, default=str),
            }
        )
    return rows


def stage(record, name: str) -> None:
    """The stage's summary line in the flow run's log (the UI's Logs tab)."""
    s = record.data["stages"][name]
    flat = ", ".join(f"{k}={v}" for k, v in s["metrics"].items() if not isinstance(v, (dict, list)))
    get_run_logger().info(
        "%s %s in %.1f s (key %s): %s",
        name,
        "cached" if s["cached"] else "computed",
        s["seconds"],
        s["key"][:16],
        flat or "-",
    )


def files_markdown(record, report: Path) -> str:
    """Where the run's files are: summary.json, report.md, each stage's artifact folder."""
    lines = [
        f"# Files of run `{record.run_id}`",
        "",
        f"- summary: [`{record.summary_path}`]({record.summary_path.as_uri()})",
        f"- report: [`{report}`]({report.as_uri()})",
        f"- workdir: `{record.data['workdir']}`",
        "",
        "| stage | artifact |",
        "|---|---|",
    ]
    lines += [f"| {name} | `{s['path']}` |" for name, s in record.data["stages"].items()]
    return "\n".join(lines) + "\n"


def publish(record, report: Path) -> None:
    """The report, the stage table and the file pointers as artifacts of this flow run."""
    cfg_name = record.data["config_name"]
    create_markdown_artifact(
        inline_images(report.read_text(), report.parent),
        key=artifact_key("report", cfg_name),
        description=f"report.md of run {record.run_id}",
    )
    create_table_artifact(
        stage_rows(record),
        key=artifact_key("stages", cfg_name),
        description=f"stages of run {record.run_id} (summary.json)",
    )
    create_markdown_artifact(
        files_markdown(record, report),
        key=artifact_key("files", cfg_name),
        description=f"summary.json, report.md and stage artifacts of run {record.run_id}",
    )
    publish_rounds(Path(record.data["workdir"]), cfg_name)
    get_run_logger().info("report %s", report)


def publish_rounds(workdir: Path, cfg_name: str) -> None:
    """The trend across rounds (`oger rounds`) as an artifact, its plot inlined; a round that fell
    below the previous one beyond the interval is logged as a warning (the run's state unchanged)."""
    from oger.commands.trend import markdown, plot, regressions, round_rows

    rows = round_rows(workdir)
    if not rows:
        return
    png = plot(rows, workdir / "rounds.png")
    create_markdown_artifact(
        inline_images(markdown(rows, str(png) if png else None), workdir),
        key=artifact_key("rounds", cfg_name),
        description="scores per round (oger rounds)",
    )
    for line in regressions(rows):
        get_run_logger().warning("regression: %s", line)


def publish_sweep(summary: Path) -> None:
    """The sweep's report.md (tables, verdicts, plots inlined) as an artifact of the sweep's flow run."""
    report = Path(summary).parent / "report.md"
    if not report.is_file():
        return
    name = json.loads(Path(summary).read_text()).get("config_name", "sweep")
    create_markdown_artifact(
        inline_images(report.read_text(), report.parent),
        key=artifact_key("sweep", name),
        description=f"report.md of sweep {report.parent.name}",
    )


def apply_retention(cfg: OgerConfig) -> dict:
    """`oger gc` with the config's retention (the nightly deployment's `retention: true`), its result
    as a small table artifact: what went, bytes freed, the rounds kept."""
    from oger.commands.gc import run_gc

    r = cfg.retention
    out = run_gc(cfg.workdir_path, cfg.index.table, r.keep_rounds, r.keep_runs, r.keep_checkpoints)
    create_table_artifact(
        [
            {
                "kept_rounds": ", ".join(out["kept_rounds"]),
                "removed": len(out["rows"]),
                "freed_mb": round(out["freed"] / 1e6, 2),
                "lancedb_versions": f"{out['lancedb']['versions_before']} -> {out['lancedb']['versions_after']}",
            }
        ],
        key=artifact_key("retention", cfg.name),
        description="oger gc after this round",
    )
    get_run_logger().info(
        "retention: kept rounds %s, removed %d paths, freed %.1f MB",
        out["kept_rounds"],
        len(out["rows"]),
        out["freed"] / 1e6,
    )
    return out
