"""teachers stage: several teachers (scripted, transformers, dataset, OpenAI-compatible, vLLM) write reasoning traces."""
