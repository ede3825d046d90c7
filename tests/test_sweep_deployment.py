"""The sweep deployment (`oger-sweep/tiny-ablation`) on a real Prefect server and process worker:
2 arms x 1 seed of configs/tiny.yaml, made small by overrides (scripted teachers, 2 RL steps, a
short evaluation). Upstream stages run once as cached tasks; each (arm, seed) is one task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oger.sweep.run import upstream_stages
from tests.prefect_stack import running_stack

pytestmark = pytest.mark.slow
TEACHERS = (
    "teachers.teachers=[{name: stepwise, backend: scripted, model: stepwise, slip_rate: 0.15},"
    " {name: terms, backend: scripted, model: terms, slip_rate: 0.15}]"
)
SMALL = [
    "problems.sources.0.n_train=60",
    "problems.sources.0.n_test=10",
    TEACHERS,
    "policy.sft.epochs=1",
    "evaluate.heldout.limit=4",
    "evaluate.heldout.max_new_tokens=24",
    "train.steps=2",
    "train.max_prompts=4",
    "train.prompts_per_step=2",
    "train.group_size=4",
    "train.rollout.max_new_tokens=24",
    "evaluate.benchmarks=[{name: synthetic, limit: 4, samples: 2}]",
    "evaluate.max_new_tokens=24",
    "evaluate.score_workers=1",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("prefect_sweep_server")) as s:
        yield s


def test_sweep_deployment_two_arms_one_seed(stack, tmp_path):
    workdir = tmp_path / "work"
    fr = stack.run_deployment(
        "oger-sweep/tiny-ablation",
        {"overrides": [f"workdir={workdir}", *SMALL], "arms": ["grpo", "oger"], "seeds": [0]},
    )
    assert fr["state_type"] == "COMPLETED", f"{fr['state_type']}:\n{stack.worker_log()[-4000:]}"
    assert fr["name"] == "sweep-tiny-grpo,oger"
    found = [json.loads(p.read_text()) for p in workdir.glob("sweeps/*/summary.json")]
    (s,) = [x for x in found if x.get("prefect_flow_run", {}).get("id") == fr["id"]]
    assert s["status"] == "completed" and s["seeds"] == [0] and list(s["arms"]) == ["grpo", "oger"]
    assert {st: [u["cached"] for u in items] for st, items in s["upstream"].items()} == {
        st: [False] for st in upstream_stages()
    }  # each computed once, for both arms
    assert [(p["arm"], p["seed"]) for p in s["pairs"]] == [("grpo", 0), ("oger", 0)]
    assert len({p["stages"]["train"]["key"] for p in s["pairs"]}) == 2
    # Prefect shows one task per upstream stage and one per (arm, seed)
    states = stack.task_states(fr["id"])
    for st in upstream_stages():
        assert states.get(st) == "Completed", states
    assert states.get("grpo") == "Completed" and states.get("oger") == "Completed", states
    sweep_dir = Path(s["workdir"]) / "sweeps" / s["sweep_id"]
    report = (sweep_dir / "report.md").read_text()
    assert "oger − grpo on synthetic" in report and (sweep_dir / "accuracy.png").exists()
