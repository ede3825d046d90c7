"""Benchmarks that time this project beside its peers in one run (`python -m bench NAME`)."""
