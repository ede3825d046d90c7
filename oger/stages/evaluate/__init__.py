"""evaluate stage: the benchmark registry (`benchmarks`), answer scoring in a process pool
(`scoring`) and the stage itself (`stage`); sampling comes from `oger.generation`, the files from
`oger.data`, avg@k / pass@k / maj@k from `oger.sample_metrics`."""

STAGE = "evaluate"  # the stage's name: other modules import it, never spell it
