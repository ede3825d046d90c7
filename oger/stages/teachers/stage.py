"""Run every configured teacher; each teacher's traces are cached on their own so an interrupted
stage resumes with the teachers already done, and adding a teacher generates only the new one.

A teacher with `shards: N` splits its problems into N shards (aligned to its backend's seeding
unit, so the traces equal an unsharded run's); the shards of all teachers go through a fan-out
(`oger.contract.fanout`: in process by default, Prefect's Ray task runner with `runner.kind: ray`), and a
finished shard is cached too, so a resumed stage redoes only the unfinished ones."""

from __future__ import annotations

import hashlib
import importlib
import shutil
import time
from pathlib import Path

import polars as pl

from oger.contract import Budget, ModelUse, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, atomic_write, cache_root, canonical_json
from oger.contract.config import TeacherConfig, TeachersConfig
from oger.contract.errors import StageError
from oger.contract.fanout import Job, run_in_process, split_even
from oger.contract.keys import key_dump
from oger.models import key_model_ref, model_identity
from oger.runtime.precision import native_dtype
from oger.stages.problems.files import read_problems
from oger.stages.teachers import STAGE
from oger.stages.teachers.base import Generation, Prompt
from oger.stages.teachers.files import FILES, SCHEMA, TRACES_FILE

STAGE_VERSION = 2  # 2: transformers teachers sample through oger.generation.hf


# backend name -> the module whose `generate(tcfg, prompts, round)` runs it
BACKENDS = {
    "scripted": "oger.stages.teachers.scripted",
    "dataset": "oger.stages.teachers.dataset",
    **dict.fromkeys(("transformers", "vllm", "openai"), "oger.stages.teachers.sampled"),
}


def _backend(name: str):
    """Backends are imported by module path, only when used (vllm, torch and httpx stay out of
    cached runs); the config schema allows only the names in BACKENDS."""
    return importlib.import_module(BACKENDS[name]).generate


def teacher_identity(tcfg: TeacherConfig) -> dict:
    if tcfg.backend in ("transformers", "vllm"):
        return model_identity(tcfg.model)
    if tcfg.backend == "scripted":
        return {"style": tcfg.model}
    if tcfg.backend == "openai":
        return {"served_model": tcfg.model}
    return {"column": "reference"}


def _generation_slice(tcfg: TeacherConfig) -> dict:
    """The teacher options that change its traces (not URLs, concurrency or timeouts)."""
    d = key_dump(tcfg)  # batch_size stays: with sampling, batch composition changes the random stream
    d["dtype"] = native_dtype(tcfg.dtype)  # `native` keyed as what runs here: bf16 and float32 traces differ
    # A loaded model's fingerprint (in the identity) stands for it; a scripted style or a served
    # model's name is the model.
    d["model"] = key_model_ref(tcfg.model) if tcfg.backend in ("transformers", "vllm") else tcfg.model
    if tcfg.backend == "vllm":  # each sample seeded by its place since vLLM joined the engines (before: one seed)
        d["seeding"] = "per_sample"
    return d


def key_inputs(cfg: TeachersConfig) -> tuple[dict, dict]:
    slice_ = {"round": cfg.round, "teachers": [_generation_slice(t) for t in cfg.teachers]}
    identity = {t.name: teacher_identity(t) for t in cfg.teachers}
    return slice_, identity


def trace_id(round_: str, teacher: str, problem_id: str, sample_index: int) -> str:
    return hashlib.sha256(f"{round_}|{teacher}|{problem_id}|{sample_index}".encode()).hexdigest()[:20]


def select_prompts(problems: pl.DataFrame, tcfg: TeacherConfig) -> list[Prompt]:
    df = problems.filter(pl.col("split") == tcfg.split)
    if tcfg.sources:
        df = df.filter(pl.col("source").is_in(tcfg.sources))
    if tcfg.limit:
        df = df.head(tcfg.limit)
    return [Prompt(r["problem_id"], r["question"], r["reference"], i) for i, r in enumerate(df.iter_rows(named=True))]


def teacher_resources(tcfg: TeacherConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one shard asks Ray for: vLLM needs its tensor-parallel GPUs."""
    gpus = (
        tcfg.num_gpus
        if tcfg.num_gpus is not None
        else (float(tcfg.tensor_parallel_size) if tcfg.backend == "vllm" else 0.0)
    )
    return tcfg.num_cpus, gpus


def shard_ranges(tcfg: TeacherConfig, n_prompts: int) -> list[tuple[int, int]]:
    """The teacher's shards, cut only between blocks of prompts that share a random stream."""
    from oger.stages.teachers.sampled import seeding_block

    return split_even(n_prompts, tcfg.shards, seeding_block(tcfg))


def generate_shard(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> tuple[list[Generation], float]:
    """One shard of one teacher (the function the fan-out runs, here or on a Ray worker)."""
    started = time.time()
    gens = _backend(tcfg.backend)(tcfg, prompts, round_) if prompts else []
    return gens, time.time() - started


def _to_frame(tcfg: TeacherConfig, round_: str, gens: list[Generation]) -> pl.DataFrame:
    s = tcfg.sampling
    rows = [
        {
            "trace_id": trace_id(round_, tcfg.name, g.problem_id, g.sample_index),
            "problem_id": g.problem_id,
            "teacher": tcfg.name,
            "backend": tcfg.backend,
            "model": tcfg.model,
            "round": round_,
            "sample_index": g.sample_index,
            "text": g.text,
            "n_tokens": g.n_tokens,
            "finish_reason": g.finish_reason,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_new_tokens": s.max_new_tokens,
            "seed": s.seed,
        }
        for g in gens
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def _shard_path(workdir: Path, tcfg: TeacherConfig, round_: str, problems_key: str) -> Path:
    key = hashlib.sha256(
        canonical_json(
            {
                "v": STAGE_VERSION,
                "round": round_,
                "problems": problems_key,
                "teacher": _generation_slice(tcfg),
                "identity": teacher_identity(tcfg),
            }
        ).encode()
    ).hexdigest()[:16]
    return cache_root(workdir, STAGE) / f"{tcfg.name}-{key}.parquet"


def _write_atomic(df: pl.DataFrame, path: Path) -> None:
    atomic_write(path, df.write_parquet)


def run_teachers(cfg: TeachersConfig, ctx: StageContext, problems_ref: ArtifactRef) -> ArtifactRef:
    """`ctx.refresh` regenerates every teacher instead of reusing finished per-teacher (and
    per-shard) caches; `ctx.fan_out` runs the shards (default: one after the other in this process)."""
    workdir, refresh, fan_out = ctx.workdir, ctx.refresh, ctx.fan_out
    problems = read_problems(problems_ref)
    frames: dict[str, pl.DataFrame] = {}
    per_teacher: dict[str, dict] = {}
    parts: dict[str, dict[int, list[Generation]]] = {}  # teacher -> shard -> traces
    jobs: list[Job] = []
    for tcfg in cfg.teachers:
        teacher_file = _shard_path(workdir, tcfg, cfg.round, problems_ref.key)
        if teacher_file.is_file() and not refresh:
            frames[tcfg.name] = pl.read_parquet(teacher_file)
            per_teacher[tcfg.name] = {"reused": True, "seconds": 0.0, "shards": 0}
            continue
        prompts = select_prompts(problems, tcfg)
        ranges = shard_ranges(tcfg, len(prompts)) or [(0, 0)]
        parts[tcfg.name] = {}
        per_teacher[tcfg.name] = {"reused": False, "seconds": 0.0, "shards": len(ranges)}
        cpus, gpus = teacher_resources(tcfg)
        # `dtype: native` resolved here, where the key was: a Ray worker on another machine runs what is keyed
        as_keyed = tcfg.model_copy(update={"dtype": native_dtype(tcfg.dtype)})
        for j, (lo, hi) in enumerate(ranges):
            part_file = _part_path(teacher_file, j, len(ranges))
            if len(ranges) > 1 and part_file.is_file() and not refresh:
                parts[tcfg.name][j] = _from_frame(pl.read_parquet(part_file))
                continue
            jobs.append(
                Job(
                    f"teacher-{tcfg.name}-{j + 1}of{len(ranges)}",
                    (as_keyed, prompts[lo:hi], cfg.round),
                    cpus,
                    gpus,
                    meta={"teacher": tcfg, "shard": j, "of": len(ranges), "file": teacher_file},
                )
            )
        _finish_teacher(tcfg, cfg.round, parts[tcfg.name], len(ranges), frames, teacher_file)

    # Shards in completion order: each is saved at once; a teacher is written when its last lands.
    for job, (gens, seconds) in (fan_out or run_in_process)(generate_shard, jobs):
        tcfg, j, n = job.meta["teacher"], job.meta["shard"], job.meta["of"]
        parts[tcfg.name][j] = gens
        per_teacher[tcfg.name]["seconds"] += seconds
        if n > 1:
            _write_atomic(_to_frame(tcfg, cfg.round, gens), _part_path(job.meta["file"], j, n))
        _finish_teacher(tcfg, cfg.round, parts[tcfg.name], n, frames, job.meta["file"])

    traces = pl.concat([frames[t.name] for t in cfg.teachers])
    for t in cfg.teachers:
        df = frames[t.name]
        per_teacher[t.name] = {
            "traces": df.height,
            "problems": df["problem_id"].n_unique(),
            "mean_tokens": round(float(df["n_tokens"].mean() or 0.0), 1),
            "stopped": int((df["finish_reason"] == "stop").sum()),
            # the per-teacher cache file this artifact was built from (`oger gc` removes it with the artifact)
            "cache_file": _shard_path(workdir, t, cfg.round, problems_ref.key).name,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in per_teacher[t.name].items()},
        }
    if traces.height == 0:
        raise StageError(
            "teachers stage: no teacher produced a trace (check each teacher's split, "
            "sources and limit against the problems table)"
        )
    with ctx.output() as out:
        traces.write_parquet(out.file(TRACES_FILE))
        out.metrics = {"traces": traces.height, "round": cfg.round, "per_teacher": per_teacher}
    return ctx.ref(out)


def _part_path(teacher_file: Path, shard: int, of: int) -> Path:
    return teacher_file.parent / "shards" / teacher_file.stem / f"{shard + 1:04d}-of-{of:04d}.parquet"


def _from_frame(df: pl.DataFrame) -> list[Generation]:
    return [
        Generation(r["problem_id"], r["sample_index"], r["text"], r["n_tokens"], r["finish_reason"])
        for r in df.iter_rows(named=True)
    ]


def _finish_teacher(
    tcfg: TeacherConfig, round_: str, got: dict[int, list[Generation]], expected: int, frames: dict, teacher_file: Path
) -> None:
    """Once every shard of a teacher is in, write its cache file (shards in order) and drop the parts."""
    if tcfg.name in frames or len(got) < expected:
        return
    df = _to_frame(tcfg, round_, [g for j in sorted(got) for g in got[j]])
    _write_atomic(df, teacher_file)
    frames[tcfg.name] = df
    shutil.rmtree(teacher_file.parent / "shards" / teacher_file.stem, ignore_errors=True)


_ENGINES = {
    "scripted": "scripted solver",
    "transformers": "transformers generate",
    "dataset": "problems' reference column",
    "openai": "OpenAI-compatible server",
    "vllm": "vLLM offline engine",
}


def plan_info(cfg, counts):
    """`oger plan`: per teacher its engine, shards and their Ray resources, and its token budget."""
    engines, resources, budget, notes = [], [f"runner {cfg.runner.kind}"], [], []
    for t in cfg.teachers.teachers:
        cpus, gpus = teacher_resources(t)
        extra = (
            f" tp={t.tensor_parallel_size}"
            if t.backend == "vllm"
            else " (paged continuous batching)"
            if t.engine == "paged"
            else ""
        )
        engines.append(
            f"{t.name}: {_ENGINES[t.backend]}{extra}" + (f" {t.model}" if t.model and t.backend != "dataset" else "")
        )
        resources.append(f"{t.name}: {t.shards} shard(s) x {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else ""))
        prompts = counts.count(t.split, t.sources, t.limit)
        if t.backend in ("dataset", "scripted"):  # no model generates these
            notes.append(
                f"{t.name}: {prompts if prompts is not None else '?'} x {t.n if t.backend == 'scripted' else 1} "
                f"traces {'read' if t.backend == 'dataset' else 'written by a program'}, no model tokens"
            )
        else:
            budget.append(Budget(t.name, prompts, t.n, t.sampling.max_new_tokens))
    return StageInfo(engine="\n".join(engines), resources="\n".join(resources), budget=budget, notes=notes)


def models(cfg) -> list[ModelUse]:
    """The model of every teacher whose backend loads one here (not the scripted, dataset or
    OpenAI-compatible ones)."""
    return [
        ModelUse(f"teachers.teachers[{i}].model ({t.name})", t.model)
        for i, t in enumerate(cfg.teachers.teachers)
        if t.backend in ("transformers", "vllm")
    ]


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems",),
    files=FILES,
    key_inputs=lambda cfg: key_inputs(cfg.teachers),
    run=lambda ctx, inputs: run_teachers(ctx.cfg.teachers, ctx, inputs["problems"]),
    plan_info=plan_info,
    models=models,
)
