"""Keys that cannot go stale (oger.contract.keys): every config field is in a stage's key or marked,
with a reason, as not changing the result; a marked field really changes nothing (the cheap stages'
artifacts are byte-identical when it changes), an in-key field really moves its stage's key, and a
stage's run reads no field that neither its key nor an upstream key covers."""

import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from oger import pipeline
from oger.contract.config import LossConfig, OgerConfig, PolicyConfig, TrainConfig, load_config
from oger.contract.keys import RULES, field_rule, key_dump
from tests.conftest import REPO
from tests.key_tracing import ancestors, every_field, inert_here, instances, key_reads, not_in_key, reads

TINY = "configs/tiny.yaml"  # tests run from the repository root (REPO)
# Configs whose keys between them read every option some config uses: the demo, a pretrained
# policy, several optimizer steps per batch (the clip settings act), the whole index, and the
# paper's setting (hub sources, the dataset teacher, LUFFY's prompt and think format).
VARIANTS = {
    "tiny": (TINY, []),
    "model-policy": (TINY, ["policy.source=model", "policy.model=smollm2"]),
    "ppo2": (TINY, ["train.loss.ppo_mini_batches=2"]),
    "index-all": (TINY, ["index.problems=all", "train.init_from=previous_round"]),
    "paged": (TINY, ["train.rollout.engine=paged", "teachers.teachers.3.engine=paged"]),
    "vllm": (TINY, ["train.rollout.engine=vllm", "evaluate.engine=vllm"]),
    "paper": ("configs/qwen2.5-math-1.5b-oger.yaml", []),
}


def load(path: str, overrides: list[str], workdir: Path) -> OgerConfig:
    return load_config(path, [f"workdir={workdir}", *overrides])


def with_local_source(folder: Path) -> str:
    """tiny.yaml plus a local problems file, written to `folder`."""
    data = yaml.safe_load((REPO / TINY).read_text())
    rows = folder / "local.jsonl"
    rows.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n')
    data["problems"]["sources"].append(
        {"kind": "local", "name": "local", "path": str(rows), "format": "plain", "split": "test", "limit": 5}
    )
    out = folder / "tiny-local.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(out)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> dict[str, dict[str, set]]:
    """variant -> stage -> the fields its key reads."""
    wd = tmp_path_factory.mktemp("keys")
    variants = {**VARIANTS, "local-source": (with_local_source(wd), [])}
    return {v: key_reads(load(path, ov, wd)) for v, (path, ov) in variants.items()}


def test_every_field_is_in_a_key_or_marked_with_a_reason(keyed):
    in_some_key = {f for stages in keyed.values() for fields in stages.values() for f in fields}
    unmarked, bad = [], []
    for cls, name in every_field():
        rule, why = field_rule(cls, name)
        if rule not in RULES or (rule != "in" and not why):
            bad.append(f"{cls.__name__}.{name}: rule {rule!r}, reason {why!r}")
        if rule in ("in", "omitted_at_default", "inert", "resolved") and (cls, name) not in in_some_key:
            unmarked.append(f"{cls.__name__}.{name} ({rule})")
    assert not bad, bad
    # A field here is read by no stage's key and not marked: a stage that reads it would cache stale.
    assert not unmarked, f"in no stage key and not marked not_in_key: {unmarked}"
    assert len(every_field()) > 120  # the walk reaches every section (sources, teachers, guards, ...)


def test_the_walk_sees_an_unmarked_field():
    class Section(OgerConfig.model_fields["filter"].annotation):
        new_option: int = 3  # read by `run`, missing from the key: what the walk exists for

    fields = every_field(Section)
    assert (Section, "new_option") in fields and field_rule(Section, "new_option") == ("in", "")


def test_inert_fields_are_marked_inert():
    for model in (
        LossConfig(),
        LossConfig(ppo_mini_batches=2),
        PolicyConfig(),
        PolicyConfig(source="model", model="smollm2"),
    ):
        for name in type(model).inert_fields(model):
            assert field_rule(type(model), name)[0] == "inert", (type(model).__name__, name)
    assert set(LossConfig().inert_fields()) == {"clip", "clip_eps_low", "clip_eps_high", "ppo_mini_batches"}
    assert LossConfig(ppo_mini_batches=2).inert_fields() == set()


def test_key_dump_leaves_out_exactly_what_the_schema_marks():
    t = TrainConfig(optim={"micro_batch_size": 3}, rollout={"engine": "paged"}, distributed={"num_processes": 1})
    d = key_dump(t)
    assert "micro_batch_size" not in d and "checkpoint_every" not in d  # inert here; not in key
    cut = key_dump(TrainConfig(optim={"micro_batch_size": 3}, loss={"entropy_coef": 0.01, "entropy_agg": "token_mean"}))
    assert cut["micro_batch_size"] == 3  # the loss depends on the cut: in the key
    assert d["rollout_engine"] == "paged" and "init_from" not in d  # omitted only at the default
    assert "clip" not in d  # inert with one optimizer step per batch
    assert "clip" in key_dump(TrainConfig(loss={"ppo_mini_batches": 2}))
    assert d["oger"]["guards"]["max_divergence"] == 0.45  # nested sections, recursively
    # The sections' fields sit flat in the key under the names they had before the sections.
    flat = {n for n, v in TrainConfig().model_dump().items() if not isinstance(v, dict) or n == "oger"}
    for section in ("optim", "loss", "rollout"):
        flat |= set(getattr(TrainConfig(), section).model_dump(by_alias=True))
    assert set(key_dump(TrainConfig())) == flat - {
        "micro_batch_size",
        "max_tokens_per_micro_batch",
        "padding_free",
        "share_prompts",
        "logprob_chunk",
        "init_from",
        "rollout_engine",
        "clip",
        "clip_eps_low",
        "clip_eps_high",
        "ppo_mini_batches",
        "sync_every",
        "correction",
        "correction_cap",
        "kv_cache_gib",
        "sleep",
        "precision",  # resolved: the train stage keys what it resolves to (float32 left out)
        "dtype",  # resolved: the vLLM engine's dtype, keyed by the stage when not the policy's
        "gpu_memory_utilization",
        "tensor_parallel_size",
        "max_push_logp_diff",  # checks of the vLLM engine: they stop a broken run, change no other
        "max_rollout_kl",
        "on_rollout_kl",
    }
    vllm = key_dump(TrainConfig(rollout={"engine": "vllm"}))  # the vLLM options act: in the key
    assert (vllm["sync_every"], vllm["correction"], vllm["correction_cap"]) == (1, "token", 3.0)
    assert "correction_cap" not in key_dump(TrainConfig(rollout={"engine": "vllm", "correction": "none"}))
    assert "rollout_batch_prompts" in flat and "batch_prompts" not in flat


# --------------------------------------------------------------------------- perturbations


def _literals(annotation) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [x for a in typing.get_args(annotation) for x in _literals(a)]


def candidates(value, annotation) -> list:
    """Other values to try for a field, most likely valid first (never the value itself)."""
    choices = _literals(annotation)
    if choices:
        out = choices
    elif isinstance(value, bool):
        out = [not value]
    elif isinstance(value, int):
        out = [value + 1, value - 1, value * 2]
    elif isinstance(value, float):
        out = [round(value * 0.5 + 0.05, 6), round(value + 1.0, 6), round(value * 0.9, 6)]
    elif isinstance(value, str):
        out = [value + "x", value + "_2", value[:-1]]
    elif isinstance(value, list):
        out = [value[:-1], value + value[:1]]
    elif value is None:
        out = [2, 0.5, "x", ["stepwise"], True]
    else:
        out = []
    return [c for c in out if c != value]


# Fields whose other valid values the generic candidates do not find.
OTHER_VALUES = {
    "BenchmarkSpec.name": ["aime24"],
    "EvaluateConfig.instruction": ["Q: {question}"],
}  # an instruction must hold {question}


# Keyed fields that cannot be given another valid value on these configs, and why that is fine.
NOT_PERTURBED = {
    "PolicyConfig.source": "source: model needs a model (the model-policy variant keys it)",
    "TeacherConfig.backend": "another backend needs other options; the backend is in the teacher's slice",
    "OgerConfig.workdir": "read by train's inputs to find a pinned tag; not in any slice",
    "OgerConfig.name": "read through workdir_path (the default workdir); not in any slice",
    "SyntheticSource.kind": "the discriminator: another kind is another schema (LocalSource, HFSource)",
}


def owners(cfg: OgerConfig) -> dict:
    """(model class, field) -> [(each model of that class in the config, the field's dotted path)]."""
    out: dict = {}
    for prefix, model in instances(cfg):
        for name in type(model).model_fields:
            out.setdefault((type(model), name), []).append((model, f"{prefix}{name}"))
    return out


def is_section(value) -> bool:
    """A value holding config models (cfg.train, teachers.teachers): its own fields are what counts."""
    return isinstance(value, BaseModel) or (isinstance(value, list) and any(isinstance(v, BaseModel) for v in value))


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("variant", ["tiny", "ppo2", "model-policy"])
def test_each_in_key_field_moves_its_stages_key(variant, keyed, tmp_path):
    path, base = VARIANTS[variant]
    cfg = load(path, base, tmp_path)
    before = {n: p.key for n, p in pipeline.plan(cfg).items()}
    where, idle = owners(cfg), inert_here(cfg)
    failures, moved = [], 0
    for stage, fields in keyed[variant].items():
        for cls, name in sorted(fields, key=lambda f: (f[0].__name__, f[1])):
            rule, label = field_rule(cls, name)[0], f"{cls.__name__}.{name}"
            value = where[(cls, name)][0][0].__dict__[name]
            if rule in ("no", "resolved") or (cls, name) in idle or label in NOT_PERTURBED or is_section(value):
                continue  # resolved model references, inert or marked fields, whole sections
            options = [
                (dotted, new)
                for model, dotted in where[(cls, name)]  # any teacher, any source
                for new in OTHER_VALUES.get(label)
                or candidates(model.__dict__[name], cls.model_fields[name].annotation)
            ]
            for dotted, new in options:
                override = f"{dotted}={as_yaml(new)}"
                try:
                    changed = pipeline.plan(load(path, [*base, override], tmp_path))
                except Exception:  # not a valid value here: try the next
                    continue
                if changed[stage].key == before[stage]:
                    failures.append(f"{label} ({override}) leaves the {stage} key unchanged")
                moved += 1
                break
            else:
                failures.append(f"{label}: no valid other value among {options}")
    assert not failures, failures
    assert moved > 40


# --------------------------------------------------------------------------- byte-identical artifacts

# Not-in-key fields of the cheap stages and the value each is changed to (a field of a section
# listed here but missing below fails the test: add it).
CHEAP = ("problems", "teachers", "filter", "index")
NOT_IN_KEY_CHANGES = {
    "LocalSource.path": None,  # the file, copied elsewhere (set by the test)
    "TeacherConfig.base_url": "http://127.0.0.1:9/v1",
    "TeacherConfig.api_key_env": "OTHER_KEY",
    "TeacherConfig.max_concurrency": 2,
    "TeacherConfig.request_timeout_s": 7.0,
    "TeacherConfig.shards": 3,
    "TeacherConfig.num_gpus": 0.0,
    "TeacherConfig.num_cpus": 2.0,
    "FilterConfig.verify_timeout_s": 9.0,
    "IndexConfig.batch_size": 3,
    "OgerConfig.lock_timeout_s": 1.0,
}


def _artifact_files(ref, workdir: Path) -> dict[str, bytes]:
    """Every file of the artifact but its manifest (which holds times), the workdir's own path
    (the index points at its LanceDB folder) written as WORKDIR."""
    root, here = Path(ref.path), str(workdir.resolve()).encode()
    return {
        str(p.relative_to(root)): p.read_bytes().replace(here, b"WORKDIR")
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _index_rows(refs) -> dict:
    """problem_id -> (trace texts, vectors) of the index at its tag, for every problem."""
    from oger.stages.index.files import TeacherIndex
    from oger.stages.problems.files import read_problems

    ids = read_problems(refs["problems"])["problem_id"].to_list()
    return TeacherIndex.from_artifact(refs["index"]).lookup(ids)


# The encoder pads each batch to its longest text: another batch size changes the vectors in the
# last float32 bits only (measured: max |difference| 1.2e-7 on unit vectors), like the
# trainer's micro-batch size. Every other field here leaves them bit-identical.
VECTOR_ATOL = {"IndexConfig.batch_size": 1e-6}


def _same_index(got: dict, expected: dict, atol: float) -> float:
    """The largest |difference| of the vectors, once the texts are checked equal."""
    assert got.keys() == expected.keys()
    worst = 0.0
    for p, (texts, vecs) in expected.items():
        assert got[p][0] == texts
        worst = max(worst, float(abs(got[p][1] - vecs).max()))
    assert worst <= atol, worst
    return worst


@pytest.mark.slow
def test_not_in_key_fields_of_the_cheap_stages_change_no_byte(tmp_path, small_config):
    data = tmp_path / "extra.jsonl"
    data.write_text("".join(f'{{"question": "What is {i} + {i}?", "answer": "{2 * i}"}}\n' for i in range(6)))
    path = small_config.write(
        tmp_path,
        "nokey",
        n_train=12,
        n_test=2,
        teachers=[small_config.scripted("stepwise", 0.2), small_config.scripted("terms")],
        problems={
            "sources": [
                {
                    "kind": "synthetic",
                    "name": "arith",
                    "n_train": 12,
                    "n_test": 2,
                    "max_operands": 3,
                    "max_value": 9,
                    "ops": "+-",
                },
                {"kind": "local", "name": "extra", "path": str(data), "format": "plain", "split": "train"},
            ]
        },
    )

    def run(workdir: Path, *overrides):
        cfg = load_config(path, [f"workdir={workdir}", *overrides])
        return cfg, pipeline.run_local(cfg, until="index")

    _, base = run(tmp_path / "base")
    expected = {s: _artifact_files(base[s], tmp_path / "base") for s in CHEAP}
    expected_rows = _index_rows(base)
    assert len(expected_rows) >= 12
    marked = {f"{c.__name__}.{n}" for c, n in every_field() if field_rule(c, n)[0] == "no"}
    in_cheap = {
        label
        for label in marked
        if label.split(".")[0]
        in ("LocalSource", "TeacherConfig", "Sampling", "FilterConfig", "IndexConfig", "SyntheticSource")
    }
    assert in_cheap <= set(NOT_IN_KEY_CHANGES), in_cheap - set(NOT_IN_KEY_CHANGES)
    for i, (label, new) in enumerate(NOT_IN_KEY_CHANGES.items()):
        if label == "LocalSource.path":
            moved = tmp_path / "elsewhere" / "copy.jsonl"
            moved.parent.mkdir()
            shutil.copy(data, moved)
            override = f"problems.sources.1.path={moved}"
        else:
            where = {
                "TeacherConfig": "teachers.teachers.0.",
                "FilterConfig": "filter.",
                "IndexConfig": "index.",
                "OgerConfig": "",
            }[label.split(".")[0]]
            override = f"{where}{label.split('.')[1]}={as_yaml(new)}"
        _, got = run(tmp_path / f"w{i}", override)
        for stage in CHEAP:
            assert got[stage].key == base[stage].key, (label, stage)
            assert _artifact_files(got[stage], tmp_path / f"w{i}") == expected[stage], (label, stage)
        # the index's table at its tag: the same texts and vectors (bit-identical unless listed)
        worst = _same_index(_index_rows(got), expected_rows, VECTOR_ATOL.get(label, 0.0))
        print(f"{label}: vectors differ by at most {worst:.2e}")


# --------------------------------------------------------------------------- what a run reads


@pytest.mark.slow
def test_each_stage_reads_only_what_its_key_or_an_upstream_key_covers(tmp_path, small_config, monkeypatch):
    path = small_config.write(
        tmp_path,
        "reads",
        **{
            **small_config.RL_UPSTREAM,
            "evaluate": {
                **small_config.RL_UPSTREAM["evaluate"],
                "max_new_tokens": 16,
                "benchmarks": [{"name": "synthetic", "limit": 4, "samples": 2}],
            },
        },
        train={
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "rollout": {"max_new_tokens": 16},
            "logging": {"checkpoint_every": 1},
        },
    )
    cfg = load_config(path, [f"workdir={tmp_path / 'w'}"])
    keys = key_reads(cfg)
    marked = not_in_key()
    idle = inert_here(cfg)
    run_reads: dict[str, set] = {}
    real_run_stage = pipeline.run_stage

    def traced_run_stage(cfg, p, *args, **kwargs):
        with reads() as seen:
            ref = real_run_stage(cfg, p, *args, **kwargs)
        run_reads[p.name] = seen
        return ref

    monkeypatch.setattr(pipeline, "run_stage", traced_run_stage)
    pipeline.run_local(cfg)
    assert set(run_reads) == set(pipeline.STAGES)
    where, stale = owners(cfg), {}
    for stage, seen in run_reads.items():
        covered = set().union(keys[stage], *(keys[u] for u in ancestors(stage)))
        loose = sorted(
            f"{c.__name__}.{n}"
            for c, n in seen - covered - marked - idle
            if not is_section(where[(c, n)][0][0].__dict__[n])
        )
        if loose:
            stale[stage] = loose
    assert not stale, f"read by a stage's run but in neither its key nor an upstream key: {stale}"


def test_a_flat_section_cannot_shadow_a_key_name():
    from pydantic import Field as F

    from oger.contract.config import Strict
    from oger.contract.keys import flat_in_key

    class Inner(Strict):
        steps: int = 1

    class Outer(Strict):
        steps: int = 2
        inner: Inner = F(Inner(), json_schema_extra=flat_in_key("test"))

    with pytest.raises(ValueError, match=r"Outer\.inner\.steps: its flat key name 'steps' is taken"):
        key_dump(Outer())


CUT_FIELDS = [
    "train.optim.micro_batch_size=3",
    "train.optim.max_tokens_per_micro_batch=500",
    "train.distributed.num_processes=2",  # with rollout.batch_prompts 4 below: 8 prompts = 2 ranks x 4
    "train.optim.share_prompts=true",
]


@pytest.mark.parametrize("change", CUT_FIELDS)
def test_the_micro_batch_cut_is_keyed_where_the_loss_depends_on_it(tmp_path, change):
    """`entropy_agg: token_mean` (the paper configs, LUFFY/verl) averages the entropy bonus per
    micro-batch, and micro-batches are cut per rank: there the micro-batching fields and the world
    size change the loss and move the train key. Without that term every cut gives the same gradient
    and the key stays (LUFFY-exact stays the default)."""

    def train_key(*overrides):
        return pipeline.plan(load(TINY, ["train.rollout.batch_prompts=4", *overrides], tmp_path))["train"].key

    cut = ["train.loss.entropy_coef=0.01", "train.loss.entropy_agg=token_mean"]
    assert train_key(*cut, change) != train_key(*cut)
    assert train_key("train.loss.entropy_coef=0.01", "train.loss.entropy_agg=loss_agg", change) == train_key(
        "train.loss.entropy_coef=0.01", "train.loss.entropy_agg=loss_agg"
    )
    assert train_key(change) == train_key()  # no entropy term (tiny.yaml)
