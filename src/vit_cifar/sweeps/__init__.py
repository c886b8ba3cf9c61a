"""Hyperparameter sweeps: running each job of a -m sweep, and the summary of a sweep folder."""
