"""Causal language models: loading one like a hub model, counting its parameters, making one.

Every model this package reads, Pythia's or the demo's, is loaded through `from_pretrained`; the
models it makes itself (the demo ladder, the tests' tiny suite, the extraction benchmark's ladder)
all come from one Pythia-shaped GPT-NeoX config, `gpt_neox_config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# accelerate's ways of spreading one model over a machine's devices (`from_pretrained`'s
# device_map): auto and balanced even out the GPUs, balanced_low_0 keeps GPU 0 light, sequential
# fills them in order.
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# Logit rows are rounded up to a multiple of this, as Pythia's are (50277 tokens -> 50304 rows).
LOGIT_ROW_MULTIPLE = 128
# Pythia's tokenizer's length, and each size's (layers, hidden size, heads, logit rows) from its
# config: `pythia_config` rebuilds one (random weights: benchmarks and estimates at real shapes).
PYTHIA_VOCAB = 50277
PYTHIA_SHAPES = {
    "14m": (6, 128, 4, 50304),
    "31m": (6, 256, 8, 50304),
    "70m": (6, 512, 8, 50304),
    "160m": (12, 768, 12, 50304),
    "410m": (24, 1024, 16, 50304),
    "1b": (16, 2048, 8, 50304),
    "1.4b": (24, 2048, 16, 50304),
    "2.8b": (32, 2560, 32, 50304),
    "6.9b": (32, 4096, 32, 50432),
    "12b": (36, 5120, 40, 50688),
}


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


class ModelLoadError(ValueError):
    """A model, config or tokenizer that cannot be loaded; the message names it, in one line."""


@contextmanager
def _loading(what: str, model_id: str, revision: str | None) -> Iterator[None]:
    """Turn the loaders' errors (often paragraphs) into one line naming what failed to load."""
    name = f"{model_id}@{revision}" if revision else model_id
    try:
        yield
    except torch.OutOfMemoryError:
        raise ModelLoadError(
            f"not enough memory to load {name}; try --dtype bfloat16 or a larger device"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        if len(text) > 300:
            text = text[:297] + "..."
        raise ModelLoadError(
            f"cannot load the {what} of {name}: {text}; check the model id, --revision and "
            "the network (or a local save_pretrained directory)"
        ) from None


def load_tokenizer(model_id: str, revision: str | None = None):
    from transformers import AutoTokenizer

    with _loading("tokenizer", model_id, revision):
        return AutoTokenizer.from_pretrained(model_id, revision=revision)


def load_config(model_id: str, revision: str | None = None):
    """A model's config alone (no weights): its context length, logit rows and identity."""
    from transformers import AutoConfig

    with _loading("config", model_id, revision):
        return AutoConfig.from_pretrained(model_id, revision=revision)


def require_accelerate(flag: str) -> None:
    """Refuse `flag` in one line where accelerate, which it needs, is not installed."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ValueError(f"{flag} needs accelerate, which is not installed: pip install accelerate")


def load_model(
    model_id: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
) -> torch.nn.Module:
    """A causal LM in eval mode on `device`, or spread over the machine's devices by
    accelerate's `device_map` (one of DEVICE_MAPS; `device` is then unused)."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(dtype)
    if device_map is not None:
        require_accelerate("--device-map")
    with _loading("weights", model_id, revision):
        if device_map is not None:
            model = AutoModelForCausalLM.from_pretrained(
                model_id, revision=revision, dtype=dtype, device_map=device_map
            )
            return model.eval()
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=dtype)
        return model.to(device).eval()


def load_tokenizer_spec(spec: str):
    """`load_tokenizer` of a tokenizer as a cache names it: "ORG/NAME@REVISION", a hub id or a
    local directory (`suites.parse_model_spec`)."""
    from emergence_model.suites import parse_model_spec

    return load_tokenizer(*parse_model_spec(spec))


def load_model_spec(spec: str, **kwargs) -> torch.nn.Module:
    """`load_model` of a suite's model as a cache names it: "ORG/NAME@REVISION", a hub id or a
    local directory (`suites.parse_model_spec`)."""
    from emergence_model.suites import parse_model_spec

    model_id, revision = parse_model_spec(spec)
    return load_model(model_id, revision=revision, **kwargs)


def input_device(model: torch.nn.Module, device: str) -> str:
    """Where a model's inputs go: the first device of its accelerate device map (where its
    embeddings are), or `device` for a model on one device."""
    placement = getattr(model, "hf_device_map", None) or {}
    for where in placement.values():
        if where == "disk":
            continue
        return f"cuda:{where}" if isinstance(where, int) else str(where)
    return device


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter, both embedding matrices included (as Pythia's model cards count)."""
    return sum(p.numel() for p in model.parameters())


def count_parameters_from_config(model_id: str, revision: str | None = None) -> int:
    """Parameter count from the config alone: the model is built on the meta device, no weights."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_id, revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)


def logit_rows(vocab_size: int, extra_rows: int | None = None) -> int:
    """Rows of the output embedding for `vocab_size` tokens: `vocab_size + extra_rows`, or by
    default `vocab_size` rounded up to LOGIT_ROW_MULTIPLE. Rows beyond the tokens are padding."""
    if extra_rows is None:
        return -(-vocab_size // LOGIT_ROW_MULTIPLE) * LOGIT_ROW_MULTIPLE
    if extra_rows < 0:
        raise ValueError(f"extra logit rows must be at least 0, got {extra_rows}")
    return vocab_size + extra_rows


def gpt_neox_config(
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int,
    extra_logit_rows: int | None = None,
    context_length: int = 2048,
    initializer_range: float = 0.02,
    eos_token_id: int = 0,
    pad_token_id: int | None = None,
):
    """A Pythia-shaped GPTNeoXConfig: a 4x MLP, rotary embeddings on 25% of each head, parallel
    attention and MLP, untied input and output embeddings, beginning-of-text = end-of-text.

    `vocab_size` is the tokenizer's length; the model's logit rows are `logit_rows(vocab_size,
    extra_logit_rows)`. `context_length` is the longest sequence the model accepts.
    """
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=logit_rows(vocab_size, extra_logit_rows),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        max_position_embeddings=context_length,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        use_parallel_residual=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def pythia_config(size: str):
    """The GPTNeoXConfig of Pythia-`size` (a key of PYTHIA_SHAPES), for a random-weight model of
    its shape: the same parameters and FLOPs as the real one."""
    if size not in PYTHIA_SHAPES:
        raise ValueError(f"no Pythia of size {size!r}; one of {', '.join(PYTHIA_SHAPES)}")
    layers, hidden, heads, rows = PYTHIA_SHAPES[size]
    return gpt_neox_config(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        vocab_size=PYTHIA_VOCAB,
        extra_logit_rows=rows - PYTHIA_VOCAB,
    )
