"""Atomic training checkpoints (model folder + optimizer/scheduler state) and resume."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

_STEP = re.compile(r"^step-(\d{6})$")


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer, scheduler, keep: int = 2) -> Path:
    """Write step-NNNNNN/ via a temp dir and rename; prune all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
    (tmp / "COMPLETE").write_text(str(step))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
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


def load_trainer_state(ckpt: Path, optimizer, scheduler) -> int:
    """Restore optimizer and scheduler; returns the number of steps already done."""
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])
