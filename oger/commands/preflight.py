"""Check a run's inputs before any flow starts: problem files (read and validated row by row) and
model references (on disk, or in the HF cache when offline) of the stages that will compute.

Why: a bad file found inside the flow costs a Prefect start-up and buries the one useful line
under a flow-run traceback; found here it is one `error:` line that names the file, row and field.
Stages already cached are not re-checked (their inputs are in their key's fingerprints).
"""

from __future__ import annotations

from oger import pipeline
from oger.contract.config import OgerConfig
from oger.contract.errors import ConfigError
from oger.models import check_model_available
from oger.stages.problems.stage import check_sources


def model_fields(cfg: OgerConfig, stage: str) -> list[tuple[str, str]]:
    """(config field, model reference) of every model the stage loads."""
    if stage == "teachers":
        return [(f"teachers.teachers[{i}].model ({t.name})", t.model)
                for i, t in enumerate(cfg.teachers.teachers) if t.backend in ("transformers", "vllm")]
    if stage == "filter":
        return [("filter.tokenizer", cfg.filter.tokenizer)]
    if stage == "index":
        return [("index.encoder", cfg.index.encoder)]
    if stage == "policy" and cfg.policy.source == "model":
        return [("policy.model", cfg.policy.model)]
    return []


def check_inputs(cfg: OgerConfig, selected: list[str]) -> dict[str, pipeline.StagePlan]:
    """Raise a user error (`OgerError`) for the first bad input of the selected stages that will
    compute; returns the plan."""
    try:
        plans = pipeline.plan(cfg)  # fingerprints local files and model folders
    except ConfigError:
        for stage in pipeline.STAGES:  # a missing model path: name the config field
            for field, ref in model_fields(cfg, stage):
                check_model_available(ref, field)
        raise
    to_run = [s for s in selected if pipeline.cached_ref(cfg, plans[s]) is None]
    for stage in to_run:
        for field, ref in model_fields(cfg, stage):
            check_model_available(ref, field)
    if "problems" in to_run:
        check_sources(cfg.problems)
    return plans
