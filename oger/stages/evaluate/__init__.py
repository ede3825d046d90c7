"""evaluate stage: the benchmark registry (`benchmarks`), answer scoring in a process pool
(`scoring`), avg@k / pass@k / maj@k (`metrics`) and the stage itself (`stage`); sampling comes from
`oger.generation`."""
