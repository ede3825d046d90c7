import polars as pl
import pytest

from oger.sample_metrics import avg_at_k, benchmark_scores, maj_at_k, pass_at_k


def test_pass_at_k_hand_computed():
    # n=4, c=1: pass@1 = 1 - C(3,1)/C(4,1) = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(3, 0, 2) == 0.0 and pass_at_k(3, 2, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_avg_and_maj_hand_computed():
    assert avg_at_k([True, False, False, True]) == 0.5
    assert maj_at_k(["3", "4", "3", None], [True, False, True, False]) == 1.0
    assert maj_at_k(["4", "4", "3"], [False, False, True]) == 0.0
    assert maj_at_k([None, None], [False, False]) == 0.0


def test_benchmark_scores():
    per = {"p": [("1", True), ("2", False)], "q": [("5", False), ("5", False)]}
    s = benchmark_scores(per, k=1)
    assert s == {"avg": 0.25, "pass": 0.25, "maj": 0.5, "n": 2}


def test_luffy_repeated_rows_equal_n_samples_per_prompt(data_dir):
    """LUFFY scores AIME by repeating each row 32 times and averaging one sample per row; scoring n=32
    samples per unique prompt must give the same avg@32."""
    df = pl.read_parquet(data_dir / "benchmarks/luffy_eval/valid.all.parquet")
    aime = df.filter(pl.col("data_source") == "aime")
    assert aime.height == 960
    # a deterministic fake "sampler": row j of a prompt is correct iff (index + j) % 3 == 0
    rows_view, per_prompt = [], {}
    counters: dict[int, int] = {}
    for r in aime.iter_rows(named=True):
        idx = r["extra_info"]["index"]
        j = counters.get(idx, 0)
        counters[idx] = j + 1
        ok = (idx + j) % 3 == 0
        rows_view.append(ok)
        per_prompt.setdefault(idx, []).append((None, ok))
    assert len(per_prompt) == 30 and all(len(v) == 32 for v in per_prompt.values())
    assert sum(rows_view) / len(rows_view) == pytest.approx(benchmark_scores(per_prompt)["avg"])
