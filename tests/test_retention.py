"""Nightly retraining that can run for months (issue 26): 12 rounds of a shrunk tiny config through
the nightly path (the pipeline flow, a fresh teachers.round each round, init_from previous_round,
retention after each round keeping 3), with bounded disk and LanceDB versions, every kept round still
cached, and the trend listing all 12 rounds; and a gc killed midway leaves a workdir the next gc
and the next run handle."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from oger import pipeline
from oger.commands.gc import TRASH, run_gc, size_of
from oger.commands.trend import round_rows
from oger.contract.config import load_config
from tests.conftest import REPO
from tests.reliability_helpers import write_config

pytestmark = pytest.mark.slow

ROUNDS, KEEP = 12, 3
SHRUNK = [
    "train.steps=2",
    "train.logging.checkpoint_every=1",
    "train.init_from=previous_round",
    "retention.keep_rounds=3",
    "retention.keep_runs=3",
]


def _lancedb_versions(workdir) -> int:
    import lancedb

    from oger.stages.index.files import db_path

    db = lancedb.connect(str(db_path(workdir)))
    return sum(len(db.open_table(t).list_versions()) for t in db.list_tables().tables)


def _all_cached(config, overrides) -> bool:
    cfg = load_config(config, overrides)
    return all(pipeline.cached_ref(cfg, p) is not None for p in pipeline.plan(cfg).values())


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    from flows.pipeline import oger_pipeline

    tmp = tmp_path_factory.mktemp("soak")
    config = write_config(tmp)
    workdir = tmp / "w"
    sizes, versions = [], []
    for i in range(ROUNDS):
        overrides = [f"workdir={workdir}", f"teachers.round=2026-12-{i + 1:02d}", *SHRUNK]
        oger_pipeline(config=str(config), overrides=overrides, retention=True)
        index = size_of(workdir / "index")
        sizes.append({"other": size_of(workdir) - index, "index": index, "rows": _rows(workdir)})
        versions.append(_lancedb_versions(workdir))
    return config, workdir, sizes, versions


def _rows(workdir) -> int:
    import lancedb

    from oger.stages.index.files import db_path

    return lancedb.connect(str(db_path(workdir))).open_table("teacher_traces").count_rows()


def test_twelve_nightly_rounds_stay_bounded_and_the_kept_ones_cached(soak):
    config, workdir, sizes, versions = soak
    print("workdir bytes per round", sizes, "LanceDB versions per round", versions)
    # Bound: everything but the index holds the kept rounds only, so after round KEEP it stops growing
    # (a later round may exceed round KEEP + 1's by a small margin: record sizes vary); without
    # retention every round adds its artifacts and checkpoints. The index is cumulative by design
    # (every round's tag holds the traces of all rounds before it), so it may grow with its rows, but
    # not faster: its bytes per row stay those of round KEEP + 1 (no versions piling up).
    other = [x["other"] for x in sizes]
    # measured: 1.80 MB at round 4, 1.83-2.26 MB after (report and record sizes vary; runs/archive
    # adds a few KB a round); without retention it grows by ~0.55 MB a round (bench retention)
    assert max(other[KEEP:]) <= 1.5 * other[KEEP], sizes
    arts = lambda stage: len(list((workdir / "artifacts" / stage).iterdir()))  # noqa: E731
    # + the checkpoint the oldest kept round continued from, and its policy
    assert arts("train") <= KEEP + 1 and arts("policy") <= KEEP + 1 and arts("evaluate") <= KEEP
    per_row = [x["index"] / x["rows"] for x in sizes]
    assert max(per_row[KEEP:]) <= 1.25 * per_row[KEEP], sizes
    # LanceDB: per table the kept tags' versions plus the latest, after compaction
    assert max(versions[KEEP:]) <= versions[KEEP] + 2, versions
    # every kept round is reproducible from cache; a removed one is not
    for i in range(ROUNDS - KEEP, ROUNDS):
        assert _all_cached(config, [f"workdir={workdir}", f"teachers.round=2026-12-{i + 1:02d}", *SHRUNK]), i
    assert not _all_cached(config, [f"workdir={workdir}", "teachers.round=2026-12-01", *SHRUNK])
    # the trend lists every round, the removed ones from their archived records
    assert [r["round"] for r in round_rows(workdir)] == [f"2026-12-{i + 1:02d}" for i in range(ROUNDS)]
    assert len(list((workdir / "runs").glob("*/summary.json"))) == 3
    from oger.stages.index.versions import list_versions

    tags = list_versions(workdir, "teacher_traces")
    assert len(tags) == KEEP and all(t["rows"] > 0 for t in tags)  # every kept tag readable


def test_a_gc_killed_midway_is_finished_by_the_next_gc_and_the_next_run(soak, tmp_path):
    import shutil

    config, workdir, _, _ = soak
    wd = tmp_path / "w"
    shutil.copytree(workdir, wd)
    overrides = [f"workdir={wd}", "teachers.round=2026-12-12", *SHRUNK]
    # something for gc to remove: keep only the last round
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [
        sys.executable,
        "-m",
        "oger.cli",
        "gc",
        str(config),
        *sum((["--set", o] for o in overrides), []),
        "--keep-rounds",
        "1",
        "--keep-runs",
        "1",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            mid_removal = any(wd.rglob(f"{TRASH}*"))  # a folder renamed into the trash
        except FileNotFoundError:  # gc removed a folder while this walk was in it: it is mid-removal
            mid_removal = True
        if mid_removal:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait(timeout=60)
    # whatever the kill left, a kept round is whole and the next gc finishes the job
    out = run_gc(wd, "teacher_traces", keep_rounds=1, keep_runs=1)
    assert not list(wd.rglob(f"{TRASH}*"))
    assert _all_cached(config, overrides)
    assert [r["round"] for r in round_rows(wd)][-1] == "2026-12-12" and len(round_rows(wd)) == ROUNDS
    again = run_gc(wd, "teacher_traces", keep_rounds=1, keep_runs=1)
    assert again["rows"] == [] and again["freed"] >= 0, again["rows"]  # nothing left to do
    # and the next run works: a cached rerun of the kept round
    from flows.pipeline import oger_pipeline

    summary = json.loads(open(oger_pipeline(config=str(config), overrides=overrides)).read())
    assert summary["status"] == "completed" and all(s["cached"] for s in summary["stages"].values())
    assert out["kept_rounds"] == ["2026-12-12"]
