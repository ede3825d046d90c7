"""The cold demo: `oger run configs/tiny.yaml` (what `make demo` runs) on an empty workdir, an empty
Prefect home and an empty model cache (the GGUF teacher is converted again), through the real CLI.

Prints the wall time and each stage's seconds from the run's summary.json, and the learning story
(synthetic held-out accuracy of the policy-stage model vs the trained one). Target: <= 180 s on the
2-core CPU machine; per-stage seconds say where the time goes when a busy machine misses it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, machine, result, table

TARGET_S = 180.0


def cold_demo(tmp: Path) -> tuple[float, dict]:
    """Wall seconds of one cold `oger run configs/tiny.yaml` and its summary.json."""
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), OGER_CACHE_DIR=str(tmp / "cache"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "oger.cli", "run", "configs/tiny.yaml", "--set",
                           f"workdir={tmp / 'work'}"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"oger run failed:\n{proc.stderr[-3000:]}")
    summary = Path(proc.stdout.strip().splitlines()[-1])
    return wall, json.loads(summary.read_text())


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="oger-demo-"))
    try:
        wall, summary = cold_demo(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stages = summary["stages"]
    rows = [[name, s["seconds"]] for name, s in stages.items()]
    rows.append(["(sum of stages)", sum(s["seconds"] for s in stages.values())])
    rows.append(["wall, incl. start-up and Prefect", wall])
    table(f"demo: cold `oger run configs/tiny.yaml` ({machine()}; load average "
          f"{os.getloadavg()[0]:.1f})", ["stage", "seconds"], rows)
    syn = summary.get("evaluate", {}).get("synthetic", {})
    sft = stages.get("policy", {}).get("metrics", {})
    print(f"SFT: {sft.get('sft_steps')} steps in {sft.get('sft_seconds')} s; synthetic held-out "
          f"base {syn.get('base')} -> trained {syn.get('trained')}")
    result("demo", wall_s=wall, target_s=TARGET_S, met=int(wall <= TARGET_S),
           **{f"{name}_s": float(s["seconds"]) for name, s in stages.items()},
           synthetic_base=syn.get("base"), synthetic_trained=syn.get("trained"))


if __name__ == "__main__":
    main()
