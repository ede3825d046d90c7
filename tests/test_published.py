"""Published accuracies beside ours: the report and `oger status` show the reference rows of the
config's backbone (data/reference/published_results.json), or one line saying there are none."""

import json
from pathlib import Path
from types import SimpleNamespace

from oger import pipeline  # noqa: F401  registers the stages: write_report calls their report sections
from oger.cli import main
from oger.commands.report import write_report
from oger.contract.config import load_config
from oger.published import backbone_of, published_for

REPO = Path(__file__).resolve().parents[1]
OURS = {
    "aime24": {"metric": "avg@32", "k": 32, "n": 30, "base": 0.1, "trained": 0.2},
    "gsm8k": {"metric": "accuracy", "k": 1, "n": 50, "base": 0.5, "trained": 0.6},
    "math_avg": {"of": ["aime24"], "n": 30, "base": 0.1, "trained": 0.2},
}


def fake_record(tmp_path: Path, config: str):
    """A finished run's record with an evaluate stage (what write_report reads)."""
    data = {
        "run_id": "r",
        "config": str(REPO / config),
        "overrides": [f"workdir={tmp_path}"],
        "workdir": str(tmp_path),
        "round": "r1",
        "stages": {
            "evaluate": {"key": "k" * 64, "cached": False, "seconds": 1.0, "path": str(tmp_path), "metrics": OURS}
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(data))  # RunRecord writes it before the report
    return SimpleNamespace(data=data, dir=tmp_path)


def table_row(report: str, first_cell: str) -> list[str]:
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_for_a_published_backbone_shows_the_published_columns(tmp_path):
    report = write_report(fake_record(tmp_path, "configs/qwen2.5-math-7b-oger.yaml")).read_text()
    section = report.split("## Published results (same backbone)")[1]
    assert "Backbone Qwen2.5-Math-7B" in section
    assert table_row(section, "benchmark") == [
        "benchmark",
        "ours base",
        "ours trained",
        "OGER",
        "LUFFY (OGER's run)",
        "LUFFY",
        "Qwen2.5-Math-7B (base)",
    ]
    # ours in %, then OGER 31.77, LUFFY as run by OGER 26.67, LUFFY's README 29.4, the base 11.5
    assert table_row(section, "aime24") == ["aime24", "10.0", "20.0", "31.8", "26.7", "29.4", "11.5"]
    assert table_row(section, "math_avg")[3:] == ["52.0", "48.7", "50.1", "19.0"]
    assert table_row(section, "gsm8k")[3:] == ["–"] * 4  # not a benchmark the paper reports
    assert "luffy_readme: README.md of ElliottYan/LUFFY" in section


def test_report_without_a_published_backbone_says_so_in_one_line(tmp_path):
    report = write_report(fake_record(tmp_path, "configs/tiny.yaml")).read_text()
    section = report.split("## Published results (same backbone)")[1].split("##")[0].strip()
    assert section.splitlines() == [section] and section.startswith("No published row for this policy")


def test_backbone_named_or_inferred_and_1_5b_never_matches_7b():
    cfg = load_config(REPO / "configs/qwen2.5-math-1.5b-oger.yaml")
    assert backbone_of(cfg) == "Qwen2.5-Math-1.5B"
    inferred = load_config(REPO / "configs/qwen2.5-math-7b-grpo.yaml", ["evaluate.backbone=null"])
    assert backbone_of(inferred) == "Qwen2.5-Math-7B"  # from Elliott/Qwen2.5-Math-7B-16k-think
    assert set(published_for("qwen2.5-math-1.5b").methods) == {
        "OGER",
        "LUFFY (OGER's run)",
        "LUFFY",
        "Qwen2.5-Math-1.5B (base)",
    }
    assert backbone_of(load_config(REPO / "configs/tiny.yaml")) is None


def test_status_shows_published_rows(tmp_path, capsys):
    args = ["status", "configs/qwen2.5-math-7b-oger.yaml", "--set", f"workdir={tmp_path}"]
    assert main([*args, "--json"]) == 0
    pub = json.loads(capsys.readouterr().out)["published"]
    assert pub["backbone"] == "Qwen2.5-Math-7B" and pub["methods"]["LUFFY"]["amc"] == 65.6
    assert main(args) == 0
    assert "published results, backbone Qwen2.5-Math-7B" in capsys.readouterr().out
    assert main(["status", "configs/tiny.yaml", "--set", f"workdir={tmp_path}/t"]) == 0
    assert "No published row for this policy" in capsys.readouterr().out


def test_run_report_and_sweep_report_show_the_same_published_numbers(tmp_path):
    """One lookup (oger.published) for both reports: the same backbone gives the same numbers."""
    from oger.published import published_for_config
    from oger.sweep.report import published_section

    config = "configs/qwen2.5-math-7b-oger.yaml"
    run_section = (
        write_report(fake_record(tmp_path, config)).read_text().split("## Published results (same backbone)")[1]
    )
    methods = table_row(run_section, "benchmark")[3:]
    benches = [b for b in OURS if b != "gsm8k"]
    from_run = {(m, b): table_row(run_section, b)[3 + i] for b in benches for i, m in enumerate(methods)}
    ours = {b: {"rows": {"oger": {"mean": OURS[b]["trained"]}}, "benchmarks": [b]} for b in OURS}
    sweep = "\n".join(published_section(published_for_config(load_config(REPO / config)), ours))
    assert "Backbone Qwen2.5-Math-7B" in sweep
    cols = table_row(sweep, "method")[1:]
    assert cols == benches  # the published benchmarks the sweep evaluated (gsm8k is not one)
    from_sweep = {(m, b): table_row(sweep, m)[1 + cols.index(b)] for m in methods for b in benches}
    assert from_sweep == from_run and from_run[("OGER", "aime24")] == "31.8"
    assert sweep.splitlines()[-1].startswith("Published (%): ")
    assert sweep.splitlines()[-1] in run_section.splitlines()  # the same sources
