"""The `oger` subcommands besides run/status/sweep (which live in `oger.cli`): plan, prepare, the
input checks before a run (`preflight`), the run report, index/rounds, bonus, and the error log."""
