"""OGER reinforcement-learning pieces: the algorithm core (core.py) as pure tensor functions."""
