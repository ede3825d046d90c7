"""An MLflow run through `MlflowClient`, against a tracking server or a local store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from oger.tracking.base import PREFIX, cell, columns

MLFLOW_PROBE_TIMEOUT_S = 5.0


class MLflow:
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
        cols = columns(rows)
        data = {c: [cell(r.get(c)) for r in rows] for c in cols}
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
