"""Answer extraction and equivalence on math-verify, safe from any thread and bounded in time.

math-verify bounds itself with `signal.alarm`, which only works in a process's main thread, and
Prefect runs tasks in worker threads. So: cheap exact/numeric/letter checks first (they settle most
cases with no sympy at all); the rest run in the main thread with math-verify's own timeout, or,
off the main thread, in a spawned worker process whose result we wait for with a deadline (a stuck
worker is killed and replaced).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_GSM8K = re.compile(r"####\s*([^\n]+)")
_MC_PATTERNS = [
    re.compile(r"answer\s+is\s*:?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"answer\s*:\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])", re.IGNORECASE),
]
_GOLD_LETTER = re.compile(r"^\(?([A-J])\)?\.?$")  # upper case only: gold "e" is Euler's number
_PRED_LETTER = re.compile(r"^\(?([A-J])\)?\.?$", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces) or `\\boxed x`."""
    span = last_boxed_span(text)
    return None if span is None else text[span[1] : span[2]]


def last_boxed_span(text: str) -> tuple[int, int, int] | None:
    """Where `last_boxed`'s answer sits in text: (start of its `\\boxed`, start of the content, end of the
    content), the content stripped of surrounding whitespace. One reading for the verifier and for the
    bonus's entropy options, which need the answer's place rather than its text
    (`oger.generation.entropy_window.answer_span`). An unbalanced `\\boxed{` (a truncated response) is
    skipped for an earlier one."""
    matches = list(_BOXED.finditer(text))
    for m in reversed(matches):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        a, b = i + 1, j
                        while a < b and text[a].isspace():
                            a += 1
                        while b > a and text[b - 1].isspace():
                            b -= 1
                        return m.start(), a, b
                j += 1
            continue  # unbalanced: try an earlier one
        b = i  # `\\boxed x`: the first word, up to whitespace or `$`
        while b < len(text) and not text[b].isspace() and text[b] != "$":
            b += 1
        if b > i:
            return m.start(), i, b
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer in a response: last \\boxed{}, else GSM8K `####`, else an MC letter."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    gsm = _GSM8K.findall(text)
    if gsm:
        return gsm[-1].strip().rstrip(".")
    for pat in _MC_PATTERNS:
        found = pat.findall(text)
        if found:
            return found[-1].upper()
    return None


def _normalize(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace(" ", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("dfrac", "frac").replace("tfrac", "frac")
    return s.rstrip(".")


def _as_number(s: str) -> float | None:
    t = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    if re.fullmatch(r"-?\d+(\.\d+)?", t):
        return float(t)
    return None


def quick_equivalent(pred: str | None, gold: str) -> bool | None:
    """True/False when cheap checks decide, None when math-verify is needed."""
    if pred is None:
        return False
    p, g = _normalize(pred), _normalize(str(gold))
    if p == g:
        return True
    gl = _GOLD_LETTER.match(g)
    if gl:  # multiple choice: compare letters only
        pl = _PRED_LETTER.match(p)
        return bool(pl) and pl.group(1).upper() == gl.group(1).upper()
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= 1e-9 * max(1.0, abs(gn))
    return None


def _math_verify(pred: str, gold: str, timeout_s: int) -> bool:
    """math-verify in the current (main) thread, with its own signal-based timeouts."""
    from math_verify import parse, verify

    try:
        g = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_s)
        p = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout_s)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout_s))
    except Exception:  # math-verify raises on pathological input or timeout: not equivalent
        return False


def _worker_check(pred: str, gold: str, timeout_s: int) -> bool:
    return _math_verify(pred, gold, timeout_s)


class _VerifierPool:
    """One spawned worker process (its main thread owns SIGALRM) shared by all threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
            return self._executor

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def check(self, pred: str, gold: str, timeout_s: float) -> bool:
        for attempt in range(2):
            executor = self._get()
            future = executor.submit(_worker_check, pred, gold, max(1, int(timeout_s)))
            try:
                # The first call also pays for spawning and importing sympy.
                return bool(future.result(timeout=timeout_s + 20.0))
            except FutureTimeout:
                self._kill(executor)  # stuck in C code past its own alarm: give up on this pair
                return False
            except BrokenProcessPool as err:
                self._kill(executor)
                if attempt == 1:
                    raise RuntimeError("the math-verify worker process died twice in a row") from err
        return False

    def close(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False, cancel_futures=True)


_POOL = _VerifierPool()
atexit.register(_POOL.close)


def is_equivalent(pred: str | None, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether a predicted answer equals the gold one; bounded in time from any thread."""
    quick = quick_equivalent(pred, gold)
    if quick is not None:
        return quick
    if threading.current_thread() is threading.main_thread():
        return _math_verify(pred, str(gold), max(1, int(timeout_s)))
    return _POOL.check(pred, str(gold), timeout_s)


def score_response(response: str | None, gold: str, timeout_s: float = 5.0) -> tuple[str | None, bool]:
    """(extracted answer, correct) for a full model response."""
    pred = extract_answer(response)
    return pred, is_equivalent(pred, gold, timeout_s)
