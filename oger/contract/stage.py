"""The stage contract: what a stage is, what it gets when it runs, and where it may write.

A stage is one `Stage` object, defined in the stage's own module and registered here (the built-in
ones by `oger.pipeline`, in DAG order). The pipeline knows stages only through this object: it
computes the key from `key_inputs` and the upstream keys (plus any `extra_inputs`), resolves the
inputs from those keys, calls `run(ctx, inputs)` and gets an `ArtifactRef` back. Nothing outside a
stage's module branches on its name.

`StageContext` owns the workdir layout a stage sees: its artifact (written atomically through
`ctx.output()`), its cache folder (`<workdir>/cache/<stage>/`, per key: `ctx.cache_dir`) and the one
atomic-write helper for files written outside the artifact. The types `oger plan` asks stages for
(`StageInfo`, `Budget`) live here too, so stage modules never import the command that lists them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from oger.contract.artifacts import (
    ArtifactRef,
    StageOutput,
    artifact_dir,
    atomic_write,
    cache_dir,
    cache_root,
    load_complete,
    read_manifest,
    stage_root,
    write_artifact,
)
from oger.contract.errors import ConfigError
from oger.contract.fanout import FanOut

__all__ = [
    "Stage",
    "StageContext",
    "StageInfo",
    "Budget",
    "GpuEstimate",
    "EngineShare",
    "ModelUse",
    "register",
    "unregister",
    "get",
    "ORDER",
    "UPSTREAM",
    "REGISTRY",
    "artifact_dir",
    "stage_root",
    "cache_root",
    "cache_dir",
    "atomic_write",
    "load_complete",
    "read_manifest",
    "artifact_manifest",
]


# --------------------------------------------------------------------------- what `oger plan` shows


@dataclass
class Budget:
    """Generation of one kind: `prompts` x `samples` x `max_tokens` new tokens at most."""

    what: str
    prompts: int | None  # None: unknown before the problems stage has run (file not laid out)
    samples: int
    max_tokens: int

    @property
    def tokens(self) -> int | None:
        return None if self.prompts is None else self.prompts * self.samples * self.max_tokens


Phases = dict[str, tuple[int, float]]  # phase -> (bytes, share of the GPU's memory an engine takes)


@dataclass(frozen=True)
class EngineShare:
    """An engine sized as a share of whatever GPU it gets (vLLM's `gpu_memory_utilization`: its weights,
    activations and KV cache together take that share of the GPU's total memory, the rest of the share
    is KV cache). What the plan needs to say whether the share is enough on a GPU of a given size."""

    share: float
    fixed: int  # bytes of the share that are not KV cache: the engine's weights and activations
    per_token: int  # KV-cache bytes per token (of one GPU's part of the engine)
    tokens: int  # tokens the rollouts hold at once when every row runs at full length
    min_tokens: int  # the engine's context: vLLM refuses to start without room for one such sequence

    def kv_bytes(self, gpu_bytes: float) -> float:
        return self.share * gpu_bytes - self.fixed

    def kv_tokens(self, gpu_bytes: float) -> int:
        return max(0, int(self.kv_bytes(gpu_bytes) // self.per_token))

    def holds(self, gpu_bytes: float) -> bool:
        """Whether the share leaves a KV cache of at least one sequence at the engine's context."""
        return self.kv_tokens(gpu_bytes) >= self.min_tokens


@dataclass
class GpuEstimate:
    """A stage's per-GPU estimate for `oger plan` (nothing runs): each phase's memory as (bytes, share of
    the GPU: an engine that takes a share of whatever GPU it gets, vLLM's gpu_memory_utilization), the
    `lines` that explain it (memory, time, disk; labelled estimates) and `fixes`: (a config change, the
    phases re-estimated with it). The plan command weighs them against the user's `--gpu-memory`.
    `engine`: what a share-sized engine must hold within its share (None: no such engine)."""

    phases: Phases
    lines: list[str] = field(default_factory=list)
    fixes: list[tuple[str, Phases]] = field(default_factory=list)
    engine: EngineShare | None = None

    @staticmethod
    def need(phases: Phases, gpu_bytes: float) -> float:
        """The most any phase needs of a GPU with `gpu_bytes` of memory."""
        return max(b + share * gpu_bytes for b, share in phases.values())


@dataclass
class StageInfo:
    """A stage's answer to `oger plan`: engine, resources, token budget, notes (nothing runs), and for a
    stage that runs on GPUs its per-GPU estimate (`gpu`)."""

    engine: str
    resources: str
    budget: list[Budget] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gpu: GpuEstimate | None = None
    # commands a user runs by hand beside the stage, given its cache folder (a multi-node train stage
    # without Ray: the torchrun line for each other node); `oger plan` prints them
    commands: Callable[[Path], list[str]] | None = None


@dataclass(frozen=True)
class ModelUse:
    """A model a stage loads, for the checks before a run (`oger.commands.preflight`) and the
    one-time conversions of `oger prepare`: the config field that names it (for the error
    message), the reference, and whether its weights are loaded (False: the tokenizer only)."""

    field: str
    ref: str
    weights: bool = True


# --------------------------------------------------------------------------- the workdir layout


def artifact_manifest(workdir: Path, stage: str, key: str) -> dict | None:
    """The manifest of `stage`'s artifact for `key` (complete or not), or None."""
    return read_manifest(artifact_dir(workdir, stage, key))


@dataclass
class StageContext:
    """What a running stage may touch: its artifact, its cache folder, the run's options.

    `cfg` is the whole `OgerConfig` (None when a test drives a stage function directly);
    `upstream` is the plan's input keys, recorded as the manifest's `inputs`."""

    workdir: Path
    name: str
    key: str
    config_slice: Any
    identity: dict
    upstream: dict[str, str] = field(default_factory=dict)
    cfg: Any = None
    refresh: bool = False
    fan_out: FanOut | None = None

    @property
    def artifact_dir(self) -> Path:
        """Where the finished artifact lives (it appears there only once complete)."""
        return artifact_dir(self.workdir, self.name, self.key)

    @property
    def cache_root(self) -> Path:
        """`<workdir>/cache/<stage>/`: caches shared across keys (per-teacher traces, per-model
        benchmark results) that make a changed stage redo only what changed."""
        return cache_root(self.workdir, self.name)

    @property
    def cache_dir(self) -> Path:
        """`<workdir>/cache/<stage>/<key16>/`: state of this key only (e.g. train checkpoints)."""
        return cache_dir(self.workdir, self.name, self.key)

    def write_atomic(self, path: Path, write: Callable[[Path], Any]) -> Path:
        """`write(tmp)` fills a temp sibling of `path`, renamed onto it only once complete."""
        return atomic_write(path, write)

    @contextmanager
    def output(self, identity: dict | None = None) -> Iterator[StageOutput]:
        """The artifact's temp folder; on leaving it the manifest is written and it is renamed
        into place (on an error it is removed). `identity` overrides the plan's (train adds the
        index tag it read)."""
        with write_artifact(
            self.workdir,
            self.name,
            self.key,
            config_slice=self.config_slice,
            upstream=self.upstream,
            identity=self.identity if identity is None else identity,
        ) as out:
            yield out

    def ref(self, out: StageOutput) -> ArtifactRef:
        """The handle the stage returns for the artifact `output()` just wrote."""
        return ArtifactRef(stage=self.name, key=self.key, path=str(out.final), metrics=out.metrics)


# --------------------------------------------------------------------------- a stage


# The input under which a stage that continues from an earlier round (`continues_previous_round`)
# gets that round's artifact of its own.
PREVIOUS_ROUND = "init"


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG, as the pipeline sees it.

    - `key_inputs(cfg) -> (config_slice, identity)`: everything besides the upstream keys that
      changes the output (DESIGN §3); `version` is bumped when the code's output changes.
    - `upstream`: the stages whose artifacts it reads (their keys go into its key).
    - `run(ctx, inputs) -> ArtifactRef`: `inputs` maps every key of the plan's `upstream` to its
      artifact; write through `ctx.output()` and return `ctx.ref(out)`.
    - `plan_info(cfg, counts) -> StageInfo`: what `oger plan` shows (optional).
    - `files`: {name in the artifact folder: what it holds}, from the stage's `files` module, which
      also has a reader per file; no module outside the stage's package spells these names, others
      read the artifact through those readers (only a downstream stage reads an upstream one).

    Optional hooks, for what only one stage needs:
    - `extra_inputs(cfg, upstream_keys, plans) -> upstream_keys`: more inputs than the upstream
      stages' keys (train: a pinned index tag, an earlier round's checkpoint); each is a key.
    - `input_stages`: the stage whose artifact an extra input is ({"init": "train"}).
    - `continues_previous_round(cfg) -> bool`: the run starts from this stage's own artifact of the most
      recent earlier round (train: `train.init_from: previous_round`). The plan finds that artifact in
      the workdir's run records (`oger.rounds`) and gives it as the input `PREVIOUS_ROUND` (its key in
      this stage's key), so no stage reads run records itself.
    - `missing_input(workdir, name, key) -> str`: the message when an input's artifact is gone.
    - `is_complete(cfg, ref) -> bool`: a cached artifact counts only if this holds too (index:
      its LanceDB tag exists).
    - `input_notes(plans) -> [str]`: lines the flow prints before running (train: pinned inputs).
    - `run_summary(ref) -> dict`: headline numbers copied to the run's summary.json (evaluate).
    - `report_section(entry, run_dir) -> [markdown lines]`: the stage's part of the run's report.md
      (`entry`: its record in summary.json; plots go into `run_dir`).
    - `models(cfg) -> [ModelUse]`: the models it loads when it computes (checked before a run,
      converted once by `oger prepare`).
    - `check_inputs(cfg)`: validate its input files before a run starts (raise an `OgerError`
      naming file, row and field); called only when the stage will compute.
    - `per_pair`: in a sweep, runs once per (arm, seed) (train, evaluate) instead of once per key;
      per-pair stages come last in the DAG.
    - `scores(metrics) -> {benchmark: ...}`: the benchmark scores in its artifact's metrics, set
      beside published results by `oger status` (evaluate).
    """

    name: str
    version: int
    upstream: tuple[str, ...]
    key_inputs: Callable[[Any], tuple[Any, dict]]
    run: Callable[[StageContext, dict[str, ArtifactRef]], ArtifactRef]
    plan_info: Callable[[Any, Any], StageInfo] | None = None
    extra_inputs: Callable[[Any, dict[str, str], dict], dict[str, str]] | None = None
    continues_previous_round: Callable[[Any], bool] | None = None
    input_stages: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    missing_input: Callable[[Path, str, str], str] | None = None
    is_complete: Callable[[Any, ArtifactRef], bool] | None = None
    input_notes: Callable[[dict], list[str]] | None = None
    run_summary: Callable[[ArtifactRef], dict] | None = None
    report_section: Callable[[dict, Path], list[str]] | None = None
    models: Callable[[Any], list[ModelUse]] | None = None
    check_inputs: Callable[[Any], None] | None = None
    per_pair: bool = False
    scores: Callable[[dict], dict] | None = None

    def input_stage(self, input_name: str) -> str:
        """The stage whose artifact the input `input_name` is."""
        return self.input_stages.get(input_name, input_name)


# --------------------------------------------------------------------------- the registry

REGISTRY: dict[str, Stage] = {}
ORDER: list[str] = []  # DAG order = registration order (every upstream is registered first)
UPSTREAM: dict[str, list[str]] = {}  # name -> upstream stage names (kept in step with REGISTRY)


def register(stage: Stage) -> Stage:
    """Add a stage after the registered ones; its upstream stages must be registered already."""
    if stage.name in REGISTRY:
        if REGISTRY[stage.name] is stage:
            return stage
        raise ConfigError(f"stage {stage.name!r} is registered already")
    missing = [u for u in stage.upstream if u not in REGISTRY]
    if missing:
        raise ConfigError(f"stage {stage.name!r}: upstream {missing} not registered (registered: {ORDER})")
    REGISTRY[stage.name] = stage
    ORDER.append(stage.name)
    UPSTREAM[stage.name] = list(stage.upstream)
    return stage


def unregister(name: str) -> None:
    """Remove a stage no other registered stage reads (tests, plugins)."""
    users = [s for s, ups in UPSTREAM.items() if name in ups]
    if users:
        raise ConfigError(f"stage {name!r} is read by {users}; unregister those first")
    REGISTRY.pop(name, None)
    UPSTREAM.pop(name, None)
    if name in ORDER:
        ORDER.remove(name)


def get(name: str) -> Stage:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages are {ORDER}") from None
