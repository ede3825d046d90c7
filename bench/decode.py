"""HF `generate` on the CPU with the linear weights packed for oneDNN (ours, `pack_linears`, on by
default) against plain HF `generate` (what TRL and a hand-written script run): SmolLM2-135M in
float32 and bfloat16, an RL step's rollouts (2 prompts x 4, 48 tokens, T=1), alternating, best of
three; and the decode step's 211 matrix products alone, per batch size, cold weights as in a
real step. Printed too: how many rows sampled the same tokens on both paths (float rounding may move a
draw across a token boundary, after which a row goes its own way; tests/test_packed_linear.py checks
the distributions teacher-forced).

To time an AVX2-only CPU's kernels on this one, run it with `ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2` in the environment (torch reads them at import; `bench demo` sets them for
`OGER_BENCH_AS_AVX2=1`). oneDNN does not pack bf16 weights there: those rows say so, and `generate`
decodes plain.
"""

from __future__ import annotations

import time

from bench.common import machine, result, table

PROMPTS = ("What is 7 + 8?", "What is 12 - 5 + 3?")
GENERATE = dict(n=4, max_new_tokens=48, temperature=1.0, seed=1, batch_size=8)  # an RL step's rollouts


def build() -> dict:
    """`generate`'s arguments on both paths, bound to its signature without a model or a call
    (tests/test_bench.py): a renamed or dropped argument fails here."""
    import inspect

    from oger.generation.hf import generate

    sig = inspect.signature(generate)
    return {
        f"pack_linears={pack}": sig.bind(None, None, [[0]], **GENERATE, pack_linears=pack).arguments
        for pack in (True, False)
    }


def _generate(model, tok, prompts, pack: bool) -> tuple[float, list[list[int]]]:
    from oger.generation.hf import generate

    t = time.perf_counter()
    rolls = generate(model, tok, prompts, **GENERATE, pack_linears=pack)
    return time.perf_counter() - t, [r.response_ids for r in rolls]


def _matmuls(dtype, rows: int, rounds: int = 3) -> tuple[float, float]:
    """Seconds of one decode step's linear layers (SmolLM2's 30 blocks and LM head), plain vs packed."""
    import torch
    import torch.nn.functional as F

    shapes = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)] * 30
    shapes.append((576, 49152))
    weights = [torch.randn(n, k).to(dtype) for k, n in shapes]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 64) for w in weights]
    xs = {k: torch.randn(rows, k).to(dtype) for k in (576, 1536)}

    def plain_step():
        for (k, _), w in zip(shapes, weights):
            F.linear(xs[k], w)

    def packed_step():
        for (k, _), w in zip(shapes, packed):
            torch.ops.mkldnn._linear_pointwise(xs[k], w, None, "none", [], "")

    best = {}
    for name, fn in (("plain", plain_step), ("packed", packed_step)):
        fn()
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        best[name] = (time.perf_counter() - t) / rounds
    return best["plain"], best["packed"]


def _packs(dtype) -> bool:
    import torch

    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 8)
        return True
    except RuntimeError:
        return False


def main() -> None:
    import torch

    from oger.generation.hf import chat_prompt_ids
    from oger.models import load_causal_lm
    from oger.runtime.packed_linear import available

    if not available():
        print("decode: this torch build has no oneDNN packed linear ops; nothing to compare", flush=True)
        result("decode", skipped=1)
        return
    dtypes = [d for d in (torch.float32, torch.bfloat16) if _packs(d)]
    if torch.bfloat16 not in dtypes:
        print(
            "decode: oneDNN does not pack bf16 weights on this CPU (no AVX512-BW/VL/DQ or "
            "AVX-NE-CONVERT); float32 only",
            flush=True,
        )
    rows, figures = [], {}
    for dtype in [str(d).removeprefix("torch.") for d in dtypes]:
        model, tok = load_causal_lm("smollm2", dtype)
        prompts = [chat_prompt_ids(tok, q) for q in PROMPTS]
        _generate(model, tok, prompts[:1], True)  # warm-up
        plain, packed = [], []
        for _ in range(3):  # alternate so drift in machine load hits both
            s, a = _generate(model, tok, prompts, True)
            packed.append(s)
            s, b = _generate(model, tok, prompts, False)
            plain.append(s)
        same = sum(x == y for x, y in zip(a, b))
        tokens = sum(map(len, a))
        rows.append(
            [
                f"SmolLM2-135M {dtype}",
                "generate, 8 rows x 48",
                min(plain),
                min(packed),
                min(packed) / min(plain),
                tokens / min(packed),
                f"{same} of {len(a)} rows",
            ]
        )
        figures[f"generate_{dtype}_ratio"] = min(packed) / min(plain)
        figures[f"generate_{dtype}_same_rows"] = same
        del model
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for n in (1, 8, 32, 64):
            plain_s, packed_s = _matmuls(dtype, n)
            rows.append([f"decode step's linears, {name}", f"{n} rows", plain_s, packed_s, packed_s / plain_s, "", ""])
            figures[f"linears_{name}_{n}_ratio"] = packed_s / plain_s
    table(
        f"decode: plain HF vs packed weights, seconds ({machine()})",
        ["what", "shape", "plain s", "packed s", "packed / plain", "packed tokens/s", "same tokens"],
        rows,
    )
    result("decode", **figures)
