"""The stale-weight guard of a vLLM rollout engine: after its build and after every weight push, the
engine must hold the trainer's weights, or the run stops before a rollout comes from stale ones.

Why: the peers' users report pushes that silently did not take effect (TRL #5312: after sleep mode the
log-prob gap jumped from 0.015 to 0.201 and training went on), and none of the peers stops such a run.
Two checks, each run on every rank against that rank's engine:

- the weights' fingerprint (`oger.generation.fingerprint`): slices read back from the engine must equal
  the trainer's, cast to the engine's dtype, exactly. This catches a skipped push whatever the step
  size (at lr 1e-6 the log-probs move by less than a bf16 engine's own rounding);
- the log-probs of a fixed probe continuation, scored by the engine and by the trainer's model, must
  agree within `rollout.max_push_logp_diff`: this catches what the slices do not cover (a linear layer
  or an untied output layer that did not load, a wrong dtype).

Every rank gathers every rank's verdict, so all of them stop together with the same error (naming the
step, the rank and the numbers) instead of some waiting in a collective. Between pushes, each step's
`rollout_kl` (the trainer's log-probs of the sampled tokens against the engine's) can be held under
`rollout.max_rollout_kl`: warn or stop (`rollout.on_rollout_kl`)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from oger.contract.errors import StageError
from oger.generation.fingerprint import Probe, choose_probes, differences, trainer_fingerprint

PROBE_TEXT = "Question: 12 + 7 = ? Let me add: 12 + 7 = 19. The final answer is 19."
# The default rollout.max_push_logp_diff: the largest |delta log p| over the probe's tokens that a correct
# push gave, with margin (measured on a 2-core CPU, after the build and after AdamW steps at lr 1e-6..1e-3,
# each pushed). Float32 on both sides: tiny policy <= 1e-6, SmolLM2-135M <= 4.5e-5 (a skipped push at
# lr 1e-6: 4e-3..0.15). A bf16 engine beside float32 weights: tiny <= 0.0036, SmolLM2 0.06..0.31 at lr
# 1e-6/1e-5 (0.98 once an lr-1e-3 step had wrecked the model): as large as what a skipped push at those
# rates moves, so in bf16 this check catches gross failures (a layer that did not load, a wrong dtype,
# weights of another step: 0.13 to 21 nats) and the fingerprint catches skipped pushes. On a GPU the
# trainer's float32 matmuls run in TF32 (`Runtime.configure`): the bf16 limit there (not measured).
PUSH_LOGP_DIFF = {"float32": 1e-3, "bfloat16": 1.0}


def default_limit(engine_dtype: str, precision: str, gpu: bool = False) -> float:
    """`rollout.max_push_logp_diff` when unset: the bf16 limit for a bf16 engine, a trainer computing in
    bf16, or any GPU (TF32); the float32 one for float32 on both sides of a CPU."""
    low = engine_dtype == "bfloat16" or precision == "bf16-mixed" or gpu
    return PUSH_LOGP_DIFF["bfloat16" if low else "float32"]


@dataclass
class PushGuard:
    """What the checks compare, fixed for the run: the probed weight slices, the probe's prompt and
    continuation (token ids), the log-prob tolerance and the engine's dtype."""

    probes: list[Probe]
    prompt: list[int]
    continuation: list[int]
    limit: float
    dtype: object  # torch.dtype of the engine's weights

    @classmethod
    def build(cls, policy, tokenizer, engine_dtype: str, precision: str, limit: float | None) -> "PushGuard":
        import torch

        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        cut = len(ids) // 2
        gpu = next(policy.parameters()).device.type == "cuda"
        return cls(
            choose_probes(policy),
            ids[:cut],
            ids[cut:],
            limit if limit is not None else default_limit(engine_dtype, precision, gpu),
            getattr(torch, engine_dtype),
        )

    def check(self, engine, model, when: str, dist, autocast) -> dict[str, float]:
        """Both checks on every rank (a sharded `model` runs its collectives here); a StageError on every
        rank when any rank's engine fails one. Returns the numbers the step logs: the largest fingerprint
        difference and log-prob difference over the ranks."""
        trainer = trainer_fingerprint(model, self.probes, self.dtype, dist.gather if dist.active else None)
        read = engine.fingerprint(self.probes)
        bad = differences(trainer, read)
        logp = max(
            abs(a - b)
            for a, b in zip(
                engine.score(self.prompt, self.continuation),
                trainer_logprobs(model, self.prompt, self.continuation, autocast),
            )
        )
        fp = max((abs(e - t) for _, e, t in bad), default=0.0)
        verdicts = dist.gather({"rank": dist.rank, "read": len(read), "bad": bad, "logp": logp, "fp": fp})
        for v in verdicts:
            _raise_if_failed(v, when, len(self.probes), self.limit)
        return {
            "push_fingerprint_diff": max(v["fp"] for v in verdicts),
            "push_logp_diff": max(v["logp"] for v in verdicts),
        }


def _raise_if_failed(v: dict, when: str, probes: int, limit: float) -> None:
    rank = f"rank {v['rank']}'s rollout engine"
    if v["read"] == 0:
        raise StageError(
            f"train: {when}: {rank} holds none of the {probes} weight slices the guard reads (their names "
            "are not the engine's parameters): its weights cannot be checked"
        )
    if v["bad"]:
        label, e, t = v["bad"][0]
        more = f" (and {len(v['bad']) - 1} more of {v['read']} slices)" if len(v["bad"]) > 1 else ""
        raise StageError(
            f"train: {when}: {rank} does not hold the trainer's weights: {label} sums to {e!r} in the engine, "
            f"{t!r} in the trainer{more}. The weight push was skipped or did not take effect; stopping "
            "before rollouts come from stale weights"
        )
    if not v["logp"] <= limit:
        raise StageError(
            f"train: {when}: {rank} scores the probe continuation up to {v['logp']:.3g} in log-prob away "
            f"from the trainer (rollout.max_push_logp_diff {limit:g}), though the weight slices it was "
            "checked on match: part of the model did not load (or, in bf16, the limit is too tight for this model)"
        )


def trainer_logprobs(model, prompt: list[int], continuation: list[int], autocast) -> list[float]:
    """The trainer's log-probs (temperature 1) of `continuation` after `prompt`, in its own precision
    (`autocast`: the runtime's); called on every rank under FSDP2."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt + continuation], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits, -1)
    return logp[torch.arange(len(continuation)), torch.tensor(continuation, device=device)].tolist()


def check_rollout_kl(metrics: dict, step: int, max_kl: float | None, on: str, main: bool = True) -> None:
    """A step whose rollout_kl (KL(pi_vllm || pi_train) over its sampled tokens) is over `max_kl`:
    `on` "stop" raises (on every rank: the metrics are the ranks' combined ones), "warn" prints on the
    main rank. Nothing without a threshold or without vLLM rollouts (NaN)."""
    kl = metrics.get("rollout_kl", math.nan)
    if max_kl is None or not kl > max_kl:
        return
    msg = (
        f"train: step {step + 1}: rollout_kl {kl:.4g} > rollout.max_rollout_kl {max_kl:g} (rollout_logp_diff "
        f"{metrics.get('rollout_logp_diff', math.nan):.4g}): the engine's rollouts are far from the trainer's policy"
    )
    if on == "stop":
        raise StageError(msg)
    if main:
        print(f"[oger-train] warning: {msg}", file=sys.stderr, flush=True)
