"""A killed run is shown as `interrupted`, not `running` forever: known from the workdir lock (the
kernel drops a dead holder's flock) and the run record, with no timer — in `oger status`'s rounds
(`oger.rounds.run_summaries`) and in the next run's report."""

import json
import os
import signal
import subprocess
import sys
import time

from oger.contract.lock import workdir_lock
from oger.rounds import round_status, run_state, run_summaries
from tests.conftest import REPO
from tests.reliability_helpers import write_config


def _summary(workdir, run_id, status, round_="r1"):
    folder = workdir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(
        json.dumps(
            {"run_id": run_id, "status": status, "round": round_, "started_at": f"2026-12-03T10:00:0{run_id[-1]}+00:00"}
        )
    )


def test_run_state_from_the_record_and_the_lock(tmp_path):
    assert run_state({"run_id": "a", "status": "running"}, {"run_id": "a"}) == "running"
    assert run_state({"run_id": "a", "status": "running"}, {"run_id": "b"}) == "interrupted"  # another run holds it
    assert run_state({"run_id": "a", "status": "running"}, {}) == "interrupted"  # nobody holds it
    assert run_state({"run_id": "a", "status": "failed"}, {}) == "failed"
    _summary(tmp_path, "run1", "running")
    _summary(tmp_path, "run2", "running")
    _summary(tmp_path, "run3", "completed")
    with workdir_lock(tmp_path, "run2"):  # run2 is alive: it holds the lock
        states = {d["run_id"]: d["status"] for d in run_summaries(tmp_path)}
    assert states == {"run1": "interrupted", "run2": "running", "run3": "completed"}
    assert {d["run_id"]: d["status"] for d in run_summaries(tmp_path)}["run2"] == "interrupted"  # released


def test_a_killed_oger_run_is_interrupted_in_status_and_in_the_next_report(tmp_path, prefect_home):
    config = write_config(tmp_path)
    workdir = tmp_path / "w"
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "oger.cli", "run", str(config), "--set", f"workdir={workdir}"]
    proc = subprocess.Popen(
        [*args, "--until", "policy"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(workdir.glob("runs/*/summary.json")):  # the record exists: the run is under way
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed = json.loads(next(workdir.glob("runs/*/summary.json")).read_text())
    assert killed["status"] == "running"  # what the dead process left in its record
    last = round_status(workdir, "teacher_traces")[0]["last_run"]
    assert last["run_id"] == killed["run_id"] and last["status"] == "interrupted"

    rerun = subprocess.run(
        [*args, "--until", "teachers"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = sorted(workdir.glob("runs/*/report.md"))[-1].read_text()
    assert "Earlier runs that did not finish" in report and killed["run_id"] in report
    assert f"| {killed['run_id']} |" in report and "interrupted" in report
