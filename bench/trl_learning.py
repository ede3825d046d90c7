"""Does our trainer learn as much as TRL's GRPOTrainer, and in less time? Both train SmolLM2-135M-Instruct
from the same weights (the smollm2-arith policy stage's model) on the same 64 training problems with the
same reward (ours: `oger.stages.train.reward.is_correct`, passed to TRL as its reward function), then our
evaluate stage's sampling and scorer (`sample_model_dir`) score both final models on the same held-out
problems. Ours runs as a user runs it: the pipeline's train stage (preset `grpo`, recomputed, not read
from cache), checkpoints included.

Every setting both trainers expose is set equal (`SHARED` is the list the table prints); what only one of
them has stays at its default and is named in `ONLY_ONE`. Seeds: `OGER_BENCH_SEEDS` (default 0,1,2);
each seed runs ours, then TRL, so drift in machine load hits both. `OGER_BENCH_OVERRIDES`: `--set`
items (space-separated) for a quick look, e.g. `train.steps=2`. Writes `trl_learning.md` and
`trl_learning.png` (train reward per step) under the bench workdir."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import BENCH_WORK, REPO, machine, result, table

CONFIG = REPO / "configs" / "smollm2-arith.yaml"
OUT = BENCH_WORK / "trl_learning"
# Settings both trainers expose, set equal (what the table lists); values come from the config.
SHARED = (
    "model and start weights",
    "training problems (64)",
    "reward function",
    "prompt (chat template)",
    "group size",
    "prompts per step",
    "steps",
    "learning rate, constant, no warmup",
    "AdamW, weight decay 0",
    "max grad norm",
    "max new tokens",
    "temperature, top_p 1, top_k off",
    "loss aggregation (token mean over the batch)",
    "reward scaling (per group std)",
    "KL beta 0",
    "one update per batch, clip eps 0.2",
    "micro-batch size (2 x 8 samples)",
    "float32",
    "seed",
)
ONLY_ONE = (
    "ours: checkpoints every 8 steps, rollout and metrics logs (its token-level rollout correction "
    "acts on vLLM rollouts only: not applied with these transformers rollouts); TRL: its own "
    "prompt order over the same 64 problems"
)


def bench_seeds() -> list[int]:
    return [int(s) for s in os.environ.get("OGER_BENCH_SEEDS", "0,1,2").split(",") if s.strip()]


def bench_config(seed: int, *overrides: str):
    from oger.contract.config import load_config

    return load_config(
        CONFIG,
        [
            f"workdir={BENCH_WORK / 'smollm2-arith'}",
            "train.algorithm=grpo",
            f"train.seed={seed}",
            *os.environ.get("OGER_BENCH_OVERRIDES", "").split(),
            *overrides,
        ],
    )


def run_ours(cfg) -> dict:
    """The pipeline up to train (upstream from cache; train recomputed and timed)."""
    from oger.pipeline import execute, plan, select_stages
    from oger.stages.train.files import model_dir, read_metrics

    runs = []
    refs = execute(cfg, plan(cfg), select_stages(until="train"), {}, refresh={"train"}, on_stage=runs.append)
    history = read_metrics(refs["train"])
    n = cfg.train.prompts_per_step * cfg.train.group_size
    return {
        "model_dir": model_dir(refs["train"]),
        "wall_s": next(r.seconds for r in runs if r.name == "train"),
        "loop_s": sum(h["seconds_step"] for h in history),
        "tokens": sum(h["response_length"] * n for h in history),
        "reward": [h["env_reward"] for h in history],
    }


def reward_function(reward_format: str):
    """Our verifier's verdict as a TRL reward function (conversational completions, `answer` column)."""
    from oger.stages.train.reward import is_correct

    def correct(completions, answer, **_):
        return [float(is_correct(c[-1]["content"], a, reward_format)) for c, a in zip(completions, answer)]

    return correct


def trl_dataset(inputs, tokenizer):
    """The train stage's prompt pool as TRL rows; fails if TRL's rendering of a prompt would differ from
    the token ids our rollouts start from."""
    from datasets import Dataset

    from oger.generation.base import chat_messages
    from oger.generation.hf import chat_prompt_ids

    rows = []
    for pid in inputs.problem_ids:
        q = inputs.questions[pid]
        messages = chat_messages(q, inputs.instruction, inputs.system_prompt)
        theirs = tokenizer.apply_chat_template([messages], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ][0]  # as TRL 1.16 renders
        if list(theirs) != list(chat_prompt_ids(tokenizer, q, inputs.instruction, inputs.system_prompt)):
            raise AssertionError(f"problem {pid}: TRL's prompt tokens differ from ours")
        rows.append({"prompt": messages, "answer": inputs.answers[pid]})
    return Dataset.from_list(rows)


def trl_args(cfg, out_dir: Path) -> dict:
    """GRPOConfig's arguments from our config: every setting both trainers expose (SHARED), equal.
    A plain dict, so tests/test_bench.py reads the config's fields without importing TRL."""
    t, o = cfg.train, cfg.train.optim
    n = t.prompts_per_step * t.group_size
    if n % o.micro_batch_size:
        raise ValueError(f"prompts_per_step x group_size ({n}) is not a multiple of micro_batch_size")
    return dict(
        output_dir=str(out_dir / "trl-run"),
        seed=t.seed,
        max_steps=t.steps,
        num_generations=t.group_size,
        per_device_train_batch_size=o.micro_batch_size,
        gradient_accumulation_steps=n // o.micro_batch_size,
        learning_rate=o.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        max_completion_length=t.rollout.max_new_tokens,
        temperature=t.rollout.temperature,
        top_p=t.rollout.top_p,
        top_k=0,
        loss_type="dapo",  # token mean over the whole (accumulated) batch = our loss_agg token_mean
        scale_rewards=t.loss.scale_rewards,
        beta=t.loss.beta,
        num_iterations=1,
        epsilon=t.loss.clip_eps_low,
        epsilon_high=t.loss.clip_eps_high,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=False,
    )


def build() -> dict:
    """The config of the first seed (as main() loads it, OGER_BENCH_OVERRIDES included) and TRL's
    arguments from it, built without importing TRL or running either trainer (tests/test_bench.py)."""
    cfg = bench_config(bench_seeds()[0])
    return {"config": cfg, "trl_args": trl_args(cfg, Path(tempfile.gettempdir()))}


def run_trl(cfg, policy_dir: Path, inputs, out_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from oger.models import tokenizer_from_folder

    t = cfg.train
    n = t.prompts_per_step * t.group_size

    class Log(TrainerCallback):
        def __init__(self):
            self.reward, self.tokens = [], 0.0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                self.reward.append(logs["reward"])
                self.tokens += logs["completions/mean_length"] * n

    started = time.perf_counter()
    tok = tokenizer_from_folder(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    args = GRPOConfig(**trl_args(cfg, out_dir))
    log = Log()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_function(t.reward_format),
        args=args,
        train_dataset=trl_dataset(inputs, tok),
        processing_class=tok,
        callbacks=[log],
    )
    t0 = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - t0
    final = out_dir / "trl-model"
    trainer.save_model(str(final))
    tok.save_pretrained(final)
    return {
        "model_dir": final,
        "wall_s": time.perf_counter() - started,
        "loop_s": loop_s,
        "tokens": log.tokens,
        "reward": log.reward,
    }


def per_problem_accuracy(cfg, model_dir: Path, problems, label: str) -> dict[str, float]:
    """{problem_id: avg@k} on the config's held-out benchmark, by our evaluate stage's code."""
    from oger.stages.evaluate.stage import sample_model_dir
    from oger.sweep.results import problem_counts

    (spec,) = cfg.evaluate.benchmarks
    ((_, df),) = list(sample_model_dir(cfg, model_dir, problems, label, [spec]))
    return {p: c / n for p, (n, c) in problem_counts(df, label, spec.name).items()}


def plot(curves: dict[str, list[list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, runs in curves.items():
        steps = min(len(r) for r in runs)
        m = np.array([r[:steps] for r in runs])
        x = np.arange(1, steps + 1)
        ax.plot(x, m.mean(0), label=f"{label} (mean of {len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(x, m.min(0), m.max(0), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("on-policy train reward")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(iv) -> str:
    if iv.lo is None:
        return f"{100 * iv.mean:.1f}"
    return f"{100 * iv.mean:.1f} [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]"


def main() -> None:
    import numpy as np

    from oger.pipeline import run_local
    from oger.stages.policy.files import model_dir as policy_model_dir
    from oger.stages.problems.files import read_problems
    from oger.stages.train.stage import train_inputs
    from oger.sweep.stats import paired_blocks, seed_problem_bootstrap

    seeds = bench_seeds()
    OUT.mkdir(parents=True, exist_ok=True)
    cfg0 = bench_config(seeds[0])
    refs = run_local(cfg0, until="policy")  # shared by every run; from cache after the first bench
    problems = read_problems(refs["problems"])
    policy_dir = policy_model_dir(refs["policy"])
    base = per_problem_accuracy(cfg0, policy_dir, problems, "base")
    pids = sorted(base)
    runs: dict[str, list[dict]] = {"ours (grpo preset)": [], "TRL GRPOTrainer": []}
    for seed in seeds:
        cfg = bench_config(seed)
        ours = run_ours(cfg)
        ours["acc"] = per_problem_accuracy(cfg, ours["model_dir"], problems, "trained")
        runs["ours (grpo preset)"].append(ours)
        work = Path(tempfile.mkdtemp(prefix="oger-trl-learning-"))
        try:
            theirs = run_trl(cfg, policy_dir, train_inputs(cfg, problems, refs["index"]), work)
            theirs["acc"] = per_problem_accuracy(cfg, theirs["model_dir"], problems, "trained")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        runs["TRL GRPOTrainer"].append(theirs)
        print(
            f"seed {seed}: ours {np.mean(list(ours['acc'].values())):.3f} in {ours['wall_s']:.0f} s, "
            f"TRL {np.mean(list(theirs['acc'].values())):.3f} in {theirs['wall_s']:.0f} s",
            flush=True,
        )

    def grid(label):
        return np.array([[r["acc"][p] for p in pids] for r in runs[label]])

    (ours_l, trl_l) = runs
    t, spec = cfg0.train, cfg0.evaluate.benchmarks[0]
    k = cfg0.evaluate.samples_for(spec)
    rows = [
        ["base (policy stage)", _pct(seed_problem_bootstrap([np.array([[base[p] for p in pids]])])), "–", "–", "–", "–"]
    ]
    for label in runs:
        rs = runs[label]
        rows.append(
            [
                label,
                _pct(seed_problem_bootstrap([grid(label)])),
                f"{np.mean([r['reward'][-1] for r in rs]):.2f}",
                f"{np.mean([r['loop_s'] for r in rs]):.0f}",
                f"{np.mean([r['wall_s'] for r in rs]):.0f}",
                f"{np.mean([r['tokens'] for r in rs]):.0f}",
            ]
        )
    diff = seed_problem_bootstrap(paired_blocks([grid(ours_l)], [grid(trl_l)]))
    time_ratio = np.mean([r["loop_s"] for r in runs[ours_l]]) / np.mean([r["loop_s"] for r in runs[trl_l]])
    headers = [
        "trainer",
        f"held-out avg@{k} % (95% CI, {len(seeds)} seeds x {len(pids)} problems)",
        "train reward, last step",
        "train loop s",
        "train wall s",
        "tokens generated",
    ]
    title = (
        f"trl_learning: SmolLM2-135M-Instruct, {t.steps} steps x {t.prompts_per_step} prompts x "
        f"{t.group_size}, lr {t.optim.lr:g}, T={t.rollout.temperature} ({machine()})"
    )
    table(title, headers, rows)
    plot(
        {label: [r["reward"] for r in runs[label]] for label in runs},
        OUT / "trl_learning.png",
        f"SmolLM2-135M-Instruct on sums up to 15: train reward per step\n(range over seeds {seeds})",
    )
    md = [
        f"Measured {machine()}; seeds {seeds}; `python -m bench trl_learning`.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *["| " + " | ".join(str(c) for c in r) + " |" for r in rows],
        "",
        f"Ours − TRL, held-out avg@{k} (paired per seed and problem, seed × problem bootstrap): "
        f"{100 * diff.mean:+.1f} points [{100 * diff.lo:+.1f}, {100 * diff.hi:+.1f}]"
        f"{'' if diff.excludes_zero else ': not distinguishable from 0'}. "
        f"Train-loop time ours / TRL: {time_ratio:.2f}.",
        "",
        "Set equal on both sides: " + "; ".join(SHARED) + ".",
        "",
        "Only one side: " + ONLY_ONE + ".",
    ]
    (OUT / "trl_learning.md").write_text("\n".join(md) + "\n")
    (OUT / "trl_learning.json").write_text(
        json.dumps(
            {
                label: [{k2: (str(v) if isinstance(v, Path) else v) for k2, v in r.items()} for r in rs]
                for label, rs in runs.items()
            }
            | {"base": base, "seeds": seeds},
            indent=1,
        )
    )
    print(f"wrote {OUT / 'trl_learning.md'} and {OUT / 'trl_learning.png'}")
    result(
        "trl_learning",
        ours_acc=float(grid(ours_l).mean()),
        trl_acc=float(grid(trl_l).mean()),
        base_acc=float(np.mean([base[p] for p in pids])),
        diff=diff.mean,
        diff_lo=diff.lo,
        diff_hi=diff.hi,
        time_ratio=float(time_ratio),
        seeds=len(seeds),
    )
