"""The train stage's GPU preflight (`oger.stages.train.preflight`, its `check_inputs`): one clear error
each for GPUs, context and disk. This machine has no GPU: CUDA, the device count and NCCL are patched
(`gpu_check` is the real proof on a GPU machine)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oger.contract.config import load_config
from oger.contract.errors import ConfigError
from oger.stages.train import STAGE
from oger.stages.train import preflight as pf

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
PAPER_1_5B = REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml"
PAPER_7B = REPO / "configs" / "qwen2.5-math-7b-oger.yaml"


def cfg(path, tmp_path, *overrides):
    return load_config(path, [f"workdir={tmp_path / 'w'}", *overrides])


def gpus(monkeypatch, cuda=True, count=8, nccl=True, driver=True):
    """The machine as torch would see one with `count` GPUs (driver: /proc/driver/nvidia lists them)."""
    monkeypatch.setattr(pf, "has_nvidia_gpu", lambda: driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: nccl)


def plenty_of_disk(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**15, 0, 10**15))


def test_the_stage_checks_its_inputs_with_the_preflight():
    from oger.stages.train.stage import STAGE_DEF

    assert STAGE_DEF.name == STAGE and STAGE_DEF.check_inputs is pf.check_inputs


# --------------------------------------------------------------------------- GPUs


def test_nccl_without_cuda_is_one_error(tmp_path, monkeypatch):
    gpus(monkeypatch, cuda=False, count=0)
    d = cfg(PAPER_7B, tmp_path).train.distributed
    with pytest.raises(ConfigError) as err:
        pf.check_gpus(d)
    assert str(err.value) == (
        "train.distributed.backend: nccl runs on CUDA GPUs and none is usable here (torch.cuda.is_available() "
        "is False): use backend gloo (or auto) to train on the CPU, or run where the GPUs are"
    )
    # no NVIDIA driver at all (this machine): the same error, and torch is not asked
    gpus(monkeypatch, cuda=True, count=8, driver=False)
    with pytest.raises(ConfigError, match=r"none is usable here \(no NVIDIA driver lists a GPU\)"):
        pf.check_gpus(d)


def test_nccl_missing_from_torch_is_one_error(tmp_path, monkeypatch):
    gpus(monkeypatch, nccl=False)
    with pytest.raises(ConfigError, match=r"^train.distributed.backend: this torch has no NCCL .*backend: gloo$"):
        pf.check_gpus(cfg(PAPER_7B, tmp_path).train.distributed)


def test_fewer_visible_gpus_than_ranks_names_num_processes(tmp_path, monkeypatch):
    gpus(monkeypatch, count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError) as err:
        pf.check_gpus(cfg(PAPER_7B, tmp_path).train.distributed)
    assert str(err.value) == (
        "train.distributed.num_processes is 8, one GPU per rank, but 2 GPU(s) are visible "
        "(CUDA_VISIBLE_DEVICES=0,1): set train.distributed.num_processes to 2 (prompts_per_step stays a "
        "multiple of it x rollout.batch_prompts) or make 8 GPUs visible"
    )
    gpus(monkeypatch, count=8)
    pf.check_gpus(cfg(PAPER_7B, tmp_path).train.distributed)  # eight visible: fine


def test_backend_auto_checks_gpus_only_where_cuda_is(tmp_path, monkeypatch):
    two_ranks = ["train.distributed.num_processes=2", "train.prompts_per_step=16"]
    d = cfg(TINY, tmp_path, *two_ranks).train.distributed
    assert d.backend == "auto"
    gpus(monkeypatch, cuda=False, count=0)  # a driver but no CUDA torch: a CPU run (gloo)
    pf.check_gpus(d)
    gpus(monkeypatch, cuda=True, count=1)  # auto resolves to nccl there: one GPU for two ranks
    with pytest.raises(ConfigError, match="num_processes is 2, one GPU per rank, but 1 GPU"):
        pf.check_gpus(d)
    gpus(monkeypatch, cuda=True, count=1, nccl=False)
    with pytest.raises(ConfigError, match="no NCCL"):
        pf.check_gpus(d)
    gpus(monkeypatch, cuda=True, count=0, driver=False)  # no NVIDIA driver: torch is not even asked
    pf.check_gpus(d)
    gloo = cfg(TINY, tmp_path, *two_ranks, "train.distributed.backend=gloo").train.distributed
    gpus(monkeypatch, cuda=True, count=0)
    pf.check_gpus(gloo)  # gloo trains on the CPU whatever GPUs there are


# --------------------------------------------------------------------------- context


def qwen_folder(tmp_path, positions=4096) -> Path:
    """A local model folder whose config.json says `positions` (the shape of Qwen2.5-Math-1.5B)."""
    folder = tmp_path / "qwen-4k"
    folder.mkdir()
    config = {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "max_position_embeddings": positions,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_context_too_short_for_the_budget_names_the_fix(tmp_path):
    folder = qwen_folder(tmp_path)
    own = ["policy.max_position_embeddings=null", "policy.rope_theta=null"]  # the model's own context
    c = cfg(PAPER_1_5B, tmp_path, f"policy.model={folder}", *own)
    with pytest.raises(ConfigError) as err:
        pf.check_context(c)
    msg = str(err.value)
    assert msg.startswith("train.rollout.max_new_tokens: 8,192 tokens after the prompt (prompt ~353 tokens")
    assert f"but the policy's context is 4,096 ({folder / 'config.json'})" in msg
    assert "set policy.max_position_embeddings and policy.rope_theta to a longer context (LUFFY's 7B base" in msg
    assert msg.endswith("or lower train.rollout.max_new_tokens to at most 3,743")
    # the config's own override (16384 positions, rope_theta 40000) holds it
    pf.check_context(cfg(PAPER_1_5B, tmp_path, f"policy.model={folder}"))
    # a rollout budget that fits, with a held-out budget that does not
    short = [f"policy.model={folder}", *own, "train.rollout.max_new_tokens=2048"]
    # teacher traces the update scores, when the filter counts them in the policy's tokens
    with pytest.raises(ConfigError, match=r"^filter.max_tokens: 8,192 tokens"):
        pf.check_context(cfg(PAPER_1_5B, tmp_path, *short, f"filter.tokenizer={folder}"))
    with pytest.raises(ConfigError, match=r"^evaluate.heldout.max_new_tokens: 8,192 tokens"):
        pf.check_context(cfg(PAPER_1_5B, tmp_path, *short, f"filter.tokenizer={folder}", "filter.max_tokens=2048"))


def test_the_tiny_policy_is_told_to_raise_its_max_position(tmp_path):
    c = cfg(TINY, tmp_path, "policy.tiny.max_position=64")
    with pytest.raises(ConfigError) as err:
        pf.check_context(c)
    # 56 prompt tokens (the template's chat markers, "Compute 9 + 9 + 9." at 2.5 characters a token) + 40
    assert str(err.value).startswith("train.rollout.max_new_tokens: 40 tokens after the prompt (prompt ~56 tokens")
    assert "need 96 positions, but the policy's context is 64 (policy.tiny): raise policy.tiny.max_position" in str(
        err.value
    )


def test_an_unknown_model_is_not_checked(tmp_path):
    pf.check_context(cfg(PAPER_7B, tmp_path, "policy.model=no-org/no-such-model"))  # the plan says "unknown"


# --------------------------------------------------------------------------- disk


def test_too_little_free_disk_is_one_error(tmp_path, monkeypatch):
    c = cfg(REPO / "configs" / "smollm2-arith.yaml", tmp_path)
    free = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free.append(p) or shutil._ntuple_diskusage(10**12, 0, 2**30))
    with pytest.raises(ConfigError) as err:
        pf.check_disk(c)
    # the workdir does not exist yet: its nearest existing parent is asked
    assert free == [tmp_path]
    assert str(err.value).startswith(f"workdir: {tmp_path} has 1.0 GiB free, but the train stage writes up to 4.0 GiB")
    assert "2 checkpoint(s) of 1.5 GiB" in str(err.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 0, 5 * 2**30))
    pf.check_disk(c)


# --------------------------------------------------------------------------- what must pass


@pytest.mark.parametrize("name", ["tiny", "smollm2-arith", "explore"])
def test_the_cpu_configs_pass_unchanged(name, tmp_path, monkeypatch):
    if name != "tiny":  # the demo's 37 MiB is checked against this disk; SmolLM2's 4 GiB need not be free here
        plenty_of_disk(monkeypatch)
    pf.check_inputs(cfg(REPO / "configs" / f"{name}.yaml", tmp_path))


@pytest.mark.parametrize("config", [PAPER_1_5B, PAPER_7B], ids=["1.5b", "7b"])
def test_the_paper_configs_pass_on_eight_gpus(config, tmp_path, monkeypatch):
    gpus(monkeypatch, count=8)
    plenty_of_disk(monkeypatch)
    pf.check_inputs(cfg(config, tmp_path))


def test_the_check_of_a_cpu_run_is_fast_and_imports_no_torch(tmp_path):
    code = (
        "import sys, time\n"
        "from oger.contract.config import load_config\n"
        "from oger.stages.train.preflight import check_inputs\n"
        f"c = load_config({str(TINY)!r}, ['workdir={tmp_path}/w'])\n"
        "t = time.perf_counter(); check_inputs(c); s = time.perf_counter() - t\n"
        "print(s, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seconds, torch_loaded = out.stdout.split()
    assert torch_loaded == "False" and float(seconds) < 0.5, out.stdout


def test_the_check_runs_in_well_under_a_second(tmp_path, monkeypatch):
    gpus(monkeypatch, count=8)
    plenty_of_disk(monkeypatch)
    c = cfg(PAPER_7B, tmp_path)
    pf.check_inputs(c)  # warm: the hub library's import
    t = time.perf_counter()
    pf.check_inputs(c)
    assert time.perf_counter() - t < 0.5


def test_oger_runs_preflight_reaches_the_train_checks(tmp_path):
    """`oger run` checks its inputs (`commands.preflight.check_inputs`) before the flow: the demo passes
    unchanged; a context too short for it stops there, with the train stage's one error."""
    from oger import pipeline
    from oger.commands.preflight import check_inputs as before_the_flow

    before_the_flow(cfg(TINY, tmp_path), pipeline.STAGES)
    with pytest.raises(ConfigError, match=r"^train.rollout.max_new_tokens: 40 tokens .* policy.tiny.max_position"):
        before_the_flow(cfg(TINY, tmp_path, "policy.tiny.max_position=64"), pipeline.STAGES)
