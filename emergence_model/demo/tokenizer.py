"""The demo suite's tokenizer: a byte-level BPE trained on its documents, or a file of the user's.

Either way ids 0 and 1 are end-of-text and padding, as in the GPT-NeoX tokenizer that Pythia uses,
and the suite keeps it as `save_pretrained` writes it, so it loads like a hub model's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from emergence_model.demo.config import TOKENIZER_DIR, DemoConfig, log
from emergence_model.demo.corpus import Corpus

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
# Ids 0 and 1, as in the GPT-NeoX tokenizer that Pythia uses.
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)


def train_bpe_tokenizer(documents: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `documents`; ids 0/1 are end-of-text and padding.

    Training is deterministic: the same documents give the same merges in any process.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(
            f"vocab_size {vocab_size} is below the 256 bytes + special tokens; raise it"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def load_tokenizer_file(path: Path):
    """A `tokenizers` JSON file (e.g. GPT-NeoX-20B's) with <|endoftext|> and <|padding|> tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizer.json")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"cannot read tokenizer file {path} ({e}); pass a tokenizers JSON") from e
    # Checked on the file itself: the transformers wrapper would add a missing token silently.
    missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(
            f"tokenizer file {path} has no {', '.join(missing)} token; the demo needs both "
            "(as GPT-NeoX's tokenizer has)"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def prepare_tokenizer(suite_dir: Path, config: DemoConfig, corpus: Corpus):
    """The suite's tokenizer: loaded from suite_dir/tokenizer, else trained (or read) and saved."""
    from transformers import AutoTokenizer

    path = suite_dir / TOKENIZER_DIR
    if not path.exists():
        if config.tokenizer is None:
            log(f"training a {config.vocab_size}-token byte-level BPE on the training documents")
            tokenizer = train_bpe_tokenizer(corpus.train, config.vocab_size)
        else:
            tokenizer = load_tokenizer_file(Path(config.tokenizer))
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)
    return AutoTokenizer.from_pretrained(path)
