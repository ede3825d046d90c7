"""index stage: embed filtered teacher traces and upsert them into a versioned LanceDB table.

One table of teacher traces per workdir. The stage upserts by trace_id (idempotent), replaces
the rows of the rounds it covers (so a stricter filter removes traces), keeps an embedding cache
keyed by text hash (a rerun embeds only unseen texts), and tags the resulting table version with
its stage key. Training reads the table *at that tag*, never "latest" (`files.TeacherIndex`; where the
table lives and its tags: `versions`, read by other modules through `files`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from oger.contract import ModelUse, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, canonical_json
from oger.contract.config import IndexConfig, OgerConfig
from oger.contract.errors import StageError
from oger.contract.keys import key_dump
from oger.encoder import encode, encoder_identity, load_encoder, text_hash
from oger.models import key_model_ref
from oger.stages.filter.files import read_kept
from oger.stages.index import STAGE
from oger.stages.index.files import FILES, INDEX_FILE, vectors_of
from oger.stages.index.versions import db_path, open_committed
from oger.stages.problems.files import read_problems, rl_pool

STAGE_VERSION = 1


def key_inputs(cfg: OgerConfig) -> tuple[dict, dict]:
    slice_ = key_dump(cfg.index)
    slice_["encoder"] = key_model_ref(cfg.index.encoder)
    if cfg.index.problems == "train_pool":  # which problems are in the pool
        slice_["pool"] = {"split": cfg.train.split, "max_prompts": cfg.train.max_prompts}
    return slice_, {"encoder": encoder_identity(cfg.index.encoder)}


def _connect(workdir: Path):
    import lancedb

    path = db_path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return lancedb.connect(str(path))


def _vectors_to_arrow(vecs: np.ndarray) -> pa.FixedSizeListArray:
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])


def _cache_table_name(identity: dict, long_text: str) -> str:
    """One cache per encoder identity (fingerprint, or hub id) and long-text mode."""
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:12]
    return f"embedding_cache_{digest}_{long_text}"


def cached_embeddings(db, name: str, hashes: list[str]) -> dict[str, np.ndarray]:
    tbl = open_committed(db, name)
    if tbl is None:
        return {}
    want = set(hashes)
    tbl = tbl.to_arrow()
    vecs = vectors_of(tbl.column("vector"))
    return {h: vecs[i] for i, h in enumerate(tbl.column("text_hash").to_pylist()) if h in want}


def embed_with_cache(db, cfg: IndexConfig, identity: dict, texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors for texts, encoding only those whose hash is not in the cache; (vectors, n_new)."""
    name = _cache_table_name(identity, cfg.long_text)
    hashes = [text_hash(t) for t in texts]
    known = cached_embeddings(db, name, hashes)
    missing = {}
    for h, t in zip(hashes, texts):
        if h not in known and h not in missing:
            missing[h] = t
    if missing:
        model = load_encoder(cfg.encoder)
        vecs = encode(model, list(missing.values()), cfg.batch_size, cfg.long_text, show_progress=True)
        new = pa.table({"text_hash": list(missing.keys()), "vector": _vectors_to_arrow(vecs)})
        cache = open_committed(db, name)
        if cache is not None:
            (cache.merge_insert("text_hash").when_matched_update_all().when_not_matched_insert_all().execute(new))
        else:
            db.create_table(name, new, mode="overwrite")
        known.update(zip(missing.keys(), vecs))
    return np.stack([known[h] for h in hashes]).astype(np.float32), len(missing)


def _tag(tbl, tag: str) -> None:
    if tag in tbl.tags.list():
        tbl.tags.update(tag, tbl.version)
    else:
        tbl.tags.create(tag, tbl.version)


def traces_to_index(cfg: OgerConfig, problems_ref: ArtifactRef, filter_ref: ArtifactRef) -> pl.DataFrame:
    """The filter's kept traces, or (`index.problems: train_pool`) those of the RL pool's problems."""
    kept = read_kept(filter_ref)
    if kept.height == 0:
        raise StageError("index stage: the filter output is empty")
    if cfg.index.teachers is not None:
        kept = kept.filter(pl.col("teacher").is_in(cfg.index.teachers))
        if kept.height == 0:
            raise StageError(
                f"index stage: index.teachers {cfg.index.teachers}: no kept trace of theirs "
                f"(teachers with kept traces: {sorted(set(read_kept(filter_ref)['teacher']))})"
            )
    if cfg.index.problems == "train_pool":
        problems = read_problems(problems_ref)
        pool = rl_pool(problems, cfg.train.split, cfg.train.max_prompts)["problem_id"]
        kept = kept.filter(pl.col("problem_id").is_in(pool.implode()))
        if kept.height == 0:
            raise StageError(
                f"index stage: index.problems is train_pool, and no kept trace belongs to "
                f"the pool (train.split={cfg.train.split!r}, train.max_prompts="
                f"{cfg.train.max_prompts})"
            )
    return kept


def run_index(cfg: IndexConfig, ctx: StageContext, kept: pl.DataFrame) -> ArtifactRef:
    from lancedb.index import BTree

    workdir, key, identity = ctx.workdir, ctx.key, ctx.identity
    db = _connect(workdir)
    vecs, n_new = embed_with_cache(db, cfg, identity, kept["text"].to_list())
    data = pa.table(
        {
            "trace_id": kept["trace_id"].to_list(),
            "problem_id": kept["problem_id"].to_list(),
            "teacher": kept["teacher"].to_list(),
            "round": kept["round"].to_list(),
            "text": kept["text"].to_list(),
            "text_hash": [text_hash(t) for t in kept["text"].to_list()],
            "n_tokens": pa.array(kept["n_tokens_policy"].to_list(), pa.int64()),
            "vector": _vectors_to_arrow(vecs),
        }
    )
    rounds = sorted(set(kept["round"].to_list()))
    tbl = open_committed(db, cfg.table)
    if tbl is not None:
        in_rounds = ", ".join(f"'{r}'" for r in rounds)
        (
            tbl.merge_insert("trace_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"round IN ({in_rounds})")
            .execute(data)
        )
    else:
        tbl = db.create_table(cfg.table, data, mode="overwrite")
    tbl.create_index("problem_id", config=BTree(), replace=True)
    _tag(tbl, key)
    info = {"db": str(db_path(workdir)), "table": cfg.table, "tag": key, "version": tbl.version}
    with ctx.output() as out:
        out.file(INDEX_FILE).write_text(json.dumps(info, indent=2))
        out.metrics = {
            "rows": tbl.count_rows(),
            "rows_this_stage": data.num_rows,
            "problems": cfg.problems,
            "new_embeddings": n_new,
            "tag": key,
            "version": tbl.version,
            "rounds": rounds,
            "dim": int(vecs.shape[1]),
        }
    return ctx.ref(out)


def tag_exists(workdir: Path, table: str, tag: str) -> bool:
    """A cached index artifact is only valid while its tag still exists in the table."""
    path = db_path(workdir)
    if not path.is_dir():
        return False
    import lancedb

    tbl = open_committed(lancedb.connect(str(path)), table)
    return tbl is not None and tag in tbl.tags.list()


def plan_info(cfg, counts):
    """`oger plan`: the encoder and the LanceDB table (no generation)."""
    i = cfg.index
    notes = ["embeds only texts missing from the embedding cache"]
    if i.problems == "train_pool":
        notes.append(f"only the traces of the RL pool ({cfg.train.split}, first {cfg.train.max_prompts})")
    if i.teachers is not None:
        notes.append(f"only the traces of {', '.join(i.teachers)}")
    return StageInfo(
        engine=f"sentence-transformers {i.encoder} ({i.long_text}) -> LanceDB {i.table}", resources="CPU", notes=notes
    )


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems", "filter"),
    files=FILES,
    key_inputs=key_inputs,
    run=lambda ctx, inputs: run_index(
        ctx.cfg.index, ctx, traces_to_index(ctx.cfg, inputs["problems"], inputs["filter"])
    ),
    plan_info=plan_info,
    # the artifact points at a table version: without its tag it is not complete
    is_complete=lambda cfg, ref: tag_exists(cfg.workdir_path, cfg.index.table, ref.key),
    models=lambda cfg: [ModelUse("index.encoder", cfg.index.encoder)],
)
