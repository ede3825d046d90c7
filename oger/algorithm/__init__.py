"""The OGER algorithm as pure functions: GRPO / LUFFY losses and advantages (`core`), the bonus's
guards (`guards`), rewards of a batch (`reward`) and the sample record they read (`samples`). No
I/O, no training loop (that is `oger.stages.train.trainer`)."""
