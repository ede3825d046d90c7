import pytest

from oger.contract.config import load_config, parse_override
from oger.contract.errors import ConfigError


@pytest.fixture
def base(tmp_path, small_config):
    """write(**sections): a small config with one scripted teacher 'a', written under tmp_path."""

    def write(teachers=({"name": "a", "backend": "scripted", "model": "stepwise"},), **kw):
        return small_config.write(tmp_path, "t", n_train=5, n_test=2, teachers=list(teachers), **kw)

    return write


def test_overrides_are_yaml_scalars(base):
    cfg = load_config(
        base(),
        [
            "filter.max_tokens=64",
            "filter.require_stop=false",
            "teachers.round=2026-11-27",
            "workdir=/tmp/x",
            "teachers.teachers.0.n=3",
        ],
    )
    assert cfg.filter.max_tokens == 64 and cfg.filter.require_stop is False
    assert cfg.teachers.round == "2026-11-27"
    assert cfg.teachers.teachers[0].n == 3
    assert str(cfg.workdir_path) == "/tmp/x"


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("filter.max_tokens")
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)


def test_unknown_key_names_key_value_and_file(base):
    p = base(filter={"max_tokenz": 5})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "filter.max_tokenz" in msg and "5" in msg and str(p) in msg and "unknown key" in msg


def test_wrong_type_names_key_value_and_file(base):
    p = base()
    with pytest.raises(ConfigError) as e:
        load_config(p, ["filter.max_tokens=lots"])
    msg = str(e.value)
    assert "filter.max_tokens" in msg and "'lots'" in msg and str(p) in msg


def test_unknown_key_in_source_list(base):
    p = base(source={"n_tset": 2})
    with pytest.raises(ConfigError, match=r"problems\.sources\.0\.n_tset"):
        load_config(p)


def test_backend_requirements(base):
    p = base(teachers=[{"name": "a", "backend": "openai", "model": "m"}])
    with pytest.raises(ConfigError, match="base_url"):
        load_config(p)


def test_override_index_out_of_range(base):
    with pytest.raises(ConfigError, match="not an index"):
        load_config(base(), ["teachers.teachers.3.n=2"])


def test_shipped_tiny_config_validates():
    cfg = load_config("configs/tiny.yaml")
    assert cfg.name == "tiny" and len(cfg.teachers.teachers) >= 3
    backends = {t.backend for t in cfg.teachers.teachers}
    assert {"scripted", "transformers"} <= backends


def test_clip_settings_enter_the_train_key_only_with_several_mini_batches():
    from oger.stages.train.stage import key_inputs

    tiny = "configs/tiny.yaml"
    one, _ = key_inputs(load_config(tiny))
    assert not {"clip", "clip_eps_low", "clip_eps_high", "ppo_mini_batches"} & set(one)  # ratio 1: cannot act
    assert key_inputs(load_config(tiny, ["train.loss.clip_eps_high=0.28"]))[0] == one
    two, _ = key_inputs(load_config(tiny, ["train.loss.ppo_mini_batches=2"]))
    assert (two["ppo_mini_batches"], two["clip"], two["clip_eps_high"]) == (2, True, 0.2)
    assert key_inputs(load_config(tiny, ["train.loss.ppo_mini_batches=2", "train.loss.clip_eps_high=0.28"]))[0] != two
    with pytest.raises(ConfigError, match="ppo_mini_batches"):
        load_config(tiny, ["train.loss.ppo_mini_batches=0"])


def test_the_sharding_rule_lives_in_one_place(base):
    from oger.contract.config import TrainConfig

    # 8 prompts over 2 ranks x 4 per call: whole calls; 6 are not (the pool-capped count the train
    # stage checks goes through the same rule).
    t = TrainConfig(prompts_per_step=8, distributed={"num_processes": 2}, rollout={"batch_prompts": 4})
    assert t.sharding_problem(8) is None and t.sharding_problem(16) is None
    assert (
        "6 prompts per step is not a multiple of the ranks (distributed.nnodes x num_processes) x "
        "rollout.batch_prompts (2 x 4)" in t.sharding_problem(6)
    )
    assert TrainConfig(prompts_per_step=6).sharding_problem(6) is None  # one process: anything goes
    # over nodes the ranks are nnodes x num_processes: 8 prompts over 2 x 2 ranks x 4 per call are not whole calls
    nodes = TrainConfig(
        prompts_per_step=16, distributed={"num_processes": 2, "nnodes": 2}, rollout={"batch_prompts": 4}
    )
    assert nodes.distributed.world == 4 and nodes.sharding_problem(16) is None
    assert "(4 x 4)" in nodes.sharding_problem(8)
    with pytest.raises(ConfigError, match=r"train = .*prompts_per_step \(6\): 6 prompts per step is not a multiple"):
        load_config(
            base(),
            [
                "train.distributed.num_processes=2",
                "train.rollout.batch_prompts=4",
                "train.prompts_per_step=6",
            ],
        )


def test_multi_node_settings_are_checked():
    from oger.contract.config import TrainConfig

    with pytest.raises(ValueError, match="fsdp 'hybrid' replicates across nodes: it needs nnodes > 1"):
        TrainConfig(distributed={"num_processes": 2, "fsdp": "hybrid"})
    with pytest.raises(ValueError, match="nnodes > 1 runs one torchrun agent per node: set launcher 'torchrun'"):
        TrainConfig(distributed={"nnodes": 2, "launcher": "accelerate"})
    with pytest.raises(ValueError, match="rdzv_endpoint 'head': expected host:port"):
        TrainConfig(distributed={"nnodes": 2, "rdzv_endpoint": "head"})
    # one process per node on two nodes is a distributed run: fsdp (over both ranks) is allowed
    assert TrainConfig(prompts_per_step=16, distributed={"nnodes": 2, "fsdp": True}).distributed.world == 2


def test_a_field_from_before_the_sections_names_its_new_place(base):
    # One spelling per field: the old flat name is an error that says where the field went.
    with pytest.raises(
        ConfigError,
        match=r"train\.lr is now train\.optim\.lr; "
        r"train\.rollout_engine is now train\.rollout\.engine",
    ):
        load_config(base(), ["train.lr=0.001", "train.rollout_engine=paged"])
    with pytest.raises(ConfigError, match=r"policy\.eval_limit is now evaluate\.heldout\.limit"):
        load_config(base(), ["policy.eval_limit=4"])
    cfg = load_config(base(), ["train.optim.lr=0.001", "train.rollout.engine=paged", "evaluate.heldout.limit=4"])
    assert (cfg.train.optim.lr, cfg.train.rollout.engine, cfg.evaluate.heldout.limit) == (0.001, "paged", 4)


def test_sections_keep_the_flat_key_names(base):
    # train's sections were added after keys existed: their fields sit flat in the key, under the
    # names they had (rollout.engine -> rollout_engine), so no cached artifact was invalidated.
    from oger.stages.policy.stage import key_inputs as policy_key
    from oger.stages.train.stage import key_inputs as train_key

    cfg = load_config(
        base(),
        [
            "train.optim.lr=0.001",
            "train.rollout.engine=paged",
            "train.rollout.batch_prompts=4",
            "evaluate.heldout.limit=4",
        ],
    )
    slice_, _ = train_key(cfg)
    assert (slice_["lr"], slice_["rollout_engine"], slice_["rollout_batch_prompts"]) == (0.001, "paged", 4)
    assert not {"optim", "loss", "rollout", "distributed", "logging"} & set(slice_)
    policy_slice, _ = policy_key(cfg.policy, cfg.evaluate.heldout)
    assert (policy_slice["eval_limit"], policy_slice["eval_split"]) == (4, "test")
    assert "eval_batch_size" not in policy_slice  # not in the key


def test_rollout_sleep_needs_the_vllm_engine_and_stays_out_of_the_key():
    from oger.contract.config import TrainConfig
    from oger.contract.keys import key_dump

    with pytest.raises(ValueError, match="rollout.sleep acts on a vLLM engine"):
        TrainConfig(rollout={"sleep": True})
    awake = TrainConfig(rollout={"engine": "vllm"})
    asleep = TrainConfig(rollout={"engine": "vllm", "sleep": True})
    assert key_dump(asleep) == key_dump(awake)  # memory only: the same run
