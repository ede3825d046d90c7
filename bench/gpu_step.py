"""A prepared one-GPU check (under 5 minutes): train-step tokens/s and MFU of a random-init
Qwen2-0.5B-shaped model in bf16, HF-generate rollout tokens/s, and OGER's reward overhead
(MiniLM embedding + similarity) on the GPU. Without a CUDA GPU it says so and exits 0."""

from __future__ import annotations

import time

from bench.common import machine, result, table

# Peak dense bf16 TFLOP/s by device name fragment (vendor datasheets).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def model_config():
    """The Qwen2-0.5B shape, random-init (nothing downloaded)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )


def build() -> dict:
    """The model's config, built without a GPU or the model (tests/test_bench.py)."""
    return {"model": model_config()}


def main(batch: int = 8, seq: int = 1024, steps: int = 6, gen_batch: int = 32, gen_tokens: int = 256) -> None:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_step: no CUDA GPU on this machine ({machine()}); skipped")
        result("gpu_step", skipped=1)
        return
    from transformers import Qwen2ForCausalLM

    from oger.algorithm import core
    from oger.encoder import encode, load_encoder

    dev = torch.device("cuda")
    cfg = model_config()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dev, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        logits = model(input_ids=ids).logits[:, :-1].float()
        logp = core.token_logprobs(logits, ids[:, 1:])
        adv = torch.randn(batch, device=dev)
        loss, _ = core.policy_loss(logp, logp.detach(), adv, torch.ones_like(logp))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step_s = sum(times[1:]) / (len(times) - 1)
    tokens_s = batch * seq / step_s
    flops = 6 * params * batch * seq / step_s
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    mfu = flops / (peak * 1e12) if peak else float("nan")

    model.eval()
    prompt = torch.randint(0, cfg.vocab_size, (gen_batch, 64), device=dev)
    with torch.no_grad():
        model.generate(prompt[:2], max_new_tokens=8, do_sample=True, pad_token_id=0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(
            prompt, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=True, pad_token_id=0
        )
        torch.cuda.synchronize()
        gen_s = time.perf_counter() - t
    gen_tokens_s = (out.shape[1] - 64) * gen_batch / gen_s

    encoder = load_encoder("minilm", device="cuda")
    texts = [f"step {i}: we add {i} and {i + 1} to get {2 * i + 1}. " * 20 for i in range(gen_batch)]
    encode(encoder, texts[:4])
    torch.cuda.synchronize()
    t = time.perf_counter()
    emb = torch.from_numpy(encode(encoder, texts)).to(dev).double()
    sim, _ = core.teacher_similarity(emb, [emb[:4]] * len(texts))
    core.divergence(sim)
    torch.cuda.synchronize()
    reward_s = time.perf_counter() - t
    overhead = reward_s / (gen_s + step_s)
    table(
        f"gpu_step ({machine()})",
        ["measure", "value"],
        [
            ["parameters (M)", params / 1e6],
            ["train step s (bf16, %dx%d)" % (batch, seq), step_s],
            ["train tokens/s", tokens_s],
            ["MFU", mfu],
            ["rollout tokens/s (HF generate)", gen_tokens_s],
            ["OGER reward s per %d rollouts" % gen_batch, reward_s],
            ["overhead vs generate+step", overhead],
        ],
    )
    result(
        "gpu_step",
        tokens_per_s=tokens_s,
        mfu=mfu,
        rollout_tokens_per_s=gen_tokens_s,
        overhead=overhead,
        device=name.replace(" ", "_"),
    )
