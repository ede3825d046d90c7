"""The prepared GPU check: without CUDA `python -m bench gpu_check` says so and exits 0; every
step of it (engines, index, the paper-sized bf16-mixed part, torchrun DDP and FSDP2 at world size 1,
the evaluate engines) runs on CPU at tiny sizes, so a typo cannot wait for a lent GPU to surface."""

import math
import subprocess
import sys

import pytest

from bench import gpu_check


def test_gpu_check_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for minutes")
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu_check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "RESULT gpu_check skipped=1"
    assert "gpu_check: no CUDA GPU" in lines[-2]


@pytest.mark.slow
@pytest.mark.usefixtures("one_launch_at_a_time")  # it launches torchrun (DDP, FSDP2)
def test_gpu_check_steps_run_on_cpu_at_tiny_sizes(tmp_path, capsys):
    # the device machine's fallbacks (no MiniLM package, no lancedb), exercised here
    out = gpu_check.run_check("cpu", gpu_check.TINY, tmp_path, prefer_minilm=False, prefer_lancedb=False)
    assert out["encoder"] == "random_bert" and out["index"] == "memory"
    printed = capsys.readouterr().out
    assert "random-init BERT" in printed and "in memory" in printed
    for key in (
        "train_hf_tokens_per_s",
        "train_paged_tokens_per_s",
        "train_hf_s_per_step",
        "train_paged_s_per_step",
        "torchrun_ddp_gloo_paged_s_per_step",
        "torchrun_fsdp2_gloo_hf_s_per_step",
        "eval_hf_tokens_per_s",
        "eval_paged_tokens_per_s",
    ):
        assert out[key] > 0 and math.isfinite(out[key]), key
    assert math.isnan(out["update_mfu_hf"])  # no peak FLOP/s for a CPU
    # the padded arm computes on pads too, the packed one on real tokens only
    assert out["update_padded_positions"] > out["update_packed_positions"] == out["update_tokens"]
    assert out["update_packed_s"] > 0 and out["update_padded_s"] > 0
    assert (tmp_path / "train-fsdp2" / "checkpoints").is_dir()
    assert (tmp_path / "train-paged" / "metrics.jsonl").read_text().count("\n") == gpu_check.TINY.steps
    # the paper-sized part's code at tiny size: bf16-mixed keeps float32 master weights, the model's
    # vocabulary is its own (past the tokenizer's), the run folder was measured and then removed
    part = gpu_check.PAPER_PARTS["tiny"]
    assert out["qwen1.5b_master_dtype"] == "float32"
    assert out["qwen1.5b_vocab_size"] == dict(part.shape)["vocab_size"] > 500
    for key in ("s_per_step", "tokens_per_s", "update_s", "run_dir_gib"):
        assert out[f"qwen1.5b_{key}"] > 0 and math.isfinite(out[f"qwen1.5b_{key}"]), key
    assert math.isnan(out["qwen1.5b_peak_gib"]) and math.isnan(out["qwen1.5b_mfu"])  # no GPU, no peak FLOP/s
    assert 0 < out["qwen1.5b_planned_peak_gib"] < 1  # the plan's estimate of this tiny run, beside the peak
    assert not (tmp_path / f"train-{part.name}").exists()
    assert "qwen1.5b bf16-mixed:" in printed and "update layouts done" in printed


def test_the_paper_part_trains_with_the_1_5b_configs_loss_and_optimizer():
    from oger.contract.config import load_config

    paper = load_config(gpu_check.PAPER_CONFIG).train
    for part in gpu_check.PAPER_PARTS.values():
        cfg = gpu_check.paper_config(part)
        assert cfg.precision == "bf16-mixed" and cfg.rollout.engine == "hf"
        assert cfg.loss == paper.loss and cfg.optim == paper.optim
        assert cfg.distributed.gradient_checkpointing == paper.distributed.gradient_checkpointing
        assert cfg.distributed.num_processes == 1
    gpu = gpu_check.PAPER_PARTS[gpu_check.GPU.model]
    assert dict(gpu.shape) == gpu_check.QWEN2_15B and dict(gpu.shape)["vocab_size"] == 151_936
    assert (gpu.steps, gpu.prompts_per_step, gpu.group_size, gpu.max_new_tokens) == (3, 2, 4, 512)
    # the plan's estimate for it: float32 weights, gradients and AdamW state alone are 24.7 GB
    from transformers import Qwen2Config

    planned = gpu_check.planned_peak_gib(gpu_check.paper_config(gpu), Qwen2Config(**dict(gpu.shape)))
    assert 24.7e9 / 2**30 < planned < 60


@pytest.mark.slow
def test_memory_index_reads_like_the_lancedb_one(tmp_path):
    from oger.encoder import load_encoder
    from oger.stages.index.files import TeacherIndex

    questions = {"a": "Compute 1 + 2.", "b": "Compute 4 - 3 + 2."}
    load_encoder.cache_clear()
    enc, _ = gpu_check.build_encoder(tmp_path, prefer_minilm=False)
    assert gpu_check.build_index(tmp_path, enc, questions) == "lancedb"
    assert gpu_check.build_index(tmp_path, enc, questions, prefer_lancedb=False) == "memory"
    lance = TeacherIndex(tmp_path / "index", gpu_check.TABLE, gpu_check.TAG).lookup(["b", "a", "zz"])
    memory = gpu_check.MemoryIndex(tmp_path / "index.npz").lookup(["b", "a", "zz"])
    assert sorted(lance) == sorted(memory) == ["a", "b"]
    for pid in lance:
        assert lance[pid][0] == memory[pid][0] and len(lance[pid][0]) == 3
        assert (lance[pid][1] == memory[pid][1]).all()
