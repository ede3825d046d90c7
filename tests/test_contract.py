"""The stage contract: no import cycles, stages meet only through their `files` modules, stages as
registered parts (a stage defined here runs through the real pipeline and is cached on the second
run), no stage names outside the stages, one atomic-write helper, benchmark names the config knows =
the benchmark registry."""

import ast
import json
import sys
from fnmatch import fnmatch
from pathlib import Path

import polars as pl
import pytest

from oger import contract, pipeline
from oger.commands import plan as plan_cmd
from oger.commands.report import write_report
from oger.contract import Stage, StageInfo, atomic_write
from oger.contract.artifacts import read_manifest
from oger.contract.config import BENCHMARK_NAMES, load_config
from oger.contract.errors import ConfigError
from oger.stages.evaluate.benchmarks import REGISTRY, SYNTHETIC
from oger.stages.evaluate.files import BENCHMARK_GROUPS
from oger.stages.problems.files import read_problems

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


def import_edges() -> list[tuple[str, str, str | None]]:
    """(module, internal module it imports, the name it takes from it or None) for every import under
    oger/ and flows/, function-local imports too; `alias._name` on an imported module counts as
    taking `_name` from it."""
    mods = _modules()

    def internal(name: str) -> str | None:
        while name and name not in mods:  # `from oger.x import a_function` -> oger.x
            name = name.rpartition(".")[0]
        return name or None

    edges: list[tuple[str, str, str | None]] = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> internal module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pairs = [(a.name, None, a.asname) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                pairs = [
                    (f"{base}.{a.name}", None, a.asname or a.name)
                    if f"{base}.{a.name}" in mods
                    else (base, a.name, None)
                    for a in node.names
                ]
            else:
                continue
            for name, taken, alias in pairs:
                target = internal(name)
                if target and target != mod:
                    edges.append((mod, target, taken))
                    if alias and target == name:
                        aliases[alias] = target
        for node in ast.walk(tree):  # `iv._open_table(...)` after `from ... import versions as iv`
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
            ):
                edges.append((mod, aliases[node.value.id], node.attr))
    return edges


def import_graph() -> dict[str, set[str]]:
    """module -> internal modules it imports anywhere in its body (function-local imports too)."""
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for mod, target, _ in import_edges():
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
                return path[path.index(n) :] + [n]
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


# --------------------------------------------------------------------------- stages meet through files

# Imports of a stage that break the rule on purpose: (importing module, imported module) patterns,
# each with its reason.
STAGE_IMPORT_EXCEPTIONS = {
    ("oger.pipeline", "oger.stages.*.stage"): "the registry: the pipeline registers each stage's STAGE_DEF",
    (
        "oger.commands.index",
        "oger.stages.index.versions",
    ): "`oger index restore|unpin` is the pin's writer: it moves the tag training reads (readers of the "
    "versions and the pin go through oger.stages.index.files)",
}
# What no stage imports: the layers that drive or read the stages from above.
ABOVE_THE_STAGES = ("oger.rounds", "oger.sweep", "oger.explore", "oger.pipeline", "oger.commands", "oger.cli", "flows")
# What sits below the stages (the stages import it, it imports no stage, not even a `files` module).
BELOW_THE_STAGES = ("oger.contract", "oger.algorithm", "oger.generation", "oger.runtime", "oger.data")


def _stage_of(module: str) -> str | None:
    """ "oger.stages.index.files" -> "index"; None outside a stage's package."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["oger", "stages"] else None


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def stage_import_violations(edges) -> list[str]:
    """`module imports target` for each import that breaks the rule: (a) a stage's module imports
    another stage only through its `files` module or its package (for STAGE and what the `__init__`
    exports on purpose); (b) so does every module outside the stages (but the exceptions above), never
    a private name; (c) no stage imports a layer above it (rounds, sweep, explore, pipeline, commands,
    cli, flows), and nothing below the stages imports a stage."""
    bad = set()
    for mod, target, taken in edges:
        here, there = _stage_of(mod), _stage_of(target)
        if here is not None and _within(target, ABOVE_THE_STAGES):  # (c)
            bad.add(f"{mod} imports {target}")
        if there is None or there == here:
            continue
        if _within(mod, BELOW_THE_STAGES):  # (c): below the stages
            bad.add(f"{mod} imports {target}")
        elif taken is not None and taken.startswith("_"):  # (a), (b): a private name, never
            bad.add(f"{mod} imports {target}.{taken}")
        elif target not in (f"oger.stages.{there}", f"oger.stages.{there}.files") and not any(
            fnmatch(mod, m) and fnmatch(target, t) for m, t in STAGE_IMPORT_EXCEPTIONS
        ):  # (a), (b)
            bad.add(f"{mod} imports {target}")
    return sorted(bad)


def _above_the_stages(line: str) -> bool:
    return _within(line.split(" imports ")[1], ABOVE_THE_STAGES)


def test_stages_meet_only_through_their_files_modules():
    """(a), (b): another stage's modules and everything outside the stages reach a stage through its
    `files` module (what others read of it) or its package (STAGE), never its stage.py or helpers."""
    bad = [b for b in stage_import_violations(import_edges()) if not _above_the_stages(b)]
    assert bad == [], "\n".join(bad)


def test_no_stage_imports_a_layer_above_it():
    """(c): rounds, the sweep, explore, the pipeline, commands, the CLI and flows read the stages; a
    stage never imports them (the dependency points one way)."""
    bad = [b for b in stage_import_violations(import_edges()) if _above_the_stages(b)]
    assert bad == [], "\n".join(bad)


def test_the_stage_import_rule_sees_a_planted_violation(tmp_path, monkeypatch):
    tree = {
        "oger/stages/__init__.py": "",
        "oger/stages/a/__init__.py": 'STAGE = "a"\n',
        "oger/stages/a/files.py": "def read_a(ref): ...\ndef _raw(ref): ...\n",
        "oger/stages/a/stage.py": "from oger.stages.a.files import read_a, _raw\nSTAGE_DEF = None\n",
        "oger/stages/b/__init__.py": 'STAGE = "b"\n',
        "oger/stages/b/stage.py": (
            "from oger.stages.a import STAGE\nfrom oger.stages.a.files import read_a\n"
            "from oger.stages.a.stage import STAGE_DEF\n"  # (a)
            "def f():\n    from oger.stages.a.files import _raw\n"  # (a) private
            "    from oger import rounds\n"
        ),  # (c)
        "oger/rounds.py": "from oger.stages.a import files as af\nrows = af._raw(None)\n",  # (b) private
        "oger/pipeline.py": "from oger.stages.a import stage as a_stage\n",  # the registry: excepted
        "oger/commands/plan.py": "from oger.stages.a import stage\n",  # (b)
        "oger/data/rows.py": "from oger.stages.a.files import read_a\n",  # (c): below the stages
        "flows/tasks.py": "from oger.stages.b import STAGE\nfrom oger.stages.a.files import read_a\n",
    }
    for rel, text in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert stage_import_violations(import_edges()) == [
        "oger.commands.plan imports oger.stages.a.stage",
        "oger.data.rows imports oger.stages.a.files",
        "oger.rounds imports oger.stages.a.files._raw",
        "oger.stages.b.stage imports oger.rounds",
        "oger.stages.b.stage imports oger.stages.a.files._raw",
        "oger.stages.b.stage imports oger.stages.a.stage",
    ]


# --------------------------------------------------------------------------- names


def test_benchmark_names_in_config_equal_the_registry():
    assert sorted(BENCHMARK_NAMES) == sorted([SYNTHETIC, *REGISTRY])
    # the groups the scores average over (evaluate's files, read by the sweep) name registered benchmarks
    assert all(set(group) <= set(REGISTRY) for _, group in BENCHMARK_GROUPS)


# String literals equal to a stage name that mean something else there, and how many of them.
NOT_STAGE_NAMES = {
    ("oger/contract/config/problems.py", "train"): 1,  # the data split called "train" (a default)
    ("oger/contract/config/teachers.py", "train"): 1,  # the data split called "train" (a default)
    ("oger/contract/config/train.py", "train"): 1,  # the data split called "train" (a default)
    ("oger/contract/config/train.py", "policy"): 2,  # train.init_from's value "policy" (Literal, default)
    ("oger/contract/config/evaluate.py", "policy"): 2,  # evaluate.prompt's value "policy" (Literal, default)
    ("oger/rounds.py", "policy"): 1,  # init_from's value in a round's checkpoint list
    ("oger/commands/index.py", "policy"): 1,  # init_from's value, printed
    ("oger/commands/index.py", "index"): 1,  # the `oger index` subcommand
    ("oger/cli.py", "index"): 1,  # the `oger index` subcommand
    ("oger/commands/plan.py", "train"): 1,  # the synthetic source's "train" split
    ("oger/data/sources.py", "train"): 1,  # the synthetic source's "train" split
    ("oger/data/hub.py", "train"): 2,  # the "train" split of gsm8k's local layout (two spellings of its id)
}


def stage_name_literals(names: set[str]) -> dict[tuple[str, str], int]:
    """(module path, literal) -> count of string constants equal to a stage name in every module
    outside oger/stages/ (docstrings excluded)."""
    found: dict[tuple[str, str], int] = {}
    for path in _modules().values():
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("oger", "stages"):
            continue
        tree = ast.parse(path.read_text())
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in docs:
                found[(str(rel), n.value)] = found.get((str(rel), n.value), 0) + 1
    return found


def test_no_module_outside_the_stages_spells_a_stage_name():
    # A stage is reached through its hooks (models, check_inputs, per_pair, scores, ...) or, where a
    # module must name it, through the STAGE constant it imports from the stage's package: adding a
    # stage never means editing preflight, prepare, the CLI or the sweep.
    found = stage_name_literals({s.name for s in pipeline.BUILTIN_STAGES})
    assert found == NOT_STAGE_NAMES, {k: v for k, v in found.items() if NOT_STAGE_NAMES.get(k) != v}


def test_the_stage_name_check_sees_a_spelled_name(tmp_path, monkeypatch):
    spy = tmp_path / "oger" / "spy.py"
    spy.parent.mkdir()
    spy.write_text('"""a docstring naming train is fine"""\nif stage == "train":\n    pass\n')
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert stage_name_literals({"train"}) == {("oger/spy.py", "train"): 1}


def test_registry_order_and_upstream_views():
    assert pipeline.STAGES == ["problems", "teachers", "filter", "index", "policy", "train", "evaluate"]
    assert pipeline.UPSTREAM["train"] == ["problems", "policy", "index"]
    for i, name in enumerate(pipeline.STAGES):  # every upstream comes earlier
        assert all(pipeline.STAGES.index(u) < i for u in pipeline.UPSTREAM[name])


def test_register_rejects_unknown_upstream_and_duplicates():
    before = list(pipeline.STAGES)
    with pytest.raises(ConfigError, match=r"^stage 'x': upstream \['nope'\] not registered \(registered: \["):
        contract.register(Stage("x", 1, ("nope",), key_inputs=lambda c: ({}, {}), run=None))
    dup = Stage("problems", 1, (), key_inputs=lambda c: ({}, {}), run=None)
    with pytest.raises(ConfigError, match=r"^stage 'problems' is registered already$"):
        contract.register(dup)
    with pytest.raises(ConfigError, match=r"^stage 'problems' is read by \['teachers'.*\]; unregister those first$"):
        contract.unregister("problems")
    assert pipeline.STAGES == before and "x" not in pipeline.STAGES  # nothing changed by a refusal
    assert contract.REGISTRY["problems"] is not dup


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
    problems = read_problems(inputs["problems"])  # the owner's reader, as any downstream stage
    counts = problems.with_columns(words=pl.col("question").str.split(" ").list.len())
    per_split = {s: int(n) for s, n in counts.group_by("split").agg(pl.col("words").sum()).iter_rows()}
    ctx.write_atomic(ctx.cache_dir / "note.txt", lambda tmp: tmp.write_text("scratch"))
    with ctx.output() as out:
        counts.select("problem_id", "words").write_parquet(out.file("words.parquet"))
        out.metrics = {"words": per_split, "min_words": ctx.config_slice["min_words"]}
    return ctx.ref(out)


calls: list[str] = []
WORDS = Stage(
    name="words",
    version=1,
    upstream=("problems",),
    key_inputs=lambda cfg: ({"min_words": 1, "round": cfg.teachers.round}, {}),
    run=_word_counts,
    plan_info=lambda cfg, counts: StageInfo(engine="polars", resources="1 CPU"),
    run_summary=lambda ref: {"words": ref.metrics["words"]},
    report_section=lambda entry, run_dir: ["", "## Words", "", str(entry["metrics"]["words"])],
)


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
    record.add(pipeline.StageRun("words", ref, cached=False, seconds=0.0))
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


# --------------------------------------------------------------------------- artifacts with owners

PATH_CALLS = {"Path", "PurePath", "file", "joinpath", "join"}  # calls whose string args are paths


def declared_files() -> dict[str, set[str]]:
    """Every file name a built-in stage declares in its artifact -> the packages of the stages that
    declare it (the teachers' and the filter's tables are both called traces.parquet)."""
    owners: dict[str, set[str]] = {}
    for stage in pipeline.BUILTIN_STAGES:
        package = stage.run.__module__.rpartition(".")[0]  # oger.stages.<name>
        for name in stage.files:
            owners.setdefault(name, set()).add(package)
    return owners


def file_name_literals(tree: ast.AST, names) -> list[tuple[int, str]]:
    """(line, name) of each string constant that spells one of `names` as a path: the whole
    string or one of its /-separated parts (f-string parts too); a name without a dot ("model", a
    folder, also a dict key and a column) only when the string is used as a path (an operand of
    `/`, an argument of Path(...), out.file(...), ...) or has a / in it."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        parts = node.value.split("/")
        parent = parents.get(node)
        as_path = (isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div)) or (
            isinstance(parent, ast.Call)
            and node in parent.args
            and getattr(parent.func, "attr", getattr(parent.func, "id", None)) in PATH_CALLS
        )
        for name in names:
            if name in parts and ("." in name or len(parts) > 1 or as_path):
                hits.append((node.lineno, name))
    return sorted(hits)


def file_name_spellings(tops=("oger", "flows", "bench")) -> list[str]:
    """Every module but a stage's `files` module that spells one of that stage's file names (its
    own stage.py too: a name two stages share, traces.parquet or model, is then never spelled
    where the other stage's artifact is read)."""
    owners, bad = declared_files(), []
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for line, name in file_name_literals(ast.parse(path.read_text(), str(path)), owners):
                if not any(mod == package + ".files" for package in owners[name]):
                    bad.append(
                        f"{path.relative_to(REPO)}:{line}: {name!r} belongs to "
                        f"{' and '.join(sorted(owners[name]))}: use the constants and readers of its "
                        "files module"
                    )
    return bad


def test_every_stage_declares_its_files_in_its_files_module():
    import importlib

    for stage in pipeline.BUILTIN_STAGES:
        files = importlib.import_module(stage.run.__module__.rpartition(".")[0] + ".files")
        assert stage.files and stage.files == files.FILES, stage.name
    owners = declared_files()
    assert owners["problems.parquet"] == {"oger.stages.problems"}
    assert owners["traces.parquet"] == {"oger.stages.teachers", "oger.stages.filter"}
    assert owners["model"] == {"oger.stages.policy", "oger.stages.train"}


def test_no_module_spells_another_stages_file_names():
    """Only a stage's `files` module names the files of its artifact; the stage itself uses its
    constants, pipeline, other stages, commands, sweep, flows and bench its readers."""
    assert file_name_spellings() == []


def test_the_file_name_check_sees_a_spelling(tmp_path, monkeypatch):
    names = declared_files()
    spelled = """
problems = pl.read_parquet(Path(ref.path) / "problems.parquet")
kept = pl.read_parquet(f"{ref.path}/traces.parquet")
model = Path(ref.path) / "model"
config = Path(m["path"], "model/config.json")
row = {"model": "m", "column": pl.col("model")}  # a key and a column: not a path
"""
    got = file_name_literals(ast.parse(spelled), names)
    assert got == [(2, "problems.parquet"), (3, "traces.parquet"), (4, "model"), (5, "model")]
    spy = tmp_path / "oger" / "spy.py"  # a module outside the stages: flagged
    spy.parent.mkdir()
    spy.write_text(spelled)
    package = tmp_path / "oger" / "stages" / "problems"
    package.mkdir(parents=True)
    (package / "files.py").write_text('PROBLEMS_FILE = "problems.parquet"\n')  # the owner's: fine
    (package / "stage.py").write_text('p = out.file("problems.parquet")\n')  # not through it
    filter_stage = tmp_path / "oger" / "stages" / "filter" / "stage.py"  # shares the name, still
    filter_stage.parent.mkdir(parents=True)
    filter_stage.write_text('t = pl.read_parquet(Path(teachers_ref.path) / "traces.parquet")\n')
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert [b.split(":")[0:2] for b in file_name_spellings(("oger",))] == [
        ["oger/spy.py", "2"],
        ["oger/spy.py", "3"],
        ["oger/spy.py", "4"],
        ["oger/spy.py", "5"],
        ["oger/stages/filter/stage.py", "1"],
        ["oger/stages/problems/stage.py", "1"],
    ]


def test_stages_read_only_upstream_stages_files():
    """A stage's package imports another stage's `files` module only when that stage is upstream of
    it (directly or not; the train stage's own `init` input is a train artifact)."""
    graph = import_graph()

    def ancestors(name: str) -> set[str]:
        ups = set(pipeline.UPSTREAM[name])
        return ups.union(*(ancestors(u) for u in ups)) if ups else set()

    for stage in pipeline.BUILTIN_STAGES:
        package = stage.run.__module__.rpartition(".")[0]
        allowed = {package} | {f"oger.stages.{u}" for u in ancestors(stage.name)}
        for mod, targets in graph.items():
            if mod.startswith(package + "."):
                for t in targets:
                    if t.startswith("oger.stages.") and t.endswith(".files"):
                        assert t.rpartition(".")[0] in allowed, f"{mod} imports {t}"
