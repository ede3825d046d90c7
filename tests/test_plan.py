"""`oger plan` on every shipped config (nothing runs, no model loads) and the paper-scale configs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oger import pipeline
from oger.cli import main
from oger.contract.config import load_config
from oger.contract.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PAPER = [REPO / "configs" / f"qwen2.5-math-{s}-{a}.yaml" for s in ("1.5b", "7b") for a in ("grpo", "luffy", "oger")]


def plan_json(capsys, config, *overrides) -> dict:
    args = ["plan", str(config), "--json"] + [x for o in overrides for x in ("--set", o)]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def budget(data: dict, stage: str) -> dict:
    s = next(s for s in data["stages"] if s["stage"] == stage)
    return {b["what"]: b["tokens"] for b in s["budget"]}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_plan_every_shipped_config(config, tmp_path, capsys):
    data = plan_json(capsys, config, f"workdir={tmp_path}")
    assert [s["stage"] for s in data["stages"]] == pipeline.STAGES
    assert [s["upstream"] for s in data["stages"]] == [pipeline.UPSTREAM[s] for s in pipeline.STAGES]
    keys = {k: p.key for k, p in pipeline.plan(load_config(config, [f"workdir={tmp_path}"])).items()}
    for s in data["stages"]:
        assert s["state"] == "stale" and s["key"] == keys[s["stage"]]
    cfg = load_config(config)
    t = cfg.train
    rollouts = budget(data, "train")["rollouts"]
    if config.stem == "tiny":  # pool of 64 problems >= 8 prompts per step
        assert rollouts == 40 * 8 * 8 * 40
        assert budget(data, "teachers") == {"smollm2": 8 * 1 * 96}  # scripted teachers: no model tokens
        evaluate = 200 * (2 * 4) * 40 + 2 * (50 * 2 * 40)  # synthetic avg@4, gsm8k, math500; 2 models
        assert budget(data, "evaluate")["synthetic (base + trained, T=0.6)"] == 200 * 8 * 40
        assert data["total_tokens"] == 40 * 8 * 8 * 40 + 768 + 2 * 200 * 40 + evaluate
    else:
        assert rollouts == t.steps * t.prompts_per_step * t.group_size * t.rollout.max_new_tokens
    # The human-readable form: the DAG line, every stage, the total.
    assert main(["plan", str(config), "--set", f"workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert " -> ".join(pipeline.STAGES) in out
    assert "total new tokens at most" in out
    assert not (tmp_path / "artifacts").exists()  # nothing ran


def test_plan_shows_cached_stages_and_exact_counts(tmp_path, capsys):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"workdir={tmp_path}"])
    pipeline.run_local(cfg, until="problems")
    data = plan_json(capsys, REPO / "configs" / "tiny.yaml", f"workdir={tmp_path}")
    states = {s["stage"]: s["state"] for s in data["stages"]}
    assert states["problems"] == "cached" and states["teachers"] == "stale"
    assert data["problem_counts"].startswith("exact")
    problems = next(s for s in data["stages"] if s["stage"] == "problems")
    assert problems["notes"] == ["test: 200 problems", "train: 1000 problems"]


def test_plan_runs_nothing_and_loads_no_model(tmp_path):
    code = (
        "import sys; from oger.cli import main; "
        f"rc = main(['plan', 'configs/qwen2.5-math-7b-oger.yaml', '--json', '--set', 'workdir={tmp_path}']); "
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'vllm', 'lancedb', "
        "'prefect', 'ray') if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan, heavy = out.stdout.rsplit("HEAVY", 1)
    assert heavy.strip() == "[]"
    stages = {s["stage"]: s for s in json.loads(plan)["stages"]}
    assert "FSDP2 x 8 (torchrun, backend nccl)" in stages["train"]["engine"]
    # the vLLM teacher's shards ask Ray for its tensor-parallel GPUs
    assert "r1-distill-qwen-32b: 2 shard(s) x 1 CPU + 4 GPU" in stages["teachers"]["resources"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("config", PAPER, ids=[c.stem for c in PAPER])
def test_paper_configs_validate_with_luffys_recipe(config):
    cfg = load_config(config)
    t, algo = cfg.train, config.stem.rsplit("-", 1)[1]
    assert cfg.name == config.stem and t.algorithm == algo
    assert (t.prompts_per_step, t.group_size, t.replace_k) == (128, 8, 1)
    loss = t.loss
    assert (t.optim.lr, t.rollout.temperature, t.rollout.max_new_tokens, loss.gamma) == (1e-6, 1.0, 8192, 0.1)
    assert (loss.beta, loss.entropy_coef, loss.clip, loss.scale_rewards, loss.loss_agg) == (
        0.0,
        0.001,
        False,
        "none",
        "constant_len",
    )
    assert t.replaces == (algo != "grpo") and (t.bonus_lambda > 0) == (algo == "oger")
    assert loss.ppo_mini_batches == 2  # train_batch_size 128 / ppo_mini_batch_size 64
    assert t.distributed.num_processes == 8 and t.distributed.fsdp == ("7b" in config.stem)
    backends = {x.backend for x in cfg.teachers.teachers}
    # LUFFY's baseline reads the R1 traces only; the oger/grpo configs keep the paper's multi-teacher setting
    assert backends == {"dataset"} if algo == "luffy" else {"dataset", "vllm"} <= backends
    assert t.reward_format == "think" and t.teacher_think_prefix == "strip"
    assert cfg.problems.sources[0].dataset == "Elliott/Openr1-Math-46k-8192"
    assert cfg.policy.system_prompt.startswith("Your task is to follow a systematic")
    assert "\n {thoughts} </think>\n" in cfg.policy.system_prompt  # LUFFY's real newlines
    assert cfg.runner.kind == "ray"
    assert cfg.evaluate.protocol == "luffy" and cfg.evaluate.max_new_tokens == 8192
    # The DDP shard rule names the fields to change.
    ranks = r"the ranks \(distributed.nnodes x num_processes\) x rollout.batch_prompts"
    with pytest.raises(ConfigError, match=rf"prompts_per_step .*{ranks}"):
        load_config(config, ["train.distributed.num_processes=3"])


@pytest.mark.parametrize("config", PAPER, ids=[c.stem for c in PAPER])
def test_paper_configs_roll_out_by_vllm_and_fit_80_gib(config, tmp_path, capsys):
    """Issue 41, item 7: every paper config rolls out with the colocated vLLM engine in bf16 (dtype auto),
    its per-GPU plan fits 80 GiB as written (no sleep mode needed), and the held-out checks of the policy
    and train stages run on vLLM too; `oger plan` says so."""
    text = config.read_text()
    assert "DEVIATION: rollouts" not in text and "transformers `generate`" not in text
    ro = load_config(config).train.rollout
    assert (ro.engine, ro.dtype, ro.sleep, ro.kv_cache_gib) == ("vllm", "auto", False, None)
    stages = {s["stage"]: s for s in plan_json(capsys, config, f"workdir={tmp_path}")["stages"]}
    train = stages["train"]
    assert train["engine"].startswith("rollouts: vLLM colocated (auto: bf16 on a GPU")
    assert f"{ro.gpu_memory_utilization:g} of each GPU; tensor parallel {ro.tensor_parallel_size})" in train["engine"]
    gpu = train["gpu"]
    assert gpu["gpu_memory_gib"] == 80 and gpu["fits"] is True, gpu["verdict"]
    assert gpu["verdict"].startswith("fits in 80 GiB") and "of KV cache" in gpu["verdict"]
    assert gpu["engine"]["share"] == ro.gpu_memory_utilization
    assert any(line.strip().startswith("vLLM rollout engine:") for line in gpu["lines"])
    # the plan leaves at least 5 GiB of the 80 to what it does not count (the configs' comment)
    assert max(b + share * 80 * 2**30 for b, share in gpu["phases"].values()) <= 75 * 2**30
    assert "held-out check: vLLM offline engine (float32" in stages["policy"]["engine"]
    assert "held-out check: vLLM offline engine (float32, 0.85 of one GPU)" in train["notes"]
    assert stages["evaluate"]["engine"].startswith("vLLM offline engine (float32, 0.85 of each GPU)")


def test_the_smoke_config_rolls_out_as_the_1_5b_paper_config(tmp_path, capsys):
    smoke = load_config(REPO / "configs" / "qwen2.5-math-1.5b-smoke.yaml")
    paper = load_config(REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml")
    fields = ("engine", "dtype", "gpu_memory_utilization", "tensor_parallel_size", "sleep", "kv_cache_gib")
    assert [getattr(smoke.train.rollout, f) for f in fields] == [getattr(paper.train.rollout, f) for f in fields]
    assert smoke.evaluate.heldout.engine == paper.evaluate.heldout.engine == "vllm"
    train = next(
        s
        for s in plan_json(capsys, REPO / "configs" / "qwen2.5-math-1.5b-smoke.yaml", f"workdir={tmp_path}")["stages"]
        if s["stage"] == "train"
    )
    assert train["engine"].startswith("rollouts: vLLM colocated") and train["gpu"]["fits"] is True


def test_the_plan_names_the_engine_the_train_stage_uses(tmp_path, capsys):
    """The rollouts' label follows train.rollout.engine (it said "transformers generate" for vllm once)."""
    tiny = REPO / "configs" / "tiny.yaml"
    engines = {}
    for engine in ("hf", "paged", "vllm"):
        data = plan_json(capsys, tiny, f"workdir={tmp_path}", f"train.rollout.engine={engine}")
        engines[engine] = next(s for s in data["stages"] if s["stage"] == "train")["engine"]
    assert engines["hf"].startswith("rollouts: transformers generate;")
    assert engines["paged"].startswith("rollouts: transformers continuous batching (paged);")
    assert engines["vllm"].startswith(
        "rollouts: vLLM colocated (auto: bf16 on a GPU, float32 on a CPU; 0.3 of each GPU; tensor parallel 1);"
    )
    data = plan_json(
        capsys,
        tiny,
        f"workdir={tmp_path}",
        "train.rollout.engine=vllm",
        "train.rollout.dtype=float32",
        "train.rollout.sleep=true",
        "train.rollout.gpu_memory_utilization=0.5",
    )
    engine = next(s for s in data["stages"] if s["stage"] == "train")["engine"]
    assert engine.startswith("rollouts: vLLM colocated (float32; 0.5 of each GPU; tensor parallel 1, asleep")
    policy = next(s for s in data["stages"] if s["stage"] == "policy")
    assert policy["engine"].endswith("held-out check: transformers generate")  # tiny's default


def test_plan_prints_each_other_nodes_torchrun_command_without_ray(tmp_path):
    from oger.commands.plan import build

    over = [
        f"workdir={tmp_path}",
        "train.distributed.nnodes=3",
        "train.rollout.batch_prompts=1",
        "train.prompts_per_step=6",
        "train.distributed.rdzv_endpoint=10.0.0.1:29400",
    ]
    data = build(load_config(REPO / "configs" / "tiny.yaml", over))
    key = next(s["key"] for s in data["stages"] if s["stage"] == "train")
    head, *cmds = data["commands"]["train"]
    assert head.startswith("# on the first node: oger run (rendezvous 10.0.0.1:29400)")
    assert [c.split()[0] for c in cmds] == ["OGER_NODE=1", "OGER_NODE=2"]  # nodes after the first
    for c in cmds:
        assert "--nnodes=3 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=10.0.0.1:29400" in c
        assert f"--rdzv_id=oger-{key[:16]}" in c and "is_host=0" in c  # the first node hosts the rendezvous
        assert c.endswith(f"-m oger.stages.train.worker {tmp_path}/cache/train/{key[:16]}/launch.json")
    with_ray = build(load_config(REPO / "configs" / "tiny.yaml", [*over, "runner.kind=ray"]))
    assert with_ray["commands"] == {}  # on Ray the stage starts every node's agent itself
