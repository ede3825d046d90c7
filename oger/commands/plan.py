"""`oger plan CONFIG`: what a run would do, without running anything (no model is loaded).

For every stage of `pipeline.STAGES`: its upstream stages, key, whether its artifact is cached, the
engines and resources it asks for, and its token budget (problems x samples x max new tokens).
Each stage may give a `plan_info(cfg, counts) -> StageInfo` hook (`oger.contract.Stage`); a stage
without it is listed with its key and state only. A stage that runs on GPUs adds its per-GPU estimate
(memory by phase, time, disk: `StageInfo.gpu`), which is weighed here against `--gpu-memory`: "fits in
N GiB", or "does not fit" with the changes that would make it fit (`gpu_verdict`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from oger import contract, pipeline
from oger.contract import Budget, EngineShare, GpuEstimate, StageInfo  # noqa: F401 - re-exported (older imports)
from oger.contract.artifacts import cache_dir
from oger.contract.config import SyntheticSource, load_config
from oger.data.sources import source_file
from oger.runtime.estimate import fmt_bytes
from oger.stages.problems import STAGE as PROBLEMS
from oger.stages.problems.files import read_problems


class ProblemCounts:
    """Problems per (split, source): exact from the cached problems table, otherwise from the
    config (synthetic sizes, row counts of files that are laid out; before de-duplication)."""

    def __init__(self, cfg, problems_ref=None):
        self.rows: dict[tuple[str, str], int | None] = {}
        self.exact = problems_ref is not None
        if problems_ref is not None:
            df = read_problems(problems_ref, columns=["split", "source"])
            for split, source, n in df.group_by(["split", "source"]).len().iter_rows():
                self.rows[(split, source)] = n
            return
        for src in cfg.problems.sources:
            if isinstance(src, SyntheticSource):
                self.rows[("train", src.name)] = src.n_train
                self.rows[("test", src.name)] = src.n_test
                continue
            path = source_file(src)
            n = _count_rows(path) if path is not None and path.is_file() else None
            if n is not None and src.limit:
                n = min(n, src.limit)
            self.rows[(src.split, src.name)] = n

    def count(self, split: str, sources: list[str] | None = None, limit: int | None = None) -> int | None:
        ns = [n for (sp, so), n in self.rows.items() if sp == split and (not sources or so in sources)]
        if any(n is None for n in ns):
            return limit  # unknown size; a limit still bounds it
        total = sum(ns)
        return min(total, limit) if limit else total


def _count_rows(path: Path) -> int | None:
    """Rows of a jsonl/parquet file; None for a file that cannot be read (the run reports it)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # corrupt or truncated: `oger run` names the file
            return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def fmt_tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


GIB = 2**30
DEFAULT_GPU_GIB = 80.0


def engine_verdict(e: EngineShare, cap: float) -> tuple[bool, str]:
    """(holds, the sentence) for an engine sized as a share of a GPU of `cap` bytes (vLLM): what its KV
    cache gets after its weights and activations, against the tokens the rollouts reach at full length;
    it does not hold when the cache is smaller than one sequence at the model's context, where vLLM
    refuses to start (the share that would hold, rounded up to a hundredth)."""
    budget, kv = e.share * cap, e.kv_bytes(cap)
    if not e.holds(cap):
        wanted = math.ceil(100 * (e.fixed + e.min_tokens * e.per_token) / cap) / 100
        return False, (
            f"vLLM's share {e.share:g} x {fmt_bytes(cap)} = {fmt_bytes(budget)} leaves {fmt_bytes(max(kv, 0))} "
            f"of KV cache after its weights and activations, less than one sequence at the model's context "
            f"({e.min_tokens:,} tokens, {fmt_bytes(e.min_tokens * e.per_token)}), and vLLM would not start: "
            f"train.rollout.gpu_memory_utilization {wanted:g} or more"
        )
    tokens = e.kv_tokens(cap)
    room = (
        "every row at full length"
        if tokens >= e.tokens
        else f"{tokens / e.tokens:.0%} of the {e.tokens:,} its rows reach at full length (vLLM queues the rest, so "
        "decoding takes longer than the time estimate)"
    )
    return True, f"vLLM's {fmt_bytes(budget)} leave {fmt_bytes(kv)} of KV cache, {tokens:,} tokens: {room}"


def gpu_verdict(g: GpuEstimate, gpu_gib: float) -> tuple[bool, str]:
    """(fits, the sentence): "fits in N GiB", or "does not fit" naming the changes that would help most.
    Changes of one field come least drastic first: per field the first that fits is named, else its
    most drastic; fields are ranked by the peak they leave, and a "together" change only when no single
    one fits. With an engine sized as a share of the GPU (vLLM), the sentence says what its KV cache
    holds, and the plan does not fit where the share cannot hold the engine (`engine_verdict`)."""
    cap = gpu_gib * GIB
    need = g.need(g.phases, cap)
    phase = max(g.phases, key=lambda k: g.need({k: g.phases[k]}, cap))
    head = f"in {gpu_gib:g} GiB (peak {fmt_bytes(need)}, in the {phase})"
    if g.engine is not None:
        holds, engine = engine_verdict(g.engine, cap)
        if not holds:
            return False, f"does not fit {head}: {engine}"
        head += f"; {engine}"
    if need <= cap:
        return True, f"fits {head}"
    best: dict[str, tuple[str, float]] = {}
    for text, phases in g.fixes:
        key = "together" if text.startswith("together") else text.split(":")[0]
        if key in best and best[key][1] <= cap:
            continue  # a milder value of this field fits already
        best[key] = (text, g.need(phases, cap))
    ranked = sorted(best.items(), key=lambda kv: kv[1][1])
    fitting = [f"{text} (peak {fmt_bytes(n)})" for key, (text, n) in ranked if n <= cap and key != "together"]
    if fitting:
        return False, f"does not fit {head}: change " + "; or ".join(fitting[:3])
    together = [f"{text} (peak {fmt_bytes(n)})" for key, (text, n) in ranked if key == "together" and n <= cap]
    if together:
        return False, f"does not fit {head}: no single change is enough; {together[0]}"
    helps = [f"{text} (peak {fmt_bytes(n)})" for _, (text, n) in ranked[:3] if n < need]
    return False, f"does not fit {head}, nor with any change tried" + (
        "; the most help: " + "; ".join(helps) if helps else ""
    )


def build(cfg, gpu_memory_gib: float = DEFAULT_GPU_GIB) -> dict:
    """The plan as a JSON-able dict (what `oger plan --json` prints)."""
    plans = pipeline.plan(cfg)
    refs = {name: pipeline.cached_ref(cfg, p) for name, p in plans.items()}
    counts = ProblemCounts(cfg, refs.get(PROBLEMS))
    stages, total, unknown = [], 0, False
    commands: dict[str, list[str]] = {}  # {stage: commands to run by hand beside it}
    for name in pipeline.STAGES:
        p = plans[name]
        hook = contract.get(name).plan_info
        info = hook(cfg, counts) if hook else StageInfo("-", "-", notes=["no plan_info for this stage"])
        if info.commands is not None and (lines := info.commands(cache_dir(cfg.workdir_path, name, p.key))):
            commands[name] = lines
        budget = [{**asdict(b), "tokens": b.tokens} for b in info.budget]
        for b in info.budget:
            unknown |= b.tokens is None
            total += b.tokens or 0
        gpu = None
        if info.gpu is not None:
            fits, verdict = gpu_verdict(info.gpu, gpu_memory_gib)
            gpu = {**asdict(info.gpu), "gpu_memory_gib": gpu_memory_gib, "fits": fits, "verdict": verdict}
        stages.append(
            {
                "stage": name,
                "upstream": pipeline.UPSTREAM[name],
                "key": p.key,
                "state": "cached" if refs[name] else "stale",
                "engine": info.engine,
                "resources": info.resources,
                "budget": budget,
                "notes": info.notes,
                "gpu": gpu,
                "stage_tokens": None
                if any(b.tokens is None for b in info.budget)
                else sum(b.tokens for b in info.budget),
            }
        )
    return {
        "config": cfg.source_file,
        "workdir": str(cfg.workdir_path),
        "runner": cfg.runner.kind,
        "commands": commands,
        "problem_counts": "exact (problems stage cached)" if counts.exact else "from the config",
        "stages": stages,
        "total_tokens": None if unknown else total,
        "total_tokens_known": total,
    }


def dag_lines(stages: list[dict]) -> list[str]:
    chain = " -> ".join(s["stage"] for s in stages)
    edges = [f"  {s['stage']} <- {', '.join(s['upstream'])}" for s in stages if s["upstream"]]
    return [chain, *edges]


def cmd_plan(args) -> int:
    cfg = load_config(args.config, args.overrides)
    data = build(cfg, getattr(args, "gpu_memory", None) or DEFAULT_GPU_GIB)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(
        f"[bold]{cfg.name}[/bold]: {data['workdir']} (runner: {data['runner']}; "
        f"problem counts {data['problem_counts']})"
    )
    for line in dag_lines(data["stages"]):
        console.print(line, highlight=False)
    table = Table(title="stages (nothing runs: keys, cache state, engines, token budget)")
    for col in ("stage", "key", "state", "engine", "resources", "token budget"):
        table.add_column(col, overflow="fold")
    for s in data["stages"]:
        style = "green" if s["state"] == "cached" else "yellow"
        lines = [
            f"{b['what']}: {b['prompts'] if b['prompts'] is not None else '?'} x {b['samples']} x "
            f"{b['max_tokens']} = {fmt_tokens(b['tokens'])}"
            for b in s["budget"]
        ]
        table.add_row(
            s["stage"],
            s["key"][:16],
            f"[{style}]{s['state']}[/{style}]",
            s["engine"],
            s["resources"],
            "\n".join(lines + s["notes"]) or "-",
        )
    console.print(table)
    for s in data["stages"]:
        if s["gpu"] is not None:
            console.print(f"[bold]{s['stage']}[/bold], per GPU:", highlight=False)
            for line in s["gpu"]["lines"]:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
            style = "green" if s["gpu"]["fits"] else "red"
            console.print(f"  [{style}]{s['gpu']['verdict']}[/{style}]", highlight=False, soft_wrap=True)
    for stage, lines in data["commands"].items():
        console.print(f"[bold]{stage}[/bold], to run by hand beside `oger run`:", highlight=False)
        for line in lines:
            console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    total = data["total_tokens"]
    console.print(
        f"total new tokens at most: {fmt_tokens(total)}"
        if total is not None
        else f"total new tokens at most: {fmt_tokens(data['total_tokens_known'])} + unknown "
        f"(a problem file is not laid out: run the problems stage to count)",
        highlight=False,
    )
    return 0
