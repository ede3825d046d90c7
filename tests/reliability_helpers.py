"""Helpers for the reliability tests (issue 14): the smallest config that runs every stage, a
child-process driver that announces where it is (so a test can SIGKILL it at a chosen moment),
and the invariants a killed workdir must keep.

Run as a script it is the driver: `python tests/reliability_helpers.py CONFIG` runs every stage
(like `pipeline.run_local`, without Prefect) and prints `@@<event>` lines: `@@stage <name>` before
each stage, and, from thin wrappers around the real functions, `@@teacher_part` after a teacher
shard is saved, `@@merge_insert` as a LanceDB merge_insert starts, `@@tag` as the index tags its
version, `@@sft_step` as an SFT batch is built, `@@checkpoint` after a training checkpoint,
`@@eval_shard` after an evaluation result file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every stage, each as small as it gets: two scripted teachers, one in 2 shards (so a resumed
# stage reuses a finished shard), a 1-epoch SFT of a one-layer tiny policy, 3 LUFFY steps (they
# read the index at its tag) checkpointed every step, one synthetic benchmark (two evaluation
# shards: base and trained).
SMALL = """
name: small
problems:
  sources:
    - {kind: synthetic, name: arith, n_train: 40, n_test: 8, max_operands: 3}
teachers:
  round: r1
  teachers:
    - {name: stepwise, backend: scripted, model: stepwise, slip_rate: 0.2}
    - {name: terms, backend: scripted, model: terms, slip_rate: 0.2, shards: 2}
filter: {tokenizer: smollm2, min_tokens: 1, max_tokens: 200}
policy:
  source: tiny
  tiny: {vocab_size: 320, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}
  sft: {enabled: true, teachers: [stepwise, terms], epochs: 1, batch_size: 16, warmup_steps: 1}
train:
  algorithm: luffy
  steps: 6
  max_prompts: 8
  prompts_per_step: 2
  group_size: 4
  rollout: {max_new_tokens: 12}
  logging: {checkpoint_every: 1}
evaluate:
  heldout: {limit: 8, max_new_tokens: 12}
  max_new_tokens: 12
  score_workers: 1
  benchmarks:
    - {name: synthetic, limit: 8, samples: 1}
"""


def write_config(tmp_path: Path, text: str = SMALL, name: str = "small.yaml") -> Path:
    path = Path(tmp_path) / name
    path.write_text(text)
    return path


def tree_digest(root: Path, skip: tuple[str, ...] = ("logs",)) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest), folders in `skip` left out."""
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in skip:
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_nothing_looks_complete_that_is_not(cfg) -> dict[str, bool]:
    """The kill invariants; returns {stage: cached}. Asserts that every artifact folder under its
    final name is complete, every cached parquet shard/teacher file and every checkpoint is whole,
    and every LanceDB table opens (a cached index also has its tag)."""
    import polars as pl

    from oger import pipeline
    from oger.contract.artifacts import load_complete, read_manifest
    from oger.stages.index.versions import db_path, open_committed

    wd = cfg.workdir_path
    for stage_root in (wd / "artifacts").glob("*"):
        for d in stage_root.iterdir():
            if d.name.startswith("."):
                continue  # a temp dir: never read as an artifact
            m = read_manifest(d)
            assert m and m.get("complete"), f"{d}: an artifact folder without a complete manifest"
            assert load_complete(wd, stage_root.name, m["key"]) is not None, f"{d}: files missing"
    for sub in ("teachers", "evaluate"):
        for f in (wd / "cache" / sub).rglob("*.parquet"):
            if not f.name.startswith("."):
                pl.read_parquet(f)  # a final name is only ever a whole file
    for ck in (wd / "cache" / "train").glob("*/checkpoints/step-*"):
        assert (ck / "COMPLETE").exists() and (ck / "trainer_state.pt").exists(), ck
    if db_path(wd).is_dir():
        import lancedb

        db = lancedb.connect(str(db_path(wd)))
        for name in db.list_tables().tables:
            tbl = open_committed(db, name)
            if tbl is not None:
                tbl.count_rows()
                tbl.tags.list()
    plans = pipeline.plan(cfg)
    return {name: pipeline.cached_ref(cfg, p) is not None for name, p in plans.items()}


def _announce(event: str) -> None:
    print(f"@@{event}", flush=True)


def _wrap_after(mod, name: str, event: str) -> None:
    real = getattr(mod, name)

    def wrapped(*a, **k):
        out = real(*a, **k)
        _announce(event)
        return out

    setattr(mod, name, wrapped)


def _wrap_before(mod, name: str, event: str) -> None:
    real = getattr(mod, name)

    def wrapped(*a, **k):
        _announce(event)
        return real(*a, **k)

    setattr(mod, name, wrapped)


def drive(config: str, until: str = "evaluate") -> None:
    """Run the stages up to `until` in this process, announcing events (see the module docstring)."""
    from lancedb.merge import LanceMergeInsertBuilder

    from oger import pipeline
    from oger.contract.config import load_config
    from oger.stages.evaluate import stage as evaluate_stage
    from oger.stages.index import stage as index
    from oger.stages.policy import sft
    from oger.stages.teachers import stage as teachers_stage
    from oger.stages.train import trainer

    _wrap_after(teachers_stage, "_write_atomic", "teacher_part")
    _wrap_before(LanceMergeInsertBuilder, "execute", "merge_insert")
    _wrap_before(index, "_tag", "tag")
    _wrap_after(sft, "pad_batch", "sft_step")  # an SFT batch built: the policy stage is mid-SFT
    _wrap_after(trainer, "save_checkpoint", "checkpoint")
    _wrap_after(evaluate_stage, "atomic_write", "eval_shard")  # a finished (model, benchmark) result file
    cfg = load_config(config)
    plans, refs = pipeline.plan(cfg), {}
    for name in pipeline.STAGES[: pipeline.STAGES.index(until) + 1]:
        _announce(f"stage {name}")
        refs[name] = pipeline.run_stage(cfg, plans[name], refs)
    _announce("done " + json.dumps({n: r.key for n, r in refs.items()}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    drive(*sys.argv[1:3])
