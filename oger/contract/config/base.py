"""What every config section shares: the strict base model (unknown keys fail loudly, naming the key,
the value and the file), the checked instruction template and path expansion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from oger.contract.errors import ConfigError
from oger.prompt_check import check_instruction

# A user turn: a str.format template that must hold {question} (oger.prompt_check), checked at load.
Instruction = Annotated[str, AfterValidator(check_instruction)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def expand_path(p: str) -> Path:
    """Expand `~` and environment variables; an unset variable is an error, not an empty string."""
    expanded = os.path.expandvars(os.path.expanduser(p))
    if "$" in expanded:
        raise ConfigError(f"path {p!r} uses an unset environment variable (e.g. OGER_DATA_DIR)")
    return Path(expanded)
