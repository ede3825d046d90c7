"""The train stage for real on a small config: presets, OGER bonus gating, interrupt and resume."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oger import pipeline
from oger.contract.config import load_config
from oger.stages.train.metrics import NAMES, run_summary_names
from tests.builders import metrics, rollouts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite_yaml(tmp_path_factory, small_config) -> Path:
    """The module's small training config (the RL tests' upstream stages, 6 steps)."""
    return small_config.write(
        tmp_path_factory.mktemp("lite"),
        "lite",
        **small_config.RL_UPSTREAM,
        train={
            "steps": 6,
            "prompts_per_step": 4,
            "group_size": 4,
            "rollout": {"max_new_tokens": 60, "temperature": 1.2},
            "logging": {"checkpoint_every": 3},
            "optim": {"lr": 0.0001},
        },
    )


@pytest.fixture(scope="module")
def lite(lite_yaml, rl_workdir):
    """lite(*overrides): the config on the session's RL workdir, where upstream stages are shared."""

    def _load(*overrides):
        return load_config(lite_yaml, [f"workdir={rl_workdir}", *overrides])

    return _load


def test_presets_replacement_and_bonus(lite):
    from transformers import AutoModelForCausalLM

    for algo in ("grpo", "luffy", "oger"):
        cfg = lite(f"train.algorithm={algo}")
        refs = pipeline.run_local(cfg, until="train")
        m, rows = refs["train"].metrics, rollouts(refs["train"])
        off = [r for r in rows if r["off_policy"]]
        if algo == "grpo":
            assert m["replaced_fraction"] == 0 and not off
        else:
            assert m["replaced_fraction"] > 0 and off
            # one teacher trace per group that has a teacher
            per_group = {}
            for r in off:
                per_group[(r["step"], r["group"])] = per_group.get((r["step"], r["group"]), 0) + 1
            assert set(per_group.values()) == {1}
        bonuses = [r["bonus"] for r in rows]
        if algo != "oger":
            assert all(b == 0 for b in bonuses)
        # Correctness gating: incorrect rollouts never get a bonus; teacher rows get their group's mean
        # on-policy bonus (neutral rows, oger.teacher_rows: group_mean).
        groups = {}
        for r in rows:
            groups.setdefault((r["step"], r["group"]), []).append(r)
        for r in rows:
            if not r["off_policy"] and (not r["correct"] or not r["has_teacher"]):
                assert r["bonus"] == 0.0, r
            if r["off_policy"]:
                on = [x["bonus"] for x in groups[(r["step"], r["group"])] if not x["off_policy"]]
                assert r["bonus"] == pytest.approx(sum(on) / len(on)), r
            assert r["reward"] == pytest.approx(float(r["correct"]) + r["bonus"])
        # monitor mode: every preset measures divergence (grpo has no teacher rows, still a baseline)
        eligible = [r for r in rows if r["bonus_eligible"]]
        assert all(r["divergence"] is not None and 0 <= r["divergence"] <= 1 for r in eligible)
        assert (m["divergence_mean"] is not None) == bool(eligible)
        # the bonus is the formula: lam * d * g(H) on eligible rows passing every guard, else 0
        # (oger.baseline none, no shuffle: an on-policy row's bonus is its raw bonus)
        lam = cfg.train.bonus_lambda
        for r in rows:
            want = lam * r["divergence"] * r["gate"] if r["bonus_eligible"] and all(r["guards"].values()) else 0.0
            assert r["bonus_raw"] == pytest.approx(want, abs=1e-12), r
            if not r["off_policy"]:
                assert r["bonus"] == r["bonus_raw"], r
        # one metrics row per configured step, finite and in range, agreeing with that step's rollouts
        hist = metrics(refs["train"])
        assert m["algorithm"] == algo and m["steps"] == cfg.train.steps == 6
        assert [h["step"] for h in hist] == list(range(1, 7))
        assert sorted({r["step"] for r in rows}) == list(range(1, 7))
        for h in hist:
            step_rows = [r for r in rows if r["step"] == h["step"]]
            on = [r for r in step_rows if not r["off_policy"]]
            assert len(step_rows) == cfg.train.prompts_per_step * cfg.train.group_size
            assert h["env_reward"] == pytest.approx(sum(r["correct"] for r in on) / len(on))
            assert h["reward"] == pytest.approx(sum(r["reward"] for r in step_rows) / len(step_rows))
            assert h["replaced_fraction"] == pytest.approx(1 - len(on) / len(step_rows))
            for k in ("env_reward", "bonus_share", "rank_change_fraction", "replaced_fraction", "mixed_group_fraction"):
                assert 0 <= h[k] <= 1, (k, h)
            for k in ("reward", "bonus_mean", "grad_norm", "lr", "pg_loss", "token_entropy", "seconds_step"):
                assert math.isfinite(h[k]), (k, h)
            assert h["lr"] > 0 and h["seconds_step"] > 0
        # the artifact's run summaries are the means of those rows (rounded to 4 places)
        for k in ("env_reward", "bonus_share", "rank_change_fraction", "replaced_fraction"):
            assert m[k] == pytest.approx(sum(h[k] for h in hist) / len(hist), abs=1e-4), k
            assert 0 <= m[k] <= 1, k
        # rows and run summaries under the registry's names only (oger.stages.train.metrics)
        assert all(list(h) == ["step", *NAMES] for h in hist) and set(run_summary_names()) <= set(m)
        assert not {"accuracy_last_20pct", "onpolicy_accuracy", "divergence", "seconds_per_step"} & set(m)
        if algo != "oger":
            assert m["bonus_share"] == 0 and m["rank_change_fraction"] == 0
        assert any(not r["correct"] and not r["off_policy"] for r in rows)
        art = Path(refs["train"].path)
        png = (art / "curves.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000  # a real PNG: 12 panels
        assert list((art / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard event files
        model = AutoModelForCausalLM.from_pretrained(art / "model")  # the trained model loads
        assert model.config.architectures == ["Qwen2ForCausalLM"]
        assert model.num_parameters() > 0


def test_refresh_retrains_from_scratch_and_empty_pool_is_a_clear_error(lite):
    from oger.contract.errors import StageError

    cfg = lite("train.algorithm=grpo")
    refs = pipeline.run_local(cfg, until="train")
    assert not list(cfg.workdir_path.glob("cache/train/*/checkpoints/step-*"))  # cleaned after success
    plans = pipeline.plan(cfg)
    again = pipeline.run_stage(cfg, plans["train"], refs, refresh=True)
    assert again.metrics["resumed"] is False and again.metrics["steps"] == 6
    assert again.metrics["reward_first_20pct"] == refs["train"].metrics["reward_first_20pct"]
    bad = lite("train.algorithm=grpo", "train.split=validation")
    with pytest.raises(StageError, match="train.split='validation'"):
        pipeline.run_local(bad, until="train")


def test_correct_rollout_far_from_teachers_earns_more_than_a_copy():
    from oger.algorithm import core
    from oger.encoder import encode, load_encoder

    model = load_encoder("minilm")
    teacher = (
        "We need to compute 9 - 5 + 7.\nDo the multiplications first.\nFirst, 9 - 5 = 4.\n"
        "Then 4 + 7 = 11.\nSo the answer is \\boxed{11}."
    )
    copy = teacher
    far = "Nine take away five leaves four; adding seven to four gives eleven. \\boxed{11}"
    t = torch.from_numpy(encode(model, [teacher])).double()
    e = torch.from_numpy(encode(model, [copy, far])).double()
    s, has = core.teacher_similarity(e, [t, t])
    d = core.divergence(s)
    reward, bonus = core.oger_reward(
        torch.ones(2, dtype=torch.float64),
        d,
        torch.zeros(2, dtype=torch.float64),
        has,
        torch.zeros(2, dtype=torch.bool),
        lam=0.5,
    )
    assert bonus[0] == pytest.approx(0.0, abs=1e-6)
    assert bonus[1] > bonus[0] + 0.05
    assert np.all(reward.numpy() >= 1.0)


RUN = """
import sys
from oger.contract.config import load_config
from oger import pipeline
cfg = load_config(sys.argv[1], sys.argv[2:])
ref = pipeline.run_local(cfg, until="train")["train"]
print("DONE", ref.path)
"""


def _run(cfg_path, workdir, steps=24, wait_for_ckpt=None):
    args = [sys.executable, "-c", RUN, str(cfg_path), f"workdir={workdir}", f"train.steps={steps}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait_for_ckpt is None:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        return out
    deadline = time.time() + 900
    while time.time() < deadline:
        if list(Path(workdir).glob(f"cache/train/*/checkpoints/{wait_for_ckpt}/COMPLETE")):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


def seeded_workdir(src: Path, dst: Path) -> Path:
    """A copy of a workdir without its training (artifacts, run cache) or runs: the upstream
    stages are cache hits there, so a run into it trains from the same policy and index."""
    skip = {src / "artifacts" / "train", src / "cache" / "train", src / "runs"}
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d) / n in skip])
    return dst


def test_interrupt_after_checkpoint_resumes_at_next_step(lite, lite_yaml, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg_path = lite_yaml
    pipeline.run_local(lite(), until="policy")  # the upstream stages, shared with the tests above
    wd = seeded_workdir(lite().workdir_path, tmp_path / "interrupted")
    ref_wd = seeded_workdir(lite().workdir_path, tmp_path / "straight")
    _run(cfg_path, wd, wait_for_ckpt="step-000006")
    metrics_file = next(wd.glob("cache/train/*/metrics.jsonl"))
    assert not list(wd.glob("artifacts/train/*/manifest.json"))  # killed before the artifact
    with open(metrics_file, "a") as f:
        f.write('{"step": 99, "rew')  # a line cut by the kill must not break the resume
    out = _run(cfg_path, wd)
    art = Path(out.strip().splitlines()[-1].split("DONE ", 1)[1])
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["metrics"]["resumed"] is True
    steps = [h["step"] for h in metrics(art)]
    assert steps == list(range(1, 25))  # every step exactly once, resumed at the next one
    assert metrics_file.exists()
    model = AutoModelForCausalLM.from_pretrained(art / "model")
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    # Deterministic on CPU: the resumed run equals an uninterrupted one.
    out2 = _run(cfg_path, ref_wd)
    art2 = Path(out2.strip().splitlines()[-1].split("DONE ", 1)[1])
    r1 = [h["reward"] for h in metrics(art)]
    r2 = [h["reward"] for h in metrics(art2)]
    assert r1 == r2
