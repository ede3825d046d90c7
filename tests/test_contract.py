"""The stage contract: no import cycles, stages as registered parts (a stage defined here runs
through the real pipeline and is cached on the second run), no stage names in the pipeline,
one atomic-write helper, benchmark names the config knows = the benchmark registry."""

import ast
import json
from pathlib import Path

import polars as pl
import pytest

from oger import contract, pipeline
from oger.commands import plan as plan_cmd
from oger.contract.artifacts import read_manifest
from oger.contract.config import BENCHMARK_NAMES, load_config
from oger.contract import Stage, StageInfo, atomic_write
from oger.stages.evaluate.benchmarks import REGISTRY, SYNTHETIC
from oger.commands.report import write_report

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- import graph


def _modules() -> dict[str, Path]:
    """Every module under oger/ and flows/, by dotted name (a package by its __init__)."""
    out = {}
    for top in ("oger", "flows"):
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> internal modules it imports anywhere in its body (function-local imports too)."""
    mods = _modules()

    def internal(name: str) -> str | None:
        while name and name not in mods:  # `from oger.x import a_function` -> oger.x
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = internal(name)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_among_internal_modules():
    graph = import_graph()
    assert len(graph) > 40 and "oger.pipeline" in graph["flows.pipeline"]
    assert "oger.contract" in graph["oger.stages.train.stage"]  # function-local and top-level alike
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_stage_modules_do_not_import_the_pipeline_or_the_plan_command():
    graph = import_graph()
    for stage in pipeline.BUILTIN_STAGES:
        mod = stage.run.__module__  # the stage's own module
        assert not {"oger.pipeline", "oger.commands.plan"} & graph[mod], mod


# --------------------------------------------------------------------------- names


def test_benchmark_names_in_config_equal_the_registry():
    assert sorted(BENCHMARK_NAMES) == sorted([SYNTHETIC, *REGISTRY])


def test_pipeline_never_compares_a_stage_name():
    names = {s.name for s in pipeline.BUILTIN_STAGES}
    tree = ast.parse((REPO / "oger" / "pipeline.py").read_text())
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    assert literals == [], f"stage names in oger/pipeline.py: {literals}"


def test_registry_order_and_upstream_views():
    assert pipeline.STAGES == ["problems", "teachers", "filter", "index", "policy", "train", "evaluate"]
    assert pipeline.UPSTREAM["train"] == ["problems", "policy", "index"]
    for i, name in enumerate(pipeline.STAGES):  # every upstream comes earlier
        assert all(pipeline.STAGES.index(u) < i for u in pipeline.UPSTREAM[name])


def test_register_rejects_unknown_upstream_and_duplicates():
    with pytest.raises(Exception, match="upstream \\['nope'\\] not registered"):
        contract.register(Stage("x", 1, ("nope",), key_inputs=lambda c: ({}, {}), run=None))
    dup = Stage("problems", 1, (), key_inputs=lambda c: ({}, {}), run=None)
    with pytest.raises(Exception, match="registered already"):
        contract.register(dup)
    with pytest.raises(Exception, match="read by"):
        contract.unregister("problems")
    assert "x" not in pipeline.STAGES


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]  # no temp file left
    # a folder, replacing an older one
    folder = tmp_path / "model"
    for text in ("v1", "v2"):
        atomic_write(folder, lambda tmp, t=text: (tmp.mkdir(), (tmp / "w.txt").write_text(t)))
    assert (folder / "w.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "model"]


# --------------------------------------------------------------------------- a stage added in a test

LITE = """
name: contract-lite
problems:
  sources:
    - {kind: synthetic, name: arith, n_train: 12, n_test: 4, max_operands: 2}
teachers:
  teachers:
    - {name: stepwise, backend: scripted, model: stepwise}
"""


def _word_counts(ctx, inputs):
    """A small stage: question lengths per split, from the problems artifact."""
    calls.append(ctx.key)
    problems = pl.read_parquet(Path(inputs["problems"].path) / "problems.parquet")
    counts = problems.with_columns(words=pl.col("question").str.split(" ").list.len())
    per_split = {s: int(n) for s, n in counts.group_by("split").agg(pl.col("words").sum()).iter_rows()}
    ctx.write_atomic(ctx.cache_dir / "note.txt", lambda tmp: tmp.write_text("scratch"))
    with ctx.output() as out:
        counts.select("problem_id", "words").write_parquet(out.file("words.parquet"))
        out.metrics = {"words": per_split, "min_words": ctx.config_slice["min_words"]}
    return ctx.ref(out)


calls: list[str] = []
WORDS = Stage(name="words", version=1, upstream=("problems",),
              key_inputs=lambda cfg: ({"min_words": 1, "round": cfg.teachers.round}, {}),
              run=_word_counts,
              plan_info=lambda cfg, counts: StageInfo(engine="polars", resources="1 CPU"),
              run_summary=lambda ref: {"words": ref.metrics["words"]},
              report_section=lambda entry, run_dir: ["", "## Words", "", str(entry["metrics"]["words"])])


@pytest.fixture
def words_stage():
    contract.register(WORDS)
    calls.clear()
    try:
        yield WORDS
    finally:
        contract.unregister(WORDS.name)


def test_a_registered_stage_runs_through_the_pipeline_and_is_cached(words_stage, tmp_path):
    cfg_file = tmp_path / "lite.yaml"
    cfg_file.write_text(LITE)
    cfg = load_config(cfg_file, [f"workdir={tmp_path / 'w'}"])
    assert pipeline.STAGES[-1] == "words" and pipeline.UPSTREAM["words"] == ["problems"]

    plans = pipeline.plan(cfg)
    assert plans["words"].upstream == {"problems": plans["problems"].key}
    # the key changes with the stage's own inputs (here teachers.round) like any stage's
    other = pipeline.plan(load_config(cfg_file, [f"workdir={tmp_path / 'w'}", "teachers.round=r2"]))
    assert other["words"].key != plans["words"].key and other["problems"].key == plans["problems"].key

    record = pipeline.RunRecord(cfg)
    first = pipeline.run_local(cfg, only=["problems", "words"])
    assert calls == [plans["words"].key]
    ref = first["words"]
    assert Path(ref.path) == plans["words"].path(cfg.workdir_path)
    manifest = read_manifest(ref.dir)
    assert manifest["inputs"] == {"problems": first["problems"].key} and manifest["complete"]
    assert ref.metrics["words"]["train"] > 0 and ref.metrics["words"]["test"] > 0
    assert (cfg.workdir_path / "cache" / "words" / ref.key[:16] / "note.txt").read_text() == "scratch"
    record.add("words", ref, cached=False, seconds=0.0)
    assert json.loads(record.summary_path.read_text())["words"] == {"words": ref.metrics["words"]}
    report = write_report(record).read_text()  # the stage's own section, from its hook
    assert "## Words" in report and str(ref.metrics["words"]) in report

    # second run: nothing recomputed, the same artifact comes back from the cache
    again = pipeline.run_local(cfg, only=["problems", "words"])
    assert calls == [plans["words"].key] and again["words"] == ref
    states = {r["stage"]: r["state"] for r in pipeline.status_rows(cfg)}
    assert states["problems"] == states["words"] == "cached" and states["teachers"] == "stale"
    # the stage alone, its upstream read from the cache; `oger plan` lists it with its hook's info
    assert pipeline.run_local(cfg, only="words")["words"] == ref and len(calls) == 1
    shown = {s["stage"]: s for s in plan_cmd.build(cfg)["stages"]}
    assert shown["words"]["state"] == "cached" and shown["words"]["engine"] == "polars"
    assert shown["words"]["upstream"] == ["problems"]

    # --refresh recomputes it
    pipeline.run_stage(cfg, plans["words"], {"problems": first["problems"]}, refresh=True)
    assert len(calls) == 2


def test_inputs_resolve_by_key_including_the_train_stages_own(tmp_path):
    """An input that is not the upstream stage's current artifact (train's `init`: an earlier
    round's checkpoint; a pinned index tag) is found by its key; a missing one is named."""
    from oger.contract.artifacts import write_artifact
    from oger.contract.errors import StageError

    cfg_file = tmp_path / "lite.yaml"
    cfg_file.write_text(LITE)
    cfg = load_config(cfg_file, [f"workdir={tmp_path / 'w'}"])
    old = "a" * 64
    with write_artifact(cfg.workdir_path, "train", old, config_slice={}, upstream={}) as out:
        out.file("model/config.json").write_text("{}")
    problems = pipeline.run_local(cfg, until="problems")["problems"]
    p = pipeline.StagePlan("train", "b" * 64, {}, {}, {"problems": problems.key, "init": old})
    inputs = pipeline.resolve_inputs(cfg, p, {"problems": problems})
    assert inputs["problems"] == problems and inputs["init"].path == str(out.final)
    gone = pipeline.StagePlan("train", "b" * 64, {}, {}, {"init": "c" * 64, "index": "d" * 64})
    with pytest.raises(StageError, match="checkpoint cccccccccccccccc disappeared"):
        pipeline.resolve_inputs(cfg, gone, {})
    with pytest.raises(StageError, match="pinned to index tag dddddddddddddddd"):
        pipeline.resolve_inputs(cfg, pipeline.StagePlan("train", "b" * 64, {}, {}, {"index": "d" * 64}), {})
