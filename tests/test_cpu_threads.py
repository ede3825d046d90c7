"""Batch halves on threads (`oger.runtime.cpu_threads`): the gradient of one pass, whichever thread
ends first, and torch's thread count restored however blocks nest or overlap."""

import threading

import pytest
import torch

from oger.runtime.cpu_threads import BatchThreads, decode_threads, one_intra_op_thread, split_by_length, thread_workers
from oger.stages.policy.sft import pad_batch
from tests.test_sft import EXAMPLES, _tiny_model


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _loss(model, part, tokens):
    ids, _, labels = pad_batch(part, pad_id=0)
    loss = model(input_ids=ids, labels=labels, num_items_in_batch=tokens, use_cache=False).loss
    return loss, float(loss.detach())


def test_split_by_length_cuts_runs_of_similar_length_longest_first():
    lengths = {0: 9, 1: 2, 2: 7, 3: 4, 4: 5, 5: 8, 6: 1, 7: 3}
    # longest first: 0(9) 5(8) 2(7) 4(5) 3(4) 7(3) 1(2) 6(1), in 2 x 2 workers runs of two
    assert split_by_length(range(8), lengths.get, 2) == [[0, 5], [2, 4], [3, 7], [1, 6]]
    assert split_by_length(range(3), lengths.get, 2) == [[0], [2], [1]]  # no empty run
    assert split_by_length(range(3), lengths.get, 1) == [[0, 2, 1]]  # one worker: one pass


def test_threaded_parts_add_up_to_the_one_pass_gradient_and_loss():
    batch = EXAMPLES * 2
    tokens = sum(len(r) for _, r in batch)  # the batch's response tokens: 10 x 2
    whole, split = _tiny_model(), _tiny_model()
    ids, _, labels = pad_batch(batch, pad_id=0)
    loss = whole(input_ids=ids, labels=labels).loss  # HF's token mean over the whole batch
    loss.backward()
    params = list(split.parameters())
    with BatchThreads(2) as threads:
        parts = [
            [batch[i] for i in p] for p in split_by_length(range(len(batch)), lambda i: sum(map(len, batch[i])), 2)
        ]
        part_losses = threads.backward(params, lambda p: _loss(split, p, tokens), parts)
    assert sum(part_losses) == pytest.approx(float(loss), rel=1e-6)
    for a, b in zip(_grads(split), _grads(whole)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_threaded_gradient_is_summed_in_part_order_so_runs_agree_bitwise():
    batch = EXAMPLES * 4
    parts = [batch[i::4] for i in range(4)]  # four parts on two threads: finishing order varies
    model = _tiny_model()
    params = list(model.parameters())
    # By hand: each part's gradient on one thread, added in part order.
    with one_intra_op_thread():
        expected = None
        for part in parts:
            g = torch.autograd.grad(_loss(model, part, 40)[0], params)
            expected = list(g) if expected is None else [e + x for e, x in zip(expected, g)]
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        with BatchThreads(2) as threads:
            threads.backward(params, lambda p: _loss(model, p, 40), parts)
        for a, b in zip(_grads(model), expected):
            assert torch.equal(a, b)


def test_one_intra_op_thread_restores_the_count_when_blocks_overlap():
    torch.set_num_threads(2)
    inside, entered, first_left = [], threading.Barrier(2), threading.Event()

    def job(first: bool):
        with one_intra_op_thread():
            entered.wait()  # both blocks open at once
            inside.append(torch.get_num_threads())
            if not first:
                first_left.wait()  # the first block closes while this one is still open
        if first:
            first_left.set()

    ts = [threading.Thread(target=job, args=(f,)) for f in (True, False)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert inside == [1, 1]
    assert torch.get_num_threads() == 2  # a save-and-restore per block would leave 1 here


def test_small_cpu_models_use_threads_and_decode_on_one_thread():
    torch.set_num_threads(2)
    model = _tiny_model()
    assert thread_workers(model) == 2
    assert thread_workers(model, distributed=True) == 1  # DDP ranks: all-reduce hooks need .backward()
    with decode_threads(model):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    big = torch.nn.Linear(5000, 5000)  # 25M parameters: intra-op threads pay off
    assert thread_workers(big) == 1
    with decode_threads(big):
        assert torch.get_num_threads() == 2
