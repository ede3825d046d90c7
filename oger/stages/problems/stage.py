"""problems stage: gather problems from the synthetic task, local files and HF datasets.

Output `problems.parquet`: problem_id (content hash of the question), question, answer, source,
split, reference (worked solution or teacher trace, when the source has one). Finding, reading and
normalising the sources' files is `oger.data`'s (the evaluation's benchmarks read through it too);
this stage keys the sources, checks them before a run and builds the one table.
"""

from __future__ import annotations

import polars as pl

from oger.contract import Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, file_fingerprint
from oger.contract.config import LocalSource, ProblemsConfig
from oger.contract.errors import ConfigError, DataError
from oger.contract.keys import key_dump
from oger.data.normalize import problem_id
from oger.data.sources import load_file_source, load_source, source_file
from oger.stages.problems import STAGE
from oger.stages.problems.files import FILES, PROBLEMS_FILE, SCHEMA

STAGE_VERSION = 2  # 2: test split disjoint from train


def check_sources(cfg: ProblemsConfig) -> None:
    """Read and validate every local file source now (before a flow starts); errors name the file,
    row and field. Sources that come from the hub are checked when the stage loads them."""
    for src in cfg.sources:
        path = source_file(src)
        if path is not None:
            load_file_source(src, path)


def key_inputs(cfg: ProblemsConfig) -> tuple[dict, dict]:
    """(config slice, identity): file paths are replaced by content fingerprints."""
    sources, identity = [], {}
    for src in cfg.sources:
        d = key_dump(src)  # a local file's path is not in it: its content fingerprint is
        path = source_file(src)
        if isinstance(src, LocalSource):
            if not path.is_file():
                raise DataError(f"problems source {src.name!r}: file not found: {path}")
        if path is not None:
            identity[src.name] = file_fingerprint(path)
        sources.append(d)
    names = [s.name for s in cfg.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"problems.sources: names must be unique, repeated: {sorted(dup)}")
    return {"sources": sources}, identity


def run_problems(cfg: ProblemsConfig, ctx: StageContext) -> ArtifactRef:
    rows, seen, dropped_dup, per_source = [], set(), 0, {}
    for src in cfg.sources:
        recs = load_source(src)
        kept = 0
        for r in recs:
            pid = problem_id(r["question"])
            if pid in seen:
                dropped_dup += 1
                continue
            seen.add(pid)
            rows.append(
                {
                    "problem_id": pid,
                    "question": r["question"],
                    "answer": r["answer"],
                    "source": src.name,
                    "split": r["split"],
                    "reference": r["reference"],
                }
            )
            kept += 1
        per_source[src.name] = kept
    if not rows:
        raise DataError(f"problems stage: the configured sources {[s.name for s in cfg.sources]} yielded no problems")
    df = pl.DataFrame(rows, schema=SCHEMA)
    with ctx.output() as out:
        df.write_parquet(out.file(PROBLEMS_FILE))
        out.metrics = {
            "problems": df.height,
            "train": int((df["split"] == "train").sum()),
            "test": int((df["split"] == "test").sum()),
            "with_reference": int(df["reference"].is_not_null().sum()),
            "dropped_duplicate": dropped_dup,
            "per_source": per_source,
        }
    return ctx.ref(out)


def plan_info(cfg, counts):
    """`oger plan`: sources and problem counts (nothing is read but file sizes)."""
    splits = sorted({split for split, _ in counts.rows})
    return StageInfo(
        engine="polars: " + ", ".join(f"{s.name} ({s.kind})" for s in cfg.problems.sources),
        resources="1 CPU",
        notes=[f"{sp}: {counts.count(sp) if counts.count(sp) is not None else '?'} problems" for sp in splits],
    )


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=(),
    files=FILES,
    key_inputs=lambda cfg: key_inputs(cfg.problems),
    run=lambda ctx, inputs: run_problems(ctx.cfg.problems, ctx),
    plan_info=plan_info,
    check_inputs=lambda cfg: check_sources(cfg.problems),
)
