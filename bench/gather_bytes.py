"""What a training step sends through `all_gather_object` on 2 ranks: the per-sample records with their
texts (how every step gathered them to rank 0 before each rank wrote its own rollouts) vs the records'
metric fields alone (now: the texts stay in each rank's `rollouts.rank-N.jsonl`). The tiny config's train
stage on 2 gloo ranks (torchrun) for a few steps; the bytes are the pickled size of each rank's part,
as `all_gather_object` pickles it, from the run's own records, summed over the ranks (every rank
receives every part).

Why it matters at the paper's scale: 8,192-token responses are ~30 KB of text each; 128 samples a step
over 8 ranks put ~4 MB of text through the gather to every rank each step, where the metrics need a few
hundred bytes per sample."""

from __future__ import annotations

import pickle
import statistics

from bench.common import machine, result, table, tiny_config

STEPS, RANKS = 4, 2


def build() -> dict:
    """The config main() runs (tests/test_bench.py)."""
    return {"config": _config()}


def _config():
    return tiny_config(
        f"train.steps={STEPS}", f"train.distributed.num_processes={RANKS}", "train.rollout.batch_prompts=4"
    )


def per_step_bytes(rows: list[dict]) -> list[tuple[int, int, int]]:
    """(step, bytes with texts, bytes without) per step; a step's rows in rank order, split evenly."""
    out = []
    for step in sorted({r["step"] for r in rows}):
        mine = [r for r in rows if r["step"] == step]
        n = len(mine) // RANKS
        parts = [mine[i * n : (i + 1) * n] for i in range(RANKS)]
        with_text = sum(len(pickle.dumps(p)) for p in parts)
        without = sum(len(pickle.dumps([{k: v for k, v in r.items() if k != "text"} for r in p])) for p in parts)
        out.append((step, with_text, without))
    return out


def main() -> None:
    from oger import pipeline
    from oger.stages.train.files import read_rollouts

    print(machine())
    base = _config()
    rows = read_rollouts(pipeline.run_local(base, until="train")["train"])  # upstream cached across benches
    sizes = per_step_bytes(rows)
    table(
        f"all_gather_object per step ({base.name}, {RANKS} gloo ranks, {len(rows) // len(sizes)} samples a step)",
        ["step", "records with texts (before)", "metric fields only (now)", "ratio"],
        [[s, a, b, b / a] for s, a, b in sizes],
    )
    before, now = statistics.fmean(a for _, a, _ in sizes), statistics.fmean(b for _, _, b in sizes)
    result("gather_bytes", before_bytes=before, now_bytes=now, ratio=now / before)
