"""Cache every model's next-token distribution after every prefix, for training the predictor.

    python cache_features.py --suite pythia --dataset wikipedia --out cache/wikipedia
    python cache_features.py --verify cache/wikipedia
    python cache_features.py --help      # every flag, made from the config dataclasses

The same command as `emergence-model extract`: emergence_model/commands/extract.py.
"""

from emergence_model.cli import exit_on_user_error
from emergence_model.commands.extract import main

if __name__ == "__main__":
    exit_on_user_error(main)
