"""`oger run` and `oger status`: the command line over the Prefect flow and the stage plan."""

from __future__ import annotations

import argparse
import json
import os
import sys

from oger.commands.error_log import error_line, quiet_user_errors, write_traceback
from oger.contract.errors import OgerError


def quiet_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (set before torch loads). torch's threads
    spin-wait by default, which on a busy 2-core machine, or when two evaluation jobs share it,
    made an SFT step 5x slower than with one thread (docs/PERFORMANCE.md, "demo")."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (YAML scalar), e.g. --set filter.max_tokens=64",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oger", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    _add_config_args(run)
    run.add_argument("--only", action="append", metavar="S1,S2", help="run only these stages")
    run.add_argument("--from", dest="from_stage", metavar="S", help="start at stage S")
    run.add_argument("--until", metavar="S", help="stop after stage S")
    run.add_argument("--refresh", action="append", metavar="S", help="recompute stage S even if cached")
    run.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="wait this long for a workdir another run holds (default: the config's lock_timeout_s, 600)",
    )

    status = sub.add_parser("status", help="show each stage's key, cached/stale, path, metrics")
    _add_config_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    plan = sub.add_parser(
        "plan",
        help="print the DAG, cached stages, engines, resources and token "
        "budget per stage; runs nothing, loads no model",
    )
    _add_config_args(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument(
        "--gpu-memory",
        type=float,
        default=80.0,
        metavar="GIB",
        help="memory of one GPU in GiB: the plan says whether each GPU stage fits in it (default 80)",
    )

    sweep = sub.add_parser(
        "sweep", help="train + evaluate arms x seeds (shared upstream), then a report with intervals and verdicts"
    )
    _add_config_args(sweep)
    sweep.add_argument(
        "--arms",
        metavar="A,B",
        help="presets (grpo, luffy, oger, shuffled-bonus, "
        "lam-0-monitor) or sweep.arms names; default sweep.default_arms",
    )
    sweep.add_argument("--seeds", metavar="0,1,2", help="default sweep.seeds")
    sweep.add_argument("--baseline", help="arm the others are compared with; default sweep.baseline")
    sweep.add_argument(
        "--id",
        dest="sweep_id",
        help="folder name under <workdir>/sweeps/; default <config name>-<hash of arms, seeds, --set>",
    )
    sweep.add_argument(
        "--results-doc",
        metavar="MD",
        help="afterwards, fill this document's sweep-results markers with the results (make ablate: docs/RESULTS.md)",
    )
    sweep.add_argument(
        "--results-section",
        metavar="NAME",
        help="fill the markers of this named "
        "section instead (<!-- sweep-results:NAME:begin -->; make ablate-explore: explore)",
    )

    prepare = sub.add_parser(
        "prepare",
        help="one-time set-up for a config: dequantise its GGUF "
        "models into the model cache, migrate Prefect's database",
    )
    _add_config_args(prepare)

    from oger.commands.index import add_index_parser

    add_index_parser(sub, _add_config_args)
    gc = sub.add_parser(
        "gc",
        help="remove what no kept round, kept run, sweep or pinned index tag needs; "
        "compact LanceDB (retention: in the config)",
    )
    _add_config_args(gc)
    gc.add_argument("--keep-rounds", type=int, help="default retention.keep_rounds")
    gc.add_argument("--keep-runs", type=int, help="default retention.keep_runs")
    gc.add_argument("--dry-run", action="store_true", help="print what would go; remove nothing")
    rounds = sub.add_parser(
        "rounds",
        help="every round's scores (base vs trained, 95%% intervals), "
        "regressions flagged, and a PNG of scores per round",
    )
    _add_config_args(rounds)
    rounds.add_argument("--json", action="store_true", help="machine-readable output")
    bonus = sub.add_parser("bonus", help="the OGER reward of hand-written rollouts (JSONL), no training")
    _add_config_args(bonus)
    bonus.add_argument("--input", required=True, help="JSONL: problem, answer, teacher_traces, rollouts")
    bonus.add_argument("--json", action="store_true", help="one JSON object per input line")
    return parser


def cmd_run(args) -> int:
    from oger.commands.preflight import check_inputs
    from oger.contract.config import load_config
    from oger.pipeline import select_stages

    cfg = load_config(args.config, args.overrides)  # fail fast, before Prefect starts
    args.workdir = cfg.workdir_path  # where a user error's traceback is logged
    from flows.early_server import reporting_to, start_early

    server = start_early()  # boots while the inputs are checked and the flow's modules load
    check_inputs(cfg, select_stages(args.only, args.from_stage, args.until))
    from flows.pipeline import oger_pipeline

    with reporting_to(server), quiet_user_errors():
        summary = oger_pipeline(
            config=args.config,
            overrides=args.overrides,
            only=args.only,
            from_stage=args.from_stage,
            until=args.until,
            refresh=args.refresh,
            lock_timeout_s=args.lock_timeout,
        )
    print(summary, flush=True)
    return 0


def cmd_sweep(args) -> int:
    from oger.sweep.run import prepare

    prepare(args.config, args.arms, args.seeds, args.overrides, args.baseline, args.sweep_id)  # fail fast
    from flows.early_server import reporting_to, start_early

    server = start_early()
    from flows.sweep import oger_sweep

    with reporting_to(server):
        summary = oger_sweep(
            config=args.config,
            arms=args.arms,
            seeds=args.seeds,
            overrides=args.overrides,
            baseline=args.baseline,
            sweep_id=args.sweep_id,
        )
    if args.results_doc:
        from pathlib import Path

        from oger.sweep.report import fill_results_doc

        fill_results_doc(Path(args.results_doc), Path(summary).parent, section=args.results_section)
    print(summary, flush=True)
    return 0


def cmd_prepare(args) -> int:
    from oger.commands.prepare import prepare
    from oger.contract.config import load_config

    prepare(load_config(args.config, args.overrides))
    return 0


def cmd_status(args) -> int:
    from oger.commands.index import print_rounds
    from oger.contract.config import load_config
    from oger.pipeline import status_rows
    from oger.published import comparison_rows, published_for_config
    from oger.rounds import round_status
    from oger.stages.index.files import read_pin

    cfg = load_config(args.config, args.overrides)
    rows = status_rows(cfg)
    rounds = round_status(cfg.workdir_path, cfg.index.table)
    pub = published_for_config(cfg)
    ours = scores_beside_published(rows)
    if args.json:
        print(
            json.dumps(
                {
                    "config": cfg.source_file,
                    "workdir": str(cfg.workdir_path),
                    "stages": rows,
                    "rounds": rounds,
                    "index_pin": read_pin(cfg.workdir_path, cfg.index.table),
                    "published": {**pub.as_dict(), "beside_ours": comparison_rows(ours, pub)},
                },
                indent=2,
                default=str,
            )
        )
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
    _print_published(ours, pub)
    print_rounds(cfg, rounds)
    return 0


def scores_beside_published(rows: list[dict]) -> dict:
    """The benchmark scores of the cached stage that has them (its `scores` hook: evaluate)."""
    from oger import contract

    for r in rows:
        hook = contract.get(r["stage"]).scores
        if hook is not None and r["state"] == "cached":
            return hook(r["metrics"])
    return {}


def cmd_bonus(args) -> int:
    from oger.commands.bonus import cmd_bonus  # torch: only for this command

    return cmd_bonus(args)


def _print_published(ours: dict, pub) -> None:
    """Published accuracies of the config's backbone beside the cached evaluation (%)."""
    from rich.console import Console
    from rich.table import Table

    from oger.published import COLUMNS, comparison_rows

    if not pub.found:
        print(pub.missing_line())
        return
    rows = comparison_rows(ours, pub) or [
        {"benchmark": b, "base": None, "trained": None, **{m: pub.value(m, b) for m in pub.methods}}
        for b in COLUMNS
        if any(b in v for v in pub.methods.values())
    ]
    table = Table(
        title=f"published results, backbone {pub.backbone} (%; ours: evaluate stage{'' if ours else ' not run yet'})"
    )
    for col in ("benchmark", "ours base", "ours trained", *pub.methods):
        table.add_column(col)
    cell = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        table.add_row(r["benchmark"], cell(r["base"]), cell(r["trained"]), *[cell(r[m]) for m in pub.methods])
    Console().print(table)
    print(pub.source_line())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    quiet_threads()
    args = build_parser().parse_args(argv)
    try:
        from oger.commands.gc import cmd_gc
        from oger.commands.index import cmd_index
        from oger.commands.plan import cmd_plan
        from oger.commands.trend import cmd_rounds

        return {
            "run": cmd_run,
            "status": cmd_status,
            "plan": cmd_plan,
            "index": cmd_index,
            "bonus": cmd_bonus,
            "sweep": cmd_sweep,
            "rounds": cmd_rounds,
            "gc": cmd_gc,
            "prepare": cmd_prepare,
        }[args.command](args)
    except OgerError as exc:  # a user error: one line; the traceback goes to the workdir's log
        print(error_line(exc, write_traceback(exc, getattr(args, "workdir", None))), file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
