"""policy stage: the initial model (tiny Qwen2 built here, or a pretrained one), optionally warm-started by SFT."""
