"""`runner.kind: ray` without an address starts a new local Ray instance, even where a Ray session that
did not shut down cleanly left its address file behind (Ray's own default then tries to join that dead
cluster and fails); both the fan-out runner and the multi-node train stage join Ray through
`oger.runtime.ray_cluster`."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (make setup installs it)")
pytestmark = pytest.mark.slow

OURS = """
import ray
from oger.contract.config import RunnerConfig
from oger.runtime.ray_cluster import connect
assert connect(RunnerConfig(kind="ray", num_cpus=1))
print("answer", ray.get(ray.remote(lambda: 41 + 1).remote()))
ray.shutdown()
"""
RAYS_DEFAULT = "import ray; ray.init(num_cpus=1)"


@pytest.fixture
def stale_ray_tmp():
    """A Ray temp folder (short: Ray's socket paths must stay < 108 bytes) holding the address file of a
    cluster that is gone."""
    path = tempfile.mkdtemp(prefix="oray", dir="/tmp")
    Path(path, "ray").mkdir()
    Path(path, "ray", "ray_current_cluster").write_text("127.0.0.1:1\n")  # where Ray looks: RAY_TMPDIR/ray
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _python(code: str, ray_tmp: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_a_stale_address_file_is_not_joined(stale_ray_tmp):
    # what users met: Ray's default reads the dead session's address and tries to join it
    default = _python(RAYS_DEFAULT, stale_ray_tmp)
    assert default.returncode != 0
    assert "num_cpus and num_gpus must not be provided" in default.stderr, default.stderr[-2000:]
    # the project's way: a new local instance, which runs a task
    ours = _python(OURS, stale_ray_tmp)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert "answer 42" in ours.stdout


def test_the_fan_out_runner_asks_for_a_local_instance():
    from flows.fanout import task_runner
    from oger.contract.config import RunnerConfig

    runner = task_runner(RunnerConfig(kind="ray", address="ray://head:10001"))
    assert runner.address == "ray://head:10001"  # a configured cluster is joined as given
    from oger.runtime.ray_cluster import init_args

    assert init_args(RunnerConfig(kind="ray", num_cpus=2)) == ("local", {"include_dashboard": False, "num_cpus": 2})
