"""The train stage across several nodes on the Ray cluster the project already uses (`runner.kind: ray`):
one torchrun agent per node, each a Ray task in its own bundle of a strictly spread placement group, all
joining a c10d rendezvous on the first bundle's node.

Why this shape (verl, OpenRLHF, NeMo-RL and SkyRL all put multi-node training on Ray): Ray already knows
the machines, their GPUs and whether they are alive; torchrun already knows how to start a node's ranks,
restart nothing, and report which rank failed. Each agent is the one-node launcher (`agent.run_agent`)
with a rendezvous instead of `--standalone`, so a node runs exactly what one machine runs.

The reservation is made once. A sweep pair that already runs inside a placement group (its job was
scheduled into bundle 0 of one with `nnodes` bundles: `sweep.run.pair_bundles`) hands it over: the first
node's agent runs in the pair's own process, which holds bundle 0, and the other nodes' agents take the
other bundles. Otherwise the stage reserves `nnodes` bundles of `num_processes` GPUs (or CPUs) and gives
them back when the world ends.

Failures: an agent returns its exit status and log tail; a Ray task lost with its node raises. The first
node to fail is named first (the others usually fail after it, at the collective timeout); agents still
running a collective timeout after the first failure are cancelled.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from oger.contract.errors import ConfigError, StageError
from oger.runtime.ray_cluster import STRATEGY, bundle
from oger.stages.train.agent import AgentResult, agent_env, launcher_command, rdzv_id, run_agent, write_spec
from oger.stages.train.files import spec_path

RESERVE_TIMEOUT_S = 120.0  # how long to wait for the cluster to grant the placement group


@dataclass
class NodeOutcome:
    """One node's end: its index in the run, Ray's node id and address, and how its agent ended (None:
    its Ray task died with it, `lost` says why)."""

    node: int
    ray_node_id: str
    address: str
    result: AgentResult | None
    lost: str | None = None
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.rc == 0

    def label(self, nnodes: int) -> str:
        return f"node {self.node} of {nnodes} (ray node {self.ray_node_id[:12]}, {self.address})"

    def why(self) -> str:
        if self.result is None:
            return f"its Ray task was lost ({self.lost})"
        if self.result.stopped:
            return self.result.stopped
        failed = [line.strip() for line in self.result.tail if line.strip().startswith(("rank:", "exitcode:"))]
        detail = "; ".join(failed) if failed else "\n    ".join(self.result.tail[-8:])
        return f"its torchrun agent exited with status {self.result.rc}: {detail}"


# --------------------------------------------------------------------------- the cluster


@contextlib.contextmanager
def reservation(nnodes: int, num_processes: int, gpus: bool):
    """(placement group, first bundle this stage's agents take as Ray tasks): the one this process runs
    in when a sweep pair handed it over (the first node's agent then runs here: 1), else a new strictly
    spread one, removed afterwards (0)."""
    import ray
    from ray.util import get_current_placement_group
    from ray.util.placement_group import placement_group, remove_placement_group

    handed = get_current_placement_group()
    if handed is not None and len(handed.bundle_specs) >= nnodes:
        yield handed, 1
        return
    pg = placement_group([bundle(num_processes, gpus)] * nnodes, strategy=STRATEGY, name="oger-train")
    ready, _ = ray.wait([pg.ready()], timeout=RESERVE_TIMEOUT_S)
    if not ready:
        remove_placement_group(pg)
        nodes = [
            f"{n['NodeManagerAddress']}: { ({k: v for k, v in n['Resources'].items() if k in ('CPU', 'GPU')}) }"
            for n in ray.nodes()
            if n.get("Alive")
        ]
        raise StageError(
            f"train: the Ray cluster did not grant {nnodes} nodes with {bundle(num_processes, gpus)} each "
            f"({STRATEGY}, one bundle per node) within {RESERVE_TIMEOUT_S:.0f} s; its live nodes: {nodes}"
        )
    try:
        yield pg, 0
    finally:
        remove_placement_group(pg)


def _on(pg, index: int, resources: dict[str, float]) -> dict:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": resources.get("CPU", 0.0),
        "num_gpus": resources.get("GPU", 0.0),
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
    }


def _where() -> tuple[str, str]:
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def _rendezvous() -> tuple[str, str, int]:
    """On the first node: its Ray node id, its address and a free port for the c10d store."""
    node_id, ip = _where()
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return node_id, ip, port


def node_agent(node: int, cmd: list[str], log_path: str, num_processes: int, spec: str) -> tuple:
    """One node's torchrun agent (a Ray task, or the handing-over pair's own process for node 0): checks
    it sees the launch spec the driver wrote (else the node is named before any rank starts), then runs
    the node's ranks. Returns (ray node id, address, AgentResult)."""
    node_id, ip = _where()
    if not Path(spec).exists():
        return (
            node_id,
            ip,
            AgentResult(
                2,
                f"train: node {node} (ray node {node_id[:12]}, {ip}, host "
                f"{socket.gethostname()}) does not see {spec}, which the driver wrote "
                "into the run folder: every node must mount the workdir (artifacts, "
                "checkpoints, the index) at the same path",
                [],
            ),
        )
    env = agent_env(num_processes, {"OGER_NODE": str(node), "OGER_RAY_NODE_ID": node_id})
    return node_id, ip, run_agent(cmd, Path(log_path), env, echo=lambda line: print(line, flush=True))


# --------------------------------------------------------------------------- the launch


def launch_on_ray(runner, d, spec: dict, run_dir: Path, gpus: bool | None) -> None:
    """Run the world on `d.nnodes` nodes of the Ray cluster (a GPU per rank with `gpus`; None: when the
    cluster has GPUs, as each rank's `backend: auto` will find) and wait for it; raise a StageError naming
    the node that failed first (and how the others ended)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency of the dev extra
        raise ConfigError(
            "train.distributed.nnodes > 1 with runner.kind ray needs ray: pip install 'oger[ray]'"
        ) from None
    from oger.runtime.ray_cluster import connect

    started = connect(runner)
    try:
        if gpus is None:
            gpus = ray.cluster_resources().get("GPU", 0) > 0
        path = write_spec(spec, run_dir)
        with reservation(d.nnodes, d.num_processes, gpus) as (pg, first):
            outcomes = _run_world(ray, pg, first, d, path, run_dir, gpus)
    finally:
        if started:
            ray.shutdown()
    failed = sorted((o for o in outcomes if not o.ok), key=lambda o: o.finished_at)
    if failed:
        head, rest = failed[0], failed[1:]
        lines = [f"train: {head.label(d.nnodes)} failed first: {head.why()}"]
        lines += [f"  then {o.label(d.nnodes)}: {o.why()}" for o in rest]
        logs = ", ".join(str(_log(run_dir, o.node)) for o in outcomes)
        tail = f"\n(the nodes' logs: {logs}; the next run resumes from the last checkpoint)"
        raise StageError("\n".join(lines) + tail)


def _log(run_dir: Path, node: int) -> Path:
    return run_dir / f"launch-node{node}.log"


def _run_world(ray, pg, first: int, d, path: Path, run_dir: Path, gpus: bool) -> list[NodeOutcome]:
    share = bundle(d.num_processes, gpus)
    probe = ray.remote(_rendezvous).options(**_on(pg, 0, {"CPU": 0.0})) if first == 0 else None
    node0_id, node0_ip, port = ray.get(probe.remote()) if probe else _rendezvous()
    endpoint = f"{node0_ip}:{port}"

    def cmd(node: int) -> list[str]:
        return launcher_command(
            "torchrun", d.num_processes, spec_path(run_dir), d.nnodes, endpoint, rdzv_id(run_dir), d.timeout_s, node
        )

    print(f"[oger-train] {d.nnodes} nodes x {d.num_processes} ranks on Ray, rendezvous {endpoint}", flush=True)
    remote = ray.remote(node_agent)
    futures = {
        remote.options(**_on(pg, i, share)).remote(i, cmd(i), str(_log(run_dir, i)), d.num_processes, str(path)): i
        for i in range(first, d.nnodes)
    }
    outcomes: list[NodeOutcome] = []
    if first == 1:  # the handed-over reservation: node 0's agent runs in this process, which holds bundle 0
        nid, ip, res = node_agent(0, cmd(0), str(_log(run_dir, 0)), d.num_processes, str(path))
        outcomes.append(NodeOutcome(0, nid, ip, res, finished_at=time.time()))
    deadline = None
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=5.0)
        for ref in done:
            i = futures[ref]
            try:
                nid, ip, res = ray.get(ref)
                outcomes.append(NodeOutcome(i, nid, ip, res, finished_at=time.time()))
            except ray.exceptions.RayError as e:  # the node (or its worker) died with the task
                nid, ip = _bundle_node(ray, pg, i)
                outcomes.append(NodeOutcome(i, nid, ip, None, lost=type(e).__name__, finished_at=time.time()))
        failed = [o for o in outcomes if not o.ok]
        if deadline is None and failed:
            # the others fail at their collective timeout; at once where no rank had started yet
            started = any(o.result is None or o.result.tail for o in failed)
            deadline = time.time() + (d.timeout_s + 60 if started else 5)
        if pending and deadline is not None and time.time() > deadline:
            for ref in pending:
                ray.cancel(ref, force=True)
                nid, ip = _bundle_node(ray, pg, futures[ref])
                why = "cancelled: still running after another node failed"
                outcomes.append(NodeOutcome(futures[ref], nid, ip, None, lost=why, finished_at=time.time()))
            pending = []
    return sorted(outcomes, key=lambda o: o.node)


def _bundle_node(ray, pg, index: int) -> tuple[str, str]:
    """(Ray node id, address) that holds bundle `index` of `pg` ("?" where Ray no longer says)."""
    try:
        node_id = ray.util.placement_group_table(pg)["bundles_to_node_id"][index]
        ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "?")
        return node_id, ip
    except (KeyError, IndexError, TypeError):
        return "?", "?"
