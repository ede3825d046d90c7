"""Data parallelism over Python threads for small models on a CPU (SFT and the train update), and
single-threaded decoding for them.

Why: the tiny policy's matrices (128 wide) are too small for torch's intra-op threads, whose
OpenMP workers synchronise on every op. On the 2-core machine an SFT step took 0.205 s with two
intra-op threads (idle threads sleeping, OMP_WAIT_POLICY=PASSIVE) and 0.155 s as two Python
threads with one intra-op thread each, each on half of the batch (docs/PERFORMANCE.md, "demo").
torch releases the GIL inside ops, so the halves really run side by side, and nothing spins.

Gradients are taken per part with `torch.autograd.grad` and added to `.grad` in part order, so
the result does not depend on which thread finishes first (bitwise, run to run); it equals the
one-pass gradient up to float rounding. Not for DDP ranks (their all-reduce hooks run on
`.backward()`), GPUs or large models, where intra-op threads already keep the cores busy.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# Above this size intra-op threads scale well (MiniLM, 22M: two threads per half gained 5%) and
# two concurrent halves would double the activation memory for nothing.
MAX_PARAMETERS = 20_000_000


def small_cpu_model(model) -> bool:
    """A model on the CPU small enough that its ops are too small to share between threads."""
    params = list(model.parameters())
    return params[0].device.type == "cpu" and sum(p.numel() for p in params) <= MAX_PARAMETERS


def thread_workers(model, distributed: bool = False) -> int:
    """How many threads to split a batch over: torch's intra-op thread count for a small model on
    the CPU in a single process, else 1 (the plain sequential path)."""
    if distributed or torch.get_num_threads() < 2 or not small_cpu_model(model):
        return 1
    return torch.get_num_threads()


def decode_threads(model) -> contextlib.AbstractContextManager:
    """Token-by-token decoding of a small CPU model on one intra-op thread: 64 tiny-policy rollouts
    of 56 tokens took 0.41 s on one thread and 0.66 s on two (per-token ops are a few
    microseconds of work; waking the second thread costs more)."""
    return one_intra_op_thread() if small_cpu_model(model) else contextlib.nullcontext()


_single = {"depth": 0, "before": 0}
_single_lock = threading.Lock()


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch ops use a single intra-op thread inside the block. The count is process-wide, so
    nested or concurrent blocks (two evaluation jobs side by side) share one counter: the first
    to enter saves the count, the last to leave restores it."""
    with _single_lock:
        if _single["depth"] == 0:
            _single["before"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _single["depth"] += 1
    try:
        yield
    finally:
        with _single_lock:
            _single["depth"] -= 1
            if _single["depth"] == 0:
                torch.set_num_threads(_single["before"])


class BatchThreads:
    """A pool of `workers` threads for a whole loop, each running torch ops on one intra-op thread.

    The pool lives as long as the loop: fresh threads every step made an SFT step 20% slower
    (each new thread sets up its OpenMP and MKL state again). `workers` 1 runs everything inline.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "BatchThreads":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """fn over items, results in item order."""
        if self.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="oger-batch")
        with one_intra_op_thread():
            return list(self._pool.map(fn, items))

    def backward(
        self, params: list[torch.Tensor], loss_fn: Callable[[T], tuple[torch.Tensor, R]], parts: Sequence[T]
    ) -> list[R]:
        """Add d loss_fn(part)[0] / d params to each param's `.grad` for every part and return the
        parts' second values (metrics) in part order. The gradients are summed in part order, so
        the result is the same whichever thread ends first."""

        def one(part: T):
            loss, extra = loss_fn(part)
            return torch.autograd.grad(loss, params, allow_unused=True), extra

        results = self.map(one, parts)
        with torch.no_grad():
            for i, p in enumerate(params):
                for grads, _ in results:
                    if grads[i] is None:
                        continue
                    if p.grad is None:
                        p.grad = grads[i].detach().clone()
                    else:
                        p.grad.add_(grads[i])
        return [extra for _, extra in results]


def split_by_length(indices: Sequence[int], length: Callable[[int], int], workers: int) -> list[list[int]]:
    """`indices` cut into 2 x workers runs of similar length, longest run first. Each run pads only
    to its own longest member, and the pool hands the next run to whichever thread is free, so
    the threads end together (longest first). On the tiny SFT: 0.144 s per step, against 0.155 s
    for two halves dealt round-robin (every half padded to the batch's longest) and 0.19 s for
    two contiguous halves (one thread got all the long sequences)."""
    order = sorted(indices, key=length, reverse=True)
    parts = 2 * workers if workers > 1 else 1
    bounds = [round(k * len(order) / parts) for k in range(parts + 1)]
    return [order[bounds[k] : bounds[k + 1]] for k in range(parts) if bounds[k] < bounds[k + 1]]
