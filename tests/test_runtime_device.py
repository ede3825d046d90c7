"""The runtime seam (`oger.runtime.device`): every device-specific choice of the trainer, the engines
and the SFT is asked of it, and on a CPU it answers as those modules decided before it existed."""

import ast
import contextlib
from pathlib import Path

import torch
import torch.utils._python_dispatch

from oger.runtime.cpu_threads import thread_workers
from oger.runtime.device import Runtime, for_decoding, for_rank, of_model
from tests.test_sft import _tiny_model

REPO = Path(__file__).resolve().parents[1]


def test_cpu_answers():
    model = _tiny_model()
    rt = of_model(model)
    assert rt == Runtime("cpu", "float32") and rt.on_cpu
    assert isinstance(rt.autocast(), contextlib.nullcontext)  # float32: no autocast
    with Runtime("cpu", "bf16-mixed").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    # a small model's batch goes over torch's intra-op threads, one process only
    with rt.batch_threads(model) as threads:
        n = torch.get_num_threads()
        assert threads.workers == thread_workers(model) == (n if n >= 2 else 1)
    with rt.batch_threads(model, distributed=True) as threads:
        assert threads.workers == 1
    # its decode runs on one intra-op thread, restored after
    before = torch.get_num_threads()
    with rt.decode(model):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert for_rank("gloo", 1) == Runtime("cpu")


def test_device_selection_follows_cuda_availability(monkeypatch):
    """This machine has no GPU: the selection logic is checked with CUDA availability patched (the
    real proof is `python -m bench gpu_check` on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert for_decoding() == Runtime("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert for_decoding("bf16-mixed") == Runtime("cuda:0", "bf16-mixed") and not for_decoding().on_cpu
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    assert for_rank("nccl", 3) == Runtime("cuda:3") and set_to == [torch.device("cuda", 3)]


# Calls that decide something per device; only oger/runtime/ makes them (a `Runtime`'s own methods,
# `runtime.autocast()`, are the way to ask).
TORCH_CALLS = {"torch.cuda.is_available", "torch.autocast", "torch.set_num_threads", "torch.cuda.set_device"}
RUNTIME_INTERNALS = {"thread_workers", "decode_threads", "decode_linears", "packed_linears", "float32_attention"}


def _dotted(node) -> str:
    return f"{_dotted(node.value)}.{node.attr}" if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def device_decisions(tops=("oger", "flows")) -> list[str]:
    """`path:line: call` of every device-deciding call outside oger/runtime/."""
    found = []
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel.parts[:2] == ("oger", "runtime"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = _dotted(node.func)
                    if name in TORCH_CALLS or name.rpartition(".")[2] in RUNTIME_INTERNALS:
                        found.append(f"{rel}:{node.lineno}: {name}")
    return found


def test_only_the_runtime_decides_device_precision_threads_and_decoding():
    assert device_decisions() == []


def test_the_check_sees_a_decision_elsewhere(tmp_path, monkeypatch):
    spy = tmp_path / "oger" / "stages" / "spy.py"
    spy.parent.mkdir(parents=True)
    spy.write_text(
        "import torch\nif torch.cuda.is_available():\n    pass\nwith torch.autocast('cpu'):\n    pass\n"
        "with runtime.autocast(), decode_linears(m):\n    pass\n"
    )
    (tmp_path / "oger" / "runtime").mkdir()
    (tmp_path / "oger" / "runtime" / "ok.py").write_text("torch.cuda.is_available()\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert device_decisions(("oger",)) == [
        "oger/stages/spy.py:2: torch.cuda.is_available",
        "oger/stages/spy.py:4: torch.autocast",
        "oger/stages/spy.py:6: decode_linears",
    ]


def test_one_training_process_takes_the_gpu_when_there_is_one(monkeypatch):
    """A single-process run trained on the CPU even beside a GPU (`Dist()` defaulted to cpu). Now the
    train stage's single process, and a one-rank launch, ask `for_training`. Checked with CUDA
    availability patched: this machine has no GPU."""
    from oger.runtime.device import for_training
    from oger.stages.train.distributed import init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert for_training() == Runtime("cpu") and init_from_env("auto").device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert for_training("bf16-mixed") == Runtime("cuda:0", "bf16-mixed")
    dist = init_from_env("auto", precision="bf16-mixed")
    assert dist.device == torch.device("cuda", 0) and dist.runtime == Runtime("cuda:0", "bf16-mixed")
    assert Runtime("cuda:0", "bf16-mixed").describe() == "cuda:0, bf16-mixed"


def test_training_precision_resolves_once_and_is_keyed_as_resolved(tmp_path, monkeypatch):
    """`train.precision: auto` is bf16-mixed on a GPU or a CPU with native bf16, else float32; the train
    key holds the resolved value (float32 left out: the keys from before the option stay)."""
    from oger import pipeline
    from oger.contract.config import load_config
    from oger.runtime import precision as prec

    assert prec.resolve_training("auto", flags={"avx2"}, gpu=True) == "bf16-mixed"
    assert prec.resolve_training("auto", flags={"avx2"}, gpu=False) == "float32"
    assert prec.resolve_training("auto", flags={"avx512_bf16"}, gpu=False) == "bf16-mixed"
    assert prec.resolve_training("float32", flags={"avx512_bf16"}, gpu=True) == "float32"

    def plan(*overrides):
        return pipeline.plan(load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}", *overrides]))["train"]

    default, bf16 = plan(), plan("train.precision=bf16-mixed")
    assert "precision" not in default.config_slice["resolved"] and default.key == plan("train.precision=float32").key
    assert bf16.config_slice["resolved"]["precision"] == "bf16-mixed" and bf16.key != default.key
    monkeypatch.setattr(prec, "has_nvidia_gpu", lambda: False)
    monkeypatch.setenv(prec.CPU_FLAGS_ENV, "avx2 fma")  # plan as a CPU without native bf16
    prec.cpu_flags.cache_clear()
    try:  # the train stage's own slice (the policy stage resolves its SFT precision from the flags too)
        assert plan("train.precision=auto").config_slice == default.config_slice
        monkeypatch.setenv(prec.CPU_FLAGS_ENV, "avx2 avx512_bf16")
        prec.cpu_flags.cache_clear()
        assert plan("train.precision=auto").config_slice == bf16.config_slice
    finally:
        prec.cpu_flags.cache_clear()


def test_bf16_mixed_update_runs_the_forward_in_bf16_and_keeps_float32_weights():
    """Under the runtime's autocast the update's matmuls run in bf16 and its gradient lands on the
    float32 weights; it moves the loss by bf16 rounding only."""
    from oger.contract.config import TrainConfig
    from oger.stages.policy.tiny_model import build_model
    from oger.stages.train.update import update
    from tests.test_trainer_unit import samples

    tok = _tokenizer()
    model = build_model(tok, 32, 2, 2, 64, 128, seed=0)
    ss = samples(tok)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    cfg = TrainConfig(optim={"micro_batch_size": 2}, rollout={"max_new_tokens": 12})
    grads, seen = {}, {}
    for p in ("float32", "bf16-mixed"):
        model.zero_grad()
        spy = _MatmulDtypes()
        with spy:
            update(model, None, ss, adv, cfg, tok.pad_token_id, autocast=Runtime("cpu", p).autocast)
        grads[p] = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
        seen[p] = spy.dtypes
    assert seen["float32"] == {torch.float32} and torch.bfloat16 in seen["bf16-mixed"]
    assert all(q.dtype == torch.float32 for q in model.parameters()) and grads["bf16-mixed"].dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(grads["float32"], grads["bf16-mixed"], dim=0)
    assert 0.98 < cos < 1.0  # the same direction, bf16's rounding


def test_fsdp2_bf16_mixed_shards_with_a_float32_master_copy(tmp_path):
    """FSDP2 under bf16-mixed (`distributed.shard`): parameters (the optimizer's master copy) stay
    float32, the forward computes in bf16 (FSDP2 casts the gathered parameters), gradients come back
    float32. A one-rank gloo group: the sharding code the ranks run, in this process."""
    import torch.distributed as td

    from oger.stages.train.distributed import shard

    td.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        model = shard(_tiny_model(), "bf16-mixed")
        ids = torch.tensor([[3, 4, 5, 6, 7]])
        spy = _MatmulDtypes()
        with spy:
            model(input_ids=ids, labels=ids).loss.backward()
        assert torch.bfloat16 in spy.dtypes
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        plain = shard(_tiny_model(), "float32")
        spy = _MatmulDtypes()
        with spy:
            plain(input_ids=ids, labels=ids).loss.backward()
        assert spy.dtypes == {torch.float32}
    finally:
        td.destroy_process_group()


class _MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """The dtypes of the matmuls (mm, addmm, bmm) the dispatcher sees: after autocast's casts."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("mm", "addmm", "bmm") and "backward" not in func.__name__:
            self.dtypes.add(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def _tokenizer():
    from tests.test_trainer_unit import train_tokenizer

    return train_tokenizer(["Compute 1 + 2.", "Answer: \\boxed{3}", "Terms: 4, -5."] * 10, 300)


def test_the_rollout_engines_dtype_resolves_once_and_is_keyed_when_not_the_policys(tmp_path, monkeypatch):
    """`train.rollout.dtype: auto` is bfloat16 on a GPU and float32 on a CPU; the train key holds it only
    when it differs from the policy's weights (what the vLLM engine ran in before the option)."""
    from oger import pipeline
    from oger.contract.config import load_config
    from oger.runtime import precision as prec

    assert prec.resolve_rollout_dtype("auto", gpu=True) == "bfloat16"
    assert prec.resolve_rollout_dtype("auto", gpu=False) == "float32"
    assert prec.resolve_rollout_dtype("float32", gpu=True) == "float32"

    def plan(*overrides):
        return pipeline.plan(load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}", *overrides]))["train"]

    monkeypatch.setattr(prec, "has_nvidia_gpu", lambda: False)
    vllm = plan("train.rollout.engine=vllm")
    assert "rollout_dtype" not in vllm.config_slice["resolved"]  # float32 on a CPU, as the policy
    assert vllm.key == plan("train.rollout.engine=vllm", "train.rollout.dtype=float32").key
    bf16 = plan("train.rollout.engine=vllm", "train.rollout.dtype=bfloat16")
    assert bf16.config_slice["resolved"]["rollout_dtype"] == "bfloat16" and bf16.key != vllm.key
    monkeypatch.setattr(prec, "has_nvidia_gpu", lambda: True)  # planned on a GPU machine: auto is bf16
    assert plan("train.rollout.engine=vllm").config_slice["resolved"] == bf16.config_slice["resolved"]
    assert "rollout_dtype" not in plan("train.rollout.dtype=bfloat16").config_slice["resolved"]  # hf: inert


def test_the_kl_reference_is_sharded_under_fsdp2_and_scores_as_the_full_copy(tmp_path):
    """`loss.beta > 0` under FSDP2: the reference model is sharded like the policy (not a full copy on
    every GPU) and its forward gives the full copy's logits. A one-rank gloo group, in this process."""
    import torch.distributed as td
    from torch.distributed.tensor import DTensor

    from oger.stages.train.setup import reference_model

    model = _tiny_model()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    td.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ref = reference_model(model, torch.device("cpu"), "float32", sharded=True)
        assert all(isinstance(p, DTensor) and not p.requires_grad for p in ref.parameters())
        with torch.no_grad():
            torch.testing.assert_close(ref(input_ids=ids).logits, want)
    finally:
        td.destroy_process_group()
    full = reference_model(model, torch.device("cpu"))
    assert not any(isinstance(p, DTensor) for p in full.parameters()) and full is not model
