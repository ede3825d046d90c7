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

from oger.tracking.base import PREFIX, TrackerWarning
from oger.tracking.mlflow_backend import mlflow_url
from oger.tracking.run_end import links_markdown, log_run_end, report_images, runs_of, summary_tables
from oger.tracking.state import identity, prepare, read_state, recorded_runs, sweep_pair
from oger.tracking.trackers import BACKENDS, Trackers

__all__ = [
    "BACKENDS",
    "PREFIX",
    "TrackerWarning",
    "Trackers",
    "identity",
    "links_markdown",
    "log_run_end",
    "mlflow_url",
    "prepare",
    "read_state",
    "recorded_runs",
    "report_images",
    "runs_of",
    "summary_tables",
    "sweep_pair",
]
