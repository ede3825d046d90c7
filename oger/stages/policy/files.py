"""The policy artifact's folder and its reader: the only place its name is spelled."""

from __future__ import annotations

from pathlib import Path

from oger.contract.artifacts import ArtifactRef, artifact_path

MODEL_DIR = "model"
FILES = {
    MODEL_DIR: "the initial policy as an HF folder (model and tokenizer; loads with "
    "AutoModelForCausalLM.from_pretrained and vLLM)"
}


def model_dir(ref: ArtifactRef | str | Path) -> Path:
    """The policy's HF model folder."""
    return artifact_path(ref) / MODEL_DIR
