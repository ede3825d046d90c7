"""The step metrics of training: one table, read by everything that names or aggregates them.

Each training step logs one row with exactly these keys (and `step`) to metrics.jsonl and, where the
value is a number, to TensorBoard as `train/<name>`; a metric a step did not measure is NaN (`kl`
without `beta`, `guard_fail_language` with that guard off). From the same table come the train
artifact's run summaries (`run`: "mean" over the whole run -> `<name>`; "first_last" -> the means
over the first and last 20% of steps, `<name>_first_20pct` / `<name>_last_20pct`), the panels of
the train artifact's curves.png (`plot`), and the curves and last-20% means of the sweep report
(`sweep`). One name per quantity: on-policy correctness is `env_reward` (no teacher rows, no bonus),
`reward` is what the advantages were computed from (teacher rows and bonus included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

if TYPE_CHECKING:
    from oger.labels import Labeller

RunAgg = Literal["mean", "first_last"]
FIRST, LAST = 0.2, 0.8  # "first_last": steps [0, 20%) and [80%, 100%) of the run


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    run: tuple[RunAgg, ...] = ()  # summaries in the train artifact's metrics; () = none
    plot: bool = False  # a panel of curves.png
    sweep: bool = False  # a training curve (and last-20% mean) in the sweep report


def _guard(name: str, what: str) -> Metric:
    return Metric(f"guard_fail_{name}", f"share of eligible rows failing the {what} guard (NaN: guard off)")


STEP_METRICS: tuple[Metric, ...] = (
    # outcome
    Metric("reward", "mean reward r over all rows, teacher rows and bonus included", run=("first_last",)),
    Metric(
        "env_reward",
        "on-policy correctness: mean c over on-policy rows (no teacher rows, no bonus)",
        run=("mean", "first_last"),
        plot=True,
        sweep=True,
    ),
    # the bonus and its signals (oger.algorithm.reward.reward_metrics)
    Metric("bonus_mean", "mean bonus over on-policy rows", run=("mean",), plot=True, sweep=True),
    Metric("bonus_correct_mean", "mean bonus over bonus-eligible rows"),
    Metric(
        "bonus_share",
        "share of |advantage| due to the bonus: sum |A - A_no_bonus| / sum |A|, all rows",
        run=("mean",),
        plot=True,
        sweep=True,
    ),
    Metric(
        "rank_change_fraction",
        "share of groups whose on-policy advantage order the bonus changes",
        run=("mean",),
        plot=True,
        sweep=True,
    ),
    Metric(
        "teacher_adv_allcorrect",
        "mean teacher-row advantage in groups whose on-policy rows are all correct",
        run=("mean",),
        plot=True,
    ),
    Metric(
        "divergence_mean",
        "mean divergence d from the teacher traces over eligible rows",
        run=("mean",),
        plot=True,
        sweep=True,
    ),
    Metric("divergence_q10", "10% quantile of d over eligible rows"),
    Metric("divergence_q50", "median of d over eligible rows"),
    Metric("divergence_q90", "90% quantile of d over eligible rows"),
    Metric("gate_mean", "mean entropy gate g(H) over eligible on-policy rows", run=("mean",), plot=True),
    Metric("gate_q10", "10% quantile of g(H) over eligible on-policy rows"),
    Metric("gate_q90", "90% quantile of g(H) over eligible on-policy rows"),
    Metric(
        "diversity_correct",
        "mean over groups of the mean pairwise 1 - cos between eligible rollouts",
        run=("mean",),
        plot=True,
        sweep=True,
    ),
    # hack monitors over on-policy rows
    Metric("response_length", "mean response length (tokens) of on-policy rows", run=("mean",), plot=True, sweep=True),
    Metric("short_share", "share of on-policy rows under 50 tokens", run=("mean",), sweep=True),
    Metric("nonascii_share", "mean share of non-ASCII characters in on-policy rows", run=("mean",), sweep=True),
    Metric("repetition_rate", "mean repeated-n-gram rate of on-policy rows", run=("mean",), plot=True, sweep=True),
    Metric("think_format_share", "share of on-policy rows closing the reasoning with </think>", run=("mean",)),
    Metric("guard_pass_fraction", "share of eligible rows passing every enabled bonus guard", run=("mean",)),
    _guard("reasoning", "reasoning (min_reasoning_words)"),
    _guard("length_ratio", "length-ratio"),
    _guard("language", "same-language"),
    _guard("repetition", "repetition"),
    _guard("think_format", "think-format"),
    _guard("off_topic", "off-topic (max_divergence)"),
    Metric("bonus_corr_length", "Pearson of the pre-shuffle bonus and response length, eligible rows"),
    Metric("bonus_corr_repetition", "Pearson of the pre-shuffle bonus and the repetition rate, eligible rows"),
    Metric("bonus_corr_nonascii", "Pearson of the pre-shuffle bonus and the non-ASCII share, eligible rows"),
    # the run's health
    Metric(
        "last_token_entropy",
        "mean over on-policy rows of H, the entropy the bonus reads (oger.entropy_tokens at oger.entropy_at)",
        plot=True,
    ),
    Metric("replaced_fraction", "share of rows replaced by teacher traces", run=("mean",)),
    Metric(
        "no_teacher_fraction", "share of rows whose problem has no teacher trace (NaN without an index)", run=("mean",)
    ),
    Metric("mixed_group_fraction", "share of groups with both correct and incorrect rows", run=("mean",), plot=True),
    Metric("truncated_fraction", "share of on-policy rows stopped by max_new_tokens"),
    # the update (oger.algorithm.core.policy_loss, token-weighted over the micro- and mini-batches that
    # define each: a teacher-only micro-batch has no on-policy token, trainer.defined_weighted_means)
    Metric("pg_loss", "policy-gradient loss"),
    Metric("kl", "k3 KL to the reference model (NaN with beta 0)"),
    Metric("clip_frac", "share of on-policy tokens clipped (0 without clip)"),
    Metric("approx_kl", "k1 KL(old || new) over on-policy tokens (0 with one optimizer step per batch)"),
    Metric("token_entropy", "mean token entropy of the responses"),
    Metric("grad_norm", "gradient norm before clipping (mean over the batch's optimizer steps)"),
    Metric("nonfinite_grad_steps", "optimizer steps of the batch skipped for a NaN/inf gradient norm", run=("mean",)),
    Metric("lr", "learning rate of the step"),
    # rollouts sampled by vLLM (rollout.engine vllm; NaN otherwise): its sampler vs the trainer's over
    # on-policy tokens (oger.algorithm.core.rollout_mismatch, rollout_is_weights; micro-batch means)
    Metric("rollout_logp_diff", "mean |log pi_train - log pi_vllm| of the sampled tokens", plot=True),
    Metric("rollout_kl", "k3 estimate of KL(pi_vllm || pi_train) over the sampled tokens"),
    Metric("rollout_ratio_p05", "5% quantile of pi_train / pi_vllm over the sampled tokens"),
    Metric("rollout_ratio_p50", "median of pi_train / pi_vllm"),
    Metric("rollout_ratio_p95", "95% quantile of pi_train / pi_vllm"),
    Metric("is_weight_mean", "mean truncated importance weight of on-policy tokens (rollout.correction)"),
    # the weight push into the vLLM engine and its check (oger.stages.train.engine_guard; NaN: no push this step)
    Metric(
        "push_fingerprint_diff",
        "largest |engine - trainer| over the ranks of the weight fingerprint's slice sums after the push "
        "(0: the engine holds the trainer's weights; else the run stopped)",
    ),
    Metric(
        "push_logp_diff",
        "largest |log pi_vllm - log pi_train| over the ranks of a fixed probe continuation's tokens after the push",
    ),
    Metric(
        "push_gathered_peak_mib",
        "largest MiB of weights the push gathered alive at once, over the ranks (FSDP2: a tensor or a layer's, "
        "not the model; 0: the module's own tensors pushed)",
    ),
    # wall time
    Metric("seconds_generate", "seconds spent rolling out"),
    Metric("seconds_score", "seconds spent verifying and replacing"),
    Metric("seconds_embed", "seconds spent in the reward step (embedding, bonus, advantages)"),
    Metric("seconds_update", "seconds spent in the optimizer step(s)"),
    Metric("seconds_sync", "seconds spent pushing the weights into the rollout engine (vllm)"),
    Metric("seconds_step", "seconds of the whole step", run=("mean",)),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in STEP_METRICS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
PLOTTED: tuple[str, ...] = tuple(m.name for m in STEP_METRICS if m.plot)
SWEPT: tuple[str, ...] = tuple(m.name for m in STEP_METRICS if m.sweep)
assert len(NAMES) == len(STEP_METRICS), "a step metric is registered twice"


def label_metrics(labeller: Labeller) -> tuple[Metric, ...]:
    """The step metrics of a task's labeller (`oger.labels`), over on-policy rows whose question it
    labels: each label's share (`<name>_<label>_share`), the share among correct rows of each focus
    label (`..._share_correct`) and the mean bonus of correct rows by named label
    (`bonus_mean_<label>`). The explore task's strategy labeller gives the names its sweeps and
    docs/RESULTS.md read: strategy_b_share, strategy_b_share_correct, strategy_other_share,
    bonus_mean_a, bonus_mean_b (and strategy_a_share)."""
    out = []
    for label in labeller.all_labels:
        focus = label in labeller.focus
        out.append(
            Metric(
                labeller.share_metric(label),
                f"share of on-policy rows the {labeller.name} labeller calls {label}",
                run=("first_last",) if focus else ("mean",),
                plot=focus,
                sweep=focus,
            )
        )
    for label in labeller.focus:
        out.append(
            Metric(
                labeller.share_correct_metric(label),
                f"share of {label} among the correct on-policy rows ({labeller.name} labeller)",
                run=("first_last",),
                plot=True,
                sweep=True,
            )
        )
    for label in labeller.labels:
        out.append(
            Metric(
                labeller.bonus_metric(label),
                f"mean bonus over correct on-policy rows the {labeller.name} labeller calls {label}",
                run=("mean",),
                sweep=True,
            )
        )
    return tuple(out)


def with_labels(labellers: Iterable[Labeller] = ()) -> tuple[Metric, ...]:
    """A run's table: the step metrics and those of its task's labellers (none for most tasks). Two
    labellers naming the same metric is an error (their rows would mix)."""
    table = list(STEP_METRICS)
    for labeller in labellers:
        table += label_metrics(labeller)
    names = [m.name for m in table]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"labellers {[lb.name for lb in labellers]} define the step metrics {twice} twice")
    return tuple(table)


def plotted(table: tuple[Metric, ...] = STEP_METRICS) -> tuple[str, ...]:
    return tuple(m.name for m in table if m.plot)


def swept(table: tuple[Metric, ...] = STEP_METRICS) -> tuple[str, ...]:
    return tuple(m.name for m in table if m.sweep)


def step_row(step: int, values: dict, table: tuple[Metric, ...] = STEP_METRICS) -> dict:
    """One metrics.jsonl row: `step` and every metric of the run's table (NaN where `values` lacks
    it). A value under a name not in the table is an error: register it (with its meaning) first."""
    names = [m.name for m in table]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"step metrics not in oger.stages.train.metrics.STEP_METRICS: {unknown}")
    return {"step": step, **{n: values.get(n, float("nan")) for n in names}}


def mean_over(history: list[dict], key: str, lo: float, hi: float) -> float | None:
    """Mean of `key` over the steps in the fraction [lo, hi) of the run (at least one step)."""
    n = len(history)
    a = min(int(n * lo), n - 1)
    b = max(a + 1, int(round(n * hi)))
    vals = [h[key] for h in history[a:b] if h.get(key) is not None and h[key] == h[key]]  # drop NaN
    return round(sum(vals) / len(vals), 4) if vals else None


def _summaries(m: Metric) -> list[tuple[str, float, float]]:
    """(artifact metric name, lo, hi) of each of `m`'s run summaries."""
    out = []
    if "mean" in m.run:
        out.append((m.name, 0.0, 1.0))
    if "first_last" in m.run:
        out += [(f"{m.name}_first_20pct", 0.0, FIRST), (f"{m.name}_last_20pct", LAST, 1.0)]
    return out


def run_summary_names(table: tuple[Metric, ...] = STEP_METRICS) -> list[str]:
    """The names the train artifact's metrics hold for the step metrics, in table order."""
    return [key for m in table for key, _, _ in _summaries(m)]


def run_summaries(history: list[dict], table: tuple[Metric, ...] = STEP_METRICS) -> dict[str, float | None]:
    """The train artifact's summaries of a run's step rows (None where no step measured it)."""
    return {key: mean_over(history, m.name, lo, hi) for m in table for key, lo, hi in _summaries(m)}
