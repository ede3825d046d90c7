"""`oger prepare CONFIG`: the one-time set-up of a machine for a config, so that its first run
spends its time on pipeline work. `make setup` runs it for configs/tiny.yaml.

- Every GGUF model the config loads is dequantised once into the model cache
  (`oger.models.cache_root`), and a GGUF tokenizer converted: for SmolLM2 that was 22 s of the
  first demo's teachers stage (the GGUF is parsed three times by transformers' loader).
- Prefect's database is created and migrated (`prefect server database upgrade`): a fresh
  PREFECT_HOME spent 7 s on migrations inside the first flow run.

Both are caches: deleting them costs time, never results, and a run without `prepare` does the
same work itself.
"""

from __future__ import annotations

import subprocess
import sys
import time

from oger.commands.preflight import model_uses
from oger.contract.config import OgerConfig
from oger.contract.errors import StageError
from oger.models import gguf_tokenizer_dir, materialize_gguf, resolve_model
from oger.pipeline import STAGES


def gguf_models(cfg: OgerConfig) -> list[tuple[str, str, bool]]:
    """(config field, model reference, tokenizer only) of each distinct GGUF file the config loads."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for stage in STAGES:
        for use in model_uses(cfg, stage):
            src = resolve_model(use.ref)
            if src.kind != "gguf":
                continue
            tokenizer_only = not use.weights  # e.g. the filter counts tokens; it loads no weights
            if src.path not in seen or (seen[src.path][2] and not tokenizer_only):
                seen[src.path] = (use.field, use.ref, tokenizer_only)
    return list(seen.values())


def prepare(cfg: OgerConfig, say=print) -> list[tuple[str, str, float]]:
    """Convert the config's GGUF models and migrate Prefect's database; returns
    (what, where, seconds) per item."""
    done = []
    for field, ref, tokenizer_only in gguf_models(cfg):
        t = time.perf_counter()
        path = gguf_tokenizer_dir(resolve_model(ref)) if tokenizer_only else materialize_gguf(ref)
        done.append(
            (f"{field}: {ref} ({'tokenizer' if tokenizer_only else 'model'})", str(path), time.perf_counter() - t)
        )
        say(f"prepared {done[-1][0]} -> {path} in {done[-1][2]:.1f} s")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StageError(
            f"prepare: `prefect server database upgrade` failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    said = [line for line in proc.stdout.splitlines() if line.strip()]  # "Prefect database at URL upgraded!"
    done.append(("Prefect database (migrations)", said[-1] if said else "", time.perf_counter() - t))
    say(f"prepared {done[-1][0]} -> {done[-1][1]} in {done[-1][2]:.1f} s")
    return done
