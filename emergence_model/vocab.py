"""Which tokenizer a cache, a checkpoint or a model speaks, and whether two speak the same one.

Token ids mean something only under one tokenizer: a network trained on one suite's caches reads
another suite's ids as noise, though every array fits when the two vocabularies have one size
(Llama 2 and Mistral both have 32,000 tokens). So everything this package brings together (an
extraction's models, a training cache and its transfer caches, a checkpoint and a cache, the
study's sets, caches combined) is compared by `tokenizer_difference`: by the fingerprint of the
vocabulary (token -> id) where both sides record one, else by the tokenizer's name (org and
directory ignored) and the vocabulary's size, and the refusal says which it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from emergence_model.suites import model_basename

# meta["extraction"]'s entry, and a checkpoint's "tokenizer" record's, for the fingerprint.
FINGERPRINT_KEY = "tokenizer_fingerprint"


class TokenizerMismatchError(ValueError):
    """Two things of different tokenizers brought together; the message names both."""


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of a tokenizer's vocabulary (token -> id): one tokenizer, wherever its copy is."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenizerId:
    """What is known of a tokenizer: its name (a model id or directory; None where unknown), its
    vocabulary's size and the fingerprint of its vocabulary (None where not recorded)."""

    name: str | None
    vocab_size: int
    fingerprint: str | None = None

    @classmethod
    def of_cache(cls, meta: dict) -> TokenizerId:
        """The tokenizer a cache's metadata records (its target's)."""
        fingerprint = (meta.get("extraction") or {}).get(FINGERPRINT_KEY)
        return cls(meta["tokenizer"], int(meta["vocab_size"]), fingerprint)

    @classmethod
    def of_checkpoint(cls, checkpoint: dict) -> TokenizerId:
        """The tokenizer a checkpoint's network was trained under: its "tokenizer" record, or
        for a checkpoint from before it recorded one, only its vocabulary's size."""
        record = checkpoint.get("tokenizer")
        record = record if isinstance(record, dict) else {}
        name, fingerprint = record.get("name"), record.get(FINGERPRINT_KEY)
        return cls(
            name if isinstance(name, str) else None,
            int(checkpoint["vocab_size"]),
            fingerprint if isinstance(fingerprint, str) else None,
        )

    def record(self) -> dict:
        """The checkpoint's "tokenizer" record (plain values)."""
        return {"name": self.name, "vocab_size": self.vocab_size, FINGERPRINT_KEY: self.fingerprint}

    def label(self) -> str:
        """Its name, or what else is known of it."""
        return repr(self.name) if self.name else f"of {self.vocab_size} tokens"


def tokenizer_difference(a: TokenizerId, b: TokenizerId) -> str | None:
    """How the tokenizers `a` and `b` are known to differ, or None if they may be one: by their
    fingerprints where both record one; else by their vocabulary sizes and, where both are
    named, their names (org and directory ignored)."""
    if a.fingerprint and b.fingerprint:
        if a.fingerprint == b.fingerprint:
            return None
        return f"vocabulary fingerprints {a.fingerprint} vs {b.fingerprint}"
    if a.vocab_size != b.vocab_size:
        return f"vocabulary sizes {a.vocab_size} vs {b.vocab_size}"
    if a.name and b.name and model_basename(a.name) != model_basename(b.name):
        return (
            f"compared by name and vocabulary size ({a.vocab_size} tokens), as one of them "
            "records no fingerprint of its vocabulary"
        )
    return None


def check_same_tokenizer(
    a: TokenizerId,
    b: TokenizerId,
    what_a: str,
    what_b: str,
    advice: str,
    error: type[ValueError] = TokenizerMismatchError,
) -> None:
    """Refuse (`error`), in one line naming both sides and how they differ, two things of
    different tokenizers."""
    difference = tokenizer_difference(a, b)
    if difference is not None:
        raise error(
            f"{what_a} has tokenizer {a.label()}, {what_b} has {b.label()}; {advice} ({difference})"
        )
