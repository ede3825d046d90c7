"""train stage: GRPO / LUFFY / OGER from the policy-stage model, reading the index at its tag.

Checkpoints live outside the atomic artifact (in `<workdir>/cache/train/<key16>/`) so an
interrupted run resumes at the next step; the artifact holds the final HF model folder,
metrics.jsonl, TensorBoard events and training-curve PNGs.

Its inputs are keys like any stage's, two of them its own: the index tag it reads (the index
stage's key, or the tag pinned by `oger index restore`) and, with `train.init_from:
previous_round`, the checkpoint of an earlier round (input "init", a train artifact).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from oger import labels, tracking
from oger.contract import PREVIOUS_ROUND, Budget, Stage, StageContext, StageInfo
from oger.contract.artifacts import ArtifactRef, atomic_write
from oger.contract.config import OgerConfig, TrainConfig
from oger.contract.errors import StageError
from oger.contract.keys import key_dump
from oger.encoder import encoder_identity
from oger.generation.heldout import engine_label as heldout_engine_label
from oger.runtime.precision import resolve_rollout_dtype, resolve_training
from oger.stages.index import files as index_files
from oger.stages.index.files import TeacherIndex
from oger.stages.policy.files import model_dir as policy_model_dir
from oger.stages.problems.files import read_problems, rl_pool
from oger.stages.train import STAGE
from oger.stages.train.files import (
    CURVES_FILE,
    FILES,
    METRICS_FILE,
    MODEL_DIR,
    ROLLOUTS_FILE,
    TENSORBOARD_DIR,
    TRACKERS_FILE,
    merge_rank_rollouts,
    model_dir,
    step_metric_table,
)
from oger.stages.train.metrics import PLOTTED, plotted, run_summaries
from oger.stages.train.preflight import check_inputs
from oger.stages.train.resources import gpu_estimate, rollout_engine_label

STAGE_VERSION = 10  # 10: the bonus's H is the entropy of softmax(logits / T), the sampling distribution
# (core.sampling_entropy; raw logits before: the same at T = 1), and with ppo_mini_batches > 1 it comes
# from the behaviour pass; checkpoints sharded (DCP); the packed layout's logits stay in the compute dtype;
# 9: a non-finite gradient skips its optimizer step (nonfinite_grad_steps
# joins the table); the KL reference is the starting policy on resume; task labels through a labeller
# hook (the explore task's strategy metrics follow the table's step metrics, strategy_a_share joins
# them; rollouts.jsonl rows say "labeller"/"label", not "strategy");
# 8: explore-task strategy metrics; 4: hack-resistant bonus, neutral teacher rows, separate bonus scaling, signals;
# 5: micro-batches on threads on a CPU (same math, other rounding);
# 6: step metrics from one table (oger.stages.train.metrics): metrics.jsonl and the artifact's
# metrics lost the duplicate names accuracy / onpolicy_accuracy (= env_reward), divergence
# (= divergence_mean), accuracy_*_20pct (= env_reward_*_20pct), seconds_per_step (= seconds_step),
# and every row holds every metric: artifacts with the old names must not be reused;
# 7: the rollout engine's mismatch metrics and seconds_sync joined the table (rows of 6 lack them).


def key_inputs(cfg: OgerConfig) -> tuple[dict, dict]:
    t: TrainConfig = cfg.train
    slice_ = key_dump(t)  # the schema says which fields cannot change the model (oger.contract.keys)
    slice_["resolved"] = {"replaces": t.replaces, "lambda": t.bonus_lambda}
    if t.loss_depends_on_cut:  # entropy_agg token_mean: micro-batches are cut per rank (optim's cut: inert)
        slice_["resolved"]["num_processes"] = t.distributed.world  # all ranks, over every node
    precision = resolve_training(t.precision)  # once, here: run_train and the ranks read it from the slice
    if precision != "float32":  # float32 left out: the keys from before the option stay
        slice_["resolved"]["precision"] = precision
    if t.rollout.engine == "vllm":  # the engine's dtype, when not the policy's (the behaviour before the option)
        engine_dtype = resolve_rollout_dtype(t.rollout.dtype)
        if engine_dtype != cfg.policy.dtype:
            slice_["resolved"]["rollout_dtype"] = engine_dtype
    # The prompt format and the encoder used for the bonus change what is learned.
    slice_["prompt"] = {"instruction": cfg.policy.instruction, "system": cfg.policy.system_prompt}
    slice_["long_text"] = cfg.index.long_text
    return slice_, {"encoder": encoder_identity(cfg.index.encoder)}


def plot_curves(history: list[dict], out: Path, title: str, metrics: tuple[str, ...] = PLOTTED) -> list[str]:
    """curves.png: one panel per step metric the run's table plots (`metrics.plotted`), raw and
    smoothed. Returns the panels' titles, in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    steps = [h["step"] for h in history]
    w = max(1, len(history) // 8)
    for ax, key in zip(axes.flat, metrics):
        vals = [float("nan") if h.get(key) is None else h[key] for h in history]
        ax.set_title(key)
        if all(v != v for v in vals):  # e.g. a metric only vLLM rollouts measure
            ax.text(
                0.5,
                0.5,
                "no value in this run",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                color="0.4",
            )
            ax.set_xticks([]), ax.set_yticks([])
            continue
        ax.plot(steps, vals, lw=0.8, alpha=0.4)
        smooth = [sum(vals[max(0, i - w + 1) : i + 1]) / len(vals[max(0, i - w + 1) : i + 1]) for i in range(len(vals))]
        ax.plot(steps, smooth, lw=1.8, label=f"mean of last {w}")
        ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    panels = [ax.get_title() for ax in axes.flat[: len(metrics)]]
    plt.close(fig)
    return panels


def train_inputs(cfg: OgerConfig, problems: pl.DataFrame, index_ref: ArtifactRef, instruction: str | None = None):
    """What the trainer reads: the RL prompt pool (train.split, first train.max_prompts), gold
    answers, the teacher index at the index stage's tag, and the prompt format."""
    from oger.stages.train.setup import TrainInputs  # imports torch

    pool = rl_pool(problems, cfg.train.split, cfg.train.max_prompts)
    if pool.height == 0:
        splits = sorted(set(problems["split"].to_list()))
        raise StageError(f"train stage: no problems in train.split={cfg.train.split!r} (splits present: {splits})")
    return TrainInputs(
        questions=dict(zip(problems["problem_id"].to_list(), problems["question"].to_list())),
        answers=dict(zip(problems["problem_id"].to_list(), problems["answer"].to_list())),
        problem_ids=pool["problem_id"].to_list(),
        index=TeacherIndex.from_artifact(index_ref),
        encoder=cfg.index.encoder,
        long_text=cfg.index.long_text,
        instruction=instruction or cfg.policy.instruction,
        system_prompt=cfg.policy.system_prompt,
        labeller_of=labeller_of(cfg, problems),
    )


def labeller_of(cfg: OgerConfig, problems: pl.DataFrame) -> dict:
    """{problem_id: the labeller its source names (`oger.labels`)} for the problems whose source
    names one; empty for most tasks (and then the trainer logs no label metrics)."""
    by_source = labels.by_source(cfg.problems.sources)
    if not by_source:
        return {}
    return {pid: by_source[src] for pid, src in problems.select("problem_id", "source").iter_rows() if src in by_source}


def run_train(
    cfg: OgerConfig,
    ctx: StageContext,
    problems_ref: ArtifactRef,
    policy_ref: ArtifactRef,
    index_ref: ArtifactRef,
    init_ref: ArtifactRef | None = None,
) -> ArtifactRef:
    """Train (resuming from this key's last checkpoint unless `refresh`); checkpoints are removed
    once the artifact is written, the final model lives in the artifact. `init_ref`: an earlier
    round's train artifact to continue from (its model and tokenizer) instead of the policy."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from oger.generation.heldout import heldout_accuracy  # imports torch
    from oger.models import tokenizer_from_folder
    from oger.runtime.device import for_training
    from oger.stages.train.checkpoint import final_model_dir  # imports torch
    from oger.stages.train.distributed import Dist
    from oger.stages.train.trainer import train  # imports torch

    t, refresh = cfg.train, ctx.refresh
    precision = ctx.config_slice["resolved"].get("precision", "float32")  # as keyed (`key_inputs`)
    rollout_dtype = ctx.config_slice["resolved"].get("rollout_dtype")  # keyed when not the policy's dtype
    policy_dir = model_dir(init_ref) if init_ref else policy_model_dir(policy_ref)
    dtype = torch.float32 if cfg.policy.dtype == "float32" else torch.bfloat16
    # On several processes the ranks load it; this process loads the final checkpoint afterwards.
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype) if t.distributed.world == 1 else None
    tokenizer = tokenizer_from_folder(policy_dir)
    problems = read_problems(problems_ref)
    inputs = train_inputs(cfg, problems, index_ref)
    run_dir = ctx.cache_dir
    if refresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=t.steps, desc=f"train ({t.algorithm})", unit="step")
    done_before = len(list((run_dir / "checkpoints").glob("step-*"))) if (run_dir / "checkpoints").is_dir() else 0
    # what rank 0 opens its trackers from (logging.trackers); a resumed run continues the same tracker runs
    tracking.prepare(run_dir / TRACKERS_FILE, cfg, ctx.key, ctx.upstream, STAGE, resume=done_before > 0)
    if t.distributed.world > 1:  # the ranks run under torchrun / accelerate launch (DDP, FSDP2 or HSDP)
        from oger.stages.train.distributed import launch_spec, train_distributed  # imports torch

        problem = t.sharding_problem(min(t.prompts_per_step, len(inputs.problem_ids)))
        if problem:
            raise StageError(f"train: the prompt pool has {len(inputs.problem_ids)} problems, so {problem}")

        spec = launch_spec(cfg, policy_dir, problems_ref, index_ref, run_dir, precision, rollout_dtype)
        history = train_distributed(cfg, spec)
        model = AutoModelForCausalLM.from_pretrained(final_model_dir(run_dir), dtype=dtype)  # rank 0 exported it
        device = f"{t.distributed.world} ranks ({t.distributed.backend}), {precision}"
        if t.distributed.nnodes > 1:
            device += f", {t.distributed.nnodes} nodes x {t.distributed.num_processes}"
    else:  # one process: on the GPU when there is one (oger.runtime.device)
        runtime = for_training(precision)
        device = runtime.describe()
        print(f"train: {t.algorithm} on {device}", flush=True)
        dist = Dist(device=runtime.torch_device(), precision=precision, rollout_dtype=rollout_dtype)
        try:
            history = train(
                t,
                runtime.place(model),
                tokenizer,
                inputs,
                run_dir,
                progress=lambda row: (
                    bar.update(1) if bar.n < t.steps else None,
                    bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['env_reward']:.2f}"),
                ),
                dist=dist,
            )
        finally:  # a vLLM rollout engine gives its memory back before the held-out check starts its own
            dist.close()
        merge_rank_rollouts(run_dir)  # a multi-rank run killed earlier left its ranks' own files
    bar.close()
    heldout = problems.filter(pl.col("split") == cfg.evaluate.heldout.split).head(cfg.evaluate.heldout.limit)
    metrics = {
        "algorithm": t.algorithm,
        "steps": len(history),
        "device": device,
        **run_summaries(history, step_metric_table(cfg)),  # what the table aggregates (oger.stages.train.metrics)
        "resumed": done_before > 0,
        "round": cfg.teachers.round,
        "init_from": init_ref.key if init_ref else "policy",
    }
    if runs := tracking.recorded_runs(run_dir / TRACKERS_FILE):  # where the end of the run logs its results
        metrics["trackers"] = runs
    if init_ref is not None:
        metrics["init_round"] = init_ref.metrics.get("round")
        metrics["heldout_accuracy_init"] = init_ref.metrics.get("heldout_accuracy")
    if heldout.height:
        metrics["heldout_accuracy"] = round(
            heldout_accuracy(  # through evaluate.heldout.engine; vllm loads the exported model's folder
                cfg.evaluate.heldout.engine,
                model,
                tokenizer,
                final_model_dir(run_dir),
                heldout["question"].to_list(),
                heldout["answer"].to_list(),
                instruction=cfg.policy.instruction,
                system_prompt=cfg.policy.system_prompt,
                max_new_tokens=cfg.evaluate.heldout.max_new_tokens,
                batch_size=cfg.evaluate.heldout.batch_size,
                dtype=cfg.policy.dtype,
                gpu_memory_utilization=cfg.evaluate.gpu_memory_utilization,
            ),
            4,
        )
        metrics["heldout_accuracy_policy"] = policy_ref.metrics.get("heldout_accuracy")
    with ctx.output(identity={**ctx.identity, "index_tag": index_ref.key}) as out:
        shutil.copytree(final_model_dir(run_dir), out.tmp / MODEL_DIR)  # model and tokenizer, as exported
        shutil.copy(run_dir / METRICS_FILE, out.file(METRICS_FILE))  # the trainer's run folder: same names
        if (run_dir / ROLLOUTS_FILE).exists():
            shutil.copy(run_dir / ROLLOUTS_FILE, out.file(ROLLOUTS_FILE))
        if (run_dir / TENSORBOARD_DIR).is_dir():
            shutil.copytree(run_dir / TENSORBOARD_DIR, out.tmp / TENSORBOARD_DIR)
        plot_curves(history, out.file(CURVES_FILE), f"{cfg.name}: {t.algorithm}", plotted(step_metric_table(cfg)))
        out.metrics = metrics
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(final_model_dir(run_dir), ignore_errors=True)
    return ctx.ref(out)


def plan_info(cfg: OgerConfig, counts):
    """`oger plan`: rollout and update engines, processes, the rollout token budget, and the per-GPU
    memory, time and disk estimate (`resources`)."""
    t = cfg.train
    d = t.distributed
    if d.world > 1:
        kind = {"hybrid": "HSDP", True: "FSDP2", False: "DDP"}[d.fsdp]
        nodes = f"{d.nnodes} nodes x {d.num_processes}" if d.nnodes > 1 else str(d.num_processes)
        where = "one torchrun agent per node on Ray" if d.nnodes > 1 and cfg.runner.kind == "ray" else d.launcher
        update = f"torch {kind} x {nodes} ({where}, backend {d.backend})"
    else:
        update = "torch, 1 process"
    pool = counts.count(t.split, limit=t.max_prompts)
    per_step = min(t.prompts_per_step, pool) if pool is not None else t.prompts_per_step
    heldout = counts.count(cfg.evaluate.heldout.split, limit=cfg.evaluate.heldout.limit)
    notes = [f"{t.algorithm}: pool {pool if pool is not None else '?'} problems, {t.steps} steps"]
    if t.replaces:
        notes.append(f"{t.replace_k} of {t.group_size} per group replaced by teacher traces")
    rollouts = rollout_engine_label(t)
    gpu = gpu_estimate(cfg)
    if gpu is None:
        notes.append(
            f"per-GPU estimate: unknown model shape ({cfg.policy.model}: no config.json offline, not in the table)"
        )
    return StageInfo(
        engine=f"rollouts: {rollouts}; update: {update}",
        resources=f"{d.world} process(es)"
        + (f" on {d.nnodes} nodes" if d.nnodes > 1 else "")
        + (", GPU per rank" if d.backend == "nccl" else ""),
        budget=[
            Budget("rollouts", t.steps * per_step, t.group_size, t.rollout.max_new_tokens),
            Budget("held-out eval (greedy)", heldout, 1, cfg.evaluate.heldout.max_new_tokens),
        ],
        notes=[*notes, f"held-out check: {heldout_engine_label(cfg)}"],
        gpu=gpu,
        commands=_node_commands(cfg) if d.nnodes > 1 and cfg.runner.kind != "ray" else None,
    )


def _node_commands(cfg: OgerConfig):
    """Several nodes without Ray: `oger run` on the first node runs its torchrun agent and writes the artifact
    when the world finishes; each other node runs the line this gives, from the same code, with the same
    workdir mounted (`agent.node_commands`)."""

    def commands(run_dir: Path) -> list[str]:
        from oger.stages.train.agent import node_commands

        head = f"# on the first node: oger run (rendezvous {cfg.train.distributed.rdzv_endpoint or 'HOST:PORT'})"
        return [head, *node_commands(cfg, run_dir)]

    return commands


def extra_inputs(cfg: OgerConfig, upstream: dict[str, str], plans: dict) -> dict[str, str]:
    """The train stage reads the pinned index tag when there is one (`oger index restore`): an
    input, so it goes into its key. (With `train.init_from: previous_round` the plan adds the earlier
    round's checkpoint, `continues_previous_round`.)"""
    wd = cfg.workdir_path
    return {**upstream, "index": index_files.training_tag(wd, cfg.index.table, upstream["index"])}


def missing_input(workdir: Path, name: str, key: str) -> str:
    if name == PREVIOUS_ROUND:
        return f"train.init_from=previous_round: checkpoint {key[:16]} disappeared from {workdir}/artifacts/train"
    if name != "index":
        return f"train: input {name!r} has no complete artifact for key {key[:16]} in {workdir}"
    return (
        f"training is pinned to index tag {key[:16]} ({index_files.pin_path(workdir)}), but "
        f"its artifact is missing; `oger index restore` another tag or `oger index unpin`"
    )


def input_notes(plans: dict) -> list[str]:
    """What the flow says before training on inputs other than the plan's own index."""
    up, index_key, notes = plans[STAGE].upstream, plans["index"].key, []
    if up["index"] != index_key:
        notes.append(
            f"train reads the pinned index tag {up['index'][:16]} (oger index restore), not "
            f"{index_key[:16]}; `oger index unpin CONFIG` follows the index stage again"
        )
    if PREVIOUS_ROUND in up:
        notes.append(f"train continues from the checkpoint {up['init'][:16]} of an earlier round")
    return notes


def report_section(entry: dict, run_dir: Path) -> list[str]:
    """report.md: reward and held-out accuracy from start to end, and the training curves."""
    curves = Path(entry["path"]) / CURVES_FILE
    if not curves.exists():
        return []
    atomic_write(run_dir / "train_curves.png", lambda tmp: shutil.copyfile(curves, tmp))
    m = entry["metrics"]
    start = (
        f"{m.get('heldout_accuracy_policy')} (policy stage)"
        if m.get("init_from", "policy") == "policy"
        else f"{m.get('heldout_accuracy_init')} (round {m.get('init_round')}'s trained model "
        f"`{m['init_from'][:16]}`, continued from)"
    )
    return [
        "",
        f"## Training ({m.get('algorithm')})",
        "",
        f"reward over the first 20% of steps {m.get('reward_first_20pct')}, over the last "
        f"20% {m.get('reward_last_20pct')}; held-out accuracy {start}"
        f" -> {m.get('heldout_accuracy')} (trained)",
        "",
        "![training curves](train_curves.png)",
        *tracking.links_markdown(m.get("trackers")),
    ]


def _run(ctx: StageContext, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    return run_train(
        ctx.cfg, ctx, inputs["problems"], inputs["policy"], inputs["index"], init_ref=inputs.get(PREVIOUS_ROUND)
    )


STAGE_DEF = Stage(
    name=STAGE,
    version=STAGE_VERSION,
    upstream=("problems", "policy", "index"),
    files=FILES,
    key_inputs=key_inputs,
    run=_run,
    plan_info=plan_info,
    extra_inputs=extra_inputs,
    continues_previous_round=lambda cfg: cfg.train.init_from == "previous_round",
    input_stages={PREVIOUS_ROUND: STAGE},
    missing_input=missing_input,
    input_notes=input_notes,
    report_section=report_section,
    check_inputs=check_inputs,
    per_pair=True,
)
