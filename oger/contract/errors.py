"""One exception type for problems the user can fix (bad config, bad data, empty filter).

The CLI prints these as a single clear line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class OgerError(Exception):
    """A user-facing error whose message names the file, row, field or stage at fault."""


class ConfigError(OgerError):
    """The YAML config or a --set override is invalid."""


class DataError(OgerError):
    """An input data file is missing, unreadable or lacks a required field."""


class StageError(OgerError):
    """A stage ran but could not produce a valid output (e.g. a filter that keeps nothing)."""
