"""filter stage: teacher traces kept or dropped for correctness (math-verify) and length."""
