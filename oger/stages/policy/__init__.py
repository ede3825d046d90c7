"""policy stage: the initial model (tiny Qwen2 built here, or a pretrained one), optionally warm-started by SFT."""

STAGE = "policy"  # the stage's name: other modules import it, never spell it
