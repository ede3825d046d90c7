"""Peak memory of one update, the update's log-probs and entropies over all positions at once (as
before `optim.logprob_chunk`) vs in chunks: SmolLM2-135M (float32, CPU, vocabulary 49,152) on one
micro-batch of 2 samples with 2,048-token responses, the entropy term on (its gradient flows through the
entropies, as `loss.entropy_coef > 0` makes it). Each variant runs in a fresh process (`--one`), so its
peak is its own: the process's peak resident memory (`ru_maxrss`) minus its resident memory just before
the update, the CPU allocator's high-water mark for that update. Alternating, twice each.

What it shows at the paper's scale: a float32 (B, T, V) copy here is 2 x 2048 x 49,152 x 4 B = 0.8 GB;
at Qwen2.5's 152k vocabulary and 8k tokens the same copy is ~20 GB for 4 sequences.

Beside each measured peak: the estimate `oger plan` makes of the same update (`estimate`), so the
estimator is checked against the allocator on every run of this bench."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from bench.common import machine, result, table

RESPONSE, SAMPLES, CHUNK, PROMPT = 2048, 2, 1024, 32
VARIANTS = {"all positions at once": None, f"chunks of {CHUNK}": CHUNK}


def train_config(chunk: int | None):
    """The update's config: the whole batch in one micro-batch, the entropy term on."""
    from oger.contract.config import TrainConfig

    return TrainConfig(
        algorithm="grpo",
        rollout={"max_new_tokens": RESPONSE},
        optim={"micro_batch_size": SAMPLES, "logprob_chunk": chunk},
        loss={"entropy_coef": 0.001},
    )


def batch(vocab: int):
    from bench.update import spread_batch

    return spread_batch(vocab, SAMPLES, prompt=PROMPT, shortest=RESPONSE, longest=RESPONSE)


def estimate_mib(chunk: int | None) -> float:
    """`oger.runtime.estimate.update_peak` of the update `one` measures, in MiB above its start: SmolLM2's
    shape, float32 on the CPU, one micro-batch of equal-length rows (no padding mask), the entropy's
    gradient on, no gradient checkpointing; the weights count (transformers maps the safetensors file and
    the forward pages them in after the baseline is read), no gradients (made in the layers' backward,
    after the peak) and no optimizer state (no optimizer step)."""
    from oger.runtime.estimate import MicroBatch, Numerics, update_peak
    from oger.runtime.model_shapes import TABLE, TABLE_ALIASES

    shape = TABLE[TABLE_ALIASES["smollm2"]]
    mb = MicroBatch(rows=SAMPLES, seq=PROMPT + RESPONSE, response=RESPONSE)
    pieces = update_peak(shape, mb, Numerics(), {"weights": shape.params * 4}, chunk, entropy_grad=True)
    return sum(pieces.values()) / 2**20


def build() -> dict:
    """The configs and the batch main() measures, without loading the model (tests/test_bench.py)."""
    from bench.update import SMOLLM2_VOCAB

    return {"configs": {name: train_config(c) for name, c in VARIANTS.items()}, "batch": batch(SMOLLM2_VOCAB)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(chunk: int | None) -> dict:
    """One update in this process: (MiB above the pre-update resident memory at the peak, seconds)."""
    import time

    import torch

    from oger.models import load_causal_lm
    from oger.stages.train.update import update

    torch.manual_seed(0)
    model, tok = load_causal_lm("smollm2", "float32")
    samples = batch(model.config.vocab_size)
    cfg = train_config(chunk)
    adv = torch.tensor([1.0, -1.0])
    before = _rss_bytes()
    t0 = time.perf_counter()
    update(model, None, samples, adv, cfg, tok.pad_token_id)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_mib": (peak - before) / 2**20, "seconds": seconds}


def main() -> None:
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(2):
        for name, chunk in VARIANTS.items():
            out = subprocess.run(
                [sys.executable, "-m", "bench.update_memory", "--one", json.dumps(chunk)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for name, rs in runs.items():
        low, high = min(r["peak_mib"] for r in rs), max(r["peak_mib"] for r in rs)
        guess = estimate_mib(VARIANTS[name])
        rows.append([name, low, high, guess, guess / low, min(r["seconds"] for r in rs)])
    table(
        f"update_memory: one SmolLM2 update, {SAMPLES} x {RESPONSE}-token responses ({machine()})",
        [
            "log-probs and entropy",
            "peak MiB above start (min)",
            "(max)",
            "estimate MiB",
            "estimate / min",
            "seconds (min)",
        ],
        rows,
    )
    (whole, whole_vs), (chunked, chunked_vs) = ((r[1], r[4]) for r in rows)
    result(
        "update_memory",
        whole_mib=whole,
        chunked_mib=chunked,
        ratio=chunked / whole,
        estimate_ratio_whole=whole_vs,
        estimate_ratio_chunked=chunked_vs,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one(json.loads(sys.argv[2]))))
    else:
        main()
