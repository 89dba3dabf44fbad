"""The challenge's harness: anyone's strategy function, scored as the challenge scores it.

A participant writes `strategy(sentences, model_names, target_model_name, probs) -> list[int]`;
`emergence-model evaluate --strategy PATH.py:FUNCTION` scores it beside the baselines and any
trained network, and `--test` runs a leaderboard on a hidden test set, each function in its own
process (docs/challenge.md).

- `entries.py`: how a function is named, loaded and called, and what its answer must be;
- `inputs.py`: what a function sees of a cache or a challenge pickle (never the target's column);
- `runs.py`: running the functions over a scoring set, in this process or each in its own;
- `worker.py`: the process a function runs in under `--test`, and the messages it exchanges.

Light: importing the package imports none of its modules.
"""
