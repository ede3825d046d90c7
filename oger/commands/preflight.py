"""Check a run's inputs before any flow starts: problem files (read and validated row by row) and
model references (on disk, or in the HF cache when offline) of the stages that will compute.

Why: a bad file found inside the flow costs a Prefect start-up and buries the one useful line
under a flow-run traceback; found here it is one `error:` line that names the file, row and field.
Stages already cached are not re-checked (their inputs are in their key's fingerprints).
"""

from __future__ import annotations

from oger import contract, pipeline
from oger.contract import ModelUse
from oger.contract.config import OgerConfig
from oger.contract.errors import ConfigError
from oger.models import check_model_available


def model_uses(cfg: OgerConfig, stage: str) -> list[ModelUse]:
    """Every model `stage` loads when it computes (its `models` hook)."""
    hook = contract.get(stage).models
    return hook(cfg) if hook is not None else []


def check_inputs(cfg: OgerConfig, selected: list[str]) -> dict[str, pipeline.StagePlan]:
    """Raise a user error (`OgerError`) for the first bad input of the selected stages that will
    compute; returns the plan."""
    try:
        plans = pipeline.plan(cfg)  # fingerprints local files and model folders
    except ConfigError:
        for stage in pipeline.STAGES:  # a missing model path: name the config field
            for use in model_uses(cfg, stage):
                check_model_available(use.ref, use.field)
        raise
    to_run = [s for s in selected if pipeline.cached_ref(cfg, plans[s]) is None]
    for stage in to_run:
        for use in model_uses(cfg, stage):
            check_model_available(use.ref, use.field)
        check = contract.get(stage).check_inputs
        if check is not None:
            check(cfg)
    return plans
