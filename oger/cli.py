"""`oger run` and `oger status`: the command line over the Prefect flow and the stage plan."""

from __future__ import annotations

import argparse
import json
import os
import sys

from oger.errors import OgerError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML scalar), e.g. --set filter.max_tokens=64")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oger", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    _add_config_args(run)
    run.add_argument("--only", action="append", metavar="S1,S2", help="run only these stages")
    run.add_argument("--from", dest="from_stage", metavar="S", help="start at stage S")
    run.add_argument("--until", metavar="S", help="stop after stage S")
    run.add_argument("--refresh", action="append", metavar="S",
                     help="recompute stage S even if cached")

    status = sub.add_parser("status", help="show each stage's key, cached/stale, path, metrics")
    _add_config_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    plan = sub.add_parser("plan", help="print the DAG, cached stages, engines, resources and token "
                                       "budget per stage; runs nothing, loads no model")
    _add_config_args(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    sweep = sub.add_parser("sweep", help="train + evaluate arms x seeds (shared upstream), then a "
                                          "report with intervals and verdicts")
    _add_config_args(sweep)
    sweep.add_argument("--arms", metavar="A,B", help="presets (grpo, luffy, oger, shuffled-bonus, "
                       "lam-0-monitor) or sweep.arms names; default sweep.default_arms")
    sweep.add_argument("--seeds", metavar="0,1,2", help="default sweep.seeds")
    sweep.add_argument("--baseline", help="arm the others are compared with; default sweep.baseline")
    sweep.add_argument("--id", dest="sweep_id", help="folder name under <workdir>/sweeps/; default "
                       "<config name>-<hash of arms, seeds, --set>")
    sweep.add_argument("--results-doc", metavar="MD", help="afterwards, fill this document's "
                       "sweep-results markers with the results (make ablate: docs/RESULTS.md)")

    from oger.cli_rounds import add_index_parser

    add_index_parser(sub, _add_config_args)
    return parser


def cmd_run(args) -> int:
    from oger.config import load_config
    from oger.pipeline import select_stages

    load_config(args.config, args.overrides)  # fail fast, before Prefect starts
    select_stages(args.only, args.from_stage, args.until)
    from flows.pipeline import oger_pipeline

    summary = oger_pipeline(config=args.config, overrides=args.overrides, only=args.only,
                            from_stage=args.from_stage, until=args.until, refresh=args.refresh)
    print(summary, flush=True)
    return 0


def cmd_sweep(args) -> int:
    from oger.sweep.run import prepare

    prepare(args.config, args.arms, args.seeds, args.overrides, args.baseline, args.sweep_id)  # fail fast
    from flows.sweep import oger_sweep

    summary = oger_sweep(config=args.config, arms=args.arms, seeds=args.seeds, overrides=args.overrides,
                         baseline=args.baseline, sweep_id=args.sweep_id)
    if args.results_doc:
        from pathlib import Path

        from oger.sweep.report import fill_results_doc

        fill_results_doc(Path(args.results_doc), Path(summary).parent)
    print(summary, flush=True)
    return 0


def cmd_status(args) -> int:
    from oger.config import load_config
    from oger.pipeline import status_rows

    from oger.cli_rounds import print_rounds
    from oger.index_versions import read_pin
    from oger.rounds import round_status

    cfg = load_config(args.config, args.overrides)
    rows = status_rows(cfg)
    rounds = round_status(cfg.workdir_path, cfg.index.table)
    if args.json:
        print(json.dumps({"config": cfg.source_file, "workdir": str(cfg.workdir_path),
                          "stages": rows, "rounds": rounds,
                          "index_pin": read_pin(cfg.workdir_path, cfg.index.table)},
                         indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.name}: {cfg.workdir_path}")
    for col in ("stage", "key", "state", "metrics", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        flat = ", ".join(f"{k}={v}" for k, v in r["metrics"].items() if not isinstance(v, dict))
        style = "green" if r["state"] == "cached" else "yellow"
        table.add_row(r["stage"], r["key"][:16], f"[{style}]{r['state']}[/{style}]", flat, r["path"])
    Console().print(table)
    print_rounds(cfg, rounds)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        from oger.cli_rounds import cmd_index
        from oger.plan import cmd_plan

        return {"run": cmd_run, "status": cmd_status, "plan": cmd_plan, "index": cmd_index,
                "sweep": cmd_sweep}[args.command](args)
    except OgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
