"""Operating the pipeline through a real Prefect server and process worker (issue 5).

One server, pool, `prefect deploy --all` and worker serve every test in this module; the tests
share one workdir and run in order: round r1, round r2 (continues from r1's checkpoint), a filter
change, per-round status and an index restore, the nightly deployment, then stopping by PID.
Overrides keep each flow run small (fewer problems, 4 RL steps, a short SFT and evaluation).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from safetensors.torch import load_file

from oger.pipeline import STAGES
from oger.stages.index.files import TeacherIndex
from tests.prefect_stack import PrefectStack, running_stack

pytestmark = pytest.mark.slow
CONFIG = "configs/tiny.yaml"
# The two concise scripted teachers only: SmolLM2 (covered by test_pipeline_e2e) dominates a
# small run's time on a shared 2-core machine.
TEACHERS = (
    "teachers.teachers=[{name: stepwise, backend: scripted, model: stepwise, slip_rate: 0.15},"
    " {name: terms, backend: scripted, model: terms, slip_rate: 0.15}]"
)
SMALL = [
    "problems.sources.0.n_train=80",
    "problems.sources.0.n_test=20",
    TEACHERS,
    "policy.sft.epochs=1",
    "evaluate.heldout.limit=8",
    "evaluate.heldout.max_new_tokens=40",
    "train.steps=4",
    "train.max_prompts=8",
    "train.prompts_per_step=4",
    "train.group_size=4",
    "train.rollout.max_new_tokens=40",
    "train.logging.checkpoint_every=2",
    "train.init_from=previous_round",
]
if "evaluate" in STAGES:
    SMALL += [
        "evaluate.benchmarks=[{name: synthetic, limit: 8}]",
        "evaluate.protocol=greedy",
        "evaluate.max_new_tokens=40",
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("prefect_server")) as s:
        yield s


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy_work")


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def overrides(workdir: Path, *extra: str) -> list[str]:
    return [f"workdir={workdir}", *SMALL, *extra]


def run(
    stack: PrefectStack, workdir: Path, *extra: str, deployment: str = "oger-pipeline/tiny", **params
) -> tuple[dict, dict]:
    """Run a deployment to a terminal state; (flow run, its summary.json)."""
    fr = stack.run_deployment(deployment, {"overrides": overrides(workdir, *extra), **params})
    assert fr["state_type"] == "COMPLETED", f"{fr['state_type']}:\n{stack.worker_log()[-4000:]}"
    found = [json.loads(p.read_text()) for p in workdir.glob("runs/*/summary.json")]
    mine = [s for s in found if s.get("prefect_flow_run", {}).get("id") == fr["id"]]
    assert len(mine) == 1, f"no summary.json for flow run {fr['id']}"
    assert mine[0]["status"] == "completed"
    return fr, mine[0]


def cached(summary: dict) -> dict[str, bool]:
    return {k: v["cached"] for k, v in summary["stages"].items()}


def distance(a: dict, b: dict) -> float:
    """L2 distance between two state dicts (inf when their tensors' names or shapes differ)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a) ** 0.5


def stage_states(stack: PrefectStack, fr: dict) -> dict[str, str]:
    """Prefect state of each stage task (fan-out shards such as teacher-<name> left out)."""
    return {k: v for k, v in stack.task_states(fr["id"]).items() if k in STAGES}


@pytest.fixture(scope="module")
def oger_cli(oger_in_process):
    """`oger ARGS` (status, index restore/list/unpin: no flow) in this process; must succeed."""

    def _cli(*args: str) -> subprocess.CompletedProcess:
        proc = oger_in_process(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return _cli


def test_round_r1_runs_every_stage(stack, workdir, state):
    fr, s = run(stack, workdir, "teachers.round=r1")
    assert fr["name"] == f"tiny-r1-{s['run_id']}"
    assert {"config:tiny", "round:r1", "algorithm:oger"} <= set(fr["tags"])
    assert s["round"] == "r1" and list(s["stages"]) == STAGES
    assert not any(cached(s).values())
    assert stage_states(stack, fr) == {k: "Completed" for k in STAGES}  # one task per stage
    train = Path(s["stages"]["train"]["path"])
    for rel in ("model/config.json", "metrics.jsonl", "curves.png", "manifest.json"):
        assert (train / rel).exists(), rel
    assert s["stages"]["train"]["metrics"]["init_from"] == "policy"  # no earlier round yet
    assert s["stages"]["train"]["metrics"]["round"] == "r1"
    report = (workdir / "runs" / s["run_id"] / "report.md").read_text()
    assert "first round with a completed training run" in report
    arts = {a["key"]: a for a in stack.artifacts(fr["id"])}  # what the UI's Artifacts tab shows
    # the report with its plots inlined (the UI cannot reach files in the workdir): every image is data
    from flows.ui import inline_images

    assert arts["oger-report-tiny"]["data"] == inline_images(report, workdir / "runs" / s["run_id"])
    assert "](data:image/png;base64," in arts["oger-report-tiny"]["data"]
    assert "oger-rounds-tiny" in arts  # the trend across rounds, after every run
    assert [(r["stage"], r["cached"], r["seconds"]) for r in json.loads(arts["oger-stages-tiny"]["data"])] == [
        (k, v["cached"], v["seconds"]) for k, v in s["stages"].items()
    ]
    assert str(workdir / "runs" / s["run_id"] / "summary.json") in arts["oger-files-tiny"]["data"]
    state["r1"] = s


def test_round_r2_appends_to_index_and_continues_from_r1(stack, workdir, state):
    fr, s = run(stack, workdir, "teachers.round=r2")
    r1 = state["r1"]
    assert fr["name"] == f"tiny-r2-{s['run_id']}"
    assert cached(s)["problems"] and not any(v for k, v in cached(s).items() if k != "problems")
    assert stage_states(stack, fr) == {k: "Cached" if k == "problems" else "Completed" for k in STAGES}
    db = workdir / "index" / "lancedb"
    r1_tag, r2_tag = r1["stages"]["index"]["key"], s["stages"]["index"]["key"]
    # rows each round's index stage wrote (tiny.yaml indexes the RL pool's traces)
    r1_rows, r2_rows = (x["stages"]["index"]["metrics"]["rows_this_stage"] for x in (r1, s))
    assert TeacherIndex(db, "teacher_traces", r1_tag).count() == r1_rows  # r1 stays readable
    assert TeacherIndex(db, "teacher_traces", r2_tag).count() == r1_rows + r2_rows
    # training continued from r1's trained checkpoint, and its key says so
    m = s["stages"]["train"]["metrics"]
    assert m["init_from"] == r1["stages"]["train"]["key"] and m["init_round"] == "r1"
    manifest = json.loads((Path(s["stages"]["train"]["path"]) / "manifest.json").read_text())
    assert manifest["inputs"]["init"] == r1["stages"]["train"]["key"]
    assert manifest["inputs"]["index"] == r2_tag
    # ... and the weights say so: 4 small steps away from r1's model, far from r2's own policy
    # (measured 0.41 vs 1.52 with the `digits` tokenizer; a run from its own policy is the reverse)
    weights = {
        name: load_file(Path(x["stages"][stage]["path"]) / "model" / "model.safetensors")
        for name, x, stage in (("r1", r1, "train"), ("r2", s, "train"), ("policy", s, "policy"))
    }
    assert distance(weights["r2"], weights["r1"]) < 0.5 * distance(weights["r2"], weights["policy"])
    # the report compares the two rounds, metric by metric
    assert s["compared_with"]["run_id"] == r1["run_id"] and s["compared_with"]["round"] == "r1"
    report = (workdir / "runs" / s["run_id"] / "report.md").read_text()
    assert "## Rounds: `r2` vs `r1`" in report
    assert "(round r1's trained model" in report  # the training section says where it started
    row = next(ln for ln in report.splitlines() if ln.startswith("| train.reward_last_20pct |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(r1["stages"]["train"]["metrics"]["reward_last_20pct"], abs=1e-3)
    assert float(cells[2]) == pytest.approx(m["reward_last_20pct"], abs=1e-3)
    if "evaluate" in STAGES:
        assert any(ln.startswith("| evaluate.synthetic.trained |") for ln in report.splitlines())
    state["r2"] = s


def test_filter_change_recomputes_only_filter_and_downstream(stack, workdir, state):
    fr, s = run(stack, workdir, "teachers.round=r2", "filter.max_tokens=50")
    downstream = STAGES[STAGES.index("filter") :]
    assert cached(s) == {k: k not in downstream for k in STAGES}
    assert stage_states(stack, fr) == {k: "Completed" if k in downstream else "Cached" for k in STAGES}
    assert s["stages"]["index"]["metrics"]["new_embeddings"] == 0
    assert s["stages"]["filter"]["metrics"]["kept"] < state["r2"]["stages"]["filter"]["metrics"]["kept"]
    # still r2, so training still starts from r1's checkpoint
    assert s["stages"]["train"]["metrics"]["init_from"] == state["r1"]["stages"]["train"]["key"]
    state["r2_strict"] = s


def test_status_per_round_and_index_restore(stack, workdir, state, oger_cli):
    args = [CONFIG, *[a for o in overrides(workdir, "teachers.round=r2", "filter.max_tokens=50") for a in ("--set", o)]]
    st = json.loads(oger_cli("status", *args, "--json").stdout)
    rounds = {r["round"]: r for r in st["rounds"]}
    assert list(rounds) == ["r1", "r2"]
    r1, r2, strict = state["r1"], state["r2"], state["r2_strict"]
    assert [t["tag"] for t in rounds["r1"]["index_tags"]] == [r1["stages"]["index"]["key"]]
    assert [t["tag"] for t in rounds["r2"]["index_tags"]] == [
        r2["stages"]["index"]["key"],
        strict["stages"]["index"]["key"],
    ]
    assert [c["key"] for c in rounds["r1"]["checkpoints"]] == [r1["stages"]["train"]["key"]]
    assert {c["key"] for c in rounds["r2"]["checkpoints"]} == {
        r2["stages"]["train"]["key"],
        strict["stages"]["train"]["key"],
    }
    assert all(Path(c["path"], "config.json").exists() for c in rounds["r2"]["checkpoints"])
    if "evaluate" in STAGES:
        assert len(rounds["r2"]["evaluations"]) == 2 and len(rounds["r1"]["evaluations"]) == 1
    assert rounds["r2"]["last_run"]["run_id"] == strict["run_id"]
    assert st["index_pin"] is None
    assert "rounds" in oger_cli("status", *args).stdout  # the human-readable table renders

    # restore r1's version: training now reads it, and the train key changes with it
    r1_tag = r1["stages"]["index"]["key"]
    oger_cli("index", "restore", CONFIG, "--set", f"workdir={workdir}", r1_tag[:16])
    listed = json.loads(oger_cli("index", "list", CONFIG, "--set", f"workdir={workdir}", "--json").stdout)
    assert [v["tag"] for v in listed["versions"] if v["pinned"]] == [r1_tag]
    st2 = json.loads(oger_cli("status", *args, "--json").stdout)
    assert st2["index_pin"]["tag"] == r1_tag
    train_row = next(r for r in st2["stages"] if r["stage"] == "train")
    assert train_row["state"] == "stale"  # a different input, a different key
    _, s = run(stack, workdir, "teachers.round=r2", "filter.max_tokens=50", only=["train"])
    assert list(s["stages"]) == ["train"]
    manifest = json.loads((Path(s["stages"]["train"]["path"]) / "manifest.json").read_text())
    assert manifest["inputs"]["index"] == r1_tag and manifest["identity"]["index_tag"] == r1_tag
    # unpinned, training follows the index stage again and its earlier artifact is a cache hit
    oger_cli("index", "unpin", CONFIG, "--set", f"workdir={workdir}")
    st3 = json.loads(oger_cli("status", *args, "--json").stdout)
    assert next(r for r in st3["stages"] if r["stage"] == "train")["key"] == strict["stages"]["train"]["key"]
    assert next(r for r in st3["stages"] if r["stage"] == "train")["state"] == "cached"


def test_nightly_deployment_names_the_round_after_the_run_date(stack, workdir, state):
    dep = json.loads(stack.cli("deployment", "inspect", "oger-pipeline/nightly-retrain", "--output", "json").stdout)
    crons = [sch["schedule"].get("cron") for sch in dep["schedules"]]
    assert crons == ["0 3 * * *"] and dep["schedules"][0]["active"] is False  # ships paused
    # the README's commands enable it (and here pause it again before it can fire)
    sid = dep["schedules"][0]["id"]
    stack.cli("deployment", "schedule", "resume", "oger-pipeline/nightly-retrain", sid)
    assert stack.schedules_active("oger-pipeline/nightly-retrain") == [True]
    stack.cli("deployment", "schedule", "pause", "oger-pipeline/nightly-retrain", sid)
    assert stack.schedules_active("oger-pipeline/nightly-retrain") == [False]
    assert dep["parameters"]["round_from_schedule"] is True
    assert "train.init_from=previous_round" in dep["parameters"]["overrides"]
    # a manual run of the nightly deployment: its scheduled start is now, so the round is today
    fr, s = run(stack, workdir, deployment="oger-pipeline/nightly-retrain", until="index")
    day = datetime.fromisoformat(fr["expected_start_time"]).astimezone(timezone.utc).date().isoformat()
    assert s["round"] == day and fr["name"] == f"tiny-{day}-{s['run_id']}"
    assert f"teachers.round={day}" in s["overrides"]
    assert cached(s) == {"problems": True, "teachers": False, "filter": False, "index": False}
    db = workdir / "index" / "lancedb"
    tag = s["stages"]["index"]["key"]
    assert s["stages"]["index"]["metrics"]["rounds"] == [day]
    # `index restore` made r1's version the latest, so this round was appended to r1's rows
    r1_rows = state["r1"]["stages"]["index"]["metrics"]["rows_this_stage"]
    assert (
        TeacherIndex(db, "teacher_traces", tag).count() == r1_rows + s["stages"]["index"]["metrics"]["rows_this_stage"]
    )


def test_worker_and_server_stop_by_pid(stack):
    killed = stack.stop()
    assert stack.worker.returncode is not None and stack.server.returncode is not None
    assert killed == [], f"needed SIGKILL: {killed}"
