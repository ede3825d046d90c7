"""Our trainer on a pretrained LM (SmolLM2-135M-Instruct from its package, configs/smollm2-arith.yaml):
one update moves the policy toward a rewarded completion and away from a penalised one, and a few real
GRPO steps (rollouts, verification, update, checkpoint) run end to end and change the weights."""

import math

import pytest
import torch

from oger.algorithm.samples import Sample
from oger.contract.config import load_config
from oger.generation.hf import chat_prompt_ids
from oger.models import load_causal_lm
from oger.stages.train.setup import TrainInputs
from oger.stages.train.trainer import train
from oger.stages.train.update import token_scores, update

pytestmark = pytest.mark.slow
CONFIG = "configs/smollm2-arith.yaml"
SMALL = [
    "train.algorithm=grpo",
    "train.steps=2",
    "train.prompts_per_step=2",
    "train.group_size=2",
    "train.rollout.max_new_tokens=32",
    "train.logging.checkpoint_every=2",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, SMALL)


@pytest.fixture
def smollm2():
    torch.manual_seed(0)
    return load_causal_lm("smollm2", "float32")


def _sample(tok, cfg, question: str, completion: str, correct: bool, group: int) -> Sample:
    prompt = chat_prompt_ids(tok, question, cfg.policy.instruction, cfg.policy.system_prompt)
    response = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Sample(
        group=group,
        problem_id=question,
        prompt_ids=prompt,
        response_ids=response,
        text=completion,
        off_policy=False,
        correct=correct,
    )


def test_one_update_moves_smollm2_toward_the_rewarded_completion(cfg, smollm2):
    model, tok = smollm2
    samples = [
        _sample(tok, cfg, "Compute 13 + 12.", "13 + 12 = 25. The final answer is \\boxed{25}.", True, 0),
        _sample(tok, cfg, "Compute 13 + 12.", "13 + 12 = 24. The final answer is \\boxed{24}.", False, 0),
        _sample(tok, cfg, "Compute 7 + 9.", "7 + 9 = 16. The final answer is \\boxed{16}.", True, 1),
        _sample(tok, cfg, "Compute 7 + 9.", "7 + 9 = 15. The final answer is \\boxed{15}.", False, 1),
    ]
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])  # group-normalised rewards of 1, 0 in each group

    def margin() -> float:  # mean log-prob of the rewarded completions minus the penalised ones'
        with torch.no_grad():
            logp, _, mask = token_scores(
                model, samples, tok.pad_token_id, cfg.train.rollout.temperature, "padded", entropy_grad=False
            )
        per_sample = (logp * mask).sum(-1) / mask.sum(-1)
        return float((per_sample * adv).sum() / 2)

    before = margin()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.optim.lr)
    opt.zero_grad()
    metrics = update(model, None, samples, adv, cfg.train, tok.pad_token_id)
    grad = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None))
    opt.step()
    after = margin()
    assert grad > 0 and math.isfinite(grad) and math.isfinite(metrics["token_entropy"])
    assert after > before + 1e-3, (before, after)  # one step at lr 1e-5 moves it measurably


def test_chunked_log_probs_and_entropy_equal_the_whole_on_smollm2_and_the_tiny_policy(cfg, smollm2):
    """`optim.logprob_chunk`: the update's per-token log-probs, entropies, loss and gradients equal those
    computed over all positions at once (float32, within 1e-5), on SmolLM2 and the tiny policy."""
    from oger.stages.policy.tiny_model import build_model, train_tokenizer

    model, tok = smollm2
    texts = [
        ("Compute 13 + 12.", "13 + 12 = 25. The final answer is \\boxed{25}.", 0),
        ("Compute 7 + 9.", "7 + 9 = 16, so \\boxed{16}.", 1),
    ]
    tiny_tok = train_tokenizer([q + " " + a for q, a, _ in texts] * 20, 300)
    tiny = build_model(tiny_tok, 32, 2, 2, 64, 128, seed=0)
    for m, t in ((model, tok), (tiny, tiny_tok)):
        ss = [_sample(t, cfg, q, a, True, g) for q, a, g in texts]
        adv = torch.tensor([1.0, -1.0])
        out = {}
        for chunk in (None, 7):
            t_cfg = cfg.train.model_dump()  # the entropy term on, so its gradient is compared too
            train = type(cfg.train).model_validate(
                {
                    **t_cfg,
                    "optim": {**t_cfg["optim"], "logprob_chunk": chunk},
                    "loss": {**t_cfg["loss"], "entropy_coef": 0.01},
                }
            )
            with torch.no_grad():
                logp, ent, _ = token_scores(m, ss, t.pad_token_id, 1.0, "padded", entropy_grad=False, chunk=chunk)
            m.zero_grad()
            metrics = update(m, None, ss, adv, train, t.pad_token_id)
            out[chunk] = (
                logp,
                ent,
                torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]),
                metrics["pg_loss"],
            )
        for a, b in zip(out[None][:3], out[7][:3]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert out[None][3] == pytest.approx(out[7][3], rel=1e-5, abs=1e-7)


def test_a_few_grpo_steps_on_smollm2_run_end_to_end(cfg, smollm2, tmp_path):
    from oger.synthetic import generate_problems

    model, tok = smollm2
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    probs = generate_problems(0, 4, 2, 2, 15, "+")
    inputs = TrainInputs(
        questions={f"p{i}": p.question for i, p in enumerate(probs)},
        answers={f"p{i}": str(p.answer) for i, p in enumerate(probs)},
        problem_ids=[f"p{i}" for i in range(len(probs))],
        instruction=cfg.policy.instruction,
        system_prompt=cfg.policy.system_prompt,
    )
    history = train(cfg.train, model, tok, inputs, tmp_path)
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert 0.0 <= h["env_reward"] <= 1.0 and h["response_length"] > 0
    moved = sum(float((v.float() - start[k].float()).abs().sum()) for k, v in model.state_dict().items())
    # A group whose rollouts all score alike has zero advantages: AdamW (no weight decay) then leaves the
    # weights as they are; any group with both outcomes must move them.
    assert (moved > 0) == any(h["mixed_group_fraction"] > 0 for h in history), (moved, history)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    assert any((tmp_path / "checkpoints").iterdir())
