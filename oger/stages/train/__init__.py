"""train stage: GRPO / LUFFY / OGER; the loop (`trainer`), checkpoints, multi-process launch and the rank entry point."""
