"""The synthetic arithmetic task and its scripted teachers.

Problems are integer expressions over + - * with usual precedence, generated deterministically
from a seed. Two scripted solvers narrate the evaluation in clearly different styles; a slip rate
injects an arithmetic error into one step so the correctness filter has work to do.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

QUESTION_TEMPLATE = "Compute {expr}."


@dataclass(frozen=True)
class ArithProblem:
    tokens: tuple  # alternating ints and operator chars: (3, '+', 4, '*', 5)
    question: str
    answer: int


def render(tokens) -> str:
    return " ".join(str(t) for t in tokens)


def evaluate(tokens) -> int:
    """Usual precedence: fold products first, then sums left to right."""
    terms = _terms(tokens)
    return sum(sign * _product(factors) for sign, factors in terms)


def _terms(tokens):
    """[(sign, [factors...]), ...] for a flat expression."""
    terms, sign, factors = [], 1, [tokens[0]]
    for op, val in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            factors.append(val)
        else:
            terms.append((sign, factors))
            sign, factors = (1 if op == "+" else -1), [val]
    terms.append((sign, factors))
    return terms


def _product(factors) -> int:
    out = 1
    for f in factors:
        out *= f
    return out


def generate_problems(
    seed: int,
    n: int,
    min_operands: int,
    max_operands: int,
    max_value: int,
    ops: str,
    salt: str = "",
    exclude: set[str] | None = None,
    smallest_at_most: int | None = None,
) -> list[ArithProblem]:
    """n distinct problems, deterministic for (seed, salt); salt separates train from test and
    `exclude` (questions of another split) keeps the splits disjoint. `smallest_at_most`: only
    problems with an operand at most this (the explore task: one short strategy always exists)."""
    rng = random.Random(f"{seed}:{salt}")
    seen: set[str] = {q[len("Compute ") : -1] for q in exclude or ()}
    out: list[ArithProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"cannot draw {n} distinct problems with max_value={max_value}, "
                f"operands {min_operands}-{max_operands}: increase max_value"
            )
        k = rng.randint(min_operands, max_operands)
        tokens: list = [rng.randint(1, max_value)]
        for _ in range(k - 1):
            tokens += [rng.choice(ops), rng.randint(1, max_value)]
        expr = render(tokens)
        if smallest_at_most is not None and min(tokens[::2]) > smallest_at_most:
            continue
        if expr in seen:
            continue
        seen.add(expr)
        out.append(ArithProblem(tuple(tokens), QUESTION_TEMPLATE.format(expr=expr), evaluate(tokens)))
    return out


def parse_question(question: str) -> tuple | None:
    """Recover the token tuple from a synthetic question, or None if it is not one."""
    q = question.strip()
    if not (q.startswith("Compute ") and q.endswith(".")):
        return None
    parts = q[len("Compute ") : -1].split()
    if len(parts) % 2 == 0:
        return None
    tokens: list = []
    for i, p in enumerate(parts):
        if i % 2 == 0:
            if not p.lstrip("-").isdigit():
                return None
            tokens.append(int(p))
        else:
            if p not in "+-*" or len(p) != 1:
                return None
            tokens.append(p)
    return tuple(tokens)


# --------------------------------------------------------------------------- scripted solvers


class _Slipper:
    """Decides, once per solution, which step (if any) gets an off-by-small error."""

    def __init__(self, rng: random.Random, slip_rate: float, n_steps: int):
        self.rng = rng
        self.step = rng.randrange(n_steps) if n_steps and rng.random() < slip_rate else -1
        self.count = 0

    def __call__(self, value: int) -> int:
        hit = self.count == self.step
        self.count += 1
        if hit:
            return value + self.rng.choice([-2, -1, 1, 2, 10])
        return value


def solve_stepwise(tokens, rng: random.Random, slip_rate: float) -> str:
    """Narrates precedence: every multiplication first, then additions/subtractions in order."""
    terms = _terms(tokens)
    n_mults = sum(len(f) - 1 for _, f in terms)
    slip = _Slipper(rng, slip_rate, n_mults + len(terms) - 1 or 1)
    lines = [rng.choice([f"We need to compute {render(tokens)}.", f"Let's evaluate {render(tokens)}."])]
    if n_mults:
        lines.append(
            rng.choice(["Multiplication comes before addition and subtraction.", "Do the multiplications first."])
        )
    values = []
    for sign, factors in terms:
        acc = factors[0]
        for f in factors[1:]:
            new = slip(acc * f)
            lines.append(f"{rng.choice(['First,', 'Multiply:', 'Now'])} {acc} * {f} = {new}.")
            acc = new
        values.append((sign, acc))
    total = values[0][1] * values[0][0]
    for sign, v in values[1:]:
        new = slip(total + sign * v)
        lines.append(f"{rng.choice(['Then', 'Next,', 'After that,'])} {total} {'+' if sign > 0 else '-'} {v} = {new}.")
        total = new
    lines.append(rng.choice([f"So the answer is \\boxed{{{total}}}.", f"The result is \\boxed{{{total}}}."]))
    return "\n".join(lines)


def solve_terms(tokens, rng: random.Random, slip_rate: float) -> str:
    """Rewrites the expression as a list of signed terms and keeps a running total."""
    terms = _terms(tokens)
    slip = _Slipper(rng, slip_rate, len(terms))
    term_vals = []
    parts = []
    for sign, factors in terms:
        v = _product(factors)
        term_vals.append(sign * v)
        desc = " * ".join(str(f) for f in factors)
        parts.append(
            f"{'+' if sign > 0 else '-'}({desc})" if len(factors) > 1 else f"{'+' if sign > 0 else '-'}{factors[0]}"
        )
    lines = [
        f"{rng.choice(['Split', 'Break'])} {render(tokens)} into signed terms: {' '.join(parts)}.",
        rng.choice(["Terms: ", "Term values: "]) + ", ".join(str(v) for v in term_vals) + ".",
    ]
    running = 0
    totals = []
    for v in term_vals:
        running = slip(running + v)
        totals.append(running)
    lines.append(rng.choice(["Running total: ", "Cumulative sum: "]) + " -> ".join(str(t) for t in totals) + ".")
    lines.append(f"Answer: \\boxed{{{running}}}")
    return "\n".join(lines)


def solve_verbose(tokens, rng: random.Random, slip_rate: float) -> str:
    """The stepwise solution wrapped in restatement and a re-check: long on purpose."""
    core = solve_stepwise(tokens, rng, slip_rate)
    expr = render(tokens)
    intro = (
        f"Let me restate the problem carefully. The expression is {expr}. "
        "I will follow the standard order of operations, being careful to do every "
        "multiplication before any addition or subtraction, and I will write each step."
    )
    check = (
        "Let me double-check each step above once more by redoing the arithmetic; "
        "every intermediate value matches, so I am confident in the result."
    )
    body, last = core.rsplit("\n", 1)
    return "\n".join([intro, body, check, last])


def _two_factors(tokens) -> tuple[int, int] | None:
    if len(tokens) == 3 and tokens[1] == "*":
        return tokens[0], tokens[2]
    return None


def _repeated_addition(addend: int, times: int, rng: random.Random, slip_rate: float) -> list[str]:
    """`addend` added up `times` times, one line per addition: times - 1 lines (the explore task)."""
    slip = _Slipper(rng, slip_rate, max(times - 1, 1))
    lines = [f"Add {addend} {times} times."]
    total = addend
    for _ in range(times - 1):
        new = slip(total + addend)
        lines.append(f"{total} + {addend} = {new}.")
        total = new
    lines.append(f"Answer: \\boxed{{{total}}}")
    return lines


def solve_add_first(tokens, rng: random.Random, slip_rate: float) -> str | None:
    """Strategy A of the explore task (a * b): the first factor added up b times — b - 1 lines, so
    it runs out of a token budget when b is large. Not a two-factor product: None."""
    ab = _two_factors(tokens)
    return None if ab is None else "\n".join(_repeated_addition(ab[0], ab[1], rng, slip_rate))


def solve_swap(tokens, rng: random.Random, slip_rate: float) -> str | None:
    """Strategy B of the explore task: swap the factors, then add the second one up a times — a - 1
    lines, short when the first factor is small however large the second is."""
    ab = _two_factors(tokens)
    if ab is None:
        return None
    a, b = ab
    return "\n".join([f"Swap: {b} * {a}.", *_repeated_addition(b, a, rng, slip_rate)])


STYLES = {
    "stepwise": solve_stepwise,
    "terms": solve_terms,
    "verbose": solve_verbose,
    "add_first": solve_add_first,
    "swap": solve_swap,
}
EXPLORE_STYLES = ("add_first", "swap")  # products of two factors only (oger.explore): None otherwise
EXPRESSION_STYLES = tuple(s for s in STYLES if s not in EXPLORE_STYLES)  # every + - * expression


def scripted_solution(style: str, question: str, seed_parts: tuple, slip_rate: float) -> str | None:
    """Deterministic solution text for one (problem, sample); None if it is not a synthetic problem."""
    tokens = parse_question(question)
    if tokens is None:
        return None
    digest = hashlib.sha256(repr(seed_parts).encode()).hexdigest()
    rng = random.Random(int(digest[:16], 16))
    return STYLES[style](tokens, rng, slip_rate)
