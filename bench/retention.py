"""12 nightly rounds of the shrunk tiny config (tests/test_retention.py's), once with retention
(`retention: true`, keep 3 rounds / 3 runs) and once without, in one process: workdir bytes and
LanceDB versions after each round, a table and docs/results/retention.png."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.common import REPO, machine, result, table

ROUNDS = 12
SHRUNK = [
    "train.steps=2",
    "train.logging.checkpoint_every=1",
    "train.init_from=previous_round",
    "retention.keep_rounds=3",
    "retention.keep_runs=3",
]


def overrides(workdir: Path, i: int) -> list[str]:
    """Round i's `--set` items: its own teachers.round in the shared workdir, the shrunk settings."""
    return [f"workdir={workdir}", f"teachers.round=2026-12-{i + 1:02d}", *SHRUNK]


def build() -> dict:
    """The config of every round, loaded and validated as the flow loads it, without running one
    (tests/test_bench.py): the shrunk settings are config paths that can move."""
    from oger.contract.config import load_config
    from tests.reliability_helpers import write_config

    with tempfile.TemporaryDirectory(prefix="oger-bench-retention-") as tmp:
        config = write_config(Path(tmp))
        return {f"round {i + 1}": load_config(config, overrides(Path(tmp) / "work", i)) for i in range(ROUNDS)}


def _rounds(config: Path, workdir: Path, retention: bool) -> list[tuple[int, int]]:
    import lancedb

    from flows.pipeline import oger_pipeline
    from oger.commands.gc import size_of
    from oger.stages.index.files import db_path

    out = []
    for i in range(ROUNDS):
        oger_pipeline(config=str(config), overrides=overrides(workdir, i), retention=retention)
        db = lancedb.connect(str(db_path(workdir)))
        versions = sum(len(db.open_table(t).list_versions()) for t in db.list_tables().tables)
        out.append((size_of(workdir), versions))
    return out


def main() -> None:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="oger-bench-prefect-"))
    from tests.reliability_helpers import write_config

    tmp = Path(tempfile.mkdtemp(prefix="oger-bench-retention-"))
    try:
        config = write_config(tmp)
        kept = _rounds(config, tmp / "kept", True)
        full = _rounds(config, tmp / "full", False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        [i + 1, f"{full[i][0] / 1e6:.2f}", full[i][1], f"{kept[i][0] / 1e6:.2f}", kept[i][1]] for i in range(ROUNDS)
    ]
    table(
        f"retention: 12 nightly rounds of the shrunk tiny config ({machine()})",
        ["round", "MB without", "LanceDB versions without", "MB with (keep 3)", "LanceDB versions with"],
        rows,
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    xs = range(1, ROUNDS + 1)
    a.plot(xs, [f[0] / 1e6 for f in full], marker="o", label="no retention")
    a.plot(xs, [k[0] / 1e6 for k in kept], marker="o", label="retention (keep 3)")
    a.set_xlabel("round"), a.set_ylabel("workdir MB"), a.legend(fontsize=7), a.grid(alpha=0.3)
    b.plot(xs, [f[1] for f in full], marker="o", label="no retention")
    b.plot(xs, [k[1] for k in kept], marker="o", label="retention (keep 3)")
    b.set_xlabel("round"), b.set_ylabel("LanceDB versions"), b.legend(fontsize=7), b.grid(alpha=0.3)
    fig.tight_layout()
    out = REPO / "docs" / "results" / "retention.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    result(
        "retention",
        mb_without=full[-1][0] / 1e6,
        mb_with=kept[-1][0] / 1e6,
        versions_without=full[-1][1],
        versions_with=kept[-1][1],
        png=str(out.relative_to(REPO)),
    )
