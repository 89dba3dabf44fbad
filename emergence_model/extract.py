"""Extraction: each model's next-token log-probabilities for every prefix, written into a cache.

Speed comes from three things: prefixes sorted by token length and batched with their neighbours
(little padding), logits computed only at each row's last real position (`logits_to_keep` as a
(batch, 1) tensor of positions), and one model in memory at a time. Right padding keeps every real
token's position, so padded rows give the same result as rows run alone.

The batches are cut once from every prefix's length (`length_batches`), whatever is done already,
so that every row is computed in the batch it would be in one uninterrupted run: a resumed run, or
the ranks of a torchrun job (rank r runs batches r, r + N, ... of those not done, each rank on its
own device), write the same bytes as one process. A batch that runs out of GPU memory is halved
and retried (`run_batches`), which may change a row at float rounding.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import (
    CACHE_DTYPES,
    CacheError,
    CacheWriter,
    FeatureCache,
    check_cache_destination,
    create_cache,
)
from emergence_model.lm import (
    DEVICE_MAPS,
    TORCH_DTYPES,
    ModelLoadError,
    count_parameters,
    count_parameters_from_config,
    input_device,
    load_config,
    load_model,
    load_tokenizer,
    require_accelerate,
)
from emergence_model.ranks import Ranks, torchrun_group
from emergence_model.suites import Suite, custom_suite, model_spec, parse_model_spec
from emergence_model.vocab import (
    FINGERPRINT_KEY,
    TokenizerId,
    check_same_tokenizer,
    tokenizer_fingerprint,
)


@dataclass
class ExtractConfig:
    """How every model of a suite runs over the prefixes (cache_features.py's extraction flags)."""

    device: str | None = None
    """cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)."""
    dtype: str | None = None
    """Model weights dtype: float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on
    CUDA)."""
    device_map: str | None = None
    """Spread each model over this machine's GPUs (and CPU memory) with accelerate's device map
    (auto, balanced, balanced_low_0 or sequential), for a model too large for one GPU (needs pip
    install accelerate; instead of --device). The inputs go to the map's first device."""
    batch_size: int = 16
    """Prefixes per forward pass (halved, and retried, where a batch runs out of GPU memory)."""
    cache_dtype: str = "float16"
    """dtype of the stored log-probabilities: float16 or float32."""
    progress: bool = field(default=True, metadata={"cli": False})
    """Show a progress bar per model (its flag: --progress/--no-progress, cli.RunOptions)."""

    def __post_init__(self) -> None:
        if self.device is not None:
            check_device(self.device)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype is not None and self.dtype not in TORCH_DTYPES:
            raise ValueError(f"--dtype {self.dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(
                f"--cache-dtype {self.cache_dtype!r} is not one of {', '.join(CACHE_DTYPES)}"
            )
        if self.device_map is not None:
            if self.device_map not in DEVICE_MAPS:
                raise ValueError(
                    f"--device-map {self.device_map!r} is not one of {', '.join(DEVICE_MAPS)}"
                )
            if self.device is not None:
                raise ValueError(
                    "--device and --device-map: pick one (the map places each model itself)"
                )
            require_accelerate("--device-map")

    def resolved_device(self) -> str:
        return self.device or default_device()

    def resolved_dtype(self) -> str:
        return self.dtype or default_dtype(self.resolved_device())


def check_device(device: str) -> None:
    """Refuse a device that is not one, or that this machine lacks, before anything runs."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: torch sees no CUDA GPU on this machine (a CPU build of "
                "torch, no driver, or CUDA_VISIBLE_DEVICES hides them); use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA GPU(s), from 0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device!r}: models run on cpu, cuda, cuda:N or mps")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """float32 on CPU (bfloat16 matmuls are slow there), bfloat16 on CUDA (the 12b fits in 24 GB).

    Not float16: Pythia's small models overflow to NaN in fp16 inference.
    """
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def release_memory(model_ref: weakref.ref, device: str) -> None:
    """Return a deleted model's memory before the next one loads (the 12b is ~24 GB in bf16).

    A full garbage collection (a quarter second with transformers loaded) runs only if reference
    cycles kept the model alive.
    """
    if model_ref() is not None:
        gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def tokenize_prefixes(tokenizer, prefixes: Sequence[str]) -> list[list[int]]:
    """Token ids of each prefix, with the tokenizer's own special-token rule (none for Pythia)."""
    token_ids = tokenizer(list(prefixes), add_special_tokens=True)["input_ids"]
    for i, ids in enumerate(token_ids):
        if not ids:
            raise ValueError(
                f"prefix {i} ({prefixes[i]!r}) has no tokens; a model needs at least one token to "
                "continue, so remove empty prefixes from the dataset"
            )
    return token_ids


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions into `lengths`, sorted by length and cut into batches of neighbours."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def batch_logprobs(
    model: torch.nn.Module, token_ids: Sequence[Sequence[int]], device: str, vocab_size: int
) -> torch.Tensor:
    """Next-token log-probabilities (b, V) float32 after each row of token ids."""
    lengths = torch.tensor([len(ids) for ids in token_ids])
    # Right padding with any valid id: masked keys never reach a real position under causal
    # attention, and real tokens keep positions 0..len-1 (left padding would shift RoPE).
    input_ids = torch.zeros((len(token_ids), int(lengths.max())), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention_mask[row, : len(ids)] = 1
    last = (lengths - 1)[:, None]  # (b, 1) position of each row's last real token
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        logits_to_keep=last.to(device),
    ).logits  # (b, 1, rows); rows >= V, the extra ones (e.g. 50688 in Pythia-12b) are padding
    return torch.log_softmax(logits[:, 0, :vocab_size].float(), dim=-1)


def run_batches(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    batches: Sequence[np.ndarray],
    *,
    device: str,
    vocab_size: int,
    model_name: str = "the model",
    out_of_memory: type[BaseException] | tuple[type[BaseException], ...] = torch.OutOfMemoryError,
    on_backoff: Callable[[str], object] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (prefix indices [b], log-probabilities [b, V] float32) for each batch of prefix
    indices, in order.

    A batch that raises `out_of_memory` is halved and its rows retried in halves, and later
    batches run at most at the size that fitted (longer prefixes come later); `on_backoff` is
    told "batch 16 -> 8 (out of memory)". One prefix that does not fit is a CacheError naming
    `model_name` and the prefix's length."""
    limit = None  # the largest batch allowed since the last out-of-memory error
    for batch in batches:
        start = 0
        while start < len(batch):
            size = len(batch) - start if limit is None else min(limit, len(batch) - start)
            rows = np.asarray(batch[start : start + size], dtype=np.int64)
            try:
                logprobs = batch_logprobs(model, [token_ids[i] for i in rows], device, vocab_size)
            except out_of_memory:
                logprobs = None  # handled below, once the error's frames (and tensors) are gone
            if logprobs is None:
                if str(device).startswith("cuda"):
                    torch.cuda.empty_cache()
                if size == 1:
                    tokens = len(token_ids[rows[0]])
                    raise CacheError(
                        f"{model_name} runs out of memory on one prefix of {tokens} tokens; use a "
                        "device with more memory, --device-map auto, or shorter prefixes"
                    )
                limit = size // 2
                if on_backoff is not None:
                    on_backoff(f"batch {size} -> {limit} (out of memory)")
                continue
            yield rows, logprobs.cpu().numpy()
            start += size


def iter_next_token_logprobs(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    device: str,
    vocab_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (prefix indices [b], log-probabilities [b, V] float32) for `indices`, by batch."""
    indices = np.asarray(indices, dtype=np.int64)
    lengths = [len(token_ids[i]) for i in indices]
    batches = [indices[batch] for batch in length_batches(lengths, batch_size)]
    yield from run_batches(model, token_ids, batches, device=device, vocab_size=vocab_size)


def next_token_logprobs(
    model: torch.nn.Module,
    tokenizer,
    prefixes: Sequence[str],
    *,
    batch_size: int = ExtractConfig.batch_size,
    device: str = "cpu",
    vocab_size: int | None = None,
) -> np.ndarray:
    """Next-token log-probabilities [N, V] float32 of `model` after each prefix."""
    vocab_size = vocab_size or len(tokenizer)
    token_ids = tokenize_prefixes(tokenizer, prefixes)
    out = np.empty((len(prefixes), vocab_size), dtype=np.float32)
    for rows, logprobs in iter_next_token_logprobs(
        model,
        token_ids,
        np.arange(len(prefixes)),
        batch_size=batch_size,
        device=device,
        vocab_size=vocab_size,
    ):
        out[rows] = logprobs
    return out


def context_length(config) -> int | None:
    """The longest sequence a model's config accepts (None if it does not say)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_fits(
    model_id: str,
    rows: int,
    context: int | None,
    vocab_size: int,
    token_ids: Sequence[Sequence[int]],
) -> None:
    """Refuse a model whose logit rows or context cannot score these prefixes."""
    if rows < vocab_size:
        raise CacheError(
            f"{model_id} has {rows} logit rows but the target's tokenizer has {vocab_size} tokens; "
            "all models of a suite must share one tokenizer"
        )
    longest = max(len(ids) for ids in token_ids)
    if context is not None and longest > context:
        first = next(i for i, ids in enumerate(token_ids) if len(ids) == longest)
        raise CacheError(
            f"prefix {first} has {longest} tokens, more than {model_id}'s context of {context}; "
            "shorten the prefixes"
        )


def check_model(
    model: torch.nn.Module,
    model_id: str,
    vocab_size: int,
    token_ids: Sequence[Sequence[int]],
    param_count: int,
) -> None:
    """Refuse a model that cannot score these prefixes; warn if its size is not the recorded one."""
    rows = model.get_output_embeddings().weight.shape[0]
    check_fits(model_id, rows, context_length(model.config), vocab_size, token_ids)
    loaded = count_parameters(model)
    if loaded != param_count:
        warnings.warn(
            f"{model_id} has {loaded} parameters but {param_count} are recorded; check "
            "--param-counts or the model path",
            stacklevel=3,
        )


# Config entries that say where or how a model was saved, not what it computes.
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash")


def config_fingerprint(config) -> str:
    """A digest of what a model's config says it computes: a resume refuses a cache whose
    models' configs changed since it was started."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOISE}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract_suite(
    suite_or_model_ids: Suite | Sequence[str],
    prefixes: Sequence[str],
    out_dir: str | Path,
    config: ExtractConfig | None = None,
    *,
    revision: str | None = None,
    param_counts: Sequence[int | None] | None = None,
    source: dict | None = None,
    seed: int | None = None,
    verify: bool = True,
) -> FeatureCache:
    """Cache every model's next-token distribution after every prefix in `out_dir`.

    Resumable: rerunning with the same models and prefixes continues where a crash left off, and
    models whose rows are all written are not even loaded. The tokenizer is the target's.

    Under torchrun (RANK and WORLD_SIZE set), each rank runs its share of the batches on its own
    device and writes its rows into the one cache, which the first rank makes, checks and
    finishes; every rank returns it. The bytes are those one process writes.
    """
    config = config or ExtractConfig()
    check_cache_destination(out_dir)
    if not isinstance(suite_or_model_ids, Suite):
        suite = custom_suite(list(suite_or_model_ids), revision)
    elif revision is None or suite_or_model_ids.revisions == (revision,) * len(
        suite_or_model_ids.model_ids
    ):
        suite = suite_or_model_ids
    elif suite_or_model_ids.revisions:
        raise ValueError("the suite's models have their own revisions; drop --revision")
    else:
        suite = dataclasses.replace(
            suite_or_model_ids, revisions=(revision,) * len(suite_or_model_ids.model_ids)
        )
    ranks = Ranks.from_env()
    device, dtype = ranks.device(config.resolved_device()), config.resolved_dtype()
    if device != config.resolved_device():
        check_device(device)  # this rank's own GPU
    if config.device_map is not None and ranks.local_world_size > 1:
        raise ValueError(
            f"--device-map spreads each model over the machine's GPUs, so run one process per "
            f"machine (torchrun --nproc-per-node 1), not {ranks.local_world_size}"
        )
    model_ids = list(suite.model_ids)
    for model_id in model_ids:
        if model_id.startswith(("/", ".", "~")) and not Path(model_id).expanduser().is_dir():
            raise ValueError(
                f"no model directory at {model_id}; pass save_pretrained directories or hub ids"
            )
    known = list(param_counts) if param_counts is not None else list(suite.param_counts)
    if len(known) != len(model_ids):
        raise ValueError(f"{len(model_ids)} models but {len(known)} parameter counts")
    counts = [
        count if count is not None else count_parameters_from_config(model_id, suite.revision(m))
        for m, (model_id, count) in enumerate(zip(model_ids, known, strict=True))
    ]
    target_revision = suite.revision(len(model_ids) - 1)
    tokenizer = load_tokenizer(suite.target_id, target_revision)
    vocab_size = len(tokenizer)
    token_ids = tokenize_prefixes(tokenizer, prefixes)
    target_tokenizer = TokenizerId(
        model_spec(suite.target_id, target_revision), vocab_size, tokenizer_fingerprint(tokenizer)
    )
    # Every model's config and tokenizer, before anything is written: a prefix too long for a
    # context or a model of another tokenizer is refused now, not after hours of the models
    # before it.
    fingerprints = []
    for m, model_id in enumerate(model_ids):
        model_config = load_config(model_id, suite.revision(m))
        rows = getattr(model_config, "vocab_size", None)
        if isinstance(rows, int):
            check_fits(model_id, rows, context_length(model_config), vocab_size, token_ids)
        check_model_tokenizer(model_spec(model_id, suite.revision(m)), target_tokenizer)
        fingerprints.append(config_fingerprint(model_config))
    extraction = _extraction_meta(suite, device, dtype, config)
    extraction.update(model_configs=fingerprints, **{FINGERPRINT_KEY: target_tokenizer.fingerprint})
    cache_args = dict(
        model_names=suite.model_names,
        param_counts=counts,
        scales=[suite.scale(m, count) for m, count in enumerate(counts)],
        scale_axis=suite.scale_axis,
        prefixes=prefixes,
        vocab_size=vocab_size,
        tokenizer=model_spec(suite.target_id, target_revision),
        source=source,
        seed=seed,
        dtype=config.cache_dtype,
        extraction=extraction,
    )
    with torchrun_group(ranks):
        writer = _open_writer(ranks, Path(out_dir), cache_args)
        with writer:  # commits (and releases the lock) on the way out, whatever happens
            for m, model_id in enumerate(model_ids):
                _extract_model(
                    writer, m, model_id, suite, token_ids, counts[m], config, device, ranks
                )
            # With several ranks, every rank's rows are on disk before the first merges them,
            # checks them and records their digests; the others wait for its verdict.
            ranks.step(writer.commit if ranks.first else writer.close)
            cache = ranks.step(lambda: writer.finalize(verify=verify) if ranks.first else None)
    return cache if cache is not None else FeatureCache(out_dir)


def _open_writer(ranks: Ranks, path: Path, cache_args: dict) -> CacheWriter:
    """The cache's writer for this rank: the first rank makes (or resumes) the cache and holds
    its lock; the others join its job once it exists. Every rank has read which rows are done
    before any rank writes one, so that all of them cut the same batches."""
    if not ranks.several:
        return create_cache(path, **cache_args)
    first = ranks.step(lambda: create_cache(path, **cache_args) if ranks.first else None)
    job = ranks.broadcast(None if first is None else first.lock.job)

    def join() -> CacheWriter:
        if ranks.first:
            return first
        if job is None:
            raise CacheError(
                f"rank 0 could not lock {path} for its job (a read-only directory, or a system "
                "without flock), so its ranks cannot share it; run one process"
            )
        return create_cache(path, **cache_args, job=job, part=ranks.name)

    try:
        return ranks.step(join)
    except BaseException:
        if first is not None:
            first.close()
        raise


def _extract_model(
    writer: CacheWriter,
    m: int,
    model_id: str,
    suite: Suite,
    token_ids: Sequence[Sequence[int]],
    param_count: int,
    config: ExtractConfig,
    device: str,
    ranks: Ranks,
) -> None:
    """Write model `m`'s rows of this rank's batches not done yet; the model is loaded only if
    there are some."""
    from tqdm.auto import tqdm

    done = writer.done[m]  # a view: rows written below turn True
    plan = length_batches([len(ids) for ids in token_ids], config.batch_size)
    mine = ranks.share([batch for batch in plan if not done[batch].all()])
    if not mine:
        return  # finished in an earlier run (or the other ranks' share): not even loaded
    pending = sum(int((~done[batch]).sum()) for batch in mine)
    name = Path(suite.model_names[m]).name or model_id
    dtype, vocab_size = config.resolved_dtype(), writer.vocab_size
    model = load_model(
        model_id,
        revision=suite.revision(m),
        dtype=dtype,
        device=device,
        device_map=config.device_map,
    )
    try:
        check_model(model, model_id, vocab_size, token_ids, param_count)
        with tqdm(
            total=pending if ranks.several else len(token_ids),
            initial=0 if ranks.several else len(token_ids) - pending,
            desc=f"{name} ({ranks.name} of {ranks.world_size})" if ranks.several else name,
            unit="prefix",
            disable=not config.progress or not ranks.first,
        ) as bar:
            for rows, logprobs in run_batches(
                model,
                token_ids,
                mine,
                device=input_device(model, device),
                vocab_size=vocab_size,
                model_name=model_id,
                on_backoff=bar.set_postfix_str,
            ):
                new = ~done[rows]  # rows an earlier run committed keep their bytes
                if new.any():
                    writer.write(m, rows[new], logprobs[new])
                    bar.update(int(new.sum()))
    finally:
        writer.commit()  # keep the rows written before an error or Ctrl-C
        model_ref = weakref.ref(model)
        del model
        release_memory(model_ref, device)


def check_model_tokenizer(model: str, target: TokenizerId) -> None:
    """Refuse a model whose own tokenizer is not the target's, though its logit rows may fit:
    its ids would mean other tokens. A model saved without a tokenizer is taken at its rows."""
    model_id, revision = parse_model_spec(model)
    if model == target.name:
        return
    try:
        tokenizer = load_tokenizer(model_id, revision)
    except ModelLoadError:
        return  # no tokenizer of its own: its logit rows were checked against the target's
    own = TokenizerId(model, len(tokenizer), tokenizer_fingerprint(tokenizer))
    check_same_tokenizer(
        own,
        target,
        model,
        f"the target {target.name}",
        "all models of a suite must share the target's tokenizer",
    )


def _extraction_meta(suite: Suite, device: str, dtype: str, config: ExtractConfig) -> dict:
    import transformers

    return {
        "suite": suite.name,
        "revisions": list(suite.revisions) or None,
        "device": str(device) if config.device_map is None else f"map:{config.device_map}",
        "model_dtype": dtype,
        "batch_size": config.batch_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
