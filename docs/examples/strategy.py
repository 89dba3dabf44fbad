"""An entry to the challenge: guess the target model's top next token from the small models'.

Score it on the demo (after `python train.py` has built the demo and its checkpoint):

    emergence-model evaluate --cache ~/.cache/emergence-model/demo/caches/demo-rte \\
        --checkpoint checkpoints/demo.ckpt --strategy docs/examples/strategy.py:guess

on one of the challenge's pickles:

    emergence-model evaluate --cache test.pkl --strategy docs/examples/strategy.py:guess

or, as a host, several entries on a hidden test set, each in its own process:

    emergence-model evaluate --test hidden.pkl --strategy docs/examples/strategy.py:guess \\
        --strategy other_entry.py:guess --timeout 60 --out leaderboard

The function is all the harness reads from this file; it may import anything installed.
"""

import numpy as np


def guess(sentences, model_names, target_model_name, probs):
    """One token id per prefix: the argmax of the small models' probabilities averaged with
    weights that grow with the model's rank (the models come smallest first), so that the larger
    models, which resemble the target more, count for more than in a plain mean.

    sentences: list of N prefixes (str); model_names: the M small models' names, smallest first;
    target_model_name: the model to predict; probs: float16 array (N, M, V), each model's
    next-token probabilities. Returns a list of N ints in [0, V).
    """
    weights = np.arange(1, len(model_names) + 1, dtype=np.float32)
    weights /= weights.sum()
    mixed = np.einsum("m,nmv->nv", weights, probs.astype(np.float32))  # (N, M, V) -> (N, V)
    return mixed.argmax(axis=1).tolist()
