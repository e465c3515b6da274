"""Benchmarks of kale-magics, run as ``python -m bench.<name>``."""
