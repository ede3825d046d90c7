"""How torch runs on this machine: a small model's batch split over CPU threads (`cpu_threads`) and
bf16-mixed precision where the CPU has native bf16 (`precision`)."""
