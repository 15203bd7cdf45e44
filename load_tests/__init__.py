"""Benchmarks and load scenarios for meshserve (run from the repository root)."""
