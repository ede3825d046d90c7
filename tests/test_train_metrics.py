"""One table of step metrics (`oger.stages.train.metrics`): the trainer's rows and TensorBoard
scalars, the train artifact's run summaries, curves.png's panels and the sweep's training curves
all come from it, and each quantity has one name."""

import json
import math

import pytest

from oger.stages.train import metrics as table
from tests.builders import train_inputs

REMOVED = ("accuracy", "onpolicy_accuracy", "divergence")  # old duplicates of env_reward / divergence_mean


def test_every_metric_has_a_meaning_and_known_aggregations():
    assert len(set(table.NAMES)) == len(table.STEP_METRICS)
    for m in table.STEP_METRICS:
        assert m.meaning.strip() and set(m.run) <= {"mean", "first_last"}, m
    assert "env_reward" in table.SWEPT and "reward" not in table.SWEPT
    assert not set(REMOVED) & set(table.NAMES)


def test_a_metric_outside_the_table_is_refused():
    with pytest.raises(KeyError, match="not_registered"):
        table.step_row(1, {"env_reward": 0.5, "not_registered": 1.0})
    row = table.step_row(3, {"env_reward": 0.5})
    assert list(row) == ["step", *table.NAMES] and row["step"] == 3 and math.isnan(row["kl"])


def test_guard_metrics_are_the_guards_the_reward_step_applies():
    from oger.algorithm.guards import guard_verdicts
    from oger.contract.config import BonusGuards

    g = BonusGuards()  # every guard on by default
    assert g.max_divergence is not None
    names = set(
        guard_verdicts("We add 1 and 2. </think> \\boxed{3}", ["We add 1 and 2 to get 3."], g, think_required=True)
    ) | {"off_topic"}  # off_topic: oger.algorithm.reward
    assert {f"guard_fail_{n}" for n in names} == {n for n in table.NAMES if n.startswith("guard_fail_")}


def tiny_run(steps: int, **sections):
    """A random tiny Qwen2 on arithmetic, its tokenizer, the trainer's inputs (no index) and a GRPO
    config of `steps` steps with 2 prompts x 2 rollouts (`sections`: more config sections)."""
    from oger.contract.config import TrainConfig
    from oger.stages.policy.tiny_model import build_model, train_tokenizer
    from oger.synthetic import generate_problems

    problems = generate_problems(3, 8, 2, 3, 9, "+-")
    tok = train_tokenizer([p.question + f" \\boxed{{{p.answer}}}" for p in problems] * 4, 300)
    model = build_model(tok, 32, 2, 2, 64, 256, seed=1)
    cfg = TrainConfig(
        algorithm="grpo",
        steps=steps,
        prompts_per_step=2,
        group_size=2,
        rollout={"max_new_tokens": 8},
        optim={"micro_batch_size": 4, "lr": 1e-3},
        **sections,
    )
    return model, tok, train_inputs(problems), cfg


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Two GRPO steps of a random tiny Qwen2 on arithmetic (no index; beta > 0 so the KL is logged)."""
    import torch

    from oger.stages.train import step_log, trainer

    model, tok, inputs, cfg = tiny_run(steps=2, loss={"beta": 0.01})
    produced: list[set] = []  # the keys the trainer computed, before the table fills the rest with NaN
    real_step_row = step_log.step_row

    def recording(step, values, table):
        produced.append(set(values))
        return real_step_row(step, values, table)

    run_dir = tmp_path_factory.mktemp("short_run")
    step_log.step_row = recording
    try:
        torch.manual_seed(0)
        history = trainer.train(cfg, model, tok, inputs, run_dir)
    finally:
        step_log.step_row = real_step_row
    return history, produced, run_dir


def test_step_rows_of_a_real_run_hold_exactly_the_table(short_run):
    history, produced, run_dir = short_run
    assert len(history) == 2
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in [*history, *logged]:
        assert list(row) == ["step", *table.NAMES]
    # ... and the trainer computes every metric of the table but the guards' (no bonus-eligible
    # rows without teachers: reward_metrics names only the guards it saw) and the vLLM engine's
    # (rollouts from the trained module: no second sampler, no weight push); a task without a labeller
    # has no label metrics in its table at all (test_a_task_with_a_labeller_logs_its_labels_and_only_then)
    vllm_only = {
        "rollout_logp_diff",
        "rollout_kl",
        "rollout_ratio_p05",
        "rollout_ratio_p50",
        "rollout_ratio_p95",
        "is_weight_mean",
        "seconds_sync",
        "push_fingerprint_diff",
        "push_logp_diff",
        "push_gathered_peak_mib",
    }
    for keys in produced:
        assert set(table.NAMES) - keys == ({n for n in table.NAMES if n.startswith("guard_fail_")} | vllm_only)
    assert not math.isnan(history[0]["kl"]) and history[0]["env_reward"] == history[0]["env_reward"]


def test_a_task_with_a_labeller_logs_its_labels_and_only_then(tmp_path):
    """The trainer knows no task: a labeller named by the problems' source (here one that reads the
    response's length) gives the rows their labels and the step its label metrics; the same run
    without one logs the plain table (`short_run`)."""
    import torch

    from oger.labels import Labeller
    from oger.stages.train import trainer
    from oger.stages.train.files import read_rollouts

    model, tok, inputs, cfg = tiny_run(steps=1, logging={"log_rollouts": True})
    parity = Labeller(
        "parity",
        ("even", "odd"),
        "empty",
        ("odd",),
        lambda q, text: "empty" if not text else ("even", "odd")[len(text) % 2],
    )
    inputs.labeller_of = {pid: parity for pid in inputs.problem_ids}
    torch.manual_seed(0)
    (row,) = trainer.train(cfg, model, tok, inputs, tmp_path)
    names = [m.name for m in table.label_metrics(parity)]
    assert names == [
        "parity_even_share",
        "parity_odd_share",
        "parity_empty_share",
        "parity_odd_share_correct",
        "bonus_mean_even",
        "bonus_mean_odd",
    ]
    assert list(row) == ["step", *table.NAMES, *names]
    rows = read_rollouts(tmp_path)
    assert len(rows) == 4 and {r["labeller"] for r in rows} == {"parity"}
    expected = [("even", "odd")[len(r["text"]) % 2] if r["text"] else "empty" for r in rows]
    assert [r["label"] for r in rows] == expected
    assert row["parity_odd_share"] == pytest.approx(expected.count("odd") / 4)
    assert row["parity_even_share"] + row["parity_odd_share"] + row["parity_empty_share"] == pytest.approx(1)


def test_tensorboard_scalars_are_the_tables_measured_metrics(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history, _, run_dir = short_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    measured = {n for n in table.NAMES if any(isinstance(h[n], float) and not math.isnan(h[n]) for h in history)}
    assert set(acc.Tags()["scalars"]) == {f"train/{n}" for n in measured}


def test_train_artifact_summaries_are_derived_from_the_table(short_run):
    history, _, _ = short_run
    got = table.run_summaries(history)
    expected = []
    for m in table.STEP_METRICS:
        expected += [m.name] if "mean" in m.run else []
        expected += [f"{m.name}_first_20pct", f"{m.name}_last_20pct"] if "first_last" in m.run else []
    assert list(got) == expected == table.run_summary_names()
    assert {
        "reward_first_20pct",
        "reward_last_20pct",
        "env_reward",
        "env_reward_last_20pct",
        "divergence_mean",
        "seconds_step",
    } <= set(got)
    assert not {"accuracy_first_20pct", "accuracy_last_20pct", "seconds_per_step", *REMOVED} & set(got)
    # hand values on 10 steps: first 20% = steps 1-2, last 20% = steps 9-10
    ten = [table.step_row(s, {"reward": float(s), "env_reward": s / 10}) for s in range(1, 11)]
    out = table.run_summaries(ten)
    assert (out["reward_first_20pct"], out["reward_last_20pct"]) == (1.5, 9.5)
    assert out["env_reward"] == 0.55 and out["divergence_mean"] is None  # NaN every step: not measured


def test_curves_png_panels_are_the_tables_plotted_metrics(short_run, tmp_path):
    from oger.stages.train.stage import plot_curves

    history, _, _ = short_run
    panels = plot_curves(history, tmp_path / "curves.png", "t")
    assert panels == list(table.PLOTTED) and (tmp_path / "curves.png").stat().st_size > 0


def test_sweep_reads_on_policy_correctness_from_env_reward_not_the_bonus_reward():
    from oger.sweep import results as res

    # reward = env_reward + bonus (and teacher rows): the two differ on every step
    steps = [table.step_row(s, {"reward": 0.9, "env_reward": 0.25 * (s % 2), "bonus_mean": 0.4}) for s in range(1, 6)]
    curves = res.training_curves({"oger": {0: steps, 1: steps}}, table.SWEPT)
    assert set(curves) <= set(table.SWEPT) and "reward" not in curves
    assert curves["env_reward"]["oger"]["mean"] == [0.25, 0.0, 0.25, 0.0, 0.25]
    assert res.last_fraction_means(curves)["oger"]["env_reward"] == 0.25  # the last step of 5
    # a history with the old names only: nothing is read under the new names (no fallback)
    old = [{"step": s, "accuracy": 0.5, "reward": 0.9, "divergence": 0.3} for s in range(1, 4)]
    assert res.training_curves({"grpo": {0: old}}, table.SWEPT) == {}
