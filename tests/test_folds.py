import numpy as np
import pytest

from emergence_model.folds import (
    NOT_TRAINED,
    SEEN_BY_ALL,
    Folds,
    fold_splits,
    held_out_by,
    prefix_digest,
    rows_fingerprint,
    split_indices,
    training_folds,
)


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


def test_folds_are_made_once_and_recorded_as_a_checkpoint_keeps_them():
    prefixes = [f"p{i % 40}" for i in range(50)]
    folds = Folds.of(prefixes, 3, 0.1, 0.2, 5)
    splits = fold_splits(prefixes, 3, 0.1, 0.2, 5)
    assert len(folds) == 3
    for mine, theirs in zip(folds.splits, splits, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert folds.prefix_folds == held_out_by(prefixes, splits)
    record = folds.record()
    assert list(record) == ["prefix_folds", "split"]
    assert record["split"] == {"folds": 3, "val_fraction": 0.1, "test_fraction": 0.2, "seed": 5}
    others = ["p3", "new", *prefixes[:5]]
    codes = folds.codes(others)
    assert codes.tolist() == training_folds(others, {"data": record}).tolist()
    assert codes[1] == NOT_TRAINED and set(codes[2:].tolist()) <= {0, 1, 2}


def test_a_checkpoint_from_before_the_record_gets_its_folds_back_on_its_own_cache():
    prefixes = [f"p{i}" for i in range(30)]
    split = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 1}  # --folds 1, unrecorded
    checkpoint = {
        "model_names": ["a", "b"],
        "target_name": "t",
        "data": {"split": split, "fingerprint": rows_fingerprint(["a", "b", "t"], prefixes)},
    }
    expected = Folds.of(prefixes, 1, 0.1, 0.2, 1).codes(prefixes)
    assert training_folds(prefixes, checkpoint).tolist() == expected.tolist()
    assert set(expected.tolist()) == {0, SEEN_BY_ALL}
    assert training_folds(prefixes[1:], checkpoint) is None  # another cache: unknown
    assert prefix_digest("p1") != prefix_digest("p2") and len(prefix_digest("p1")) == 16
