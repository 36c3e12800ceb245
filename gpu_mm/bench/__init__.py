"""Benchmark scenarios and baseline adapters used by ``gpu-mm bench`` and the scripts in benchmarks/."""
