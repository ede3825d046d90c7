"""Benchmarks that time this project beside its peers in one run (`python -m bench NAME`).

Every bench module has `main()` (the timed run: a table and a final RESULT line) and `build()`: the
configs and inputs `main()` runs with, built and validated without running anything timed, so
tests/test_bench.py can check every registered bench in seconds (a config field that moved fails
there, not when someone next runs the bench)."""

BENCHES = [
    "embed",
    "lookup",
    "rerun",
    "reward_overhead",
    "trl_step",
    "trl_learning",
    "update",
    "update_memory",
    "gather_bytes",
    "gpu_step",
    "gpu_check",
    "rollout_engines",
    "decode",
    "retention",
    "demo",
]
