"""Benchmarks for shmfs: ``python -m bench``. Results are ratios to baselines run in the same
process, because the machines we run on are shared and noisy."""
