"""Trainer plumbing on a random tiny Qwen2: batched response log-probs equal per-sequence ones,
and micro-batched gradients equal the full-batch gradient for every loss aggregation."""

import pytest
import torch

from oger.algorithm import core
from oger.contract.config import TrainConfig
from oger.runtime.cpu_threads import BatchThreads, thread_workers
from oger.runtime.device import Runtime
from oger.stages.policy.tiny_model import build_model, train_tokenizer
from oger.stages.train.update import _batch_tensors, response_logits, update
from tests.builders import sample


@pytest.fixture(scope="module")
def model_tok():
    tok = train_tokenizer(["Compute 1 + 2.", "Answer: \\boxed{3}", "Terms: 4, -5."] * 10, 300)
    model = build_model(tok, 32, 2, 2, 64, 128, seed=0).double()
    return model, tok


def samples(tok):
    texts = [
        ("Compute 1 + 2.", "1 + 2 = 3. \\boxed{3}"),
        ("Compute 4 - 5 + 6.", "Terms: 4, -5, 6."),
        ("Compute 7.", "\\boxed{7}"),
        ("Compute 12 + 3 - 4 + 5.", "Answer: 16"),
    ]
    out = []
    for g, (q, a) in enumerate(texts):
        p = tok(q, add_special_tokens=False)["input_ids"]
        r = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(sample(a, group=g // 2, problem_id=str(g), prompt_ids=p, response_ids=r, off_policy=(g == 3)))
    return out


def step_run(model, cfg, pad_id: int, lr: float, threads=None):
    """What `optimizer_step` reads of a `TrainRun`, for one process: SGD at `lr`, a constant schedule."""
    from types import SimpleNamespace

    from oger.stages.train.distributed import Dist

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return SimpleNamespace(
        cfg=cfg,
        runtime=Runtime(),
        dist=Dist(),
        model=model,
        ref_model=None,
        pad_id=pad_id,
        opt=opt,
        threads=threads or BatchThreads(1),
        sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
    )


def test_batched_response_logprobs_equal_unpadded(model_tok):
    model, tok = model_tok
    ss = samples(tok)
    with torch.no_grad():
        ids, attn, pos, resp = _batch_tensors(ss, tok.pad_token_id)
        R = resp.shape[1]
        batched = (core.token_logprobs(response_logits(model, ids, attn, pos, R), ids[:, -R:]) * resp).sum(-1)
        for i, s in enumerate(ss):
            seq = torch.tensor([s.prompt_ids + s.response_ids])
            lp = core.token_logprobs(model(input_ids=seq).logits[:, :-1], seq[:, 1:])[0]
            assert torch.allclose(batched[i], lp[len(s.prompt_ids) - 1 :].sum(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant_len"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(model_tok, agg):
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    grads = []
    for mb in (4, 1, 3):
        cfg = TrainConfig(
            optim={"micro_batch_size": mb},
            loss={"loss_agg": agg},
            rollout={"max_new_tokens": 12, "temperature": 1.0},
        )
        model.zero_grad()
        update(model, None, ss, adv, cfg, tok.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    assert torch.allclose(grads[0], grads[2], rtol=1e-9, atol=1e-12)
    assert grads[0].abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradient(model_tok):
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(optim={"micro_batch_size": 2}, rollout={"max_new_tokens": 12})
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        update(model, None, ss, adv, cfg, tok.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.gradient_checkpointing_disable()
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_ranks_take_whole_generation_calls_of_the_step():
    from oger.stages.train.distributed import Dist
    from oger.stages.train.rollout import _rank_slice

    cfg = TrainConfig(prompts_per_step=8, rollout={"batch_prompts": 2}, distributed={"num_processes": 2})
    assert _rank_slice(8, cfg, Dist()) == (0, 8)
    assert [_rank_slice(8, cfg, Dist(rank=r, world=2)) for r in (0, 1)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match=r"the ranks \(nnodes x num_processes\) x rollout.batch_prompts = 4"):
        _rank_slice(6, cfg, Dist(rank=0, world=2))  # a pool smaller than prompts_per_step


def test_entropy_agg_token_mean_is_a_per_micro_batch_token_mean(model_tok):
    """LUFFY/verl: entropy = token mean within each micro-batch, micro-batches weighted equally (their row
    share under constant_len); the gradient equals that of the hand-built objective."""
    model, tok = model_tok
    ss = samples(tok)
    adv = torch.zeros(4, dtype=torch.float64)  # only the entropy term acts
    cfg = TrainConfig(
        optim={"micro_batch_size": 2},
        loss={"loss_agg": "constant_len", "entropy_coef": 0.5, "entropy_agg": "token_mean"},
        rollout={"max_new_tokens": 12},
    )
    model.zero_grad()
    update(model, None, ss, adv, cfg, tok.pad_token_id)
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    order = sorted(range(4), key=lambda i: len(ss[i].prompt_ids) + len(ss[i].response_ids))
    total = 0
    for b in (0, 2):
        mb = [ss[i] for i in order[b : b + 2]]
        ids, attn, pos, resp = _batch_tensors(mb, tok.pad_token_id)
        ent = core.entropy_from_logits(response_logits(model, ids, attn, pos, resp.shape[1]))
        total = total + 0.5 * (-0.5 * (ent * resp).sum() / resp.sum())
    total.backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_mini_batches_are_whole_groups_by_global_group_index():
    from oger.stages.train.update import mini_batches

    def grouped(groups):
        return [sample(group=g, problem_id=str(g), prompt_ids=[1], response_ids=[2]) for g in groups]

    # one rank holding groups 0..3 (two rows each): group g goes to mini-batch g mod 2
    assert mini_batches(grouped([0, 0, 1, 1, 2, 2, 3, 3]), 2) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # rank 1 of 2 holds groups 2, 3: the same split of those groups as on one rank
    assert mini_batches(grouped([2, 2, 3, 3]), 2) == [[0, 1], [2, 3]]
    assert mini_batches(grouped([0, 1, 2]), 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="ppo_mini_batches = 3 needs at least 3 prompts"):
        mini_batches(grouped([0, 0, 1, 1]), 3)


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def applied_grads(run, model) -> list[torch.Tensor]:
    """The flattened gradients of each optimizer step `optimizer_step` takes, recorded as the step runs
    (it frees them right after: the rollouts that follow hold none)."""
    seen, step = [], run.opt.step

    def recording(*args, **kwargs):
        seen.append(_flat_grad(model))
        return step(*args, **kwargs)

    run.opt.step = recording
    return seen


def test_second_mini_batch_uses_the_old_logprob_and_clips(model_tok):
    """ppo_mini_batches 2: old log-probs are taken once, before the first step; the second mini-batch's
    gradient is that of the clipped surrogate with ratio = p_new / p_old != 1, built here by hand."""
    import copy

    from oger.stages.train.update import optimizer_step

    _, tok = model_tok
    model = copy.deepcopy(model_tok[0])
    ss = samples(tok)  # groups [0, 0, 1, 1]; sample 3 is a teacher row
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(
        optim={"micro_batch_size": 1, "optimizer": "sgd", "lr": 0.5, "max_grad_norm": 1e9},
        rollout={"max_new_tokens": 12},
        loss={"ppo_mini_batches": 2, "clip_eps_low": 0.2, "clip_eps_high": 0.3, "gamma": 0.1},
    )
    ref = copy.deepcopy(model)

    def run_for(m):
        return step_run(m, cfg, tok.pad_token_id, cfg.optim.lr, BatchThreads(thread_workers(m)))

    def logps(m, s):  # response-token log-probs of one unpadded sample
        seq = torch.tensor([s.prompt_ids + s.response_ids])
        return core.token_logprobs(m(input_ids=seq).logits[:, :-1], seq[:, 1:])[0, len(s.prompt_ids) - 1 :]

    run = run_for(model)
    applied = applied_grads(run, model)
    metrics, _, _ = optimizer_step(run, ss, adv)
    got = applied[-1]  # gradients of the last optimizer step (the second mini-batch)

    # By hand on a copy: old log-probs of the batch, step 1 on group 0 (ratio 1: the plain gradient) ...
    with torch.no_grad():
        old = [logps(ref, s) for s in ss]
    hand = run_for(ref)
    hand.opt.zero_grad()
    update(ref, None, ss[:2], adv[:2], cfg, tok.pad_token_id)
    hand.opt.step()
    hand.opt.zero_grad()
    # ... then group 1: on-policy row 2 gets -min(r A, clip(r, 1 - eps, 1 + eps) A), r = exp(logp - old);
    # teacher row 3 gets -A p / (p + gamma) with no ratio; token mean over the group's tokens.
    lp2, lp3 = logps(ref, ss[2]), logps(ref, ss[3])
    r = torch.exp(lp2 - old[2])
    on = -torch.min(r * 0.5, r.clamp(0.8, 1.3) * 0.5)
    p3 = torch.exp(lp3)
    off = -2.0 * p3 / (p3 + 0.1)
    ((on.sum() + off.sum()) / (len(lp2) + len(lp3))).backward()
    want = _flat_grad(ref)

    assert torch.allclose(got, want, rtol=1e-7, atol=1e-10)
    assert (r - 1).abs().max() > 0.01  # the first step moved the policy: the ratio is not 1
    clipped = (r > 1.3).float().mean()  # ratios here: 1.16 1.54 2.03 1.11 1.38 1.87
    assert 0 < clipped < 1  # A > 0: ratio above 1 + eps is clipped (no gradient), below is not
    # clip_frac: 0 on the first mini-batch (ratio 1); on the second, `clipped`: row 2's micro-batch
    # defines it and the teacher-only micro-batch has no on-policy token (NaN: left out, not counted as
    # 0); the mini-batches weighted by their token shares n0 / (n0 + n1) and n1 / (n0 + n1)
    n0 = sum(len(s.response_ids) for s in ss[:2])
    n1 = sum(len(s.response_ids) for s in ss[2:])
    assert metrics["clip_frac"] == pytest.approx(float(clipped) * n1 / (n0 + n1), rel=1e-6)
    assert metrics["approx_kl"] != 0.0


def test_one_mini_batch_is_the_single_step_update(model_tok):
    """ppo_mini_batches 1 (default) through optimizer_step: exactly `update` on the whole batch, then a step."""
    import copy

    from oger.stages.train.update import optimizer_step

    _, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(optim={"micro_batch_size": 2, "max_grad_norm": 1e9}, rollout={"max_new_tokens": 12})
    a, b = copy.deepcopy(model_tok[0]), copy.deepcopy(model_tok[0])
    run = step_run(a, cfg, tok.pad_token_id, 0.1)
    applied = applied_grads(run, a)
    metrics, _, _ = optimizer_step(run, ss, adv)
    assert all(p.grad is None for p in a.parameters())  # freed after the step, not kept through rollouts
    update(b, None, ss, adv, cfg, tok.pad_token_id)
    assert torch.equal(applied[0], _flat_grad(b))
    assert metrics["clip_frac"] == 0.0 and metrics["approx_kl"] == 0.0


def test_micro_batches_on_threads_give_the_sequential_gradient_and_metrics(model_tok):
    """Two threads, one micro-batch each at a time (`oger.runtime.cpu_threads`): the gradient and the
    metrics of the sequential loop up to float rounding, and bitwise the same on every run."""
    import copy

    _, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(optim={"micro_batch_size": 1}, rollout={"max_new_tokens": 12}, loss={"entropy_coef": 0.01})
    seq, par, again = (copy.deepcopy(model_tok[0]) for _ in range(3))
    m_seq = update(seq, None, ss, adv, cfg, tok.pad_token_id)
    with BatchThreads(2) as threads:
        m_par = update(par, None, ss, adv, cfg, tok.pad_token_id, threads=threads)
        update(again, None, ss, adv, cfg, tok.pad_token_id, threads=threads)
    torch.testing.assert_close(_flat_grad(par), _flat_grad(seq), rtol=1e-5, atol=1e-7)
    assert torch.equal(_flat_grad(par), _flat_grad(again))
    assert m_par.keys() == m_seq.keys()
    for k in m_seq:
        assert m_par[k] == pytest.approx(m_seq[k], rel=1e-5, abs=1e-7), k


def test_a_metric_is_averaged_over_the_parts_that_define_it():
    from oger.stages.train.update import defined_weighted_means

    nan = float("nan")
    # a: (1 x 0.25 + 3 x 0.25) / 0.5 = 2, times the parts' total weight 0.5 -> 1.0
    # b: NaN in the first part (teacher rows only): 2 x 0.25 / 0.25 = 2, x 0.5 -> 1.0 (not 0.5)
    # c: absent from the second part: likewise 4 x 0.25 / 0.25 x 0.5 -> 2.0
    out = defined_weighted_means([({"a": 1.0, "b": nan, "c": 4.0}, 0.25), ({"a": 3.0, "b": 2.0}, 0.25)])
    assert out == {"a": 1.0, "b": 1.0, "c": 2.0}
    assert defined_weighted_means([({"a": nan}, 1.0)]) == {}


def test_rollout_entropies_are_recorded_only_where_something_reads_them():
    from oger.stages.train.rollout import needs_rollout_entropy

    assert needs_rollout_entropy(TrainConfig(algorithm="grpo"))  # the monitor logs g(H) for every preset
    assert not needs_rollout_entropy(TrainConfig(algorithm="grpo", oger={"monitor": False}))
    assert not needs_rollout_entropy(TrainConfig(algorithm="luffy", oger={"monitor": False}))
    assert needs_rollout_entropy(TrainConfig(algorithm="oger", oger={"monitor": False}))  # the bonus's damping


def test_ranks_are_combined_over_those_that_define_a_metric():
    from oger.stages.train.update import combine_ranks

    # each rank's value is its mean times its share (`update`); shares 0.5 and 0.5.
    # pg_loss: both ranks, means 2 and 4 -> (1 + 2) / (0.5 + 0.5) = 3
    # shaping_mean: only rank 0 had a teacher row, mean 0.3 -> 0.15 / 0.5 = 0.3 (summed as 0: 0.15)
    out = combine_ranks([({"pg_loss": 1.0, "shaping_mean": 0.15}, 0.5), ({"pg_loss": 2.0}, 0.5)])
    assert out == pytest.approx({"pg_loss": 3.0, "shaping_mean": 0.3})


def test_a_teacher_row_keeps_nothing_of_the_rollout_it_replaced(model_tok):
    """vLLM rollouts carry the engine's own log-probs. A rollout replaced by a (shorter) teacher trace
    kept them, and `update` wrote them into a tensor as wide as the micro-batch's longest response:
    `oger run configs/tiny.yaml --set train.rollout.engine=vllm` died in its first step with "The
    expanded size of the tensor (22) must match the existing size (39)". The teacher row is a new
    sample: no engine log-probs, entropies or finish reason of the rollout."""
    from oger.stages.train.reward import replace_with_teachers

    model, tok = model_tok
    p = tok("Compute 1 + 2.", add_special_tokens=False)["input_ids"]
    long = tok("Terms: 4, -5, 6. Terms: 4, -5, 6. Terms: 4, -5, 6.", add_special_tokens=False)["input_ids"]
    short = tok("\\boxed{3}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    group = [
        sample("x", group=0, problem_id="q", prompt_ids=p, response_ids=short, off_policy=False),
        sample("y", group=0, problem_id="q", prompt_ids=p, response_ids=long, off_policy=False),
    ]
    for s in group:
        s.rollout_logprobs = [-0.5] * len(s.response_ids)
        s.entropies, s.finish_reason = [1.0] * len(s.response_ids), "length"
    cfg = TrainConfig(algorithm="luffy", group_size=2, rollout={"max_new_tokens": 64})
    replace_with_teachers(group, cfg, {"q": (["1 + 2 = 3. \\boxed{3}"], None)}, tok, tok.eos_token_id, seed=0)
    teacher = group[1]
    assert teacher.off_policy and teacher.text == "1 + 2 = 3. \\boxed{3}"
    assert teacher.rollout_logprobs == [] and teacher.entropies == [] and teacher.finish_reason == "stop"
    assert len(teacher.response_ids) < len(long)  # shorter than what it replaced: the crash's shape
    assert group[0].rollout_logprobs == [-0.5] * len(short)  # the on-policy row keeps its own
    model.zero_grad()
    update(model, None, group, torch.tensor([0.5, -0.5], dtype=torch.float64), cfg, tok.pad_token_id)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_resumed_run_anchors_its_kl_to_the_policy_it_started_from(model_tok, tmp_path):
    """`loss.beta > 0`: the KL reference is the policy the run started from. It was copied after the
    resume loaded the checkpoint, so a resumed run anchored its KL to the resumed (trained) policy."""
    import copy

    from oger.stages.train.checkpoint import save_checkpoint
    from oger.stages.train.distributed import Dist
    from oger.stages.train.setup import TrainInputs, setup

    start, tok = copy.deepcopy(model_tok[0]).float(), model_tok[1]
    trained = copy.deepcopy(start)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    opt = torch.optim.AdamW(trained.parameters())
    save_checkpoint(
        tmp_path / "checkpoints", 2, trained, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1), Dist()
    )
    cfg = TrainConfig(steps=4, loss={"beta": 0.05}, rollout={"max_new_tokens": 8})
    inputs = TrainInputs(questions={"q": "Compute 1 + 2."}, answers={"q": "3"}, problem_ids=["q"])
    run = setup(cfg, copy.deepcopy(start), tok, inputs, tmp_path, Dist())
    assert run.start == 2
    for mine, want in zip(run.policy.parameters(), trained.parameters()):  # resumed: the checkpoint's
        assert torch.equal(mine, want)
    for ref, want in zip(run.ref_model.parameters(), start.parameters()):  # the KL's anchor: the start
        assert torch.equal(ref, want)
    run.engine.close()


def test_ddp_all_reduces_once_per_optimizer_step_not_once_per_micro_batch(model_tok, tmp_path):
    """DDP decides in the forward whether the backward all-reduces (`require_backward_grad_sync`), so
    `no_sync` must hold over the forward too; held over the backward only, every micro-batch
    all-reduced. A one-rank gloo group and a comm hook that counts the all-reduces show it."""
    import contextlib
    import copy

    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel

    _, tok = model_tok
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = TrainConfig(optim={"micro_batch_size": 1}, rollout={"max_new_tokens": 12})
    td.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(copy.deepcopy(model_tok[0]), bucket_cap_mb=1000)  # one bucket
        reduces = []

        def count(state, bucket):
            reduces.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp.register_comm_hook(None, count)
        update(
            ddp,
            None,
            ss,
            adv,
            cfg,
            tok.pad_token_id,
            no_sync=lambda last: contextlib.nullcontext() if last else ddp.no_sync(),
        )
        assert reduces == [0]  # four micro-batches, one all-reduce: the last one's
        want = copy.deepcopy(model_tok[0])
        update(want, None, ss, adv, cfg, tok.pad_token_id)  # the same gradient without DDP
        for a, b in zip(ddp.module.parameters(), want.parameters()):
            assert (a.grad is None) == (b.grad is None) and (a.grad is None or torch.allclose(a.grad, b.grad))
    finally:
        td.destroy_process_group()


def test_a_non_finite_gradient_skips_the_optimizer_step_and_is_counted(model_tok):
    """One NaN step used to poison the run (the optimizer applied NaN); as verl does, a step whose
    gradient norm is not finite is skipped, its gradients dropped, and the step metrics count it."""
    import copy

    from oger.stages.train.metrics import BY_NAME
    from oger.stages.train.update import optimizer_step

    _, tok = model_tok
    model = copy.deepcopy(model_tok[0])
    ss = samples(tok)
    cfg = TrainConfig(optim={"micro_batch_size": 2, "optimizer": "sgd", "lr": 0.1}, rollout={"max_new_tokens": 12})
    run = step_run(model, cfg, tok.pad_token_id, 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    metrics, grad_norm, _ = optimizer_step(run, ss, torch.tensor([1.0, float("nan"), 0.5, 2.0]))
    assert grad_norm != grad_norm and metrics["nonfinite_grad_steps"] == 1  # NaN norm, one step skipped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # nothing applied
    assert all(p.grad is None for p in model.parameters())
    metrics, grad_norm, _ = optimizer_step(run, ss, torch.tensor([1.0, -1.0, 0.5, 2.0]))
    assert metrics["nonfinite_grad_steps"] == 0 and grad_norm > 0
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # a finite step applies
    assert "nonfinite_grad_steps" in BY_NAME  # logged in metrics.jsonl and TensorBoard
