"""The explore task (configs/explore.yaml, oger/explore.py): its strategy classifier on hand-written
traces, the task's properties on the real upstream stages (references hold only A, the SFT mix has
the configured share of B, A runs out of the budget exactly where B still fits), and the strategy
metrics by hand on a small batch."""

import math

import polars as pl
import pytest

from oger import pipeline
from oger.contract.config import load_config
from oger.explore import a_fits
from oger.labels import STRATEGY, Labeller, factors, strategy_of
from oger.stages.train.metrics import NAMES, label_metrics, with_labels
from oger.stages.train.step_log import label_values
from oger.synthetic import generate_problems, scripted_solution
from tests.conftest import REPO

A_TRACE = "Add 3 5 times.\n3 + 3 = 6.\n6 + 3 = 9.\n9 + 3 = 12.\n12 + 3 = 15.\nAnswer: \\boxed{15}"
B_TRACE = "Swap: 5 * 3.\nAdd 5 3 times.\n5 + 5 = 10.\n10 + 5 = 15.\nAnswer: \\boxed{15}"


def test_the_classifier_tells_the_strategies_apart_on_hand_written_traces():
    q = "Compute 3 * 5."
    assert factors(q) == (3, 5)
    assert strategy_of(q, A_TRACE) == "A"
    assert strategy_of(q, B_TRACE) == "B"
    # B without the "Swap" line is still B: it adds the second factor up first-factor times
    assert strategy_of(q, "Add 5 3 times.\n5 + 5 = 10.\n10 + 5 = 15.\nAnswer: \\boxed{15}") == "B"
    assert strategy_of(q, "Add 4 5 times.\n4 + 4 = 8.") == "other"  # adds a number of neither
    assert strategy_of(q, "The answer is \\boxed{15}") == "other"  # announces no addition
    # a = b: the same addition either way, so the "Swap" line decides
    assert strategy_of("Compute 4 * 4.", "Add 4 4 times.\n4 + 4 = 8.") == "A"
    assert strategy_of("Compute 4 * 4.", "Swap: 4 * 4.\nAdd 4 4 times.\n4 + 4 = 8.") == "B"
    # another task's question: no strategy at all (its metrics are NaN, not 0)
    assert strategy_of("Compute 3 + 5.", A_TRACE) is None and factors("Compute 3 * 5 * 2.") is None


def test_the_scripted_strategies_are_what_the_classifier_reads():
    for p in generate_problems(0, 40, 2, 2, 16, "*", smallest_at_most=4):
        a = scripted_solution("add_first", p.question, ("t",), 0.0)
        b = scripted_solution("swap", p.question, ("t",), 0.0)
        assert strategy_of(p.question, a) == "A" and strategy_of(p.question, b) == "B"
        x, y = p.tokens[0], p.tokens[2]
        assert a.count("\n") == max(y - 1, 0) + 1 and b.count("\n") == max(x - 1, 0) + 2  # lines per strategy
        assert min(x, y) <= 4


def test_label_metrics_by_hand_for_the_strategy_labeller():
    def row(label, correct, bonus, labeller="strategy"):
        return {"labeller": labeller, "label": label, "correct": correct, "bonus": bonus}

    rows = [  # on-policy rows of one step
        row("A", True, 0.0),
        row("A", False, 0.0),
        row("A", True, 0.02),
        row("B", True, 0.3),
        row("B", False, 0.0),
        row("other", False, 0.0),
    ]
    m = label_values(rows, [STRATEGY])
    assert set(m) == {mt.name for mt in label_metrics(STRATEGY)}  # the table's names, no other
    assert m["strategy_b_share"] == pytest.approx(2 / 6)  # 2 of 6 rows used B
    assert m["strategy_a_share"] == pytest.approx(3 / 6)
    assert m["strategy_other_share"] == pytest.approx(1 / 6)
    assert m["strategy_b_share_correct"] == pytest.approx(1 / 3)  # of 3 correct rows, 1 used B
    assert m["bonus_mean_a"] == pytest.approx(0.01)  # correct A rows: (0 + 0.02) / 2
    assert m["bonus_mean_b"] == pytest.approx(0.3)  # the one correct B row
    no_b = label_values(rows[:3], [STRATEGY])
    assert no_b["strategy_b_share"] == 0 and math.isnan(no_b["bonus_mean_b"])
    # rows of another task (no labeller, or a question the labeller does not read) count in no share
    other_task = [{"correct": True, "bonus": 0.1}, row(None, True, 0.1)]
    assert all(math.isnan(v) for v in label_values(other_task, [STRATEGY]).values())
    assert label_values(rows, []) == {}  # a task without a labeller: no label metrics at all


def test_labeller_names_in_config_equal_the_labellers():
    from oger.contract.config import LABELLER_NAMES
    from oger.labels import LABELLERS

    assert sorted(LABELLER_NAMES) == sorted(LABELLERS)
    assert {s.labeller for s in load_config(REPO / "configs" / "explore.yaml").problems.sources} == {"strategy"}


def test_the_strategy_metrics_keep_the_names_the_explore_sweeps_read():
    names = {m.name: m for m in label_metrics(STRATEGY)}
    assert {
        "strategy_b_share",
        "strategy_b_share_correct",
        "strategy_other_share",
        "bonus_mean_a",
        "bonus_mean_b",
    } <= set(names)
    assert names["strategy_b_share"].plot and names["strategy_b_share"].sweep
    assert names["strategy_b_share"].run == ("first_last",) and names["strategy_other_share"].run == ("mean",)
    assert not set(names) & set(NAMES)  # not in the table of every run
    assert [m.name for m in with_labels([STRATEGY])] == [*NAMES, *names]
    twin = Labeller("strategy2", ("A",), "rest", (), lambda q, t: "A")  # bonus_mean_a a second time
    with pytest.raises(ValueError, match=r"define the step metrics \['bonus_mean_a'\] twice"):
        with_labels([STRATEGY, twin])


@pytest.fixture(scope="module")
def explore_upstream(tmp_path_factory):
    """The explore config's problems, teachers, filter and index stages, run for real."""
    cfg = load_config(REPO / "configs" / "explore.yaml", [f"workdir={tmp_path_factory.mktemp('explore')}"])
    return cfg, pipeline.run_local(cfg, until="index")


def test_the_references_hold_only_strategy_a(explore_upstream):
    import lancedb

    from oger.stages.index.files import db_path

    cfg, refs = explore_upstream
    table = lancedb.connect(str(db_path(cfg.workdir_path))).open_table(cfg.index.table).to_polars().collect()
    assert set(table["teacher"]) == {"add_first"} and table.height > 0
    p = _problems(refs)
    questions = dict(zip(p["problem_id"], p["question"]))
    assert {strategy_of(questions[p], t) for p, t in zip(table["problem_id"], table["text"])} == {"A"}


def _problems(refs):
    from oger.stages.problems.files import read_problems

    return read_problems(refs["problems"])


def test_the_sft_mix_has_the_configured_share_of_b(explore_upstream):
    from oger.stages.filter.files import read_kept

    cfg, refs = explore_upstream
    kept = read_kept(refs["filter"]).filter(pl.col("teacher").is_in(cfg.policy.sft.teachers))
    swap = next(t for t in cfg.teachers.teachers if t.name == "swap")
    n_b = (kept["teacher"] == "swap").sum()
    assert n_b == swap.limit * swap.n  # slip-free: every B trace is kept
    assert 0.05 <= n_b / kept.height <= 0.2, n_b / kept.height  # rare, as the config says


def test_a_runs_out_of_the_budget_exactly_where_b_still_fits(explore_upstream, tmp_path):
    """With the policy's own tokenizer (trained on the same corpus as the policy stage does) and the
    rollout budget: every A-infeasible problem's B solution fits, and both classes are well filled."""
    from oger.stages.filter.files import read_kept
    from oger.stages.policy.tiny_model import train_tokenizer

    cfg, refs = explore_upstream
    problems = _problems(refs)
    corpus = problems["question"].to_list() + read_kept(refs["filter"])["text"].to_list()
    tok = train_tokenizer(corpus, cfg.policy.tiny.vocab_size)
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids) + 1  # + EOS
    budget = cfg.train.rollout.max_new_tokens
    assert budget == cfg.evaluate.max_new_tokens
    rl = problems.filter(pl.col("split").is_in([cfg.train.split, cfg.evaluate.heldout.split]))
    for q in rl["question"]:  # the RL pool and the held-out split: B fits every problem ...
        assert count(scripted_solution("swap", q, ("t",), 0.0)) <= budget, q
    infeasible = [q for q in problems["question"] if not a_fits(q, budget, count)]
    assert set(infeasible) <= set(rl["question"])  # ... and A does not fit on a known share of them
    share = len(infeasible) / rl.height
    assert 0.4 <= share <= 0.9, share
    # the problems where B cannot fit (a > 4) are SFT data only (their A traces teach B's additions)
    sft_only = problems.filter(pl.col("split") == "sft")
    assert sft_only.height > 0 and all(factors(q)[0] > 4 for q in sft_only["question"])
    # the sweep report's classes are these, read with the tokenizer from a policy folder
    from oger.explore import problem_classes

    tok.save_pretrained(tmp_path / "model")
    classes = problem_classes(str(refs["problems"].path), str(tmp_path), budget)
    ids = dict(zip(problems["question"], problems["problem_id"]))
    assert {p for p, c in classes.items() if c == "A-infeasible"} == {ids[q] for q in infeasible}
    assert len(classes) == problems.height


def test_the_sweep_splits_a_benchmark_by_problem_class():
    from oger.sweep.results import split_by_class

    counts = {
        "synthetic": {
            "base": {0: {"p1": (8, 6), "p2": (8, 0), "p3": (8, 1)}},
            "oger": {0: {"p1": (8, 7), "p2": (8, 3), "p3": (8, 2)}},
        },
        "gsm8k": {"base": {0: {"g1": (1, 0)}}},
    }
    out = split_by_class(counts, {"p1": "A-feasible", "p2": "A-infeasible", "p3": "A-infeasible"})
    assert out["synthetic (A-feasible)"] == {"base": {0: {"p1": (8, 6)}}, "oger": {0: {"p1": (8, 7)}}}
    assert out["synthetic (A-infeasible)"]["oger"] == {0: {"p2": (8, 3), "p3": (8, 2)}}
    assert out["synthetic"] == counts["synthetic"] and "gsm8k (A-feasible)" not in out  # no such problems


def test_minilm_sees_b_far_from_a_and_the_length_guard_zeroes_b_where_it_is_far_shorter():
    """The check before training (`python -m oger.explore`), on the real encoder: correct B solutions
    diverge from the A references, correct A ones do not; with the default guards, B's bonus is zero
    where B is a fifth of A's length (2 * 12) and paid where the lengths are close (3 * 4); the
    loose-guards arm of configs/explore.yaml pays both."""
    from oger.explore import bonus_by_strategy

    cfg = load_config(REPO / "configs" / "explore.yaml")
    close, far = bonus_by_strategy(cfg, ["Compute 3 * 4."]), bonus_by_strategy(cfg, ["Compute 2 * 12."])
    for check in (close, far):
        assert check["A"]["divergence"] < 0.02 and check["B"]["divergence"] > 0.2
        assert check["A"]["bonus"] < 1e-3
    assert close["B"]["guards_pass"] == 1 and close["B"]["bonus"] > 0.02
    assert far["B"]["guards_pass"] == 0 and far["B"]["bonus"] == 0  # the length-ratio guard
    loose = load_config(
        REPO / "configs" / "explore.yaml", [f"{k}={v}" for k, v in cfg.sweep.arms["oger-loose-guards"].items()]
    )
    assert bonus_by_strategy(loose, ["Compute 2 * 12."])["B"]["bonus"] > 0.02


def test_only_signal_variant_pool_holds_only_problems_both_strategies_solve(tmp_path):
    """configs/explore-only-signal.yaml, its upstream stages until the filter run for real, counted in the
    policy's own tokenizer (trained on the same corpus as the policy stage trains it): every RL pool
    problem has a != b and both A's and B's solutions fit the one budget and verify, and there are at
    least 40; the held-out split holds A-feasible problems and A-infeasible ones, where B fits and A does
    not; the SFT-only problems are those where B cannot fit."""
    from oger.stages.filter.files import read_kept
    from oger.stages.policy.tiny_model import train_tokenizer
    from oger.verify import score_response

    cfg = load_config(REPO / "configs" / "explore-only-signal.yaml", [f"workdir={tmp_path}"])
    refs = pipeline.run_local(cfg, until="filter")
    problems = _problems(refs)
    corpus = problems["question"].to_list() + read_kept(refs["filter"])["text"].to_list()
    tok = train_tokenizer(corpus, cfg.policy.tiny.vocab_size)
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids) + 1  # + EOS
    budget = cfg.train.rollout.max_new_tokens
    assert budget == cfg.evaluate.max_new_tokens == cfg.evaluate.heldout.max_new_tokens

    def fits_and_verifies(strategy: str, q: str, answer: str) -> bool:
        text = scripted_solution(strategy, q, ("t",), 0.0)
        return count(text) <= budget and score_response(text, answer)[1]

    pool = problems.filter(pl.col("split") == cfg.train.split)
    assert pool.height >= 40 and pool.height <= cfg.train.max_prompts
    for q, answer in zip(pool["question"], pool["answer"]):
        a, b = factors(q)
        assert a != b, q  # A and B are different texts
        assert fits_and_verifies("add_first", q, answer) and fits_and_verifies("swap", q, answer), q
    held = problems.filter(pl.col("split") == cfg.evaluate.heldout.split)
    assert held.height <= cfg.evaluate.heldout.limit  # the check sees the whole split
    a_feasible = [q for q in held["question"] if a_fits(q, budget, count)]
    a_infeasible = [q for q in held["question"] if not a_fits(q, budget, count)]
    assert len(a_feasible) >= 10 and len(a_infeasible) >= 10, (len(a_feasible), len(a_infeasible))
    for q, answer in zip(held["question"], held["answer"]):  # B finishes every held-out problem
        assert fits_and_verifies("swap", q, answer), q
    assert all(factors(q)[1] > 11 for q in a_infeasible)  # only where the pool has none
    sft_only = problems.filter(pl.col("split") == "sft")
    assert sft_only.height > 0 and all(factors(q)[0] > 8 for q in sft_only["question"])
    assert not set(pool["question"]) & set(held["question"])
