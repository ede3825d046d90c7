"""`oger index list|restore|unpin` and the per-round part of `oger status`."""

from __future__ import annotations

import argparse
import json

from oger.contract.config import load_config
from oger.stages.index import versions as iv  # restore, unpin: the pin's writers (tests/test_contract.py)
from oger.stages.index.files import list_versions, read_pin


def add_index_parser(sub, add_config_args) -> None:
    index = sub.add_parser("index", help="list the teacher-index versions, pin the one training reads")
    isub = index.add_subparsers(dest="index_command", required=True)
    ls = isub.add_parser("list", help="each tag: version, rows, rounds, which one training reads")
    add_config_args(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    rs = isub.add_parser("restore", help="make TAG the version training reads (and the table's latest)")
    add_config_args(rs)
    rs.add_argument("tag", help="an index tag (= index stage key) or a unique prefix of 8+ characters")
    un = isub.add_parser("unpin", help="training reads the index stage's own tag again")
    add_config_args(un)


def cmd_index(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    wd, table = cfg.workdir_path, cfg.index.table
    if args.index_command == "restore":
        pin = iv.restore(wd, table, args.tag)
        print(
            f"training in {wd} now reads index tag {pin['tag'][:16]} (table version "
            f"{pin['version']}, now also the latest as version {pin['restored_as_version']}); "
            f"`oger index unpin {args.config}` to follow the index stage again"
        )
        return 0
    if args.index_command == "unpin":
        old = iv.unpin(wd, table)
        print(
            f"unpinned {old['tag'][:16]}: training reads the index stage's tag"
            if old
            else "nothing was pinned: training reads the index stage's tag"
        )
        return 0
    rows = list_versions(wd, table)
    if args.json:
        print(
            json.dumps(
                {"workdir": str(wd), "table": table, "pin": read_pin(wd, table), "versions": rows},
                indent=2,
                default=str,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{table} in {wd}")
    t.add_column("tag", no_wrap=True, min_width=16)
    for col in ("version", "rows", "rounds", "created", "training reads"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["tag"][:16],
            str(r["version"]),
            str(r["rows"]),
            ",".join(r["rounds"]),
            str(r["created_at"] or "")[:19],
            "pinned" if r["pinned"] else "",
        )
    Console().print(t)
    return 0


def print_rounds(cfg, rounds: list[dict]) -> None:
    """One table per workdir: per round, its index tags, checkpoints and evaluation summaries."""
    from rich.console import Console
    from rich.table import Table

    pin = read_pin(cfg.workdir_path, cfg.index.table)
    t = Table(title="rounds" + (f" (training pinned to index tag {pin['tag'][:16]})" if pin else ""))
    for col in ("round", "index tags (version:rows)", "checkpoints", "evaluations", "last run"):
        t.add_column(col, overflow="fold")
    for r in rounds:
        tags = "\n".join(
            f"{v['tag'][:16]} v{v['version']}:{v['rows']}" + (" pinned" if v["pinned"] else "") for v in r["index_tags"]
        )
        ckpts = "\n".join(
            f"{c['key'][:16]} {c['algorithm']} reward={c['reward_last_20pct']} "
            f"heldout={c['heldout_accuracy']} index={str(c['index_tag'])[:8]}"
            + (f" from {c['init_from'][:8]}" if c["init_from"] != "policy" else "")
            for c in r["checkpoints"]
        )
        evals = "\n".join(
            ", ".join(
                f"{b}={m.get('trained')}" for b, m in e["metrics"].items() if isinstance(m, dict) and "trained" in m
            )
            for e in r["evaluations"]
        )
        last = r["last_run"]
        t.add_row(r["round"], tags, ckpts, evals, f"{last['run_id']} {last['status']}" if last else "")
    Console().print(t)
