"""The train artifact's files and their readers: the only place their names are spelled.

The trainer writes `metrics.jsonl` and `rollouts.jsonl` into its run folder (the key's cache
folder) under the same names, so the readers take that folder too."""

from __future__ import annotations

import json
from pathlib import Path

from oger.contract.artifacts import ArtifactRef, artifact_path
from oger.labels import by_source
from oger.stages.train.metrics import Metric, swept, with_labels

MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
FILES = {
    MODEL_DIR: "the trained model as an HF folder (model and tokenizer)",
    METRICS_FILE: "one JSON line of training metrics per step",
    ROLLOUTS_FILE: "one JSON line per sampled rollout (with train.logging.log_rollouts; optional)",
    CURVES_FILE: "the training curves",
    TENSORBOARD_DIR: "TensorBoard events (optional)",
}
# In the run folder only, not the artifact: the tracker runs' identity and ids (`oger.tracking`), kept
# there so a resumed run continues the same tracker runs; the artifact's metrics carry the ids on.
TRACKERS_FILE = "trackers.json"


def model_dir(ref: ArtifactRef | str | Path) -> Path:
    """The trained model's HF folder."""
    return artifact_path(ref) / MODEL_DIR


def _json_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(ref: ArtifactRef | str | Path) -> list[dict]:
    """The per-step metrics rows of a train artifact (or of a trainer run folder); [] if none."""
    return _json_lines(artifact_path(ref) / METRICS_FILE)


def read_rollouts(ref: ArtifactRef | str | Path) -> list[dict]:
    """The logged rollouts of a train artifact (or of a trainer run folder); [] if none."""
    return _json_lines(artifact_path(ref) / ROLLOUTS_FILE)


def spec_path(run_dir: Path) -> Path:
    """Where the ranks read their launch spec (`distributed.launch_spec`): in the run folder, which every
    node of a multi-node run sees."""
    return run_dir / "launch.json"


def rank_rollouts_file(rank: int) -> str:
    """The rollouts one rank of a multi-process run writes itself (merged into ROLLOUTS_FILE when the
    ranks are done: `merge_rank_rollouts`)."""
    return f"rollouts.rank-{rank}.jsonl"


def rank_rollout_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("rollouts.rank-*.jsonl"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))


def merge_rank_rollouts(run_dir: Path) -> None:
    """The ranks' own rollout files folded into the run's ROLLOUTS_FILE in step order, rank order within
    a step (the order a gather to rank 0 gave), then removed. A step found in a rank file replaces that
    step's rows in ROLLOUTS_FILE, so a merge interrupted after its write and redone adds nothing twice;
    the file is replaced atomically."""
    from oger.contract.artifacts import atomic_write

    parts = rank_rollout_files(run_dir)
    if not parts:
        return
    by_rank = [_json_lines(p) for p in parts]
    redone = {r["step"] for rows in by_rank for r in rows}
    merged = [r for r in _json_lines(run_dir / ROLLOUTS_FILE) if r["step"] not in redone]
    for step in sorted(redone):
        merged += [r for rows in by_rank for r in rows if r["step"] == step]
    merged.sort(key=lambda r: r["step"])  # stable: within a step, the order above
    text = "".join(json.dumps(r) + "\n" for r in merged)
    atomic_write(run_dir / ROLLOUTS_FILE, lambda tmp: tmp.write_text(text))
    for p in parts:
        p.unlink()


def step_metric_table(cfg) -> tuple[Metric, ...]:
    """metrics.jsonl's columns under a config: the step-metric table and the metrics of the labellers
    its problem sources name (`metrics.with_labels`; none for most tasks)."""
    named = {lb.name: lb for lb in by_source(cfg.problems.sources).values()}
    return with_labels(named[n] for n in sorted(named))


def swept_metrics(cfg) -> tuple[str, ...]:
    """The step metrics a sweep of `cfg` draws training curves of (the table's `sweep` marks)."""
    return swept(step_metric_table(cfg))
