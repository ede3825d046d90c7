"""Atomic training checkpoints (model folder + optimizer/scheduler state) and resume, with the
metrics history a checkpoint covers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from oger.contract.artifacts import atomic_write

_STEP = re.compile(r"^step-(\d{6})$")


def save_checkpoint(
    root: Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    keep: int = 2,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write step-NNNNNN/ atomically (`atomic_write`: a temp dir, renamed); prune all but the newest `keep`.

    `model_state` / `optimizer_state` are full state dicts gathered from sharded ranks (FSDP);
    by default the model's and optimizer's own are saved."""
    final = root / f"step-{step:06d}"

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "COMPLETE").write_text(str(step))

    atomic_write(final, write)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_trainer_state(ckpt: Path) -> dict:
    """{step, optimizer, scheduler} as saved (full, unsharded state dicts)."""
    return torch.load(ckpt / "trainer_state.pt", weights_only=False, map_location="cpu")


def read_history(path: Path, done_steps: int) -> list[dict]:
    """Metrics of the steps a checkpoint covers; lines written after it (lost work) are dropped.

    The kept lines replace the file through `atomic_write` (a temp sibling, renamed), so a kill
    during the trim leaves the old file whole and the next resume trims it again."""
    if not path.exists():
        return []
    original = path.read_text()
    rows = []
    for line in original.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: it belongs to lost work anyway
            continue
    rows = [r for r in rows if r.get("step", done_steps + 1) <= done_steps]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text != original:  # also drops a cut last line, which the next append would run into
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return rows
