"""The image storage benchmark suite: run it with ``pytest benchmarks``."""
