"""teachers stage: several teachers (scripted, transformers, dataset, OpenAI-compatible, vLLM) write
reasoning traces."""

STAGE = "teachers"  # the stage's name: other modules import it, never spell it
