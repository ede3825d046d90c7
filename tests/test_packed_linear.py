"""Decoding with the linear weights packed for oneDNN (`oger.runtime.packed_linear`): the numbers of
`F.linear` up to float rounding, the model left exactly as it was, and on SmolLM2 the plain model's
distributions at every decoded token."""

import os

import pytest
import torch
import torch.nn.functional as F

from oger.runtime import packed_linear
from oger.runtime.packed_linear import MAX_ROWS, packable, packed_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="torch built without oneDNN")


def _qwen2(dtype=torch.float32):
    """A 2-layer Qwen2 (its q/k/v projections have biases, its LM head has none)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg).to(dtype).eval()


def _replaced(model) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@torch.no_grad()
def test_packed_logits_equal_the_plain_ones_up_to_rounding(dtype, tol):
    model = _qwen2(dtype)
    ids = torch.randint(0, 96, (3, 5))  # 15 rows per linear: the packed path
    plain = model(input_ids=ids).logits.float()
    with packed_linears(model) as packed:
        assert packed
        # every linear layer (7 per block and the LM head) now runs through its packed weight
        assert len(_replaced(model)) == 2 * 7 + 1
        got = model(input_ids=ids).logits.float()
    assert torch.allclose(got, plain, rtol=tol, atol=tol * plain.abs().max().item())
    assert _replaced(model) == []


def test_wide_grad_or_autocast_inputs_take_the_plain_path():
    lin = torch.nn.Linear(32, 48)
    wide = torch.randn(MAX_ROWS + 1, 32)
    few = torch.randn(4, 32, requires_grad=True)
    with packed_linears(lin):
        with torch.no_grad():
            assert torch.equal(lin(wide), F.linear(wide, lin.weight, lin.bias))  # bitwise: plain sgemm
        out = lin(few)
        assert out.grad_fn is not None and torch.equal(out, F.linear(few, lin.weight, lin.bias))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert lin(few).dtype == torch.bfloat16  # autocast still applies


def test_nested_blocks_share_one_copy_and_the_last_restores():
    model = _qwen2()
    with packed_linears(model):
        first = model.lm_head.__dict__["forward"]
        with packed_linears(model):
            assert model.lm_head.__dict__["forward"] is first
        assert model.lm_head.__dict__["forward"] is first  # the outer block still decodes packed
    assert _replaced(model) == []
    with packed_linears(model, enabled=False) as packed:
        assert not packed and _replaced(model) == []


def test_weights_changed_between_blocks_are_packed_again():
    # the trainer updates the weights between two generate calls: each block packs what is there now
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(2, 16)
    with torch.no_grad():
        with packed_linears(lin):
            before = lin(x)
        lin.weight.add_(1.0)
        with packed_linears(lin):
            after = lin(x)
    assert torch.allclose(after, F.linear(x, lin.weight, lin.bias), atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-2)


def test_a_forward_someone_else_replaced_is_left_alone():
    # accelerate's offload hooks replace a module's forward the same way; packing must not undo them
    lin, other = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    hooked = lambda x: x * 2  # noqa: E731
    lin.forward = hooked
    model = torch.nn.Sequential(lin, other)
    assert not packable(lin) and packable(other)
    with packed_linears(model):
        assert lin.forward is hooked and "forward" in other.__dict__
    assert lin.forward is hooked and "forward" not in other.__dict__
    assert not packable(torch.nn.Linear(8, 8).to(torch.float16))  # not a dtype oneDNN packs here


def test_above_the_memory_cap_nothing_is_packed(monkeypatch):
    lin = torch.nn.Linear(32, 32)
    monkeypatch.setattr(packed_linear, "MAX_PACKED_BYTES", 32 * 32 * 4 - 1)
    with packed_linears(lin) as packed:
        assert not packed and _replaced(lin) == []


@pytest.mark.slow
def test_smollm2_decodes_the_plain_models_distributions_with_packed_weights():
    # What the rollouts, teachers and evaluation run: HF generate on SmolLM2-135M in float32 (a
    # model past `small_cpu_model`, so `generate` packs it). Sampled rows may part where float
    # rounding moves a draw across a token boundary (1 row of 8 at token 38 of 48 in `bench decode`,
    # entropy 3.0 there), so the check is teacher-forced: at every generated position of the packed
    # rollouts, the entropy the packed decode recorded equals that of the plain model's forward over
    # the same tokens. Greedy decoding gives the same tokens.
    from transformers import AutoModelForCausalLM

    from oger.generation.hf import chat_prompt_ids, generate
    from oger.models import materialize_gguf, tokenizer_from_folder

    folder = materialize_gguf("smollm2")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = tokenizer_from_folder(folder)
    prompts = [chat_prompt_ids(tok, q) for q in ("What is 7 + 8?", "Name a prime number.")]
    kw = dict(n=2, max_new_tokens=12, seed=3, batch_size=4)
    sampled = generate(model, tok, prompts, temperature=1.0, **kw)
    with torch.no_grad():
        for r in sampled:
            p = prompts[r.prompt_index]
            logits = model(input_ids=torch.tensor([p + r.response_ids])).logits[0, len(p) - 1 : -1]
            logp = torch.log_softmax(logits, dim=-1)
            plain = -(logp.exp() * logp).sum(-1)
            assert r.entropies == pytest.approx(plain.tolist(), abs=1e-4)
    greedy = [r.response_ids for r in generate(model, tok, prompts, temperature=0.0, **kw)]
    assert greedy == [r.response_ids for r in generate(model, tok, prompts, temperature=0.0, pack_linears=False, **kw)]
    with packed_linears(model) as used:
        assert used


def test_bf16_on_a_cpu_without_bf16_instructions_stays_plain():
    # oneDNN refuses to pack bf16 weights without AVX512-BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only
    # CPU; here torch's and oneDNN's kernels held to AVX2): the block leaves the model as it is.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from oger.runtime.packed_linear import packed_linears\n"
        "m = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8)).to(torch.bfloat16)\n"
        "x = torch.randn(2, 16, dtype=torch.bfloat16)\n"
        "with torch.no_grad(), packed_linears(m) as packed:\n"
        "    y = m(x)\n"
        "    print(packed, [n for n, c in m.named_modules() if 'forward' in c.__dict__])\n"
        "print(torch.equal(y, m(x).detach()))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "[]", "True"]


@pytest.mark.slow
def test_a_loaded_engine_packs_once_for_its_life():
    # teachers and evaluation call a loaded engine once per chunk; its weights never change, so the
    # packed copy made at load serves every call (no repacking: 8 calls of 4 prompts, 6.6-6.9 s ->
    # 5.6-5.9 s, the same tokens), and closing the engine leaves the model as it was.
    from oger.generation.base import Request
    from oger.generation.hf import TransformersEngine

    engine = TransformersEngine.load("smollm2", "float32")
    model = engine.model
    packed = model.lm_head.__dict__["forward"]
    for _ in range(2):
        engine.generate([[1, 2, 3]], Request(n=2, max_new_tokens=2, temperature=0.0))
        assert model.lm_head.__dict__["forward"] is packed
    engine.close()
    assert _replaced(model) == []
