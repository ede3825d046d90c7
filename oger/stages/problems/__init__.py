"""problems stage: training and held-out problems from synthetic, local or hub sources, one table."""

STAGE = "problems"  # the stage's name: other modules import it, never spell it
