"""train stage: GRPO / LUFFY / OGER; the loop (`trainer`) and its parts, checkpoints, multi-process
launch and the rank entry point."""

STAGE = "train"  # the stage's name: other modules import it, never spell it
