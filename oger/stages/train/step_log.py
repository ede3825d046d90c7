"""A step's record: the per-sample rows' metric fields gathered to rank 0, the step's metrics row (the
table of `oger.stages.train.metrics`) appended to metrics.jsonl and logged to the trackers, the rollouts to
rollouts.jsonl (on several ranks each rank writes its own file, merged when the run ends)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from oger.algorithm.reward import RewardStep, reward_metrics
from oger.algorithm.samples import Sample
from oger.stages.train.files import METRICS_FILE, ROLLOUTS_FILE, rank_rollouts_file
from oger.stages.train.metrics import BY_NAME as METRICS
from oger.stages.train.metrics import step_row

if TYPE_CHECKING:
    from oger.stages.train.setup import TrainRun


def log_step(
    run: TrainRun, step: int, samples: list[Sample], rew: RewardStep, loss_metrics: dict, extra: dict
) -> dict | None:
    """Write this rank's rollouts; gather the per-sample metric fields to rank 0, which appends
    metrics.jsonl and logs it to the trackers. Returns the metrics row on rank 0, None elsewhere.

    Why each rank writes its own rollouts: the texts are most of a record (at 8k tokens, ~30 KB per
    sample), and sending them through `all_gather_object` every step moved every rank's texts to every
    rank. The metrics need the numbers only (quantiles and correlations need each sample's values, so
    those go, without the text)."""
    cfg, inputs = run.cfg, run.inputs
    records = [{"step": step + 1, **row, **labelled(inputs, s)} for s, row in zip(samples, rew.rows)]
    if cfg.logging.log_rollouts:
        name = rank_rollouts_file(run.dist.rank) if run.dist.active else ROLLOUTS_FILE
        with open(run.run_dir / name, "a") as f:
            for r, s in zip(records, samples):
                f.write(json.dumps({**r, "text": s.text}) + "\n")
    records = [r for part in run.dist.gather(records) for r in part]
    if not run.dist.main:
        return None
    # The row's keys are the registry's (oger.stages.train.metrics); of the loss metrics the
    # registered ones are logged.
    row = step_row(
        step + 1,
        {
            **step_metrics(records, run.needs_index, inputs.labellers),
            **extra,
            **{k: v for k, v in loss_metrics.items() if k in METRICS},
        },
        run.metrics,
    )
    run.history.append(row)
    with open(run.run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    if run.writer is not None:  # TensorBoard and the experiment trackers (oger.tracking)
        run.writer.log_step(step + 1, row)
    return row


def labelled(inputs, s: Sample) -> dict:
    """A sample's record fields from its task's labeller ({"labeller", "label"}), none for a problem
    whose source names no labeller."""
    lb = inputs.labeller_of.get(s.problem_id)
    return {} if lb is None else {"labeller": lb.name, "label": lb.label(inputs.questions[s.problem_id], s.text)}


def step_metrics(records: list[dict], needs_index: bool, labellers=()) -> dict:
    """A step's metrics from the per-sample records of all ranks: the bonus signals
    (`oger.algorithm.reward.reward_metrics`), the run's health (replacement, truncation) and the
    task's labels (`label_values`); names and meanings in `oger.stages.train.metrics`."""

    def mean(xs, empty=float("nan")):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else empty

    on = [r for r in records if not r["off_policy"]]
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r["correct"])
    signals = reward_metrics(records)
    return {
        "reward": mean(r["reward"] for r in records),
        **signals,
        "last_token_entropy": mean(
            float("nan") if r["last_token_entropy"] is None else r["last_token_entropy"] for r in on
        ),
        "replaced_fraction": mean(float(r["off_policy"]) for r in records),
        "no_teacher_fraction": (mean(float(not r["has_teacher"]) for r in records) if needs_index else float("nan")),
        "mixed_group_fraction": mean(float(any(g) and not all(g)) for g in groups.values()),
        "truncated_fraction": mean((float(r["finish_reason"] != "stop") for r in on), 0.0),
        **label_values(on, labellers),
    }


def label_values(on: list[dict], labellers) -> dict:
    """The step values of each labeller's metrics (`metrics.label_metrics`) over the on-policy rows it
    labelled (a row's "label", with its "labeller"): each label's share, each focus label's share among
    the correct rows, the mean bonus of correct rows by label; NaN where a share has no rows."""
    nan, out = float("nan"), {}

    def share(rows, label):
        return sum(r["label"] == label for r in rows) / len(rows) if rows else nan

    for lb in labellers:
        mine = [r for r in on if r.get("labeller") == lb.name and r.get("label") is not None]
        correct = [r for r in mine if r["correct"]]
        for label in lb.all_labels:
            out[lb.share_metric(label)] = share(mine, label)
        for label in lb.focus:
            out[lb.share_correct_metric(label)] = share(correct, label)
        for label in lb.labels:
            xs = [r["bonus"] for r in correct if r["label"] == label]
            out[lb.bonus_metric(label)] = sum(xs) / len(xs) if xs else nan
    return out
