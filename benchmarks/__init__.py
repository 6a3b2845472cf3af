"""Benchmarks. ``python -m benchmarks.generation --help`` (or ``make bench``)."""
