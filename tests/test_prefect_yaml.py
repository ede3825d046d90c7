"""prefect.yaml: one deployment per shipped config, valid flow parameters, the nightly schedule."""

import inspect
from pathlib import Path

import yaml

from flows.pipeline import oger_pipeline
from flows.sweep import oger_sweep
from oger.contract.config import load_config
from oger.models import resolve_model
from oger.sweep.arms import parse_list, resolve_arms

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"] if d["entrypoint"].startswith("flows/pipeline.py")}
SWEEPS = {d["name"]: d for d in SPEC["deployments"] if d["entrypoint"].startswith("flows/sweep.py")}


def needs_gpu(config: str) -> bool:
    """Several training processes, or a policy from the hub (the paper's models; the CPU configs train a
    tiny model or a shipped one)."""
    cfg = load_config(REPO / config)
    hub_policy = cfg.policy.source == "model" and resolve_model(cfg.policy.model).kind == "hub"
    return cfg.train.distributed.num_processes > 1 or hub_policy


def test_every_shipped_config_has_a_deployment_on_the_process_pool():
    configs = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert configs
    for name in configs:
        dep = DEPLOYMENTS.get(Path(name).stem)
        assert dep is not None, f"prefect.yaml has no deployment for configs/{name}"
        assert dep["parameters"]["config"] == f"configs/{name}"
    for name, dep in DEPLOYMENTS.items():
        # the CPU configs on the CPU pool (SmolLM2 included); paper-scale ones (8 training processes, or
        # the paper's model from the hub on one GPU: the smoke config) only where a GPU worker serves them
        pool = "oger-gpu" if needs_gpu(dep["parameters"]["config"]) else "oger-process"
        assert dep["work_pool"]["name"] == pool, name
        assert dep["entrypoint"] == "flows/pipeline.py:oger_pipeline"


def test_deployment_parameters_are_flow_parameters_and_valid_configs():
    accepted = set(inspect.signature(oger_pipeline.fn).parameters)
    assert {"config", "overrides", "only", "from_stage", "until", "refresh"} <= accepted
    for name, dep in DEPLOYMENTS.items():
        params = dep["parameters"]
        assert set(params) <= accepted, (name, set(params) - accepted)
        load_config(REPO / params["config"], params.get("overrides"))  # raises with key and file


def test_nightly_retrain_is_a_cron_schedule_that_dates_the_round_and_continues_training():
    dep = DEPLOYMENTS["nightly-retrain"]
    assert [s["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
    assert dep["parameters"]["round_from_schedule"] is True
    cfg = load_config(REPO / dep["parameters"]["config"], dep["parameters"]["overrides"])
    assert cfg.train.init_from == "previous_round"


def test_sweep_deployments_name_valid_arms_and_flow_parameters():
    assert set(SWEEPS) >= {"tiny-ablation"}
    accepted = set(inspect.signature(oger_sweep.fn).parameters)
    for name, dep in SWEEPS.items():
        assert dep["entrypoint"] == "flows/sweep.py:oger_sweep"
        params = dep["parameters"]
        assert set(params) <= accepted, (name, set(params) - accepted)
        cfg = load_config(REPO / params["config"], params.get("overrides"))
        resolve_arms(parse_list(params["arms"], "arms"), cfg.sweep)  # every arm exists
        gpu = cfg.train.distributed.num_processes > 1
        assert dep["work_pool"]["name"] == ("oger-gpu" if gpu else "oger-process"), name
