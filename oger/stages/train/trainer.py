"""The GRPO / LUFFY / OGER training loop, readable top to bottom.

Each step: sample prompts -> roll out n per prompt (`rollout`) -> verify answers and replace k
rollouts per group by teacher traces from the index at its tag (`reward`) -> with several optimizer
steps per batch, the behaviour pass (old log-probs, and the bonus's entropies) -> the pure reward step
(`oger.algorithm.reward`: bonus, advantages, signals) -> micro-batched update with the hybrid loss
(`update`) -> logging (`step_log`), checkpoint. `setup` builds what the steps share. All the math
lives in `oger.algorithm.core`; these modules move data.

On several ranks (`oger.stages.train.distributed`) each rank rolls out its own slice of the step's prompts,
whole groups only, and the per-sample records are gathered to rank 0, which logs; every rank writes its
shard of a checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from oger import seeds
from oger.algorithm.reward import compute_rewards
from oger.contract.config import TrainConfig
from oger.stages.train.checkpoint import export_model, final_model_dir, save_checkpoint
from oger.stages.train.distributed import Dist
from oger.stages.train.reward import score_and_replace
from oger.stages.train.rollout import bonus_window, entropy_from_behaviour_pass, rollouts, sync_engine
from oger.stages.train.setup import TrainInputs, TrainRun, setup
from oger.stages.train.step_log import log_step
from oger.stages.train.update import behaviour_pass, optimizer_step, update_layout


def checkpoint(run: TrainRun, step: int) -> None:
    """Every `checkpoint_every` steps and at the last: every rank writes its shards (`save_checkpoint`)."""
    if (step + 1) % run.cfg.logging.checkpoint_every == 0 or step + 1 == run.cfg.steps:
        save_checkpoint(run.run_dir / "checkpoints", step + 1, run.model, run.opt, run.sched, run.dist)


def train(
    cfg: TrainConfig, model, tokenizer, inputs: TrainInputs, run_dir: Path, progress=None, dist: Dist | None = None
) -> list[dict]:
    """Run (or resume) training; checkpoints, metrics.jsonl and the final model (`final_model_dir`) live
    in run_dir (metrics written by rank 0; the other ranks return an empty history)."""
    run = setup(cfg, model, tokenizer, inputs, run_dir, dist or Dist())
    vocab = run.policy.config.vocab_size

    # bf16-mixed on a CPU: attention in float32 for the update (the runtime's answer), except in the
    # packed layout, whose per-sample attention is its own implementation
    def attention():
        return run.runtime.attention(run.policy) if update_layout(cfg) != "packed" else contextlib.nullcontext()

    with run.threads:  # the micro-batch threads live as long as the loop
        for step in range(run.start, cfg.steps):
            t0 = time.perf_counter()
            samples, pids, lo, hi = rollouts(run, step)
            getattr(run.engine, "rest", lambda: None)()  # vllm with rollout.sleep: memory to the update
            t_gen = time.perf_counter()
            refs = score_and_replace(run, samples, pids[lo:hi], step)
            t_score = time.perf_counter()
            old = None
            if cfg.loss.ppo_mini_batches > 1:  # the old log-probs, taken before the reward step: the bonus's H too
                from_pass = entropy_from_behaviour_pass(cfg)
                with attention():  # the window only where read (the answer options decode to find it)
                    old, ents = behaviour_pass(run, samples, bonus_window(cfg) if from_pass else None)
                if from_pass:
                    for s, e in zip(samples, ents):
                        s.entropies = [] if s.off_policy else e
            t_behaviour = time.perf_counter()
            # a group never spans ranks, so the reward step's group statistics are local
            rew = compute_rewards(samples, refs, run.embed, cfg, vocab, seed=seeds.for_step(cfg.seed, step))
            t_embed = time.perf_counter()
            with attention():
                loss_metrics, grad_norm, lr_used = optimizer_step(run, samples, rew.advantages, old)
            t_update = time.perf_counter()
            synced = sync_engine(run, step, loss_metrics)  # vllm: the push, checked (engine_guard)
            row = log_step(
                run,
                step,
                samples,
                rew,
                loss_metrics,
                {
                    "grad_norm": grad_norm,
                    "lr": lr_used,
                    "seconds_generate": t_gen - t0,
                    "seconds_score": t_score - t_gen,
                    "seconds_embed": t_embed - t_behaviour,
                    "seconds_update": t_update - t_embed + t_behaviour - t_score,  # the behaviour pass included
                    "seconds_step": time.perf_counter() - t0,
                    **synced,
                },
            )
            checkpoint(run, step)
            if progress is not None and row is not None:
                progress(row)
    # the model the stage publishes (and the next round starts from), streamed to rank 0
    export_model(final_model_dir(run_dir), run.model, tokenizer, run.dist)
    if run.writer is not None:
        run.writer.close()
    return run.history
