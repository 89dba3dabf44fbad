import numpy as np
import pytest

from emergence_model.splits import fold_splits, split_indices


def test_split_is_deterministic_disjoint_and_keeps_repeated_prefixes_together():
    prefixes = [f"p{i % 80}" for i in range(100)]  # p0..p19 appear twice
    train, val, test = split_indices(prefixes, 0.1, 0.2, seed=3)
    again = split_indices(prefixes, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    side = {}
    for name, rows in (("train", train), ("val", val), ("test", test)):
        for r in rows:
            assert side.setdefault(prefixes[r], name) == name
    assert len({prefixes[r] for r in test}) == 16 and len({prefixes[r] for r in val}) == 8
    assert not np.array_equal(split_indices(prefixes, 0.1, 0.2, seed=4)[2], test)
    with pytest.raises(ValueError, match="too few"):
        split_indices(prefixes[:2], 0.4, 0.4, seed=0)


def test_folds_partition_the_prefixes_and_never_train_on_their_test_rows():
    prefixes = [f"p{i % 90}" for i in range(100)]
    splits = fold_splits(prefixes, 4, 0.1, 0.2, seed=0)
    tests = np.concatenate([test for _, _, test in splits])
    assert sorted(tests.tolist()) == list(range(100))  # every row held out exactly once
    for train, val, test in splits:
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
        texts = [{prefixes[r] for r in rows} for rows in (train, val, test)]
        assert not (texts[0] & texts[2]) and not (texts[1] & texts[2]) and not (texts[0] & texts[1])
        assert len(texts[1]) == 9
    assert np.array_equal(
        fold_splits(prefixes, 1, 0.1, 0.2, 0)[0][2], split_indices(prefixes, 0.1, 0.2, 0)[2]
    )
