"""The cold demo as a new user meets it: `make setup`'s one-time `oger prepare configs/tiny.yaml`
(SmolLM2 GGUF dequantised into an empty model cache, Prefect's database migrated in an empty
Prefect home; timed apart), then `oger run configs/tiny.yaml` (what `make demo` runs) on an empty
workdir, through the real CLI.

Prints the wall time and each stage's seconds from the run's summary.json, and the learning story
(synthetic held-out accuracy of the policy-stage model vs the trained one). Target: <= 180 s on the
2-core CPU machine; per-stage seconds say where the time goes when a busy machine misses it.

`OGER_BENCH_AS_AVX2=1` runs it as a CPU without native bf16 would: `auto`/`native` precisions plan
as float32 (`OGER_CPU_FLAGS` without the bf16 flags) and torch's and oneDNN's kernels are held to
AVX2. That reproduces the other machine's plan and instruction set, not its clock or memory: on this
CPU (AVX-512 on 256-bit units) AVX2 float32 matmuls run as fast as AVX-512 ones.
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
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CONFIG = "configs/tiny.yaml"


def as_avx2_env() -> dict[str, str]:
    """Environment that makes a run plan and compute as on an AVX2-only CPU (module docstring)."""
    from oger.runtime.precision import NATIVE_BF16_FLAGS, cpu_flags

    flags = sorted(f for f in cpu_flags() if f not in NATIVE_BF16_FLAGS and not f.startswith("amx"))
    return {"OGER_CPU_FLAGS": " ".join(flags), "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def isa_line(env: dict[str, str]) -> str:
    """The ISA flags a run planned with, and the kernel level torch was held to."""
    from oger.runtime.precision import cpu_flags

    flags = set(env["OGER_CPU_FLAGS"].split()) if "OGER_CPU_FLAGS" in env else cpu_flags()
    have = [f for f in ISA_FLAGS if f in flags]
    held = f", torch kernels held to {env['ATEN_CPU_CAPABILITY']}" if "ATEN_CPU_CAPABILITY" in env else ""
    return f"CPU flags {' '.join(have) or 'none of ' + '/'.join(ISA_FLAGS)}{held}"


def build() -> dict:
    """What the cold demo runs with, without running it: the config `oger prepare` and `oger run` are
    given (loaded and validated as the CLI does, workdir as `--set`) and the AVX2 stand-in's environment."""
    from oger.contract.config import load_config

    return {
        "config": load_config(REPO / CONFIG, [f"workdir={Path(tempfile.gettempdir()) / 'work'}"]),
        "as_avx2_env": as_avx2_env(),
    }


def cold_demo(tmp: Path, extra_env: dict[str, str]) -> tuple[float, float, dict]:
    """Wall seconds of `make setup`'s `oger prepare` and of one cold `oger run configs/tiny.yaml`
    after it, and the run's summary.json."""
    env = dict(
        os.environ,
        **extra_env,
        PREFECT_HOME=str(tmp / "prefect"),
        OGER_CACHE_DIR=str(tmp / "cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "oger.cli", "prepare", CONFIG], cwd=REPO, env=env, capture_output=True, text=True
    )
    prepare_s = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"oger prepare failed:\n{proc.stderr[-3000:]}")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "oger.cli", "run", CONFIG, "--set", f"workdir={tmp / 'work'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"oger run failed:\n{proc.stderr[-3000:]}")
    summary = Path(proc.stdout.strip().splitlines()[-1])
    return prepare_s, wall, json.loads(summary.read_text())


def main() -> None:
    extra_env = as_avx2_env() if os.environ.get("OGER_BENCH_AS_AVX2") == "1" else {}
    tmp = Path(tempfile.mkdtemp(prefix="oger-demo-"))
    try:
        prepare_s, wall, summary = cold_demo(tmp, extra_env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stages = summary["stages"]
    rows = [[name, s["seconds"]] for name, s in stages.items()]
    rows.append(["(sum of stages)", sum(s["seconds"] for s in stages.values())])
    rows.append(["wall, incl. start-up and Prefect", wall])
    rows.append(["(before it: `oger prepare`, once in make setup)", prepare_s])
    table(
        f"demo: cold `oger run configs/tiny.yaml` ({machine()}; {isa_line(extra_env)}; load average "
        f"{os.getloadavg()[0]:.1f})",
        ["stage", "seconds"],
        rows,
    )
    syn = summary.get("evaluate", {}).get("synthetic", {})
    sft = stages.get("policy", {}).get("metrics", {})
    print(
        f"SFT: {sft.get('sft_steps')} steps in {sft.get('sft_seconds')} s; synthetic held-out "
        f"base {syn.get('base')} -> trained {syn.get('trained')}"
    )
    result(
        "demo",
        wall_s=wall,
        target_s=TARGET_S,
        met=int(wall <= TARGET_S),
        prepare_s=prepare_s,
        **{f"{name}_s": float(s["seconds"]) for name, s in stages.items()},
        synthetic_base=syn.get("base"),
        synthetic_trained=syn.get("trained"),
    )


if __name__ == "__main__":
    main()
