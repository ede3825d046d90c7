"""The summarising half of `oger.entropy_spread` (the table's numbers), on hand values; no model runs."""

import math

import pytest

from oger.entropy_spread import TaskSpread, gate, summarise, table


def test_summarise_reads_correct_rollouts_only():
    h = [0.0, 1.0, 2.0, 3.0, 4.0, 9.0]
    g = [1.0, 0.5, 0.25, 0.125, 0.0625, 0.0]
    correct = [True, True, True, True, True, False]  # the wrong one (H = 9) is left out
    fell_back = [False, True, False, False, True, True]
    row = summarise(h, g, correct, fell_back)
    assert row["n correct"] == 5
    assert row["H mean"] == pytest.approx(2.0)
    # linear interpolation over [0, 1, 2, 3, 4]: p10 at position 0.4, p50 at 2, p90 at 3.6
    assert row["H p10"] == pytest.approx(0.4)
    assert row["H p50"] == pytest.approx(2.0)
    assert row["H p90"] == pytest.approx(3.6)
    assert row["g mean"] == pytest.approx((1 + 0.5 + 0.25 + 0.125 + 0.0625) / 5)
    # sorted g [0.0625, 0.125, 0.25, 0.5, 1]: p10 = 0.0625 + 0.4 * 0.0625, p90 = 0.5 + 0.6 * 0.5
    assert row["g p10"] == pytest.approx(0.0875)
    assert row["g p90"] == pytest.approx(0.8)
    assert row["g std"] == pytest.approx(math.sqrt(sum((x - 0.3875) ** 2 for x in g[:5]) / 5))
    assert row["fell back to last"] == pytest.approx(2 / 5)


def test_summarise_without_correct_rollouts_is_nan():
    row = summarise([0.5], [0.6], [False], [True])
    assert row["n correct"] == 0
    assert math.isnan(row["H mean"]) and math.isnan(row["g p90"]) and math.isnan(row["fell back to last"])


def test_summarise_needs_aligned_inputs():
    with pytest.raises(ValueError):
        summarise([0.1, 0.2], [1.0], [True, True], [False, False])


def test_gate_is_the_bonus_modulation():
    assert gate([0.0, 1.0, 2.0], "exp", 1.0) == pytest.approx([1.0, math.exp(-1), math.exp(-2)])
    assert gate([0.0, 2.0], "exp", 2.0) == pytest.approx([1.0, math.exp(-1)])
    assert gate([math.log(16) / 2], "linear", 1.0, vocab_size=16) == pytest.approx([0.5])
    assert gate([], "exp", 1.0) == []


def test_table_has_one_row_per_option():
    s = TaskSpread("t", 1, 2, 0.0, correct=[True, False])
    s.h = {"last": [0.0, 0.0], "answer": [1.0, 0.5]}
    s.g = {"last": [1.0, 1.0], "answer": [0.5, 0.6]}
    s.fell_back = {"last": [False, False], "answer": [True, False]}
    lines = table(s).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| `last` | 1 | 0.000 |")
    assert lines[3].startswith("| `answer` | 1 | 1.000 |") and lines[3].endswith("| 1.000 |")
