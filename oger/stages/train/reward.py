"""What a step's rollouts earn before the reward step: the verifier's verdict on each, and LUFFY's
replacement of k rollouts per group by teacher traces from the index (verified the same way). The
rewards, bonus and advantages themselves are the pure `oger.algorithm.reward.compute_rewards`."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from oger import seeds
from oger.algorithm.guards import THINK_CLOSE
from oger.algorithm.samples import Sample
from oger.contract.config import TrainConfig
from oger.verify import score_response

if TYPE_CHECKING:
    from oger.stages.train.setup import TrainRun

THINK_PREFIX = "<think>\n"


def is_correct(text: str, answer: str, reward_format: str = "plain") -> bool:
    """The verifier's verdict; with `reward_format: think` (LUFFY) no `</think>` means 0 and only the
    text after it is verified."""
    if reward_format == "think":
        if THINK_CLOSE not in text:
            return False
        text = text.split(THINK_CLOSE, 1)[1]
    return score_response(text, answer)[1]


def replace_with_teachers(
    samples: list[Sample], cfg: TrainConfig, refs: dict, tokenizer, eos_id: int, seed: int
) -> None:
    """LUFFY: in each group with teacher traces, the last k rollouts become teacher traces
    (picked with a generator seeded by the group's global index: the same on any rank)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    for group, members in groups.items():
        rng = random.Random(seeds.for_item(seed, group))
        pid = samples[members[0]].problem_id
        if pid not in refs:
            continue
        if cfg.replace_policy == "when_all_fail" and any(samples[i].correct for i in members):
            continue
        texts = refs[pid][0]
        strip = cfg.teacher_think_prefix == "strip" and tokenizer.decode(samples[members[0]].prompt_ids).endswith(
            THINK_PREFIX
        )
        for i in members[len(members) - min(cfg.replace_k, len(members)) :]:
            text = texts[rng.randrange(len(texts))]
            if strip and text.startswith(THINK_PREFIX):  # the prompt already opened the think block
                text = text[len(THINK_PREFIX) :]
            # A new sample, not the rollout edited: nothing of the rollout (the engine's log-probs, its
            # entropies, its finish reason) may ride along on the teacher's row.
            rollout = samples[i]
            response = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]
            samples[i] = Sample(rollout.group, rollout.problem_id, rollout.prompt_ids, response, text, off_policy=True)


def score_and_replace(run: TrainRun, samples: list[Sample], pids: list[str], step: int) -> dict:
    """Verify every rollout, then (luffy/oger) put teacher traces in place of k rollouts per group.
    Returns the teacher traces of this rank's problems {problem_id: (texts, vectors)}."""
    cfg, inputs = run.cfg, run.inputs
    for s in samples:
        s.correct = is_correct(s.text, inputs.answers[s.problem_id], cfg.reward_format)
    refs = inputs.index.lookup(pids) if run.needs_index else {}
    if cfg.replaces:
        replace_with_teachers(
            samples, cfg, refs, run.tokenizer, run.tokenizer.eos_token_id, seed=seeds.for_step(cfg.seed, step)
        )
        for s in samples:
            if s.off_policy:
                s.correct = is_correct(s.text, inputs.answers[s.problem_id], cfg.reward_format)
    return refs
