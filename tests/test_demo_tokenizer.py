import json

import pytest
from tiny_demo import TINY

from emergence_model.demo.config import TOKENIZER_DIR
from emergence_model.demo.corpus import stdlib_corpus
from emergence_model.demo.tokenizer import (
    load_tokenizer_file,
    prepare_tokenizer,
    train_bpe_tokenizer,
)

pytestmark = pytest.mark.usefixtures("stdlib_subtree")


def test_bpe_tokenizer_is_deterministic():
    docs = stdlib_corpus(35).train
    a = train_bpe_tokenizer(docs, 300)
    b = train_bpe_tokenizer(docs, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert (len(a), a.eos_token_id, a.pad_token_id) == (300, 0, 1)


def test_tokenizer_file_needs_special_tokens(tmp_path):
    docs = stdlib_corpus(35).train
    tokenizer = train_bpe_tokenizer(docs, 300)
    good = tmp_path / "tokenizer.json"
    good.write_text(tokenizer.backend_tokenizer.to_str())
    assert len(load_tokenizer_file(good)) == 300
    data = json.loads(good.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|padding|>"]
    del data["model"]["vocab"]["<|padding|>"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no <\\|padding\\|> token"):
        load_tokenizer_file(bad)
    with pytest.raises(FileNotFoundError):
        load_tokenizer_file(tmp_path / "missing.json")


def test_prepare_tokenizer_saves_it_like_a_hub_tokenizer(tmp_path):
    corpus = stdlib_corpus(35)
    tokenizer = prepare_tokenizer(tmp_path, TINY, corpus)
    assert (tmp_path / TOKENIZER_DIR / "tokenizer.json").is_file()
    assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) == (300, 0, 1)
    again = prepare_tokenizer(tmp_path, TINY, corpus)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
