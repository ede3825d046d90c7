"""What `oger gc` keeps (`retention`): no stage's key."""

from __future__ import annotations

from pydantic import Field

from oger.contract.config.base import Strict


class RetentionConfig(Strict):
    """What `oger gc` keeps (and the nightly deployment applies after each round): never in a key."""

    keep_rounds: int = Field(
        3, ge=1, description="the last N rounds keep their artifacts (by their latest completed run) and stay cached"
    )
    keep_runs: int = Field(10, ge=1, description="the last M run folders (older ones: summary archived)")
    keep_checkpoints: bool = Field(
        False,
        description="keep the resumable checkpoints of finished train "
        "stages of kept rounds (they are only needed by an unfinished one)",
    )
    fail_on_regression: bool = Field(
        False,
        description="fail the run (after its stages are recorded and "
        "cached) when its round's trained score fell below the previous "
        "round's beyond the interval (`oger rounds`); off: a warning only",
    )
