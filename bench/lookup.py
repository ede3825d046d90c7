"""Per-step teacher-reference fetch: LanceDB at a tag (BTree on problem_id) vs an in-memory dict."""

from __future__ import annotations

import random
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa

from bench.common import machine, result, table


def build(rows: int = 50_000, per_problem: int = 10, dim: int = 384, batch: int = 8, calls: int = 50) -> dict:
    """The traces table's columns (unit vectors, `per_problem` rows per problem) and the per-call
    problem batches, built without writing or reading LanceDB."""
    rng = np.random.default_rng(0)
    n_problems = rows // per_problem
    pids = [f"p{i:06d}" for i in range(n_problems) for _ in range(per_problem)]
    vecs = rng.standard_normal((rows, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = [f"trace {i} " + "x" * 200 for i in range(rows)]
    sampler = random.Random(0)
    batches = [sampler.sample(range(n_problems), batch) for _ in range(calls)]
    return {"pids": pids, "vecs": vecs, "texts": texts, "batches": batches}


def main(rows: int = 50_000, per_problem: int = 10, dim: int = 384, batch: int = 8, calls: int = 50) -> None:
    import lancedb
    from lancedb.index import BTree

    from oger.stages.index.files import TeacherIndex

    built = build(rows, per_problem, dim, batch, calls)
    pids, vecs, texts, batches = built["pids"], built["vecs"], built["texts"], built["batches"]
    tmp = tempfile.mkdtemp(prefix="oger-lookup-")
    try:
        db = lancedb.connect(tmp)
        tbl = db.create_table(
            "teacher_traces",
            pa.table(
                {
                    "trace_id": [f"t{i}" for i in range(rows)],
                    "problem_id": pids,
                    "text": texts,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
                }
            ),
        )
        tbl.create_index("problem_id", config=BTree())
        tbl.tags.create("bench", tbl.version)
        index = TeacherIndex(tmp, "teacher_traces", "bench")
        memory: dict[str, tuple[list[str], np.ndarray]] = {}
        for i in range(0, rows, per_problem):
            memory[pids[i]] = (texts[i : i + per_problem], vecs[i : i + per_problem])
        index.lookup([f"p{j:06d}" for j in batches[0]])  # open files, warm caches
        t = time.perf_counter()
        for b in batches:
            got = index.lookup([f"p{j:06d}" for j in b])
        lance_ms = (time.perf_counter() - t) / calls * 1000
        assert all(v[1].shape == (per_problem, dim) for v in got.values())
        t = time.perf_counter()
        for b in batches:
            _ = {f"p{j:06d}": memory[f"p{j:06d}"] for j in b}
        numpy_ms = (time.perf_counter() - t) / calls * 1000
        size_mb = sum(p.stat().st_size for p in __import__("pathlib").Path(tmp).rglob("*") if p.is_file()) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table(
        f"lookup: {batch} problems x {per_problem} traces per call, {rows} rows ({machine()})",
        ["path", "ms per call"],
        [["LanceDB at tag (BTree on problem_id)", lance_ms], ["in-memory dict of numpy arrays", numpy_ms]],
    )
    result(
        "lookup",
        lance_ms=lance_ms,
        numpy_ms=numpy_ms,
        rows=rows,
        index_mb=size_mb,
        ratio=lance_ms / max(numpy_ms, 1e-9),
    )
