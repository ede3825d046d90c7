"""Sweep planning without running anything: arms, seeds, shared upstream keys, clear errors,
published numbers by backbone, and filling docs/RESULTS.md."""

from pathlib import Path

import pytest

from oger import pipeline
from oger.contract.config import OgerRewardConfig, load_config
from oger.contract.errors import ConfigError
from oger.sweep import arms as arms_mod
from oger.sweep import report, run

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
LAM = (
    "sweep.arms={oger-lam-1.0: {train.algorithm: oger, train.oger.lam: 1.0}, "
    "oger-no-gate: {train.algorithm: oger, train.oger.modulation: none}}"
)


def test_pairs_share_upstream_keys_and_differ_in_train(tmp_path):
    sp = run.prepare(TINY, "grpo,luffy,oger,oger-lam-1.0,oger-no-gate", "0,1,2", [f"workdir={tmp_path}", LAM])
    assert [p.name for p in sp.pairs][:4] == ["grpo-s0", "grpo-s1", "grpo-s2", "luffy-s0"]
    assert len(sp.pairs) == 15
    # every upstream stage has exactly one key across the 15 pairs: computed once
    assert [name for name, _ in sp.upstream] == run.upstream_stages()
    # ... and 15 distinct training runs and evaluations
    for stage in run.pair_stages():
        assert len({p.plans[stage].key for p in sp.pairs}) == 15
    by = {p.name: p.cfg for p in sp.pairs}
    assert by["oger-lam-1.0-s2"].train.oger.lam == 1.0 and by["oger-lam-1.0-s2"].train.algorithm == "oger"
    assert by["oger-no-gate-s0"].train.oger.modulation == "none"
    assert by["grpo-s1"].train.algorithm == "grpo" and by["grpo-s1"].train.oger.lam == 0.5
    # a seed sets the RL seed and the evaluation sampling seed (sweep.seed_fields)
    assert (by["luffy-s2"].train.seed, by["luffy-s2"].evaluate.seed) == (2, 2)
    # a pair is an ordinary run: `oger run` with the same --set items has the same keys
    plain = pipeline.plan(
        load_config(TINY, [f"workdir={tmp_path}", LAM, "train.algorithm=luffy", "train.seed=2", "evaluate.seed=2"])
    )
    pair = next(p for p in sp.pairs if p.name == "luffy-s2")
    assert {s: plain[s].key for s in pipeline.STAGES} == {s: pair.plans[s].key for s in pipeline.STAGES}
    # the same sweep is the same folder; another seed list another one
    again = run.prepare(TINY, "grpo,luffy,oger,oger-lam-1.0,oger-no-gate", "0,1,2", [f"workdir={tmp_path}", LAM])
    assert again.sweep_id == sp.sweep_id and again.dir == tmp_path / "sweeps" / sp.sweep_id
    assert run.prepare(TINY, "grpo", "0", [f"workdir={tmp_path}"]).sweep_id != sp.sweep_id
    assert sp.baseline == "luffy"  # sweep.baseline's default
    assert run.prepare(TINY, "grpo,oger", "0", [f"workdir={tmp_path}"]).baseline == "grpo"  # first arm


def test_defaults_come_from_the_sweep_section(tmp_path):
    sp = run.prepare(TINY, None, None, [f"workdir={tmp_path}", "sweep.default_arms=[grpo, oger]", "sweep.seeds=[3, 4]"])
    assert [(p.arm, p.seed) for p in sp.pairs] == [("grpo", 3), ("grpo", 4), ("oger", 3), ("oger", 4)]


def test_unknown_arm_and_unknown_field_fail_naming_them(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown arm\(s\) \['ogr'\]; presets: .*grpo"):
        run.prepare(TINY, "grpo,ogr", "0", [f"workdir={tmp_path}"])
    bad = "sweep.arms={typo: {train.oger.lamda: 1.0}}"
    with pytest.raises(ConfigError) as exc:
        run.prepare(TINY, "oger,typo", "0", [f"workdir={tmp_path}", bad])
    msg = str(exc.value)
    assert "arm 'typo'" in msg and "train.oger.lamda" in msg and "unknown key" in msg
    with pytest.raises(ConfigError, match="arm 'x': cannot change"):
        run.prepare(TINY, "x", "0", [f"workdir={tmp_path}", "sweep.arms={x: {workdir: /tmp/elsewhere}}"])
    with pytest.raises(ConfigError, match="not a dotted config key"):
        load_config(TINY, ["sweep.arms={x: {'a..b': 1}}"])
    with pytest.raises(ConfigError, match="--seeds: 'one' is not an integer"):
        run.prepare(TINY, "grpo", "0,one", [f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match="listed twice"):
        run.prepare(TINY, "grpo,grpo", "0", [f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match="--baseline 'luffy' is not one of"):
        run.prepare(TINY, "grpo,oger", "0", [f"workdir={tmp_path}"], baseline="luffy")


def test_seed_fields_must_reach_training(tmp_path):
    with pytest.raises(ConfigError, match="do not reach the train stage"):
        run.prepare(TINY, "grpo", "1,2", [f"workdir={tmp_path}", "sweep.seed_fields=[train.logging.checkpoint_every]"])


def test_control_arms_are_defined_and_validated_by_the_config():
    assert arms_mod.PRESETS["shuffled-bonus"] == {"train.algorithm": "oger", "train.oger.shuffle_bonus": True}
    assert arms_mod.PRESETS["lam-0-monitor"] == {
        "train.algorithm": "oger",
        "train.oger.lam": 0.0,
        "train.oger.monitor": True,
    }
    arm = arms_mod.available_arms(load_config(TINY).sweep)["shuffled-bonus"]
    if "shuffle_bonus" in OgerRewardConfig.model_fields:  # the trainer's controls are merged
        cfg = arms_mod.pair_config(TINY, [], arm, 0, ["train.seed"])
        assert cfg.train.oger.shuffle_bonus is True
    else:
        with pytest.raises(ConfigError, match="arm 'shuffled-bonus'.*\n.*train.oger.shuffle_bonus"):
            arms_mod.pair_config(TINY, [], arm, 0, ["train.seed"])


def test_published_numbers_by_backbone():
    """The sweep report looks published results up through oger.published, as the run report and
    `oger status` do (tests/test_published.py compares the numbers of both reports)."""
    from oger import published

    assert report.published_for_config is published.published_for_config
    assert not hasattr(report, "published_for") and not hasattr(report, "backbone")
    tiny = report.published_for_config(load_config(TINY))
    assert not tiny.found and report.published_section(tiny, {})[-1] == tiny.missing_line()
    got = report.published_for_config(load_config(REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml"))
    assert got.backbone == "Qwen2.5-Math-1.5B" and got.found


def test_fill_results_doc(tmp_path):
    sweep_dir = tmp_path / "sweeps" / "s1"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "results_section.md").write_text("table\n![acc](results/accuracy.png)\n")
    (sweep_dir / "accuracy.png").write_bytes(b"png")
    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    doc.write_text(f"# Results\nmethod\n{report.BEGIN}\nplaceholder\n{report.END}\nafter\n")
    report.fill_results_doc(doc, sweep_dir)
    assert (
        doc.read_text()
        == f"# Results\nmethod\n{report.BEGIN}\ntable\n![acc](results/accuracy.png)\n{report.END}\nafter\n"
    )
    assert (doc.parent / "results" / "accuracy.png").read_bytes() == b"png"
    report.fill_results_doc(doc, sweep_dir)  # idempotent
    assert doc.read_text().count("table") == 1
    assert set(pipeline.STAGES) >= set(run.pair_stages())


def test_pair_jobs_ship_to_ray_workers(tmp_path):
    import cloudpickle

    from oger.contract.artifacts import ArtifactRef

    sp = run.prepare(TINY, "grpo,oger", "0,1", [f"workdir={tmp_path}", "runner.kind=ray", "sweep.num_gpus=2"])
    by_key = {k: ArtifactRef(stage=k[0], key=k[1], path=str(tmp_path / k[0])) for k in sp.upstream}
    jobs = run.pair_jobs(sp, by_key)
    assert [j.name for j in jobs] == ["grpo-s0", "grpo-s1", "oger-s0", "oger-s1"]
    assert {(j.num_gpus, j.num_cpus) for j in jobs} == {(2.0, 1.0)}
    fn, args = cloudpickle.loads(cloudpickle.dumps((run.run_pair, jobs[3].args)))
    assert fn is run.run_pair and args[0].train.seed == 1 and args[1]["train"].key == sp.pairs[3].plans["train"].key
    assert set(args[2]) == set(run.upstream_stages())
    # default: the GPUs of the pair's training ranks with nccl, none on CPU
    cpu = run.prepare(TINY, "grpo", "0", [f"workdir={tmp_path}"])
    assert run.pair_gpus(cpu, cpu.pairs[0].cfg) == 0.0
