"""Scripts that measure the package, run from the repository root as modules.

- `bench.benchmarks`: speed and memory, each timed against a baseline in the same run
  (`python -m bench.benchmarks.bench_predictor`);
- `bench.experiments`: the tables the README reports, on the ladders of `bench.experiments.ladders`
  (`python -m bench.experiments.predictor_ladders`);
- `bench.builders`: the data the experiments read, built from real text
  (`python -m bench.builders.build_real_suite`).

Each benchmark and experiment writes its results to docs/results/<script>.md and .json, stamped
with the commit, the command, the machine, the date and the wall time (`bench.common`).
"""
