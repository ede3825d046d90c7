"""Index stage with the real MiniLM encoder and LanceDB on disk."""

import numpy as np
import polars as pl
import pytest

from oger.contract import StageContext
from oger.contract.artifacts import ArtifactRef, stage_key, write_artifact
from oger.contract.config import IndexConfig
from oger.contract.errors import StageError
from oger.encoder import encode, load_encoder
from oger.stages.filter.files import KEPT_FILE
from oger.stages.index.files import TeacherIndex
from oger.stages.index.stage import key_inputs, run_index, tag_exists, traces_to_index
from oger.stages.problems.files import read_problems

pytestmark = pytest.mark.slow


def fake_filter_artifact(workdir, rows, key):
    df = pl.DataFrame(rows).with_columns(pl.lit(10).cast(pl.Int64).alias("n_tokens_policy"))
    with write_artifact(workdir, "filter", key, config_slice={}, upstream={}) as out:
        df.write_parquet(out.file(KEPT_FILE))  # only the columns the index stage reads
    return ArtifactRef(stage="filter", key=key, path=str(out.final))


def index_ctx(workdir, key, slice_, identity, filter_ref):
    return StageContext(
        workdir=workdir,
        name="index",
        key=key,
        config_slice=slice_,
        identity=identity,
        upstream={"filter": filter_ref.key},
    )


def kept(filter_ref):
    return pl.read_parquet(f"{filter_ref.path}/{KEPT_FILE}")


def row(tid, pid, text, rnd="r1"):
    return {"trace_id": tid, "problem_id": pid, "teacher": "t", "round": rnd, "text": text}


def test_upsert_tags_cache_and_lookup(tmp_path, small_config):
    cfg = IndexConfig()
    slice_, identity = key_inputs(small_config.load(tmp_path))
    f1 = fake_filter_artifact(
        tmp_path,
        [
            row("a", "p1", "two plus two is four"),
            row("b", "p1", "2 + 2 = 4, so \\boxed{4}"),
            row("c", "p2", "seven times six is 42"),
        ],
        "f" * 64,
    )
    k1 = stage_key("index", 1, slice_, {"filter": f1.key}, identity)
    r1 = run_index(cfg, index_ctx(tmp_path, k1, slice_, identity, f1), kept(f1))
    assert r1.metrics["new_embeddings"] == 3 and r1.metrics["rows"] == 3 and r1.metrics["tag"] == k1

    # A stricter filter for the same round: one trace gone, nothing new to embed.
    f2 = fake_filter_artifact(
        tmp_path, [row("a", "p1", "two plus two is four"), row("c", "p2", "seven times six is 42")], "e" * 64
    )
    k2 = stage_key("index", 1, slice_, {"filter": f2.key}, identity)
    r2 = run_index(cfg, index_ctx(tmp_path, k2, slice_, identity, f2), kept(f2))
    assert r2.metrics["new_embeddings"] == 0 and r2.metrics["rows"] == 2

    # A new round appends; older rows stay.
    f3 = fake_filter_artifact(tmp_path, [row("d", "p1", "four, because 2+2=4", "r2")], "d" * 64)
    k3 = stage_key("index", 1, slice_, {"filter": f3.key}, identity)
    r3 = run_index(cfg, index_ctx(tmp_path, k3, slice_, identity, f3), kept(f3))
    assert r3.metrics["new_embeddings"] == 1 and r3.metrics["rows"] == 3

    db = tmp_path / "index" / "lancedb"
    for tag, expected in ((k1, ["a", "b"]), (k2, ["a"]), (k3, ["a", "d"])):
        assert tag_exists(tmp_path, "teacher_traces", tag)
        got = TeacherIndex(db, "teacher_traces", tag).lookup(["p1", "p3"])
        assert set(got) == {"p1"}
        texts, vecs = got["p1"]
        assert len(texts) == len(expected) and vecs.shape == (len(expected), 384)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # vectors are those of the encoder, exactly
    model = load_encoder("minilm")
    texts, vecs = TeacherIndex(db, "teacher_traces", k1).lookup(["p2"])["p2"]
    assert np.allclose(vecs, encode(model, texts), atol=1e-5)


def test_train_pool_scope_indexes_only_the_rl_pool(tmp_path, small_config):
    """index.problems train_pool: the traces of train.split's first train.max_prompts problems (what
    the train stage looks up); the pool is part of the key, `all` keeps the keys it had."""
    from oger.pipeline import run_local

    cfg = small_config.load(tmp_path, "index.problems=train_pool", "train.max_prompts=4")
    refs = run_local(cfg, until="filter")
    problems = read_problems(refs["problems"])
    pool = problems.filter(pl.col("split") == "train").head(4)["problem_id"].to_list()
    got = traces_to_index(cfg, refs["problems"], refs["filter"])
    assert set(got["problem_id"]) <= set(pool) and got.height > 0
    everything = kept(refs["filter"])
    assert got.height == everything.filter(pl.col("problem_id").is_in(pool)).height < everything.height

    pool_slice = key_inputs(cfg)[0]
    assert pool_slice["problems"] == "train_pool"
    assert pool_slice["pool"] == {"split": "train", "max_prompts": 4}
    assert key_inputs(small_config.load(tmp_path, "index.problems=train_pool", "train.max_prompts=5"))[0] != pool_slice
    assert "problems" not in key_inputs(small_config.load(tmp_path))[0]  # default: all, key as before

    empty = small_config.load(tmp_path, "index.problems=train_pool", "train.split=nosuchsplit")
    with pytest.raises(StageError, match="no kept trace belongs to the pool"):
        traces_to_index(empty, refs["problems"], refs["filter"])


def test_long_texts_chunk_mean_vs_head():
    model = load_encoder("minilm")
    long = " ".join(f"step {i}: add {i} to the total." for i in range(200))  # far over 256 tokens
    head = encode(model, [long], long_text="head")
    mean = encode(model, [long], long_text="chunk_mean")
    assert np.isclose(np.linalg.norm(mean), 1.0, atol=1e-5)
    assert not np.allclose(head, mean, atol=1e-3)
    short = encode(model, ["a short text"], long_text="chunk_mean")
    assert np.allclose(short, encode(model, ["a short text"], long_text="head"), atol=1e-6)
