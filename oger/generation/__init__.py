"""Text generation, shared by teachers, training rollouts and evaluation: padded HF `generate` with
per-row seeded sampling and entropies (`hf`), transformers' continuous batching (`paged`), the
rollout record (`records`) and the engines evaluation samples through (`engines`: HF, vLLM)."""
