"""`Trackers`: the experiment trackers of one run behind one object, which the trainer's rank 0 hands
each step's metrics row to and the end of a run reopens; one that fails is dropped, never the run."""

from __future__ import annotations

import warnings
from pathlib import Path

from oger.tracking.base import TrackerWarning, numbers, warn
from oger.tracking.mlflow_backend import MLflow
from oger.tracking.state import read_state, write
from oger.tracking.tensorboard_backend import TensorBoard
from oger.tracking.wandb_backend import WandB

BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


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
                warn(name, "start", "no such tracker")
                continue
            backend = BACKENDS[name](tensorboard_dir) if name == "tensorboard" else BACKENDS[name]()
            try:
                info = backend.start(run, settings, runs.get(name))
            except Exception as exc:  # any failure of a tracker drops it, never the run
                warn(name, "start", exc)
                continue
            if info:
                runs[name] = info
            opened.append(backend)
        out = cls(opened)
        if state_path is not None and state and runs != state.get("runs", {}):
            try:
                write(state_path, {**state, "runs": runs})
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
                warn(name, "reopen", exc)
                continue
            opened.append(backend)
        return cls(opened)

    def _each(self, method: str, *args) -> None:
        for backend in list(self._open):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # a tracker is never the reason a run dies
                self._open.remove(backend)
                warn(backend.name, method, exc)
                try:
                    backend.close()
                except Exception:  # dropped already; its close may fail the same way
                    pass

    def log_step(self, step: int, row: dict) -> None:
        """One training step's metrics row (metrics.jsonl's), as `train/<metric>` at `step`."""
        values = numbers(row)
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
                warn(backend.name, "close", exc)
