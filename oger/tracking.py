"""Experiment trackers (`logging.trackers`): TensorBoard, Weights & Biases and MLflow behind one object,
`Trackers`, which the trainer's rank 0 hands each step's metrics row to, and which the end of a pipeline
run reopens to add the evaluation table and the report's plots to the same runs.

Why one object: the trainer keeps the one hook it had for TensorBoard (open, write a row, close), and
whatever a tracker needs (a package, a server, a login) stays out of the training loop.

Why a tracker never stops a run: it records a run, it is no part of it. A tracker whose package is
missing, whose server does not answer or whose call fails is dropped with one `TrackerWarning` and the
run goes on with the others (an MLflow server is asked first, once, with a short timeout, so a server
that is down costs seconds, not MLflow's minutes of retries).

How the end of a run finds the training's tracker runs: before it trains, the train stage writes the
run's identity (project, name, group, tags, the resolved config) to a state file in its run folder
(`prepare`); rank 0 opens the trackers from it (`Trackers.open`) and writes the runs' ids back, so a
resumed training continues the same runs (W&B `resume="allow"` with the id, MLflow the same run id).
The stage copies the ids into its artifact's metrics (`trackers`), where `log_run_end` finds them in the
run record and `links_markdown` turns them into the report's links.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from oger.contract.artifacts import atomic_write
from oger.contract.config import OgerConfig, SweepPair

PREFIX = "train/"  # a step metric's name in every tracker, as TensorBoard had it
MLFLOW_PROBE_TIMEOUT_S = 5.0


class TrackerWarning(UserWarning):
    """A tracker was dropped (missing package, no server, a failed call): the run goes on without it."""


# --------------------------------------------------------------------------- a run's identity


def identity(cfg: OgerConfig, key: str, inputs: dict[str, str], stage: str) -> dict:
    """What a tracker run is called and tagged with: project (`logging.project`, else the config's
    name), name (`<config>-<round>[-<arm>-s<seed>]-<key8>`), group (`logging.group`, else a sweep's id),
    tags (config, round, algorithm, the stage's key and its inputs' keys, a sweep's id, arm and seed, the
    user's `logging.tags`) and the resolved config."""
    lg = cfg.logging
    pair = lg.sweep
    group = lg.group or (pair.id if pair else None)
    tags = {"config": cfg.name, "round": str(cfg.teachers.round), "algorithm": cfg.train.algorithm}
    tags |= {f"key.{stage}": key[:16], **{f"key.{name}": k[:16] for name, k in inputs.items()}}
    if pair is not None:
        tags |= {"sweep": pair.id, "arm": pair.arm, "seed": str(pair.seed)}
    if group:
        tags["group"] = group
    tags |= lg.tags
    parts = [cfg.name, str(cfg.teachers.round), *([pair.arm, f"s{pair.seed}"] if pair else []), key[:8]]
    return {
        "project": lg.project or cfg.name,
        "name": "-".join(parts),
        "group": group,
        "tags": tags,
        "config": cfg.model_dump(mode="json"),
    }


def sweep_pair(cfg: OgerConfig, sweep_id: str, arm: str, seed: int) -> OgerConfig:
    """A sweep pair's config, marked with its sweep, arm and seed (`logging.sweep`): the pair's tracker
    run carries them and sits in the sweep's group. No key moves: `logging` is in none."""
    marked = cfg.logging.model_copy(update={"sweep": SweepPair(id=sweep_id, arm=arm, seed=seed)})
    return cfg.model_copy(update={"logging": marked})


# --------------------------------------------------------------------------- the state file


def prepare(path: Path, cfg: OgerConfig, key: str, inputs: dict[str, str], stage: str, resume: bool = False) -> None:
    """Write the state a training's rank 0 opens its trackers from (`Trackers.open`): the trackers,
    their settings and the run's identity; with `resume` (the training continues from a checkpoint)
    the ids of the runs opened before are kept, so the same runs go on."""
    runs = read_state(path).get("runs", {}) if resume else {}
    lg = cfg.logging
    state = {
        "trackers": list(lg.trackers),
        "settings": {
            "mlflow_tracking_uri": lg.mlflow_tracking_uri,
            "wandb_mode": lg.wandb_mode,
            "wandb_entity": lg.wandb_entity,
        },
        "run": identity(cfg, key, inputs, stage),
        "runs": {name: run for name, run in runs.items() if name in lg.trackers},
    }
    _write(path, state)


def read_state(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # unreadable: the trainer's default (TensorBoard) is what it gets
        return {}


def recorded_runs(path: Path) -> dict[str, dict]:
    """{tracker: its run's ids, address and settings} as rank 0 recorded them (none for TensorBoard,
    whose events are in the artifact)."""
    return read_state(path).get("runs", {})


def _write(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(state, indent=1, default=str)))


# --------------------------------------------------------------------------- the trackers


def _warn(name: str, what: str, exc: BaseException | str) -> None:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    warnings.warn(f"tracker {name}: {what} failed ({reason}); the run goes on without it", TrackerWarning, 3)


def _numbers(row: dict) -> dict[str, float]:
    """The row's measured metrics as TensorBoard always took them: its float values (not the step, not a
    count), NaN left out (a metric this run cannot measure, a vLLM-only one, is NaN in every row)."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, float) and not math.isnan(v)}


class Trackers:
    """The trackers of one run. Every method forwards to each tracker still open; one that raises is
    dropped with a `TrackerWarning` (once per tracker), so no method ever raises."""

    def __init__(self, backends: list | None = None):
        self._open = list(backends or [])

    @property
    def names(self) -> list[str]:
        return [b.name for b in self._open]

    @classmethod
    def open(cls, state_path: Path | None, tensorboard_dir: Path | None = None) -> Trackers:
        """The trackers the state file lists (TensorBoard alone without one: the trainer run by itself,
        as before the file existed), each run started or, with a recorded id, continued; the ids are
        written back to the file. Each run gets the config and tags (a continued one again: harmless)."""
        state = read_state(state_path)
        names = state.get("trackers", ["tensorboard"])
        settings, run, runs = state.get("settings", {}), state.get("run", {}), dict(state.get("runs", {}))
        opened = []
        for name in names:
            if name not in BACKENDS:  # a state file from another version
                _warn(name, "start", "no such tracker")
                continue
            backend = BACKENDS[name](tensorboard_dir) if name == "tensorboard" else BACKENDS[name]()
            try:
                info = backend.start(run, settings, runs.get(name))
            except Exception as exc:  # any failure of a tracker drops it, never the run
                _warn(name, "start", exc)
                continue
            if info:
                runs[name] = info
            opened.append(backend)
        out = cls(opened)
        if state_path is not None and state and runs != state.get("runs", {}):
            try:
                _write(state_path, {**state, "runs": runs})
            except OSError as exc:  # the runs go on; a resume would start new ones
                warnings.warn(f"trackers: cannot record the run ids in {state_path} ({exc})", TrackerWarning, 2)
        if run:
            out.log_config(run.get("config", {}))
            out.set_tags(run.get("tags", {}))
        return out

    @classmethod
    def reopen(cls, runs: dict[str, dict]) -> Trackers:
        """The recorded runs (`recorded_runs`, a train artifact's `trackers` metric) opened again, to
        add what a run learns after training (`log_run_end`)."""
        opened = []
        for name, info in runs.items():
            if name not in BACKENDS or name == "tensorboard":
                continue
            backend = BACKENDS[name]()
            try:
                backend.start({}, {}, info)
            except Exception as exc:
                _warn(name, "reopen", exc)
                continue
            opened.append(backend)
        return cls(opened)

    def _each(self, method: str, *args) -> None:
        for backend in list(self._open):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # a tracker is never the reason a run dies
                self._open.remove(backend)
                _warn(backend.name, method, exc)
                try:
                    backend.close()
                except Exception:  # dropped already; its close may fail the same way
                    pass

    def log_step(self, step: int, row: dict) -> None:
        """One training step's metrics row (metrics.jsonl's), as `train/<metric>` at `step`."""
        values = _numbers(row)
        if values:
            self._each("log_step", step, values)

    def log_config(self, config: dict) -> None:
        self._each("log_config", config)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._each("set_tags", {k: str(v) for k, v in tags.items()})

    def log_table(self, name: str, rows: list[dict]) -> None:
        """A table under `name`: one row per dict, its columns every row's keys in order of appearance."""
        if rows:
            self._each("log_table", name, rows)

    def log_image(self, name: str, path: Path) -> None:
        self._each("log_image", name, Path(path))

    def close(self) -> None:
        backends, self._open = self._open, []
        for backend in backends:
            try:
                backend.close()
            except Exception as exc:
                _warn(backend.name, "close", exc)


def _columns(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


class _TensorBoard:
    """Event files in the run folder (the train artifact keeps them): scalars per step, the config, tags
    and tables as text, images."""

    name = "tensorboard"

    def __init__(self, logdir: Path | None):
        self.logdir = logdir
        self.writer = None

    def start(self, run: dict, settings: dict, previous: dict | None) -> None:
        if self.logdir is None:
            raise ValueError("no folder for the event files")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.logdir))

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(PREFIX + k, v, step)
        self.writer.flush()

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")

    def set_tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in tags.items()))

    def log_table(self, name: str, rows: list[dict]) -> None:
        cols = _columns(rows)
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        self.writer.add_text(name, "\n".join(lines))

    def log_image(self, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _WandB:
    """A Weights & Biases run: `train/*` metrics on the `train/step` axis (a resumed training logs its
    redone steps again without W&B dropping them as steps from the past), tags as `key:value`."""

    name = "wandb"

    def __init__(self):
        self.run = None

    def start(self, run: dict, settings: dict, previous: dict | None) -> dict:
        import wandb

        previous = previous or {}
        kw: dict[str, Any] = {
            "project": previous.get("project") or run.get("project"),
            "entity": previous.get("entity") or settings.get("wandb_entity") or None,
            "mode": previous.get("mode") or settings.get("wandb_mode") or None,
            "group": previous.get("group") or run.get("group"),
            # several runs in one process (a sweep's pairs on threads), none finishing another
            "reinit": "create_new",
            # console capture would mix the output of concurrent runs; metrics are logged explicitly
            "settings": wandb.Settings(console="off"),
        }
        if run.get("name"):
            kw |= {"name": run["name"], "tags": self._tags(run.get("tags", {})), "config": run.get("config")}
            kw["allow_val_change"] = True
        if previous.get("id"):
            kw |= {"id": previous["id"], "resume": "allow"}
        self.run = wandb.init(**kw)
        self.run.define_metric(PREFIX + "step")
        self.run.define_metric(PREFIX + "*", step_metric=PREFIX + "step")
        return {
            "id": self.run.id,
            "project": self.run.project,
            "entity": self.run.entity or None,
            "group": kw["group"],
            "mode": "offline" if self.run.offline else "online",  # reopened the same way at the run's end
            "url": self.run.url,
            "dir": str(self.run.settings.sync_dir),
        }

    @staticmethod
    def _tags(tags: dict[str, str]) -> list[str]:
        return [f"{k}:{v}"[:64] for k, v in tags.items()]  # W&B's limit on a tag's length

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.run.log({PREFIX + "step": step, **{PREFIX + k: v for k, v in values.items()}})

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.run.tags = tuple(dict.fromkeys([*self.run.tags, *self._tags(tags)]))

    def log_table(self, name: str, rows: list[dict]) -> None:
        import wandb

        cols = _columns(rows)
        self.run.log({name: wandb.Table(columns=cols, data=[[_cell(r.get(c)) for c in cols] for r in rows])})

    def log_image(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({f"plots/{name}": wandb.Image(str(path))})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def _cell(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)


class _MLflow:
    """An MLflow run through `MlflowClient` (no global active run: a sweep's pairs may train side by side
    in one process): the experiment is the project; the config as params once (MLflow's params cannot
    change, and a resumed run's could differ in a field no key holds) and as config.json; tags as tags."""

    name = "mlflow"
    BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's limits on one log_batch

    def __init__(self):
        self.client = self.run_id = None
        self.new = False

    def start(self, run: dict, settings: dict, previous: dict | None) -> dict:
        import mlflow
        from mlflow.tracking import MlflowClient

        # A server that answers but then fails would otherwise hold a step for minutes of retries
        # (MLflow's default: 7, backing off to 2 minutes); a user's own setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        previous = previous or {}
        uri = previous.get("tracking_uri") or settings.get("mlflow_tracking_uri") or mlflow.get_tracking_uri()
        _probe(uri)
        self.client = MlflowClient(tracking_uri=uri)
        if previous.get("run_id"):
            self.run_id, experiment = previous["run_id"], previous.get("experiment_id")
        else:
            experiment = self._experiment(run["project"])
            created = self.client.create_run(experiment, run_name=run.get("name"))
            self.run_id, self.new = created.info.run_id, True
        return {
            "run_id": self.run_id,
            "experiment_id": experiment,
            "tracking_uri": uri,
            "url": mlflow_url(uri, experiment, self.run_id),
        }

    def _experiment(self, project: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(project)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(project)
        except MlflowException:  # another pair created it meanwhile
            found = self.client.get_experiment_by_name(project)
            if found is None:
                raise
            return found.experiment_id

    def _batch(self, kind: str, items: list) -> None:
        n = self.BATCH[kind]
        for i in range(0, len(items), n):
            self.client.log_batch(self.run_id, **{kind: items[i : i + n]})

    def log_step(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self._batch("metrics", [Metric(PREFIX + k, v, ms, step) for k, v in values.items()])

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        self.client.log_dict(self.run_id, config, "config.json")
        if self.new:  # params once, when the run is made (see the class)
            self._batch("params", [Param(k, v[:6000]) for k, v in _flat(config).items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._batch("tags", [RunTag(k, v[:8000]) for k, v in tags.items()])

    def log_table(self, name: str, rows: list[dict]) -> None:
        cols = _columns(rows)
        data = {c: [_cell(r.get(c)) for r in rows] for c in cols}
        self.client.log_table(self.run_id, data=data, artifact_file=f"tables/{name}.json")

    def log_image(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def close(self) -> None:  # a resumed run too (its crashed attempt left it RUNNING)
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    """The nested config as MLflow params: dotted names, lists and scalars as JSON text."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def _probe(uri: str) -> None:
    """An http(s) tracking server must answer its /health within seconds, or MLflow is dropped now
    (its client would retry each call for minutes). A server that answers with an error (a proxy, a
    login) is left to the calls themselves."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=MLFLOW_PROBE_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise ConnectionError(f"{uri} does not answer ({type(exc).__name__}: {exc})") from None


def mlflow_url(uri: str, experiment: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI of an http(s) server (none for a local store)."""
    if not uri.startswith(("http://", "https://")) or not experiment:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


# --------------------------------------------------------------------------- the end of a run

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def report_images(report: Path) -> list[tuple[str, Path]]:
    """(name, path) of each plot the report shows, in order (its file's stem names it)."""
    report = Path(report)
    out = []
    for m in _IMAGE.finditer(report.read_text()):
        path = Path(m[2]) if Path(m[2]).is_absolute() else report.parent / m[2]
        if path.is_file():
            out.append((path.stem, path))
    return out


def summary_tables(data: dict) -> dict[str, list[dict]]:
    """{stage: rows} of the stages whose headline numbers the run record holds beside their entry
    (a `run_summary` hook: the evaluation's {benchmark: {base, trained, n}}), one row per entry."""
    tables = {}
    for stage in data.get("stages", {}):
        summary = data.get(stage)
        if isinstance(summary, dict) and summary and all(isinstance(v, dict) for v in summary.values()):
            tables[stage] = [{"name": k, **v} for k, v in summary.items()]
    return tables


def runs_of(data: dict) -> list[dict[str, dict]]:
    """The tracker runs the run's stages recorded (their artifacts' `trackers` metric)."""
    out = []
    for entry in data.get("stages", {}).values():
        runs = (entry.get("metrics") or {}).get("trackers")
        if isinstance(runs, dict) and runs:
            out.append(runs)
    return out


def log_run_end(data: dict, report: Path) -> int:
    """At the end of a pipeline run: the evaluation table (the run record's headline tables) and the
    report's plots, logged to the tracker runs the training opened. Returns how many runs it reached;
    like every tracker call it never raises."""
    runs = runs_of(data)
    if not runs:
        return 0
    try:
        tables, images = summary_tables(data), report_images(report)
    except Exception as exc:  # a report it cannot read costs the trackers, not the run
        _warn("all", "reading the run's results", exc)
        return 0
    reached = 0
    for recorded in runs:
        trackers = Trackers.reopen(recorded)
        for name, rows in tables.items():
            trackers.log_table(name, rows)
        for name, path in images:
            trackers.log_image(name, path)
        reached += len(trackers.names)
        trackers.close()
    return reached


TITLES = {"wandb": "W&B", "mlflow": "MLflow"}


def links_markdown(runs: dict[str, dict] | None) -> list[str]:
    """The report's line pointing at the tracker runs (a link where the run has a page)."""
    if not runs:
        return []
    items = []
    for name, info in runs.items():
        title = TITLES.get(name, name)
        rid = info.get("id") or info.get("run_id")
        if info.get("url"):
            items.append(f"[{title} run `{rid}`]({info['url']})")
        elif name == "wandb" and info.get("dir"):
            items.append(f"{title} run `{rid}`, offline (`wandb sync {info['dir']}`)")
        elif info.get("tracking_uri"):
            items.append(f"{title} run `{rid}` in `{info['tracking_uri']}`")
        else:
            items.append(f"{title} run `{rid}`")
    return ["", "Tracker runs: " + "; ".join(items)]
