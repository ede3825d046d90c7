"""Commands that only look (`oger plan`, `oger status`, `oger index list`) never touch the network:
run as a user would outside the Makefile (HF_HUB_OFFLINE unset), on every shipped config, they
return within seconds. The hub endpoint points at an unroutable address, so any hub request would
hang or retry (minutes of "Retrying in 8s") instead of failing fast."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))
SECONDS_PER_COMMAND = 20.0  # generous for a busy 2-core machine; a hub retry loop takes minutes

SCRIPT = """
import contextlib, io, json, sys, time
from oger.cli import main
out = {}
for cfg in sys.argv[2:]:
    for cmd in (["plan", "--json"], ["status", "--json"], ["index", "list", "--json"]):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as buf:
            rc = main([cmd[0], *cmd[1:-1], cfg, "--set", f"workdir={sys.argv[1]}/{len(out)}", cmd[-1]])
        out[f"{cmd[0]} {cfg}"] = {"rc": rc, "s": time.perf_counter() - t, "out": buf.getvalue()}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_plan_status_index_list_never_touch_the_network(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "OGER_DATA_DIR")
    }
    env.update(HF_ENDPOINT="http://10.255.255.1", PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), *CONFIGS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 + 3 * len(CONFIGS) * SECONDS_PER_COMMAND,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 3 * len(CONFIGS) and len(CONFIGS) >= 7
    # an empty workdir has no index yet: `index list` says so (exit 2), it does not fetch anything
    assert {k: r["rc"] for k, r in results.items() if r["rc"] != (2 if k.startswith("index") else 0)} == {}
    assert {k: round(r["s"], 1) for k, r in results.items() if r["s"] > SECONDS_PER_COMMAND} == {}
    # every benchmark of the paper configs resolved from data/: the plan knows its size
    plan = json.loads(results["plan configs/qwen2.5-math-7b-oger.yaml"]["out"])
    evaluate = next(s for s in plan["stages"] if s["stage"] == "evaluate")
    assert all(b["prompts"] for b in evaluate["budget"]) and not any("hub" in n for n in evaluate["notes"])


@pytest.mark.slow
def test_plan_names_a_missing_benchmark_instead_of_fetching_it(tmp_path):
    """A clone without data/ and no OGER_DATA_DIR: the plan says which hub dataset a run would
    fetch, and still returns within seconds (the hub endpoint is unroutable)."""
    script = (
        "import json, sys, time, contextlib, io\nfrom pathlib import Path\nimport oger.data.roots\n"
        "oger.data.roots.REPO_DATA = Path(sys.argv[1]) / 'no-data'\nfrom oger.cli import main\n"
        "t = time.perf_counter()\nwith contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "    rc = main(['plan', 'configs/qwen2.5-math-7b-oger.yaml', '--set', f'workdir={sys.argv[1]}', '--json'])\n"
        "print(json.dumps({'rc': rc, 's': time.perf_counter() - t, 'out': buf.getvalue()}))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "OGER_DATA_DIR")
    }
    env.update(HF_ENDPOINT="http://10.255.255.1", PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["rc"] == 0 and r["s"] < SECONDS_PER_COMMAND
    evaluate = next(s for s in json.loads(r["out"])["stages"] if s["stage"] == "evaluate")
    assert any("aime24" in n and "math-ai/aime24 from the hub" in n for n in evaluate["notes"])
