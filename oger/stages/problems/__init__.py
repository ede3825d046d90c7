"""problems stage: training and held-out problems from synthetic, local or hub sources, one table."""
