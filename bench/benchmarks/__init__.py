"""Benchmarks: each times the package against a baseline in the same run and writes the ratios
to docs/results/bench_<name>.md (`python -m bench.benchmarks.bench_<name> --help`)."""
