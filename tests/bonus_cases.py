"""Hand-written reward cases: problems with teacher traces, a paraphrase, a genuinely different correct
method and degenerate correct variants (bare answer, off-topic padding, random words, a language
switch, repetition). Shared by the real-MiniLM bonus test and the hack table in docs/ALGORITHM.md."""

from __future__ import annotations

import random

ESSAY = (
    "The history of the printing press is a story of slow diffusion. Gutenberg's workshop in Mainz "
    "combined movable metal type, oil-based ink and a screw press adapted from wine making. Within "
    "fifty years presses operated in more than two hundred European cities, and the price of books "
    "fell sharply, which changed how universities, churches and merchants stored and shared "
    "knowledge. Historians still debate how quickly literacy followed."
)

_WORDS = (
    "river window copper lantern orbit velvet canyon mosaic thunder pepper harbor saddle puzzle "
    "glacier violin meadow anchor tunnel quartz ribbon falcon cactus pillow marble comet jungle "
    "ladder feather beacon walnut"
).split()


def random_words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


CASES = [
    {
        "problem": "Find the sum of all positive divisors of 36.",
        "answer": "91",
        "teacher_traces": [
            "Factor 36 as 2^2 * 3^2. The divisor-sum function is multiplicative, so the sum of divisors is "
            "(1 + 2 + 4)(1 + 3 + 9) = 7 * 13 = 91. Therefore the answer is \\boxed{91}.",
            "Write 36 = 2^2 3^2. Using sigma(p^a) = (p^(a+1) - 1)/(p - 1), we get sigma(4) = 7 and "
            "sigma(9) = 13, and multiplying gives 91. So the sum is \\boxed{91}.",
        ],
        "paraphrase": "We factor 36 = 2^2 * 3^2. Since the sum of divisors is multiplicative, it equals "
        "(1 + 2 + 4) times (1 + 3 + 9), which is 7 * 13 = 91. The answer is \\boxed{91}.",
        "different": "List the divisors in pairs whose product is 36: 1 and 36, 2 and 18, 3 and 12, 4 and "
        "9, and 6 alone since 6 * 6 = 36. Adding each pair: 37 + 20 + 15 + 13 + 6 = 91. "
        "The answer is \\boxed{91}.",
        "other_language": "Factorizamos 36 = 2^2 * 3^2. Como la suma de divisores es multiplicativa, es "
        "igual a (1 + 2 + 4) por (1 + 3 + 9), es decir 7 * 13 = 91. La respuesta es "
        "\\boxed{91}.",
        "other_script": "将 36 分解为 2^2 * 3^2。因为约数和函数是积性函数，所以约数之和等于 "
        "(1 + 2 + 4) 乘以 (1 + 3 + 9)，即 7 * 13 = 91。答案是 \\boxed{91}。",
    },
    {
        "problem": "Solve for x: 3x + 7 = 22.",
        "answer": "5",
        "teacher_traces": [
            "Subtract 7 from both sides: 3x = 15. Divide both sides by 3: x = 5. So x = \\boxed{5}.",
            "We isolate x. Moving 7 to the right gives 3x = 22 - 7 = 15, and dividing by 3 gives x = 5. "
            "The answer is \\boxed{5}.",
        ],
        "paraphrase": "Take 7 away from each side to get 3x = 15, then divide each side by 3 to find "
        "x = 5. So the answer is \\boxed{5}.",
        "different": "Try values of x and check: 3*4 + 7 = 19 is too small and 3*6 + 7 = 25 is too large, "
        "while 3*5 + 7 = 22 matches exactly, and the left side grows with x, so no other "
        "value works. The answer is \\boxed{5}.",
        "other_language": "Restamos 7 de ambos lados: 3x = 15. Dividimos ambos lados entre 3: x = 5. "
        "La respuesta es \\boxed{5}.",
        "other_script": "Вычтем 7 из обеих частей: 3x = 15. Разделим обе части на 3: x = 5. Ответ: \\boxed{5}.",
    },
    {
        "problem": "In how many ways can a committee of 2 people be chosen from 6 people?",
        "answer": "15",
        "teacher_traces": [
            "The order does not matter, so we count combinations: C(6, 2) = 6! / (2! 4!) = (6 * 5) / 2 = 15. "
            "The answer is \\boxed{15}.",
            "There are 6 choices for the first member and 5 for the second, giving 30 ordered pairs. Each "
            "committee is counted twice, so there are 30 / 2 = 15 committees. \\boxed{15}",
        ],
        "paraphrase": "Since order is irrelevant we need the number of combinations, C(6, 2) = "
        "6! / (2! * 4!) = 6 * 5 / 2 = 15. So the answer is \\boxed{15}.",
        "different": "Think of handshakes: the first person pairs with the 5 others, the second with 4 "
        "people not yet counted, then 3, 2 and 1. Summing 5 + 4 + 3 + 2 + 1 gives 15 "
        "committees. The answer is \\boxed{15}.",
        "other_language": "El orden no importa, así que contamos combinaciones: C(6, 2) = 6! / (2! 4!) = "
        "(6 * 5) / 2 = 15. La respuesta es \\boxed{15}.",
        "other_script": "顺序无关，所以我们计算组合数：C(6, 2) = 6! / (2! 4!) = (6 * 5) / 2 = 15。答案是 \\boxed{15}。",
    },
]


def variants(case: dict, seed: int = 0) -> dict[str, str]:
    """Every correct rollout of one case, by name (paraphrase, different method, degenerate ones)."""
    para = case["paraphrase"]
    body, _, tail = para.rpartition(". ")
    return {
        "paraphrase": para,
        "different": case["different"],
        "bare_answer": f"The answer is \\boxed{{{case['answer']}}}.",
        "offtopic_padding": f"{body}. {ESSAY} {tail}",
        "random_words": f"{body}. {random_words(120, seed)}. {tail}",
        "other_language": case["other_language"],
        "other_script": case["other_script"],
        "repetition": " ".join([body + "."] * 6) + " " + tail,
    }


def as_input_lines(seed: int = 0) -> list[dict]:
    """The cases in `oger bonus` input format, every rollout correct, variants in `variants` order."""
    return [
        {
            "problem": c["problem"],
            "answer": c["answer"],
            "teacher_traces": c["teacher_traces"],
            "rollouts": [{"text": t, "correct": True, "entropy": 0.0} for t in variants(c, seed).values()],
        }
        for c in CASES
    ]


# The pre-robustness bonus (issue 12's "before"): whole text embedded, no guards, teacher rows at r = c,
# c + bonus normalised jointly.
LEGACY = [
    "train.oger.embed_text=full",
    "train.oger.guards.min_reasoning_words=0",
    "train.oger.guards.length_ratio_min=null",
    "train.oger.guards.length_ratio_max=null",
    "train.oger.guards.language=false",
    "train.oger.guards.max_repetition=null",
    "train.oger.guards.max_divergence=null",
    "train.oger.teacher_rows=zero",
    "train.oger.advantage=joint",
]
