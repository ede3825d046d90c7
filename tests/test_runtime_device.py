"""The runtime seam (`oger.runtime.device`): every device-specific choice of the trainer, the engines
and the SFT is asked of it, and on a CPU it answers as those modules decided before it existed."""

import ast
import contextlib
from pathlib import Path

import torch

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
    assert for_decoding("bf16-mixed") == Runtime("cuda", "bf16-mixed") and not for_decoding().on_cpu
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
