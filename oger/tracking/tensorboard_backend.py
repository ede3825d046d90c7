"""TensorBoard event files in the run folder (the train artifact keeps them)."""

from __future__ import annotations

import json
from pathlib import Path

from oger.tracking.base import PREFIX, columns


class TensorBoard:
    """Event files in the run folder (the train artifact keeps them): scalars per step, the config, tags
    and tables as text, images."""

    name = "tensorboard"

    def __init__(self, logdir: Path | None):
        self.logdir = logdir
        self.writer = None

    def start(self, run: dict, settings: dict, previous: dict | None) -> None:
        if self.logdir is None:
            raise ValueError("no folder for the event files")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.logdir))

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(PREFIX + k, v, step)
        self.writer.flush()

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")

    def set_tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in tags.items()))

    def log_table(self, name: str, rows: list[dict]) -> None:
        cols = columns(rows)
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        self.writer.add_text(name, "\n".join(lines))

    def log_image(self, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
