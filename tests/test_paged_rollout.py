"""The paged rollout engine (transformers continuous batching) against padded HF `generate`:
greedy token ids identical on prompts of different lengths (some stopping early, some cut by
the budget), entropies equal to the ones HF records, sampling reproducible by seed, the policy
left as it was found, and a few real training steps with `train.rollout_engine: paged`."""

import pytest
import torch

from oger.contract.config import TrainConfig
from oger.generation.hf import chat_prompt_ids, generate
from oger.stages.policy.tiny_model import build_model, train_tokenizer
from oger.stages.train.trainer import train
from oger.synthetic import generate_problems
from tests.builders import rollouts, train_inputs

QUESTIONS = ["Compute 1 + 2.", "Compute 4 - 5 + 6 + 7 - 8 + 9 - 1 + 3.", "Compute 7.", "Compute 12 + 3 - 4 + 5."]


@pytest.fixture(scope="module")
def policy():
    corpus = [p.question + f" Answer: \\boxed{{{p.answer}}}" for p in generate_problems(0, 200, 2, 4, 9, "+-")]
    tok = train_tokenizer(corpus, 300)
    model = build_model(tok, 32, 2, 2, 64, 256, seed=0)
    # At its default init (std 0.02) the tiny model emits one token forever; wider weights make
    # its greedy continuations depend on the prompt, so identity between engines means something.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model, tok


def _prompts(tok):
    return [chat_prompt_ids(tok, q) for q in QUESTIONS]


def test_greedy_token_ids_identical_with_early_stops(policy):
    model, tok = policy
    prompts = _prompts(tok)
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: hf pads, paged packs
    base = generate(model, tok, prompts, max_new_tokens=24, temperature=0.0)
    # Make a token the greedy policy emits at different depths a stop token, so requests end at
    # different steps (the paged engine retires them; hf keeps them padded to the longest).
    stop = next(t for t in base[0].response_ids[2:] if any(t not in r.response_ids for r in base))
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        hf = generate(model, tok, prompts, n=2, max_new_tokens=24, temperature=0.0)
        paged = generate(model, tok, prompts, n=2, max_new_tokens=24, temperature=0.0, engine="paged")
    finally:
        model.generation_config.eos_token_id = old
    assert [r.prompt_index for r in paged] == [r.prompt_index for r in hf] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r.response_ids for r in paged] == [r.response_ids for r in hf]
    assert [r.finish_reason for r in paged] == [r.finish_reason for r in hf]
    assert {r.finish_reason for r in hf} == {"stop", "length"}
    assert len({len(r.response_ids) for r in hf}) > 1
    assert [r.text for r in paged] == [r.text for r in hf]
    for a, b in zip(hf, paged):  # HF records them while sampling, paged by a forward pass after
        assert len(a.entropies) == len(b.entropies) == len(a.response_ids)
        assert max(abs(x - y) for x, y in zip(a.entropies, b.entropies)) < 1e-4

    # The bonus's window (the last m tokens, `core.bonus_entropy_window`): each engine keeps those
    # positions' entropies only, the same numbers; paged runs the LM head on them alone (rows of
    # different lengths: the union of their window positions, each row reading its own).
    from oger.generation.paged import response_entropies

    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        for m in (1, 3):
            hf_m = generate(model, tok, prompts, n=2, max_new_tokens=24, temperature=0.0, entropy_window=m)
            paged_m = generate(
                model, tok, prompts, n=2, max_new_tokens=24, temperature=0.0, engine="paged", entropy_window=m
            )
            for full, a, b in zip(hf, hf_m, paged_m):
                assert a.response_ids == b.response_ids == full.response_ids
                assert a.entropies == full.entropies[-m:]  # the values it recorded, cut to the window
                assert b.entropies == pytest.approx(full.entropies[-m:], abs=1e-4)
    finally:
        model.generation_config.eos_token_id = old
    jobs = [prompts[r.prompt_index] for r in hf]
    responses = [r.response_ids for r in hf]
    whole = response_entropies(model, jobs, responses, batch_size=8, pad=tok.pad_token_id)
    last2 = response_entropies(model, jobs, responses, batch_size=8, pad=tok.pad_token_id, window=2)
    assert [len(e) for e in last2] == [min(2, len(r)) for r in responses]
    for w, e in zip(whole, last2):
        assert e == pytest.approx(w[-2:], abs=1e-5)


@pytest.mark.parametrize("engine", ["hf", "paged"])
def test_sampling_reproducible_by_seed(policy, engine):
    model, tok = policy
    prompts = _prompts(tok)
    model.train()
    runs = [
        generate(model, tok, prompts, n=3, max_new_tokens=16, temperature=1.0, seed=s, engine=engine) for s in (5, 5, 6)
    ]
    assert model.training and model.config._attn_implementation == "sdpa"  # left as found
    ids = [[r.response_ids for r in run] for run in runs]
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]
    assert all(len(r.response_ids) <= 16 for r in runs[0])
    assert len({tuple(x) for x in ids[0]}) > 1  # samples of a group differ


def test_paged_respects_max_new_tokens_and_skips_entropy_when_asked(policy):
    model, tok = policy
    rolls = generate(
        model, tok, _prompts(tok)[:2], max_new_tokens=3, temperature=1.0, engine="paged", record_entropy=False
    )
    assert all(len(r.response_ids) <= 3 and r.entropies == [] for r in rolls)


def test_unknown_engine_is_refused(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="unknown rollout engine"):
        generate(model, tok, _prompts(tok)[:1], engine="vllm")


@pytest.mark.slow
def test_training_steps_with_the_paged_engine(policy, tmp_path, monkeypatch):
    _, tok = policy
    model = build_model(tok, 32, 2, 2, 64, 256, seed=1)
    problems = generate_problems(3, 16, 2, 3, 9, "+-")
    inputs = train_inputs(problems)
    cfg = TrainConfig(
        algorithm="grpo",
        steps=2,
        prompts_per_step=4,
        group_size=4,
        rollout={"max_new_tokens": 12, "batch_prompts": 2, "engine": "paged"},
        optim={"micro_batch_size": 8, "lr": 1e-2},
        loss={"entropy_coef": 0.01},
    )  # a random policy solves nothing: the entropy term moves it
    before = [p.detach().clone() for p in model.parameters()]
    history = train(cfg, model, tok, inputs, tmp_path)
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["last_token_entropy"] > 0 for h in history)  # entropies came back from the pass
    assert any((a - b).abs().max() > 0 for a, b in zip(before, model.parameters()))
    rows = rollouts(tmp_path)
    assert len(rows) == 2 * 4 * 4 and all(r["response_tokens"] <= 12 for r in rows)
    assert (tmp_path / "checkpoints").is_dir()
    assert model.config._attn_implementation == "sdpa" and not torch.is_inference_mode_enabled()

    # Two optimizer steps per batch: the step's behaviour pass (the old log-probs, taken before the reward
    # step) gives the bonus's entropies too, so the engine runs no entropy pass of its own
    from oger.generation import paged

    passes = []
    real = paged.response_entropies
    monkeypatch.setattr(paged, "response_entropies", lambda *a, **k: passes.append(1) or real(*a, **k))
    two = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"ppo_mini_batches": 2})})
    history = train(two, build_model(tok, 32, 2, 2, 64, 256, seed=1), tok, inputs, tmp_path / "two")
    assert passes == [] and all(h["last_token_entropy"] > 0 for h in history)


def test_engine_options_validated_and_keyed():
    from oger.contract.config import EvaluateConfig, TeacherConfig
    from oger.stages.teachers.stage import _generation_slice

    with pytest.raises(ValueError, match="rollout.engine 'paged'.*fsdp"):
        TrainConfig(prompts_per_step=16, rollout={"engine": "paged"}, distributed={"fsdp": True, "num_processes": 2})
    with pytest.raises(ValueError, match="rollout.engine"):
        TrainConfig(rollout={"engine": "sglang"})
    with pytest.raises(ValueError, match="engine 'paged' applies to backend 'transformers' only"):
        TeacherConfig(name="s", backend="scripted", model="stepwise", engine="paged")
    assert EvaluateConfig(engine="paged").engine == "paged"
    hf = TeacherConfig(name="t", backend="transformers", model="smollm2")
    paged = TeacherConfig(name="t", backend="transformers", model="smollm2", engine="paged")
    assert "engine" not in _generation_slice(hf)  # earlier teacher keys stay valid
    assert _generation_slice(paged)["engine"] == "paged"


def test_train_key_names_the_engine_only_when_paged():
    from pathlib import Path

    from oger.contract.config import load_config
    from oger.stages.train.stage import key_inputs

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    hf_slice, _ = key_inputs(load_config(tiny))
    paged_slice, _ = key_inputs(load_config(tiny, ["train.rollout.engine=paged"]))
    assert "rollout_engine" not in hf_slice and paged_slice["rollout_engine"] == "paged"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_bonus_entropy_is_that_of_the_sampling_distribution_from_every_source(policy, temperature):
    """H = entropy of softmax(logits / T) at the bonus's window (`core.sampling_entropy`): recorded while
    sampling (hf), by the paged/vLLM engines' pass over the window, and by the update's behaviour pass,
    all equal to it computed by hand; at T = 1 that is the raw logits' entropy, H's values before."""
    from oger.algorithm import core
    from oger.contract.config import TrainConfig
    from oger.generation.paged import response_entropies
    from oger.stages.train.update import behaviour_scores
    from tests.builders import sample

    model, tok = policy
    prompts = _prompts(tok)
    rolls = generate(model, tok, prompts, n=2, max_new_tokens=12, temperature=temperature, seed=3, entropy_window=3)
    hand = []
    with torch.no_grad():
        for r in rolls:
            p = prompts[r.prompt_index]
            logits = model(input_ids=torch.tensor([p + r.response_ids])).logits[0].double()
            at = [len(p) - 1 + j for j in core.bonus_entropy_window(len(r.response_ids), 3)]
            scaled = core.entropy_from_logits(logits[at] / temperature).tolist()
            assert scaled == pytest.approx(core.sampling_entropy(logits[at], temperature).tolist(), abs=1e-5)
            if temperature == 1.0:  # the definition before: the raw logits' entropy
                assert scaled == pytest.approx(core.entropy_from_logits(logits[at]).tolist(), abs=1e-9)
            hand.append(scaled)
    for r, h in zip(rolls, hand):
        assert r.entropies == pytest.approx(h, abs=1e-4)  # hf: recorded while sampling
    jobs, responses = [prompts[r.prompt_index] for r in rolls], [r.response_ids for r in rolls]
    paged_h = response_entropies(model, jobs, responses, 8, tok.pad_token_id, window=3, temperature=temperature)
    for e, h in zip(paged_h, hand):
        assert e == pytest.approx(h, abs=1e-4)
    samples = [sample(group=r.prompt_index, prompt_ids=jobs[i], response_ids=responses[i]) for i, r in enumerate(rolls)]
    cfg = TrainConfig(rollout={"temperature": temperature, "max_new_tokens": 12})
    was = model.training
    try:
        _, behaviour_h = behaviour_scores(model, samples, cfg, tok.pad_token_id, entropy_window=3)
    finally:
        model.train(was)
    for e, h in zip(behaviour_h, hand):
        assert e == pytest.approx(h, abs=1e-4)
