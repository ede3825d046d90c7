"""evaluate stage: the benchmark registry (`benchmarks`), answer scoring in a process pool
(`scoring`), avg@k / pass@k / maj@k (`metrics`) and the stage itself (`stage`); sampling comes from
`oger.generation`."""

STAGE = "evaluate"  # the stage's name: other modules import it, never spell it
