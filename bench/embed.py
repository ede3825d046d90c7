"""Index-stage embedding throughput vs raw SentenceTransformer.encode on the same texts."""

from __future__ import annotations

import shutil
import tempfile
import time

from bench.common import machine, result, table


def texts(n: int = 1200) -> list[str]:
    from oger.synthetic import generate_problems, scripted_solution

    probs = generate_problems(7, n // 2, 2, 4, 20, "+-*", "bench")
    return [
        scripted_solution(style, p.question, (style, p.question), 0.0) for p in probs for style in ("stepwise", "terms")
    ][:n]


def build() -> dict:
    """The index config (its defaults: what a run embeds with) and the texts, built without encoding."""
    from oger.contract.config import IndexConfig

    return {"index": IndexConfig(), "texts": texts()}


def main() -> None:
    import lancedb

    from oger.encoder import encoder_identity, load_encoder
    from oger.stages.index.stage import embed_with_cache

    built = build()
    cfg, data = built["index"], built["texts"]
    model = load_encoder(cfg.encoder)
    identity = {"encoder": encoder_identity(cfg.encoder)}
    model.encode(data[:64], batch_size=cfg.batch_size)  # warm up both paths' kernels
    ours, raw, new_first, new_again = [], [], None, None
    for _ in range(2):  # alternate, best of two each
        t = time.perf_counter()
        model.encode(data, batch_size=cfg.batch_size, normalize_embeddings=True)
        raw.append(time.perf_counter() - t)
        tmp = tempfile.mkdtemp(prefix="oger-embed-")
        try:
            db = lancedb.connect(tmp)
            t = time.perf_counter()
            _, new_first = embed_with_cache(db, cfg, identity, data)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, new_again = embed_with_cache(db, cfg, identity, data)
            again = time.perf_counter() - t
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(data)
    r_ours, r_raw = n / min(ours), n / min(raw)
    table(
        f"embed: {n} texts, batch {cfg.batch_size} ({machine()})",
        ["path", "seconds", "texts/s", "embedded"],
        [
            ["raw SentenceTransformer.encode", min(raw), r_raw, n],
            ["index stage (cache + chunking + LanceDB write)", min(ours), r_ours, new_first],
            ["index stage, rerun (all cached)", again, n / again, new_again],
        ],
    )
    result(
        "embed",
        ratio=r_ours / r_raw,
        texts=n,
        texts_per_s=r_ours,
        raw_texts_per_s=r_raw,
        rerun_new_embeddings=new_again,
    )
