"""The demo's caches, made from the tiny demo suite through the registries and `extract_suite`."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_demo import model_dirs

from emergence_model.cache import CacheError, create_cache, open_cache
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.demo.prefix_sets import demo_prefixes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stdlib_subtree")]


def test_prepare_demo_caches_goes_through_extraction_and_is_reused(
    demo_suite_dir, tmp_path, monkeypatch
):
    wiki, rte = prepare_demo_caches(demo_suite_dir, tmp_path, progress=False)
    assert (wiki, rte) == (tmp_path / "demo-wiki", tmp_path / "demo-rte")
    cache = open_cache(wiki, full_check=True)
    assert cache.model_names == [str(d) for d in model_dirs(demo_suite_dir)]
    assert cache.prefixes == demo_prefixes("wiki", demo_suite_dir)
    assert cache.vocab_size == 300 and cache.logprobs.shape[1] == 3
    assert open_cache(rte).prefixes == demo_prefixes("rte", demo_suite_dir)

    def fail(*args, **kwargs):
        raise AssertionError("a finished cache was extracted again")

    monkeypatch.setattr("emergence_model.demo.caches.extract_suite", fail)
    assert prepare_demo_caches(demo_suite_dir, tmp_path, progress=False) == (wiki, rte)


def test_a_demo_cache_of_other_prefixes_is_rebuilt_and_other_caches_are_left_alone(
    demo_suite_dir, tmp_path
):
    wiki, rte = prepare_demo_caches(demo_suite_dir, tmp_path, progress=False)
    done = open_cache(wiki)

    def unfinished_cache(root: Path, dataset: str) -> None:
        create_cache(
            root / "demo-wiki",
            model_names=done.model_names,
            param_counts=done.param_counts,
            prefixes=done.prefixes[:5],
            vocab_size=done.vocab_size,
            tokenizer="t",
            source={"dataset": dataset},
        )

    unfinished_cache(tmp_path / "old", "demo-wiki")  # an earlier version's, left unfinished
    shutil.copytree(rte, tmp_path / "old" / "demo-rte")
    assert prepare_demo_caches(demo_suite_dir, tmp_path / "old", progress=False)
    assert open_cache(tmp_path / "old" / "demo-wiki").prefixes == done.prefixes
    unfinished_cache(tmp_path / "mine", "my-prefixes")  # not the demo's: never deleted
    with pytest.raises(CacheError, match="other prefixes"):
        prepare_demo_caches(demo_suite_dir, tmp_path / "mine", progress=False)
    prefixes_file = tmp_path / "mine" / "demo-wiki" / "prefixes.json"
    assert json.loads(prefixes_file.read_text()) == done.prefixes[:5]


def test_caches_build_the_suite_first(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(
        "emergence_model.demo.caches.build_suite", lambda suite_dir, **kw: built.append(suite_dir)
    )
    with pytest.raises(ValueError, match="not built"):  # the fake build left nothing
        prepare_demo_caches(tmp_path / "suite", progress=False)
    assert built == [tmp_path / "suite"]
