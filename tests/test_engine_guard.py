"""The vLLM rollout engine's weight push and its guard, without vLLM: the streamed push (lazy, a tied
output layer under its own name, a sharded parameter gathered one at a time, its peak measured), the
weight fingerprint (exact on equal weights, different after an lr-1e-6 step, in float32 and bf16), the
order in which a sleeping engine wakes around a push (our sequencing, against a recording stand-in for
`vllm.LLM`: vLLM's CPU build has no sleep mode), the rollout-KL threshold and the config rules. What
needs a real engine runs in tests/test_vllm.py (the guard tripping on a skipped push) and
tests/test_vllm_training.py (the guard after every push of a training run, on one and two ranks)."""

import copy
from types import SimpleNamespace

import pytest
import torch

from oger.contract.config import TrainConfig
from oger.contract.errors import StageError
from oger.contract.keys import key_dump
from oger.generation.fingerprint import choose_probes, differences, engine_fingerprint, trainer_fingerprint
from oger.generation.vllm import VLLMEngine, reload_weights
from oger.generation.vllm_sleep import SleepCycle
from oger.generation.weight_sync import PushMeter, weight_stream
from oger.stages.train.engine_guard import check_rollout_kl, default_limit


@pytest.fixture
def tiny():
    from oger.stages.policy.tiny_model import build_model, train_tokenizer

    tok = train_tokenizer([f"{a} + {b} = {a + b}" for a in range(10) for b in range(10)], 300)
    model = build_model(tok, 32, 2, 2, 64, 128, seed=0)
    assert model.config.tie_word_embeddings
    return model


def _adamw_step(model, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


# --------------------------------------------------------------------------- the streamed push


def test_the_stream_is_lazy_names_every_checkpoint_weight_and_copies_nothing_of_a_plain_module(tiny):
    meter = PushMeter()
    stream = weight_stream(tiny, meter)
    assert iter(stream) is stream  # a generator: nothing gathered or listed before the engine reads it
    pushed = dict(stream)
    assert set(pushed) == set(tiny.state_dict())  # lm_head.weight too: the tied output layer by its name
    params = dict(tiny.named_parameters(remove_duplicate=False))
    assert all(pushed[n].data_ptr() == params[n].data_ptr() for n in params)  # the module's own storage
    assert meter.peak == meter.gathered == 0


def test_a_sharded_push_gathers_one_tensor_at_a_time_and_the_meter_sees_what_a_consumer_keeps(tiny, tmp_path):
    """FSDP2 on a one-rank gloo group: every parameter is a DTensor gathered by the stream. Read as a
    stream (each tensor dropped once loaded) at most two gathered tensors are alive at once; a consumer
    that keeps them all (what `list(...)` did before) holds the whole model, and the meter says so."""
    import torch.distributed as td

    from oger.stages.train.distributed import shard

    full = {k: v.clone() for k, v in tiny.state_dict().items()}
    td.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        sharded = shard(copy.deepcopy(tiny), "float32")
        assert all(hasattr(p, "full_tensor") for p in sharded.parameters())
        sizes = [p.numel() * p.element_size() for p in sharded.parameters()]
        streamed = PushMeter()
        for name, t in weight_stream(sharded, streamed):
            assert torch.equal(t, full[name]), name
        assert streamed.gathered == sum(sizes) and 0 < streamed.peak <= 2 * max(sizes) < sum(sizes)
        assert streamed.alive == t.numel() * t.element_size()  # the loop still holds the last one ...
        del t
        assert streamed.alive == 0  # ... and every gathered tensor is freed once nothing holds it
        kept = PushMeter()
        held = list(weight_stream(sharded, kept))
        assert kept.peak == kept.gathered == sum(sizes) and len(held) == len(full)
    finally:
        td.destroy_process_group()


# --------------------------------------------------------------------------- the fingerprint


def _engine_view(model):
    """A model where vLLM's worker keeps it (`worker.model_runner.model`), for `engine_fingerprint`."""
    return SimpleNamespace(model_runner=SimpleNamespace(model=model))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fingerprint_is_exact_on_pushed_weights_and_catches_an_lr_1e6_step(tiny, dtype):
    probes = choose_probes(tiny)
    norms = [p for p in probes if p.row is None]
    rows = [p for p in probes if p.row is not None]
    assert len(norms) == 2 * 2 + 1 and {p.name for p in rows} == {"model.embed_tokens.weight"}  # tied: no lm_head
    engine = copy.deepcopy(tiny).to(dtype)  # what a correct push leaves in an engine of that dtype
    read = engine_fingerprint(_engine_view(engine), probes)
    assert read == trainer_fingerprint(tiny, probes, dtype) and len(read) == len(probes)
    _adamw_step(tiny, 1e-6)  # the trainer moves on; the engine is not given the weights
    stale = differences(trainer_fingerprint(tiny, probes, dtype), read)
    assert stale, "an lr-1e-6 step must change the fingerprint"
    label, e, t = stale[0]
    assert e == read[label] and e != t


def test_the_engine_reads_only_the_rows_of_its_vocabulary_shard(tiny):
    """A tensor-parallel engine's embedding holds a range of the vocabulary (`shard_indices`): each rank
    reads the probed rows in its range, at their place in its shard, and the ranks' readings join up."""
    probes = choose_probes(tiny)
    whole = trainer_fingerprint(tiny, probes, torch.float32)
    vocab = tiny.config.vocab_size
    parts = []
    for lo, hi in ((0, vocab // 2), (vocab // 2, vocab)):
        part = copy.deepcopy(tiny)
        emb = part.get_input_embeddings()
        emb.weight = torch.nn.Parameter(emb.weight.data[lo:hi].clone())
        emb.shard_indices = SimpleNamespace(org_vocab_start_index=lo, org_vocab_end_index=hi)
        parts.append(engine_fingerprint(_engine_view(part), probes))
    assert {k for k in parts[0] if "[" in k}.isdisjoint(k for k in parts[1] if "[" in k)
    assert {**parts[0], **parts[1]} == whole


# --------------------------------------------------------------------------- sleep mode's order


class _RecordingLLM:
    """Stands where a `vllm.LLM` built with sleep mode would: records the calls our code makes, and
    reads the weights it is given (names only) as vLLM's worker would."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else "all"))

    def collective_rpc(self, method, kwargs=None, **_):
        self.calls.append((method, sorted(name for name, _ in kwargs["weights_iterator"])))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def _engine(level: int):
    """A VLLMEngine around the recording stand-in (its constructor builds a real vllm.LLM)."""
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm = _RecordingLLM()
    engine.sleep = SleepCycle(engine.llm, level)
    return engine


def test_a_sleeping_engine_wakes_its_weights_then_takes_the_push_then_wakes_its_kv_cache(tiny):
    engine = _engine(level=2)  # sync_every 1: the weights are dropped, the push refills them
    engine.rest()
    assert engine.push_weights(weight_stream(tiny)) >= 0  # the push's seconds, as awake
    engine.wake()  # the push woke it: nothing more
    names = sorted(tiny.state_dict())
    assert engine.llm.calls == [
        ("sleep", 2),
        ("wake_up", ("weights",)),
        ("reload_weights", names),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
    ]


def test_level_1_wakes_whole_without_a_push_and_level_2_refuses_to(tiny):
    engine = _engine(level=1)  # sync_every > 1: a step without a push gets the offloaded weights back
    engine.rest()
    engine.wake()
    engine.rest()
    engine.push_weights(weight_stream(tiny))
    assert [c[:2] if c[0] != "reload_weights" else c[:1] for c in engine.llm.calls] == [
        ("sleep", 1),
        ("wake_up", "all"),
        ("sleep", 1),
        ("wake_up", ("weights",)),
        ("reload_weights",),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
    ]
    dropped = _engine(level=2)
    dropped.rest()
    with pytest.raises(StageError, match="level 2 needs rollout.sync_every 1"):
        dropped.wake()


def test_an_awake_engine_pushes_without_sleep_calls(tiny):
    llm = _RecordingLLM()
    reload_weights(llm, weight_stream(tiny))
    assert [c[0] for c in llm.calls] == ["reload_weights", "reset_prefix_cache"]


# --------------------------------------------------------------------------- thresholds and config


def test_the_rollout_kl_threshold_warns_or_stops_naming_the_step(capsys):
    over = {"rollout_kl": 0.2, "rollout_logp_diff": 0.15}
    check_rollout_kl(over, 4, None, "stop")  # no threshold: nothing
    check_rollout_kl({"rollout_kl": float("nan")}, 4, 0.1, "stop")  # no vLLM rollouts: nothing
    check_rollout_kl({"rollout_kl": 0.05}, 4, 0.1, "stop")
    check_rollout_kl(over, 4, 0.1, "warn")
    assert "step 5: rollout_kl 0.2 > rollout.max_rollout_kl 0.1 (rollout_logp_diff 0.15)" in capsys.readouterr().err
    check_rollout_kl(over, 4, 0.1, "warn", main=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(StageError, match="step 5: rollout_kl 0.2 > rollout.max_rollout_kl 0.1"):
        check_rollout_kl(over, 4, 0.1, "stop")


def test_the_push_tolerance_follows_the_lower_precision():
    assert default_limit("float32", "float32") == 1e-3
    assert default_limit("bfloat16", "float32") == default_limit("float32", "bf16-mixed") == 1.0
    assert default_limit("float32", "float32", gpu=True) == 1.0  # TF32 matmuls on the trainer's side


def test_tensor_parallel_ranks_must_divide_the_processes_and_the_checks_stay_out_of_the_key():
    def cfg(engine="vllm", processes=4):
        rollout = {"engine": engine, "tensor_parallel_size": 2, "batch_prompts": 1}
        return TrainConfig(prompts_per_step=12, rollout=rollout, distributed={"num_processes": processes})

    assert cfg().rollout.tensor_parallel_size == 2
    for bad in (3, 1):
        with pytest.raises(ValueError, match="multiple of it"):
            cfg(processes=bad)
    with pytest.raises(ValueError, match="rollout.engine 'vllm'"):
        cfg(engine="hf", processes=2)
    checked = TrainConfig(
        rollout={"engine": "vllm", "max_push_logp_diff": 0.5, "max_rollout_kl": 0.1, "on_rollout_kl": "stop"}
    )
    assert key_dump(checked) == key_dump(TrainConfig(rollout={"engine": "vllm"}))


def test_the_reason_the_ranks_stopped_is_the_launchs_error(tmp_path, monkeypatch):
    """A guard error stops every rank; rank 0 prints it (`worker`) and the train stage's error is that
    reason, not the launcher's 40-line summary of the ranks' exit codes."""
    import sys

    from oger.stages.train import distributed
    from oger.stages.train.agent import STOPPED

    reason = "train: after the weight push of step 3: rank 1's rollout engine does not hold the trainer's weights"
    script = f"import sys; print('noise'); print({STOPPED + reason!r}); print('E summary'); sys.exit(1)"
    monkeypatch.setattr(distributed, "launcher_command", lambda *a: [sys.executable, "-c", script])
    with pytest.raises(StageError) as err:
        distributed.launch("torchrun", 2, {}, tmp_path)
    assert str(err.value).startswith(reason + "\n(torchrun with 2 processes stopped; full log: ")
    monkeypatch.setattr(distributed, "launcher_command", lambda *a: [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(StageError, match="exited with status 3; last lines"):  # no reason: the summary
        distributed.launch("torchrun", 2, {}, tmp_path)
