"""Synthetic but valid story histories for benchmarks and demos."""
