"""A stage that dies after writing part of its output leaves nothing that looks complete, and
an interrupted teachers stage resumes with the teachers already finished."""

import polars as pl
import pytest

from oger import pipeline


@pytest.fixture
def cfg(tmp_path, small_config):
    t = small_config.scripted
    return small_config.load(
        tmp_path, name="lite", source={"max_value": 20, "ops": "+-*"}, teachers=[t("stepwise", 0.2), t("terms", 0.2)]
    )


def run_until(cfg, last):
    plans, refs = pipeline.plan(cfg), {}
    for name in pipeline.STAGES[: pipeline.STAGES.index(last) + 1]:
        refs[name] = pipeline.run_stage(cfg, plans[name], refs)
    return plans, refs


def test_filter_crash_after_partial_write_is_not_a_cache_hit(cfg, monkeypatch):
    plans, refs = run_until(cfg, "teachers")
    real_write = pl.DataFrame.write_parquet
    calls = {"n": 0}

    def crash_on_second_file(self, path, *a, **k):
        calls["n"] += 1
        real_write(self, path, *a, **k)
        if calls["n"] == 2:  # traces.parquet written, decisions.parquet written, then die
            raise KeyboardInterrupt("simulated interrupt")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(cfg, plans["filter"], refs)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real_write)

    assert pipeline.cached_ref(cfg, plans["filter"]) is None
    root = cfg.workdir_path / "artifacts" / "filter"
    assert [p.name for p in root.iterdir()] == []  # no final dir, temp dir removed
    ref = pipeline.run_stage(cfg, plans["filter"], refs)
    assert pipeline.cached_ref(cfg, plans["filter"]) == ref
    assert ref.metrics["kept"] > 0


def test_interrupted_teachers_stage_resumes_finished_teachers(cfg, monkeypatch):
    plans, refs = run_until(cfg, "problems")
    from oger.stages.teachers import stage as tstage

    real = tstage._backend
    done = []

    def die_on_second_teacher(name):
        gen = real(name)

        def wrapped(tcfg, prompts, round_):
            if tcfg.name == "terms":
                raise KeyboardInterrupt("killed while the second teacher ran")
            done.append(tcfg.name)
            return gen(tcfg, prompts, round_)

        return wrapped

    monkeypatch.setattr(tstage, "_backend", die_on_second_teacher)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(cfg, plans["teachers"], refs)
    assert pipeline.cached_ref(cfg, plans["teachers"]) is None
    monkeypatch.setattr(tstage, "_backend", real)
    ref = pipeline.run_stage(cfg, plans["teachers"], refs)
    per = ref.metrics["per_teacher"]
    assert per["stepwise"]["reused"] is True and per["terms"]["reused"] is False
    assert done == ["stepwise"]


def test_only_needs_cached_upstream(cfg):
    from oger.contract.errors import StageError

    plans = pipeline.plan(cfg)
    with pytest.raises(StageError, match="'problems' is needed"):
        pipeline.load_upstream(cfg, plans, pipeline.required_upstream(["filter"]))
    assert pipeline.select_stages(["filter,index"], None, None) == ["filter", "index"]
    assert pipeline.select_stages(None, "teachers", "filter") == ["teachers", "filter"]
    from oger.contract.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage"):
        pipeline.select_stages(["filtr"], None, None)
