"""The benchmark harness itself: RESULT lines, the GPU skip, a small LanceDB lookup."""

import subprocess
import sys

from bench import lookup


def test_lookup_bench_prints_result(capsys):
    lookup.main(rows=2000, per_problem=10, dim=16, batch=4, calls=5)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT lookup lance_ms=") and "rows=2000" in last


def test_gpu_step_skips_cleanly_without_gpu():
    import torch

    proc = subprocess.run([sys.executable, "-m", "bench", "gpu_step"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    if torch.cuda.is_available():
        assert last.startswith("RESULT gpu_step tokens_per_s=")
    else:
        assert last == "RESULT gpu_step skipped=1"


def test_unknown_bench_is_refused():
    proc = subprocess.run([sys.executable, "-m", "bench", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown bench" in proc.stderr
