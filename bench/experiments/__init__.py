"""Experiments: each makes a table on the ladders of `ladders.py` and writes it to
docs/results/<name>.md (`python -m bench.experiments.<name> --help`)."""
