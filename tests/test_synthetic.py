from oger.synthetic import STYLES, evaluate, generate_problems, parse_question, scripted_solution
from oger.verify import extract_answer


def test_evaluate_uses_precedence():
    assert evaluate((3, "+", 4, "*", 5)) == 23
    assert evaluate((2, "*", 3, "-", 4, "*", 5)) == -14
    assert evaluate((10, "-", 3, "-", 2)) == 5
    assert evaluate((7, "*", 7, "*", 8)) == 392


def test_generation_is_deterministic_and_distinct():
    a = generate_problems(0, 50, 2, 4, 20, "+-*", salt="train")
    b = generate_problems(0, 50, 2, 4, 20, "+-*", salt="train")
    c = generate_problems(0, 50, 2, 4, 20, "+-*", salt="test")
    assert a == b and a != c
    assert len({p.question for p in a}) == 50
    for p in a:
        assert parse_question(p.question) == p.tokens
        assert p.answer == evaluate(p.tokens)
        assert 2 <= (len(p.tokens) + 1) // 2 <= 4


EXPLORE = ("add_first", "swap")  # the explore task's two strategies: products of two factors only


def test_solvers_are_correct_without_slips_and_wrong_with_them():
    exprs = generate_problems(1, 60, 2, 4, 20, "+-*")
    products = generate_problems(1, 60, 2, 2, 16, "*", smallest_at_most=4)
    for style in STYLES:
        probs = products if style in EXPLORE else exprs
        for p in probs:
            text = scripted_solution(style, p.question, (style, p.question), 0.0)
            assert extract_answer(text) == str(p.answer), (style, p.question, text)
        wrong = sum(
            extract_answer(scripted_solution(style, p.question, (style, p.question), 1.0)) != str(p.answer)
            for p in probs
        )
        assert wrong >= 50, style  # a slip almost always changes the answer


def test_styles_differ():
    q = "Compute 3 + 4 * 5."
    texts = {s: scripted_solution(s, q, ("x",), 0.0) for s in STYLES if s not in EXPLORE}
    assert len(set(texts.values())) == len(STYLES) - len(EXPLORE)
    assert all(scripted_solution(s, q, ("x",), 0.0) is None for s in EXPLORE)  # not a product
    assert "signed terms" in texts["terms"] and "* 5 = 20" in texts["stepwise"]
    assert len(texts["verbose"]) > 2 * len(texts["stepwise"])


def test_non_synthetic_question_gives_none():
    assert scripted_solution("stepwise", "What is the capital of France?", ("x",), 0.0) is None
