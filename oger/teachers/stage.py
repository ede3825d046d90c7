"""Run every configured teacher; each teacher's traces are cached on their own so an interrupted
stage resumes with the teachers already done, and adding a teacher generates only the new one."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import polars as pl

from oger.artifacts import ArtifactRef, canonical_json, write_artifact
from oger.config import TeacherConfig, TeachersConfig
from oger.errors import StageError
from oger.models import key_model_ref, model_identity
from oger.teachers.base import Generation, Prompt

STAGE = "teachers"
STAGE_VERSION = 2  # 2: transformers teachers sample through oger.rl.rollout
SCHEMA = {
    "trace_id": pl.Utf8, "problem_id": pl.Utf8, "teacher": pl.Utf8, "backend": pl.Utf8,
    "model": pl.Utf8, "round": pl.Utf8, "sample_index": pl.Int64, "text": pl.Utf8,
    "n_tokens": pl.Int64, "finish_reason": pl.Utf8, "temperature": pl.Float64,
    "top_p": pl.Float64, "max_new_tokens": pl.Int64, "seed": pl.Int64,
}


def _backend(name: str):
    """Backends are imported only when used (vllm, torch and httpx stay out of cached runs)."""
    if name == "scripted":
        from oger.teachers import scripted as mod
    elif name == "transformers":
        from oger.teachers import hf as mod
    elif name == "dataset":
        from oger.teachers import dataset as mod
    elif name == "openai":
        from oger.teachers import openai_backend as mod
    elif name == "vllm":
        from oger.teachers import vllm_backend as mod
    else:  # pragma: no cover - the config schema rejects other names
        raise ValueError(name)
    return mod.generate


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
    d = tcfg.model_dump(mode="json")
    # batch_size stays: with sampling, batch composition changes the random stream.
    for k in ("base_url", "api_key_env", "max_concurrency", "request_timeout_s"):
        d.pop(k)
    if tcfg.backend in ("transformers", "vllm"):
        d["model"] = key_model_ref(tcfg.model)  # the fingerprint in the identity stands for it
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
    return [Prompt(r["problem_id"], r["question"], r["reference"]) for r in df.iter_rows(named=True)]


def _to_frame(tcfg: TeacherConfig, round_: str, gens: list[Generation]) -> pl.DataFrame:
    s = tcfg.sampling
    rows = [{
        "trace_id": trace_id(round_, tcfg.name, g.problem_id, g.sample_index),
        "problem_id": g.problem_id, "teacher": tcfg.name, "backend": tcfg.backend,
        "model": tcfg.model, "round": round_, "sample_index": g.sample_index, "text": g.text,
        "n_tokens": g.n_tokens, "finish_reason": g.finish_reason, "temperature": s.temperature,
        "top_p": s.top_p, "max_new_tokens": s.max_new_tokens, "seed": s.seed,
    } for g in gens]
    return pl.DataFrame(rows, schema=SCHEMA)


def _shard_path(workdir: Path, tcfg: TeacherConfig, round_: str, problems_key: str) -> Path:
    key = hashlib.sha256(canonical_json({
        "v": STAGE_VERSION, "round": round_, "problems": problems_key,
        "teacher": _generation_slice(tcfg), "identity": teacher_identity(tcfg),
    }).encode()).hexdigest()[:16]
    return workdir / "cache" / "teachers" / f"{tcfg.name}-{key}.parquet"


def _write_atomic(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    df.write_parquet(tmp)
    os.replace(tmp, path)


def run_teachers(cfg: TeachersConfig, workdir: Path, key: str, config_slice: dict, identity: dict,
                 problems_ref: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """`refresh` regenerates every teacher instead of reusing finished per-teacher shards."""
    problems = pl.read_parquet(Path(problems_ref.path) / "problems.parquet")
    frames, per_teacher = [], {}
    for tcfg in cfg.teachers:
        shard = _shard_path(workdir, tcfg, cfg.round, problems_ref.key)
        started = time.time()
        if shard.is_file() and not refresh:
            df, reused = pl.read_parquet(shard), True
        else:
            prompts = select_prompts(problems, tcfg)
            gens = _backend(tcfg.backend)(tcfg, prompts, cfg.round) if prompts else []
            df, reused = _to_frame(tcfg, cfg.round, gens), False
            _write_atomic(df, shard)
        frames.append(df)
        per_teacher[tcfg.name] = {
            "traces": df.height,
            "problems": df["problem_id"].n_unique(),
            "mean_tokens": round(float(df["n_tokens"].mean() or 0.0), 1),
            "stopped": int((df["finish_reason"] == "stop").sum()),
            "seconds": round(time.time() - started, 2),
            "reused": reused,
        }
    traces = pl.concat(frames)
    if traces.height == 0:
        raise StageError("teachers stage: no teacher produced a trace (check each teacher's split, "
                         "sources and limit against the problems table)")
    with write_artifact(workdir, STAGE, key, config_slice=config_slice,
                        upstream={"problems": problems_ref.key}, identity=identity) as out:
        traces.write_parquet(out.file("traces.parquet"))
        out.metrics = {"traces": traces.height, "round": cfg.round, "per_teacher": per_teacher}
    return ArtifactRef(stage=STAGE, key=key, path=str(out.final), metrics=out.metrics)


def read_traces(ref: ArtifactRef) -> pl.DataFrame:
    return pl.read_parquet(Path(ref.path) / "traces.parquet")
