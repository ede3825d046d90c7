"""Score many responses against gold answers, bounded in time, with a progress bar.

Cheap checks (exact, numeric, choice letter) settle most samples in this process. The rest go to a
pool of spawned processes where math-verify runs in each worker's main thread, so its signal-based
timeouts work; the whole batch also has a deadline, after which unfinished samples count as
incorrect (status "timeout") and the workers are killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from time import monotonic

from oger.verify import _math_verify, extract_answer, quick_equivalent


@dataclass
class Score:
    answer: str | None
    correct: bool
    status: str  # "quick" | "math_verify" | "timeout"


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: leave when the parent process is gone. A killed `oger run` (SIGKILL, the
    OOM killer) cannot shut its pool down, and its spawned workers would wait on their queue
    forever (the kill test left one behind per run)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _warm() -> bool:
    import math_verify  # noqa: F401  (sympy and friends: the slow part of a worker's start)

    return True


class Scorer:
    """Scores responses against golds. The math-verify pool is started once (`warm` lets it spawn
    while the model generates) and reused across benchmarks; a batch past its deadline kills it."""

    def __init__(self, timeout_s: float = 5.0, workers: int = 2):
        self.timeout_s, self.workers = timeout_s, workers
        self._ex: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._ex is None:
            self._ex = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._ex

    def warm(self) -> None:
        for _ in range(self.workers):
            self._pool().submit(_warm)

    def score(self, responses: list[str], golds: list[str], desc: str = "score") -> list[Score]:
        from tqdm.auto import tqdm

        preds = [extract_answer(r) for r in responses]
        scores: list[Score | None] = [None] * len(responses)
        pending = []
        for i, (p, g) in enumerate(zip(preds, golds)):
            q = quick_equivalent(p, str(g))
            if q is None:
                pending.append(i)
            else:
                scores[i] = Score(p, q, "quick")
        bar = tqdm(total=len(responses), initial=len(responses) - len(pending), desc=desc, unit="sample")
        if pending:
            per = max(1, int(self.timeout_s))
            # Workers take their share one after another; +30 s pays for spawning and importing sympy.
            deadline = monotonic() + 30.0 + 2 * self.timeout_s * (len(pending) / self.workers + 1)
            ex = self._pool()
            futures = {ex.submit(_math_verify, preds[i], str(golds[i]), per): i for i in pending}
            left = set(futures)
            while left:
                done, left = wait(left, timeout=max(0.0, deadline - monotonic()), return_when=FIRST_COMPLETED)
                if not done:
                    break
                for f in done:
                    i = futures[f]
                    scores[i] = Score(preds[i], f.exception() is None and bool(f.result()), "math_verify")
                bar.update(len(done))
            for f in left:  # past the deadline: incorrect, and the stuck workers go
                i = futures[f]
                scores[i] = Score(preds[i], False, "timeout")
            if left:
                self._kill()
        bar.update(len(responses) - bar.n)
        bar.close()
        return scores  # type: ignore[return-value]

    def _kill(self) -> None:
        ex, self._ex = self._ex, None
        if ex is not None:
            for proc in list(getattr(ex, "_processes", {}).values()):
                proc.kill()
            ex.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        ex, self._ex = self._ex, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def score_all(
    responses: list[str], golds: list[str], *, timeout_s: float = 5.0, workers: int = 2, desc: str = "score"
) -> list[Score]:
    """One-off scoring with its own pool (the evaluate stage keeps one Scorer for all benchmarks)."""
    scorer = Scorer(timeout_s, workers)
    try:
        return scorer.score(responses, golds, desc)
    finally:
        scorer.close()
