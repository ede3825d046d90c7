"""Experiment trackers (`logging.trackers`, `oger.tracking`): the config section, what a tracker run is
called and tagged with (a sweep's pairs included), that a tracker which fails never stops a run, and,
slow, the train stage for 2 steps against W&B in offline mode (its run files read back) and a real
MLflow server (the run read back through MlflowClient), the end of the run's table and plots included."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from oger import pipeline, tracking
from oger.commands.report import write_report
from oger.contract.config import LoggingConfig, load_config
from oger.contract.errors import ConfigError
from oger.tracking import Trackers, TrackerWarning
from tests.test_train import seeded_workdir

REPO = Path(__file__).resolve().parents[1]
MLFLOW = REPO / ".venv-mlflow" / "bin" / "mlflow"  # the server, in a venv of its own (Makefile, `setup`)
# Tiny training: 2 steps of 2 prompts x 2 samples; evaluation on 4 synthetic problems.
TRAIN = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "rollout": {"max_new_tokens": 16}}
EVALUATE = {"max_new_tokens": 16, "benchmarks": [{"name": "synthetic", "limit": 4, "samples": 2}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracker_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """The MLflow tracker's retry settings (set if unset when it opens) stay in this test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


# --------------------------------------------------------------------------- the config section


def test_logging_section_defaults_checks_and_no_key(tmp_path, small_config):
    assert LoggingConfig().trackers == ["tensorboard"]
    with pytest.raises(ValueError, match="listed twice"):
        LoggingConfig(trackers=["wandb", "wandb"])
    with pytest.raises(ConfigError, match="logging.trackers"):
        small_config.load(tmp_path, "logging.trackers=[neptune]")
    base = small_config.load(tmp_path, **small_config.RL_UPSTREAM)
    tracked = small_config.load(
        tmp_path,
        "logging.trackers=[wandb,mlflow]",
        "logging.project=p",
        "logging.mlflow_tracking_uri=http://127.0.0.1:1",
        "logging.wandb_mode=offline",
        "logging.tags={owner: ana}",
        **small_config.RL_UPSTREAM,
    )
    # a tracker records a run and never changes one: no stage's key moves
    assert {s: p.key for s, p in pipeline.plan(base).items()} == {s: p.key for s, p in pipeline.plan(tracked).items()}


def test_identity_of_a_run_and_of_a_sweep_pair(tmp_path, small_config):
    from oger.sweep import run as sweep_run

    cfg = small_config.load(tmp_path, "logging.tags={owner: ana}", **small_config.RL_UPSTREAM)
    run = tracking.identity(cfg, "a" * 64, {"policy": "b" * 64}, "train")
    assert run["project"] == cfg.name and run["group"] is None
    assert run["name"] == f"{cfg.name}-{cfg.teachers.round}-aaaaaaaa"
    assert run["tags"] == {
        "config": cfg.name,
        "round": str(cfg.teachers.round),
        "algorithm": cfg.train.algorithm,
        "key.train": "a" * 16,
        "key.policy": "b" * 16,
        "owner": "ana",
    }
    assert run["config"] == cfg.model_dump(mode="json")

    path = small_config.write(tmp_path, "swept", **small_config.RL_UPSTREAM)
    sp = sweep_run.prepare(str(path), arms="grpo,luffy", seeds="0,1", overrides=[f"workdir={tmp_path / 'w'}"])
    assert len(sp.pairs) == 4
    for pair in sp.pairs:
        assert pair.cfg.logging.sweep.model_dump() == {"id": sp.sweep_id, "arm": pair.arm, "seed": pair.seed}
        run = tracking.identity(pair.cfg, pair.plans["train"].key, {}, "train")
        assert run["group"] == sp.sweep_id  # a sweep's runs sit together
        assert {k: run["tags"][k] for k in ("sweep", "arm", "seed", "group")} == {
            "sweep": sp.sweep_id,
            "arm": pair.arm,
            "seed": str(pair.seed),
            "group": sp.sweep_id,
        }
        assert f"-{pair.arm}-s{pair.seed}-" in run["name"]
        # the mark moves no key: the pair plans as its unmarked config does
        items = pair_items(pair.arm, pair.seed, sp.settings.seed_fields)
        plain = load_config(path, [f"workdir={tmp_path / 'w'}", *items])
        assert {s: p.key for s, p in pipeline.plan(plain).items()} == {s: p.key for s, p in pair.plans.items()}


def pair_items(arm: str, seed: int, seed_fields: list[str]) -> list[str]:
    from oger.sweep.arms import PRESETS, Arm, seed_items

    return [*Arm(arm, PRESETS[arm], "preset").set_items(), *seed_items(seed, seed_fields)]


# --------------------------------------------------------------------------- a tracker never stops a run


def state(tmp_path: Path, trackers: list[str], **settings) -> Path:
    path = tmp_path / "trackers.json"
    run = {"project": "p", "name": "n", "group": None, "tags": {"config": "c"}, "config": {"a": 1}}
    path.write_text(json.dumps({"trackers": trackers, "settings": settings, "run": run, "runs": {}}))
    return path


def test_a_missing_package_or_a_closed_port_warns_once_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if not installed
    port = free_port()  # nothing listens there
    path = state(tmp_path, ["tensorboard", "wandb", "mlflow"], mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trackers = Trackers.open(path, tensorboard_dir=tmp_path / "tb")
        for step in (1, 2):
            trackers.log_step(step, {"step": step, "reward": 0.5, "lost": float("nan")})
        trackers.close()
    assert time.perf_counter() - started < 30  # MLflow is asked once, not retried for minutes
    said = tracker_warnings(caught)
    assert len(said) == 2 and "wandb" in said[0] and "mlflow" in said[1] and str(port) in said[1], said
    assert trackers.names == [] and list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert tracking.recorded_runs(path) == {}  # nothing to reopen at the end of the run


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch):
    calls = []

    class Flaky:
        name = "flaky"

        def start(self, run, settings, previous):
            return {"id": "x1"}

        def log_step(self, step, values):
            calls.append(step)
            raise RuntimeError("server gone")

        def log_config(self, config):
            pass

        def set_tags(self, tags):
            pass

        def close(self):
            pass

    monkeypatch.setitem(tracking.BACKENDS, "flaky", Flaky)
    path = state(tmp_path, ["tensorboard", "flaky"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trackers = Trackers.open(path, tensorboard_dir=tmp_path / "tb")
        for step in (1, 2, 3):
            trackers.log_step(step, {"step": step, "reward": 1.0})
        trackers.close()
    assert calls == [1] and trackers.names == []
    assert len(tracker_warnings(caught)) == 1 and "server gone" in tracker_warnings(caught)[0]
    assert tracking.recorded_runs(path) == {"flaky": {"id": "x1"}}  # the id was written back when it opened


def test_a_resumed_training_continues_its_tracker_runs(tmp_path, small_config, monkeypatch):
    seen = []

    class Recorder:
        name = "rec"

        def start(self, run, settings, previous):
            seen.append(previous)
            return previous or {"id": f"r{len(seen)}"}

        def log_config(self, config):
            pass

        def set_tags(self, tags):
            pass

        def close(self):
            pass

    monkeypatch.setitem(tracking.BACKENDS, "rec", Recorder)
    cfg = small_config.load(tmp_path, **small_config.RL_UPSTREAM)
    cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"trackers": ["rec"]})})  # a stand-in
    path = tmp_path / "trackers.json"
    tracking.prepare(path, cfg, "k" * 64, {}, "train")
    Trackers.open(path).close()
    tracking.prepare(path, cfg, "k" * 64, {}, "train", resume=True)  # from a checkpoint: the same run
    Trackers.open(path).close()
    tracking.prepare(path, cfg, "k" * 64, {}, "train")  # from the start: a new run
    Trackers.open(path).close()
    assert seen == [None, {"id": "r1"}, None] and tracking.recorded_runs(path) == {"rec": {"id": "r3"}}


def test_links_for_the_report():
    runs = {
        "wandb": {"id": "w1", "url": "https://wandb.ai/e/p/runs/w1"},
        "mlflow": {"run_id": "m1", "tracking_uri": "http://h:5000", "url": "http://h:5000/#/experiments/3/runs/m1"},
    }
    assert tracking.links_markdown(runs) == [
        "",
        "Tracker runs: [W&B run `w1`](https://wandb.ai/e/p/runs/w1); "
        "[MLflow run `m1`](http://h:5000/#/experiments/3/runs/m1)",
    ]
    offline = {
        "wandb": {"id": "w2", "dir": "/x/offline-run-w2"},
        "mlflow": {"run_id": "m2", "tracking_uri": "sqlite:///m.db"},
    }
    assert tracking.links_markdown(offline)[1] == (
        "Tracker runs: W&B run `w2`, offline (`wandb sync /x/offline-run-w2`); MLflow run `m2` in `sqlite:///m.db`"
    )
    assert tracking.links_markdown(None) == [] and tracking.mlflow_url("sqlite:///m.db", "1", "r") is None


# --------------------------------------------------------------------------- real trackers (slow)


class MlflowServer:
    """`mlflow server` on a free port with a sqlite store, started when the module's first slow test
    asks for it, so its start (~20 s here) overlaps that test's training."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    str(MLFLOW),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{folder / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(folder / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its uvicorn worker goes with it (`stop`)
            )

    def ready(self, timeout: float = 180.0) -> str:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.uri + "/health", timeout=2).status_code == 200:
                    return self.uri
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    assert MLFLOW.exists(), f"{MLFLOW} is missing: `make setup` builds the MLflow server's venv"
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracked_yaml(tmp_path_factory, small_config) -> Path:
    return small_config.write(
        tmp_path_factory.mktemp("trackers"),
        "trackers",
        **{**small_config.RL_UPSTREAM, "evaluate": {**small_config.RL_UPSTREAM["evaluate"], **EVALUATE}},
        train=TRAIN,
    )


@pytest.mark.slow
def test_an_unreachable_mlflow_warns_once_and_the_train_stage_completes(tracked_yaml, rl_workdir, mlflow_server):
    # (mlflow_server: its start overlaps this test's training; the next test uses it)
    port = free_port()
    cfg = load_config(
        tracked_yaml,
        [
            f"workdir={rl_workdir}",
            "train.seed=11",  # a key of its own: this run trains
            "logging.trackers=[mlflow]",
            f"logging.mlflow_tracking_uri=http://127.0.0.1:{port}",
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = pipeline.run_local(cfg, until="train")["train"]
    said = tracker_warnings(caught)
    assert len(said) == 1 and f"127.0.0.1:{port}" in said[0], said
    assert ref.metrics["steps"] == 2 and "trackers" not in ref.metrics
    assert len((Path(ref.path) / "metrics.jsonl").read_text().splitlines()) == 2


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): W&B's leveldb-style log of 32 KiB blocks, each
    record a 7-byte header (crc32c, length, type: full, first, middle, last) and a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(path: Path, timeout: float = 60.0) -> dict:
    """What a run file holds: the run (project, group, tags, config) and its history rows. W&B's
    service writes the file after `finish()` returns, so it is read once it holds the run's exit."""
    deadline = time.time() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):
        assert time.time() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.2)
    out = {"history": [], "config": {}}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"id": r.run.run_id, "project": r.run.project, "group": r.run.run_group, "tags": list(r.run.tags)}
            out["config"] |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            out["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return out


@pytest.mark.slow
def test_wandb_offline_and_a_real_mlflow_server_hold_the_run_and_its_results(
    tracked_yaml, rl_workdir, mlflow_server, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    pipeline.run_local(load_config(tracked_yaml, [f"workdir={rl_workdir}"]), until="policy")  # shared upstream
    workdir = seeded_workdir(rl_workdir, tmp_path / "w")  # a run record of its own, away from other tests
    uri = mlflow_server.ready()
    cfg = load_config(
        tracked_yaml,
        [
            f"workdir={workdir}",
            "train.seed=12",
            "logging.trackers=[tensorboard,wandb,mlflow]",
            f"logging.mlflow_tracking_uri={uri}",
        ],
    )
    # the end of a pipeline run, as the flow does it (flows/pipeline.py), without Prefect
    plans = pipeline.plan(cfg)
    record = pipeline.RunRecord(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refs = pipeline.execute(cfg, plans, pipeline.STAGES, {}, on_stage=record.add)
        report = write_report(record)
        assert tracking.log_run_end(record.data, report) == 2
    assert tracker_warnings(caught) == []
    train, key = refs["train"], plans["train"].key
    rows = [json.loads(line) for line in (Path(train.path) / "metrics.jsonl").read_text().splitlines()]
    runs = train.metrics["trackers"]
    assert set(runs) == {"wandb", "mlflow"} and list((Path(train.path) / "tensorboard").iterdir())
    # the report (and so Prefect's report artifact) links both runs
    text = report.read_text()
    assert runs["mlflow"]["url"] in text and f"W&B run `{runs['wandb']['id']}`, offline" in text

    # W&B: the training's run file, then the end of the run's (the same run id, resumed)
    files = sorted(tmp_path.glob(f"wandb/offline-run-*/run-{runs['wandb']['id']}.wandb"), key=lambda p: p.parent.name)
    assert len(files) == 2
    trained, ended = wandb_run(files[0]), wandb_run(files[1])
    assert trained["project"] == cfg.name and f"key.train:{key[:16]}" in trained["tags"]
    assert f"config:{cfg.name}" in trained["tags"] and f"round:{cfg.teachers.round}" in trained["tags"]
    assert trained["config"]["train"]["steps"] == 2 and trained["config"]["logging"]["trackers"][1] == "wandb"
    steps = [h for h in trained["history"] if "train/step" in h]
    assert [h["train/step"] for h in steps] == [1, 2]
    assert [h["train/reward"] for h in steps] == pytest.approx([r["reward"] for r in rows])
    logged = {k.split("/")[0] if not k.startswith("plots/") else k.split("/")[1] for h in ended["history"] for k in h}
    assert {"evaluate", "train_curves", "evaluate_scores"} <= logged

    # MLflow: metrics per step, params, tags, then the evaluation table and the plots
    client = MlflowClient(uri)
    run = client.get_run(runs["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == cfg.name
    history = client.get_metric_history(run.info.run_id, "train/reward")
    assert [m.step for m in history] == [r["step"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["reward"] for r in rows])
    assert run.data.params["train.steps"] == "2" and run.data.params["name"] == cfg.name
    assert {k: run.data.tags[k] for k in ("config", "round", "key.train")} == {
        "config": cfg.name,
        "round": str(cfg.teachers.round),
        "key.train": key[:16],
    }
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{name}.png" for name, _ in tracking.report_images(report)} == arts  # every plot the report shows
    assert {"plots/train_curves.png", "plots/evaluate_scores.png"} <= arts
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "tables/evaluate.json", str(tmp_path))).read_text()
    )
    assert table["columns"][:4] == ["name", "base", "trained", "n"] and table["data"][0][0] == "synthetic"
    assert table["data"][0][1:4] == [record.data["evaluate"]["synthetic"][c] for c in ("base", "trained", "n")]
