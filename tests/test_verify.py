import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from oger.verify import extract_answer, is_equivalent, last_boxed, quick_equivalent, score_response


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{2}} and finally \boxed{3}.", "3"),
        (r"nested \boxed{\frac{a}{b^{2}}}", r"\frac{a}{b^{2}}"),
        (r"\fbox{7}", "7"),
        (r"the answer is $\boxed 5$", "5"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1,234"),
        ("Thus the answer is (C).", "C"),
        ("Answer: B", "B"),
        ("no final answer here", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_skips_unbalanced():
    assert last_boxed(r"\boxed{1} then \boxed{2") == "1"


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("72", "72", True),
        ("72.0", "72", True),
        ("1,234", "1234", True),
        ("73", "72", False),
        ("-10", "-10", True),
        ("C", "C", True),
        ("(c)", "C", True),
        ("B", "C", False),
        (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
        (None, "1", False),
    ],
)
def test_quick_cases(pred, gold, ok):
    assert is_equivalent(pred, gold) is ok


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        (r"\frac{2}{4}", r"\frac{1}{2}", True),
        ("0.5", r"\frac{1}{2}", True),
        (r"\sqrt{2}", r"\frac{1}{2}", False),
        ("(x+1)^2", "x^2+2x+1", True),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    ],
)
def test_math_verify_cases_main_thread(pred, gold, ok):
    assert quick_equivalent(pred, gold) is None or quick_equivalent(pred, gold) == ok
    assert is_equivalent(pred, gold) is ok


def test_works_from_worker_threads():
    pairs = [
        (r"\frac{2}{4}", r"\frac{1}{2}", True),
        (r"\sqrt{2}", "2", False),
        ("x^2+2x+1", "(x+1)^2", True),
        ("3", "3", True),
    ]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: is_equivalent(p[0], p[1], timeout_s=5), pairs))
    assert got == [p[2] for p in pairs]


def _in_process(pair):
    return is_equivalent(pair[0], pair[1], timeout_s=5)


def test_works_from_worker_processes():
    with ProcessPoolExecutor(2) as pool:
        got = list(pool.map(_in_process, [(r"\frac{3}{6}", r"\frac{1}{2}"), (r"\pi", "3")]))
    assert got == [True, False]


def test_bounded_in_time_off_main_thread():
    # A pathological power tower makes sympy work hard; the call must still return quickly.
    hard = "9^{9^{9^{9^{9}}}}"
    result = {}

    def run():
        t = time.time()
        result["ok"] = is_equivalent(hard, "9^{9^{9^{9^{8}}}}", timeout_s=2)
        result["s"] = time.time() - t

    th = threading.Thread(target=run)
    th.start()
    th.join(60)
    assert not th.is_alive()
    assert result["ok"] is False
    assert result["s"] < 30


def test_score_response():
    assert score_response(r"... so the answer is \boxed{204}", "204") == ("204", True)
    assert score_response("I don't know", "204") == (None, False)
