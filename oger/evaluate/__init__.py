"""The evaluate stage and what it is built from: the benchmark registry (`benchmarks`), sampling
engines (`engines`), answer scoring in a process pool (`scoring`), avg@k / pass@k / maj@k
(`metrics`) and the stage itself (`stage`)."""
