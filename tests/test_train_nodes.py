"""The train stage across nodes, for real on this machine: a two-node Ray cluster on 127.0.0.1
(`ray.cluster_utils.Cluster`, one CPU each), `nnodes: 2` x `num_processes: 1` with HSDP (`fsdp: hybrid`, a
(2, 1) mesh: through the sharded checkpoints, the resume and the export), one torchrun agent per node as a
Ray task in a strictly spread placement group. A rank killed mid-run fails the stage naming its
node; the next run resumes from the last checkpoint, on both nodes again, and ends at the weights a
one-process run gets. A node that sees another folder at the workdir's path (a mount namespace of its
own with an empty folder bound over the workdir) is named before any rank starts. Each launch is a
process of its own (the Ray driver)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from oger import pipeline
from oger.contract.config import load_config
from tests.builders import rollout_keys
from tests.test_train import RUN, seeded_workdir
from tests.test_train_ddp import params

ray = pytest.importorskip("ray", reason="ray is not installed (make setup installs it)")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_launch_at_a_time")]

# SGD in float32: two ranks on two nodes must give the one-process weights (reduction order aside)
TRAIN = {
    "algorithm": "oger",
    "steps": 3,
    "prompts_per_step": 4,
    "group_size": 4,
    "rollout": {"batch_prompts": 2, "max_new_tokens": 32, "temperature": 1.0},
    "optim": {"optimizer": "sgd", "lr": 0.05},
    "logging": {"checkpoint_every": 1},
}
NODES = ["train.distributed.nnodes=2", "train.distributed.timeout_s=10", "runner.kind=ray"]
HSDP = "train.distributed.fsdp=hybrid"


@pytest.fixture(scope="module")
def ray_tmp():
    """Ray's temp folder for this module's cluster (short: Ray's socket paths must stay < 108 bytes), so
    its address file is not the machine's default one."""
    path = tempfile.mkdtemp(prefix="oray", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    yield path
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_tmp):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c, second
    c.shutdown()


def _driver(cfg_path: Path, workdir: Path, address: str, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-c", RUN, str(cfg_path), f"workdir={workdir}", f"runner.address={address}"]
    return subprocess.Popen([*args, *NODES, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ranks(workdir: Path) -> dict[int, dict]:
    out = {}
    for p in workdir.glob("cache/train/*/ranks/rank-*.json"):
        info = json.loads(p.read_text())
        out[info["rank"]] = info
    return out


def test_two_ray_nodes_killed_rank_named_then_resume_to_the_one_process_weights(
    tmp_path, small_config, rl_workdir, cluster
):
    c, _ = cluster
    cfg_path = small_config.write(tmp_path, "nodes", **small_config.RL_UPSTREAM, train=TRAIN)
    one = load_config(cfg_path, [f"workdir={rl_workdir}"])
    pipeline.run_local(one, until="policy")  # the upstream stages every RL test shares
    single_wd = seeded_workdir(rl_workdir, tmp_path / "single")
    nodes_wd = seeded_workdir(rl_workdir, tmp_path / "nodes")
    single = pipeline.run_local(load_config(cfg_path, [f"workdir={single_wd}"]), until="train")["train"]

    # Two nodes, a rank SIGKILLed once the step-1 checkpoint is complete: the stage fails, naming the
    # node of the killed rank as the first to fail (the other's rank times out in its collective)
    proc = _driver(cfg_path, nodes_wd, c.address, HSDP)
    deadline = time.time() + 600
    while not list(nodes_wd.glob("cache/train/*/checkpoints/step-000001/COMPLETE")) or len(_ranks(nodes_wd)) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no step-1 checkpoint"
        time.sleep(0.1)
    victim = _ranks(nodes_wd)[1]
    os.kill(victim["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert f"train: node {victim['node']} of 2 (ray node {victim['ray_node_id'][:12]}" in err, err[-3000:]
    assert "failed first" in err and "the next run resumes from the last checkpoint" in err, err[-3000:]
    assert not list(nodes_wd.glob("artifacts/train/*/manifest.json"))

    # Run again: it resumes from the last complete checkpoint on both nodes and finishes
    proc = _driver(cfg_path, nodes_wd, c.address, HSDP)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    art = Path(out.strip().splitlines()[-1].split("DONE ", 1)[1])
    m = json.loads((art / "manifest.json").read_text())["metrics"]
    assert m["resumed"] is True and m["steps"] == 3 and "2 nodes x 1" in m["device"], m
    ranks = _ranks(nodes_wd)
    assert sorted(ranks) == [0, 1]
    assert len({r["ray_node_id"] for r in ranks.values()}) == 2  # one rank on each node of the cluster
    assert {r["ray_node_id"] for r in ranks.values()} == {n.node_id for n in c.list_all_nodes()}

    # the same samples and the same weights as one process (float32, within 1e-5)
    assert rollout_keys(art) == rollout_keys(single)
    a, b = params(Path(single.path) / "model"), params(art / "model")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)
    assert not list(nodes_wd.glob("cache/train/*/rollouts.rank-*.jsonl"))  # merged into rollouts.jsonl


def _alive(c) -> list[dict]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, ray, sys; ray.init(address=sys.argv[1]); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))",
            c.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


HANDOVER = """
import sys, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ray.init(address=sys.argv[1])
pg = placement_group([{"CPU": 1.0}] * 2, strategy="STRICT_SPREAD")
ray.get(pg.ready())

@ray.remote
def pair():  # a sweep pair's job, as flows.fanout places it: in the first bundle of its reservation
    from oger.stages.train.ray_nodes import reservation
    with reservation(2, 1, False) as (got, first):
        return got.id.hex(), first

first_bundle = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
got, first = ray.get(pair.options(num_cpus=1, scheduling_strategy=first_bundle).remote())
print("handed", got == pg.id.hex(), first)
"""


def test_a_sweep_pairs_reservation_is_handed_to_the_train_stage(tmp_path, small_config, cluster):
    """A pair that spans nodes reserves one bundle per node and runs in the first (`sweep.run.pair_jobs`);
    the train stage inside it takes that reservation (node 0's agent in the pair's own process, the
    others from bundle 1), where a second placement group would wait forever for the same CPUs."""
    from oger.contract.config import load_config
    from oger.sweep.run import pair_bundles

    c, _ = cluster
    cfg_path = small_config.write(tmp_path, "pair", **small_config.RL_UPSTREAM, train=TRAIN)
    cfg = load_config(cfg_path, ["train.distributed.nnodes=2", "runner.kind=ray"])
    assert pair_bundles(cfg) == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert pair_bundles(load_config(cfg_path, [])) is None  # one node: the pair asks for CPUs/GPUs as before
    proc = subprocess.run([sys.executable, "-c", HANDOVER, c.address], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "handed True 1" in proc.stdout  # the pair's group, agents from bundle 1


def test_hsdp_two_by_two_gives_the_one_process_gradients(tmp_path):
    """HSDP on four gloo ranks as two nodes of two: parameters sharded along a mesh row (a node: each
    rank holds half, not a quarter), replicated down the columns, and one step's gradients equal one
    process's on the whole batch."""
    out = tmp_path / "hsdp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
        + ["-m", "tests.hsdp_probe", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = json.loads(out.read_text())
    assert p["mesh_shape"] == [2, 2] and p["mesh_dims"] == ["replicate", "shard"]
    assert p["placements"] == ["R", "S(0)"]  # replicated across nodes, dim 0 sharded within one
    assert p["local_rows"] == p["rows"] // 2  # sharded within a node only
    assert max(p["diffs"].values()) < 1e-6, p["diffs"]


@pytest.mark.skipif(not _unshare_works(), reason="needs mount namespaces (unshare -m) to give a node its own folder")
def test_a_node_that_sees_another_folder_is_named_before_any_rank_starts(
    tmp_path, small_config, rl_workdir, cluster, ray_tmp
):
    c, second = cluster
    cfg_path = small_config.write(tmp_path, "nodes", **small_config.RL_UPSTREAM, train=TRAIN)
    pipeline.run_local(load_config(cfg_path, [f"workdir={rl_workdir}"]), until="policy")
    wd = seeded_workdir(rl_workdir, tmp_path / "w")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    # the cluster's second node replaced by one whose processes see an empty folder at the workdir's path
    c.remove_node(second)
    ray_bin = Path(sys.executable).parent / "ray"
    start = f"mount --bind {empty} {wd} && exec {ray_bin} start --address={c.address} --num-cpus=1 --block"
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", start],
        env=dict(os.environ, RAY_TMPDIR=ray_tmp),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while len(_alive(c)) < 2:
            assert node.poll() is None and time.time() < deadline, "the second node did not join"
            time.sleep(1)
        proc = _driver(cfg_path, wd, c.address)
        out, err = proc.communicate(timeout=300)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
    assert proc.returncode != 0
    assert "does not see " in err and "launch.json" in err, err[-3000:]
    assert "every node must mount the workdir (artifacts, checkpoints, the index) at the same path" in err
    assert "failed first" in err
    assert not list(wd.glob("cache/train/*/ranks/rank-*.json"))  # no rank started
