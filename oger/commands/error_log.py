"""One console line per user error; the traceback goes to a log file under the workdir.

A user error (`OgerError`: a bad file, row, config value or model reference) ends the CLI with
exit status 2 and `error: <what, where, what to do> (details: <log file>)`. Prefect logs a failed
task's and flow's exception with a full traceback on its console handler; `quiet_user_errors`
drops those records from the console only (the Prefect API/UI still receives them), and only
for `OgerError`s — an internal bug keeps its traceback everywhere.
"""

from __future__ import annotations

import logging
import os
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from oger.contract.artifacts import atomic_write
from oger.contract.errors import OgerError


def write_traceback(exc: BaseException, workdir: Path | None) -> Path | None:
    """Write the exception's traceback to `<workdir>/logs/error-<utc time>-<pid>.log`; None when
    there is no workdir yet (a config that does not load) or it cannot be written."""
    if workdir is None:
        return None
    try:
        logs = Path(workdir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = logs / f"error-{stamp}-{os.getpid()}.log"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError:
        return None


def error_line(exc: OgerError, log: Path | None) -> str:
    """The one console line: the message (names file/row/field and what to do) and the log file."""
    msg = " ".join(str(exc).split("\n"))
    return f"error: {msg}" + (f" (details: {log})" if log else "")


class _DropUserErrors(logging.Filter):
    """Drop records that carry an OgerError's traceback (Prefect's 'Task run failed with
    exception' / 'Encountered exception during execution')."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, OgerError)


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found: list[logging.Handler] = []
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, PrefectConsoleHandler) and h not in found:
                found.append(h)
    return found


@contextmanager
def quiet_user_errors() -> Iterator[None]:
    """While a flow runs from the CLI, keep user errors' tracebacks off Prefect's console."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    filt = _DropUserErrors()
    handlers = _console_handlers()
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)
