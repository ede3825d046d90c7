"""bf16-mixed SFT: bf16 matmuls under autocast, float32 attention on the CPU, float32 weights."""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from oger.contract.config import HeldoutConfig, PolicyConfig
from oger.runtime import precision
from oger.runtime.device import Runtime
from oger.stages.policy.sft import pad_batch, sft
from oger.stages.policy.stage import key_inputs as policy_key_inputs
from tests.test_sft import EXAMPLES, _tiny_model


def key_inputs(policy: PolicyConfig):  # the held-out check at its defaults
    return policy_key_inputs(policy, HeldoutConfig())


class _AttentionDtypes(TorchDispatchMode):
    """Records the dtypes of q, k, v as the attention kernel receives them: after autocast, which
    a spy on the Python function would not see (autocast casts inside the call)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.__name__ and "backward" not in func.__name__:
            self.seen.append(tuple(a.dtype for a in args[:3]))
        return func(*args, **(kwargs or {}))


def _forward(model, attention, cast):
    ids, _, labels = pad_batch(EXAMPLES, pad_id=0)
    spy = _AttentionDtypes()
    with attention, cast, torch.no_grad(), spy:
        loss = model(input_ids=ids, labels=labels).loss
    return spy.seen, loss


def test_bf16_mixed_runs_matmuls_in_bf16_but_attention_in_float32_and_restores_the_model():
    model = _tiny_model().eval()
    assert model.config._attn_implementation == "sdpa"
    fp32, bf16 = Runtime("cpu", "float32"), Runtime("cpu", "bf16-mixed")  # what SFT asks (oger.runtime.device)
    seen32, loss32 = _forward(model, fp32.attention(model), fp32.autocast())
    seen16, loss16 = _forward(model, bf16.attention(model), bf16.autocast())
    assert seen32 == seen16 == [(torch.float32,) * 3] * 2  # one call per layer, float32 either way
    # q, k, v came out of bf16 projections: the loss moves by bf16 rounding (8 bits of mantissa,
    # ~0.4% per value), not by more and not by nothing.
    assert loss16.dtype == torch.float32
    assert 0 < abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    assert model.config._attn_implementation == "sdpa"  # restored: a saved model names no local function
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_without_float32_attention_autocast_would_run_attention_in_bf16():
    # The failure float32_attention prevents: under CPU autocast the attention kernel runs in bf16,
    # and its flash backward took 3.7x the float32 one here (docs/PERFORMANCE.md, "demo").
    model = _tiny_model().eval()
    seen, _ = _forward(model, contextlib.nullcontext(), Runtime("cpu", "bf16-mixed").autocast())
    assert seen == [(torch.bfloat16,) * 3] * 2


def test_bf16_mixed_sft_learns_like_float32_and_keeps_float32_weights():
    runs = {}
    for prec in ("float32", "bf16-mixed"):
        model = _tiny_model()
        runs[prec] = sft(
            model, EXAMPLES * 8, pad_id=0, epochs=6, lr=0.01, batch_size=8, warmup_steps=2, seed=0, precision=prec
        )
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert model.config._attn_implementation == "sdpa"
    f32, mixed = runs["float32"], runs["bf16-mixed"]
    assert mixed != f32  # autocast really ran
    assert sum(mixed[-3:]) / 3 < 0.5 * sum(mixed[:3]) / 3  # and it learns
    assert abs(mixed[-1] - f32[-1]) < 0.25 * f32[-1] + 0.05  # about as far as float32


def test_precision_enters_the_policy_key_only_when_not_float32():
    default = PolicyConfig()
    explicit = PolicyConfig(sft={"precision": "float32"})
    mixed = PolicyConfig(sft={"precision": "bf16-mixed"})
    assert "precision" not in key_inputs(default)[0]["sft"]  # keys from before the option unchanged
    assert key_inputs(explicit) == key_inputs(default)
    assert key_inputs(mixed)[0]["sft"]["precision"] == "bf16-mixed"


def test_auto_picks_bf16_mixed_only_where_the_cpu_has_native_bf16(tmp_path):
    assert precision.resolve("auto", {"avx512f", "avx512_bf16"}) == "bf16-mixed"  # Zen 4, this machine
    assert precision.resolve("auto", {"amx_tile", "amx_bf16"}) == "bf16-mixed"  # Sapphire Rapids
    assert precision.resolve("auto", {"avx2", "avx512f"}) == "float32"  # bf16 only emulated: slower
    assert precision.resolve("auto", set()) == "float32"  # no /proc/cpuinfo (macOS, ...)
    assert precision.resolve("bf16-mixed", set()) == "bf16-mixed"  # explicit values stand
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 avx512f\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "avx512f"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_auto_is_keyed_as_what_it_resolves_to(monkeypatch):
    auto = PolicyConfig(sft={"precision": "auto"})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert key_inputs(auto) == key_inputs(PolicyConfig(sft={"precision": "bf16-mixed"}))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert key_inputs(auto) == key_inputs(PolicyConfig())  # float32: the plain float32 key


def test_native_dtype_is_bf16_only_where_bf16_is_computed_natively(tmp_path):
    assert precision.native_dtype("native", {"avx512_bf16"}, gpu=False) == "bfloat16"
    assert precision.native_dtype("native", {"amx_bf16"}, gpu=False) == "bfloat16"
    assert precision.native_dtype("native", {"avx2", "fma"}, gpu=False) == "float32"  # emulated there
    assert precision.native_dtype("native", {"avx2"}, gpu=True) == "bfloat16"  # the engine runs on the GPU
    assert precision.native_dtype("float16", {"avx2"}, gpu=False) == "float16"  # explicit values stand
    (tmp_path / "gpus" / "0000:01:00.0").mkdir(parents=True)
    assert precision.has_nvidia_gpu(tmp_path / "gpus") and not precision.has_nvidia_gpu(tmp_path / "none")


def test_native_teacher_dtype_is_keyed_as_what_it_resolves_to(monkeypatch):
    from oger.contract.config import TeachersConfig
    from oger.stages.teachers.stage import key_inputs as teachers_key

    def cfg(dtype):
        return TeachersConfig(teachers=[{"name": "lm", "backend": "transformers", "model": "smollm2", "dtype": dtype}])

    monkeypatch.setattr(precision, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert teachers_key(cfg("native")) == teachers_key(cfg("bfloat16"))  # the keys made before `native`
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert teachers_key(cfg("native")) == teachers_key(cfg("float32"))
    assert teachers_key(cfg("native")) != teachers_key(cfg("bfloat16"))


def test_teacher_shards_run_the_dtype_they_are_keyed_with(monkeypatch, tmp_path):
    """The job a fan-out sends (on Ray, maybe to a machine with other CPU flags) carries `native` already
    resolved where the key was computed, so the worker cannot decode in another dtype than the key says."""
    from oger.contract.config import load_config
    from oger.contract.fanout import run_in_process
    from oger.pipeline import execute, in_process, plan

    monkeypatch.setattr(precision, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"workdir={tmp_path}",
            "problems.sources.0.n_train=8",
            "problems.sources.0.n_test=4",
            "teachers.teachers=[{name: stepwise, backend: scripted, model: stepwise, dtype: native, shards: 2},"
            " {name: terms, backend: scripted, model: terms}]",
        ],
    )
    sent = []

    def recording(fn, jobs):
        sent.extend(jobs)
        yield from run_in_process(fn, jobs)

    execute(cfg, plan(cfg), ["problems", "teachers"], {}, runner=in_process(recording))
    assert len(sent) == 3 and [j.args[0].dtype for j in sent] == ["float32", "float32", "float32"]
    assert cfg.teachers.teachers[0].dtype == "native"  # the config itself is left as written


def test_oger_cpu_flags_env_makes_a_run_plan_as_another_cpu(monkeypatch, tmp_path):
    """`OGER_CPU_FLAGS` (bench demo's AVX2 emulation) replaces /proc/cpuinfo's flags for every plan."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n")
    precision.cpu_flags.cache_clear()
    monkeypatch.setenv(precision.CPU_FLAGS_ENV, "fpu avx2 fma")
    try:
        assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "fma"}  # not the file's avx512_bf16
        assert precision.resolve("auto", precision.cpu_flags(cpuinfo)) == "float32"
        assert precision.native_dtype("native", precision.cpu_flags(cpuinfo), gpu=False) == "float32"
        monkeypatch.delenv(precision.CPU_FLAGS_ENV)
        precision.cpu_flags.cache_clear()
        assert precision.resolve("auto", precision.cpu_flags(cpuinfo)) == "bf16-mixed"
    finally:
        precision.cpu_flags.cache_clear()
