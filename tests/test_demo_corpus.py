import pytest

from emergence_model.demo.config import CORPUS_FILE, DemoConfig
from emergence_model.demo.corpus import (
    Corpus,
    clean_docstring,
    module_docstrings,
    prepare_corpus,
    stable_percent,
    stdlib_corpus,
    stdlib_source_files,
    text_file_corpus,
)

pytestmark = pytest.mark.usefixtures("stdlib_subtree")


def test_clean_docstring_keeps_prose_and_drops_code():
    doc = (
        "split(sep=None, maxsplit=-1)\n\n"
        "Return a list of the words in the string,\nusing sep as the delimiter string.\n\n"
        "    if x:\n        return y\n\n"
        "For example:\n>>> 'a b'.split()\n['a', 'b']\n\n"
        ".. versionadded:: 3.2"
    )
    # The signature line, the code block, the doctest and the directive go; the prose is reflowed.
    assert clean_docstring(doc) == (
        "Return a list of the words in the string, using sep as the delimiter string."
    )
    assert clean_docstring("x = f(a, b)[0]") == ""


def test_stdlib_corpus_is_deterministic_and_split_by_module(stdlib_subtree):
    first = stdlib_corpus(35)
    again = stdlib_corpus(35)
    assert (first.train, first.valid, first.meta) == (again.train, again.valid, again.meta)
    assert first.train and first.valid
    assert first.meta["python_version"] and first.meta["num_files"] > 1
    # Every document of a module lies on the side its path's hash chose.
    for path in stdlib_source_files(stdlib_subtree)[:5]:
        module = path.relative_to(stdlib_subtree).as_posix()
        side = first.valid if stable_percent(module) < 35 else first.train
        other = first.train if side is first.valid else first.valid
        for doc in module_docstrings(path.read_bytes()):
            text = clean_docstring(doc)
            assert not text or text not in other or text in side


def test_stable_percent_is_fixed():
    # sha256-based, so the same on every machine; a change would move modules between splits.
    assert [stable_percent(k) for k in ("os.py", "json/decoder.py")] == [92, 93]


def test_text_file_corpus_and_its_errors(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document number {i} says a thing." for i in range(60)))
    corpus = text_file_corpus(path, 35)
    assert len(corpus.train) + len(corpus.valid) == 60 and corpus.valid
    assert corpus.meta["file_sha256"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_file_corpus(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("only one document")
    with pytest.raises(ValueError, match="blank lines"):
        text_file_corpus(tmp_path / "one.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ValueError, match="not UTF-8"):
        text_file_corpus(tmp_path / "bin.txt")


def test_prepare_corpus_saves_the_corpus_and_reads_it_back(tmp_path, monkeypatch):
    corpus = prepare_corpus(tmp_path, DemoConfig())
    assert (tmp_path / CORPUS_FILE).is_file()
    assert corpus.meta["source"] == "python-stdlib-docstrings"

    def fail(*args, **kwargs):
        raise AssertionError("a saved corpus was read from the standard library again")

    monkeypatch.setattr("emergence_model.demo.corpus.stdlib_corpus", fail)
    again = prepare_corpus(tmp_path, DemoConfig())
    assert (again.train, again.valid, again.meta) == (corpus.train, corpus.valid, corpus.meta)
    assert Corpus.load(tmp_path / CORPUS_FILE).valid == corpus.valid
