"""filter stage: teacher traces kept or dropped for correctness (math-verify) and length."""

STAGE = "filter"  # the stage's name: other modules import it, never spell it
