"""New caches from finished ones: `combine_caches` joins caches of one dataset (different models)
or of one suite (different prefix shards), `select_models` keeps some of a cache's models. Rows
are copied as stored, never rounded twice."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.cache.format import CacheError, short_repr
from emergence_model.cache.paths import check_cache_destination
from emergence_model.cache.reader import FeatureCache, open_cache
from emergence_model.cache.writer import CacheWriter, create_cache
from emergence_model.logprobs import rows_per_chunk
from emergence_model.prefixes import PER_PREFIX_FIELDS
from emergence_model.vocab import FINGERPRINT_KEY, TokenizerId, check_same_tokenizer


def combine_caches(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> FeatureCache:
    """Join caches made in separate runs into one at `out`.

    Same prefixes in every cache: models are concatenated in the order of `paths` (one run per
    model or per GPU), so the target is the last model of the last cache. Same models in every
    cache: prefixes are concatenated (one run per shard of the prefixes); a prefix held by two
    of them is refused (shards that overlap, a shard given twice). Anything else is refused, and
    so are caches that were made differently (another tokenizer, scale axis or weights dtype,
    or for shards other parameter counts, scales or model configs) and caches whose files are
    no longer those they were finished with (their recorded digests).
    """
    if len(paths) < 2:
        raise CacheError("combine needs at least two caches")
    out = check_cache_destination(out)
    for p in paths:
        if Path(p).absolute() == out.absolute():
            raise CacheError(f"--out {out} is one of the caches to combine; pick another --out")
    caches = [open_cache(p) for p in paths]
    first = caches[0]
    same_prefixes = all(c.prefixes == first.prefixes for c in caches)
    same_models = all(c.model_names == first.model_names for c in caches)
    if same_prefixes and same_models:
        raise CacheError("the caches hold the same models and prefixes; nothing to combine")
    if not same_prefixes and not same_models:
        raise CacheError(
            "the caches share neither their prefixes nor their models; combine caches of one "
            "dataset (different models) or of one suite (different prefix shards)"
        )
    extraction = _check_combinable(caches, shards=same_models)
    if same_models:
        _check_disjoint(caches)
    for cache in caches:
        cache.check_digests()  # copied as stored: a changed file would be blessed anew
    dtype = "float32" if any(c.meta["dtype"] == "float32" for c in caches) else "float16"
    common = dict(
        vocab_size=first.vocab_size,
        # The target's: the last cache holds it (for shards, every cache has the same one).
        tokenizer=caches[-1].meta["tokenizer"],
        seed=first.meta.get("seed"),
        dtype=dtype,
        extraction={
            "combined_from": [str(c.path) for c in caches],
            "inputs": [c.content_key() for c in caches],
            **extraction,
        },
        scale_axis=first.scale_axis,
    )
    if same_prefixes:
        names = [n for c in caches for n in c.model_names]
        if len(set(names)) != len(names):
            raise CacheError(f"a model appears in more than one cache ({names}); combine each once")
        with create_cache(
            out,
            model_names=names,
            param_counts=[p for c in caches for p in c.param_counts],
            scales=[s for c in caches for s in c.scales],
            prefixes=first.prefixes,
            source=first.meta.get("source", {}),
            **common,
        ) as writer:
            offset = 0
            for cache in caches:
                for m in range(cache.num_models):
                    _copy_model_rows(cache, m, writer, offset + m, row_offset=0)
                offset += cache.num_models
            return writer.finalize(verify=True)
    with create_cache(
        out,
        model_names=first.model_names,
        param_counts=first.param_counts,
        scales=first.scales,
        prefixes=[p for c in caches for p in c.prefixes],
        source={"combined": [c.meta.get("source", {}) for c in caches]},
        **common,
    ) as writer:
        offset = 0
        for cache in caches:
            for m in range(cache.num_models):
                _copy_model_rows(cache, m, writer, m, row_offset=offset)
            offset += cache.num_prefixes
        return writer.finalize(verify=True)


def _check_disjoint(shards: Sequence[FeatureCache]) -> None:
    """Refuse shards that would hold a prefix twice (shards of two cuts of one set that overlap,
    a shard given twice), naming the two that hold it. A prefix the source itself repeats may
    sit in several shards of one cut (--shard K/N of one source, each K once), which never
    overlap."""
    cuts = [_shard_cut(c) for c in shards]
    if None not in cuts and len({(source, n) for source, n, _ in cuts}) == 1:
        if len({k for _, _, k in cuts}) == len(cuts):
            return
    holder: dict[str, FeatureCache] = {}
    for cache in shards:
        for prefix in dict.fromkeys(cache.prefixes):
            other = holder.setdefault(prefix, cache)
            if other is not cache:
                raise CacheError(
                    f"prefix {short_repr(prefix)} is in both {other.path} and {cache.path}: "
                    "shards to combine must not overlap; combine the shards of one --shard K/N "
                    "cut, each once"
                )


def _shard_cut(cache: FeatureCache) -> tuple[str, int, int] | None:
    """(its source without the shard, N, K) of a cache made with --shard K/N, else None."""
    source = dict(cache.meta.get("source") or {})
    shard = source.pop("shard", None)
    if not isinstance(shard, str) or shard.count("/") != 1:
        return None
    k, n = shard.split("/")
    if not (k.isdigit() and n.isdigit()):
        return None
    for field in PER_PREFIX_FIELDS:  # cut with the prefixes: they differ by shard
        source.pop(field, None)
    return json.dumps(source, sort_keys=True, default=str), int(n), int(k)


def _check_combinable(caches: Sequence[FeatureCache], *, shards: bool) -> dict:
    """Refuse caches that were made differently; returns the extraction entries they share (or,
    for the model configs of caches of different models, join)."""
    first = caches[0]
    extractions = [c.meta.get("extraction", {}) for c in caches]

    def refuse(cache: FeatureCache, what: str, mine, theirs, advice: str) -> CacheError:
        return CacheError(
            f"{cache.path} has {what} {short_repr(mine)}, {first.path} has "
            f"{short_repr(theirs)}; {advice}"
        )

    for cache, extraction in zip(caches[1:], extractions[1:], strict=True):
        if cache.scale_axis != first.scale_axis:
            raise refuse(
                cache, "scale axis", cache.scale_axis, first.scale_axis,
                "only caches of one kind of ladder combine",
            )  # fmt: skip
        # One run per model names each model's own copy of one tokenizer: the fingerprint of
        # its vocabulary says it is one (`vocab.tokenizer_difference`).
        check_same_tokenizer(
            TokenizerId.of_cache(cache.meta),
            TokenizerId.of_cache(first.meta),
            str(cache.path),
            str(first.path),
            "only caches of one tokenizer combine",
            error=CacheError,
        )
        key = "model_dtype"
        if key in extraction and key in extractions[0] and extraction[key] != extractions[0][key]:
            raise refuse(
                cache, "weights dtype", extraction[key], extractions[0][key],
                "extract every part with one --dtype",
            )  # fmt: skip
        if shards:
            for what, mine, theirs in (
                ("parameter counts", cache.param_counts, first.param_counts),
                ("scales", cache.scales, first.scales),
                (
                    "model configs",
                    extraction.get("model_configs"),
                    extractions[0].get("model_configs"),
                ),
            ):
                if mine != theirs and (what != "model configs" or None not in (mine, theirs)):
                    raise refuse(
                        cache, what, mine, theirs, "only shards of one suite's run combine"
                    )
    shared = {}
    for key in ("model_dtype", FINGERPRINT_KEY):
        if all(key in e for e in extractions):
            shared[key] = extractions[0][key]
    if all("model_configs" in e for e in extractions):
        configs = [e["model_configs"] for e in extractions]
        shared["model_configs"] = configs[0] if shards else [c for part in configs for c in part]
    return shared


def select_models(
    cache: FeatureCache, models: Sequence[int], out: str | os.PathLike
) -> FeatureCache:
    """A cache at `out` of `cache`'s prefixes with only the models `models` (indices, in order;
    the last one is the new cache's target), copied as stored. Resumable like any cache."""
    models = [int(m) for m in models]
    if not models or any(not -cache.num_models <= m < cache.num_models for m in models):
        raise CacheError(
            f"model indices {models} are not in {cache.path}'s {cache.num_models} models"
        )
    models = [m % cache.num_models for m in models]
    cache.check_digests()  # copied as stored: a changed file would be blessed anew
    with create_cache(
        out,
        model_names=[cache.model_names[m] for m in models],
        param_counts=[cache.param_counts[m] for m in models],
        scales=[cache.scales[m] for m in models],
        scale_axis=cache.scale_axis,
        prefixes=cache.prefixes,
        vocab_size=cache.vocab_size,
        tokenizer=cache.meta["tokenizer"],
        source=cache.meta.get("source", {}),
        seed=cache.meta.get("seed"),
        dtype=cache.meta["dtype"],
        extraction={"selected_from": str(cache.path), "models": models},
    ) as writer:
        for out_model, m in enumerate(models):
            _copy_model_rows(cache, m, writer, out_model, row_offset=0)
        return writer.finalize(verify=False)


def _copy_model_rows(
    cache: FeatureCache, model: int, writer: CacheWriter, out_model: int, row_offset: int
) -> None:
    step = rows_per_chunk(1, cache.vocab_size)
    for start in range(0, cache.num_prefixes, step):
        stop = min(start + step, cache.num_prefixes)
        rows = np.arange(row_offset + start, row_offset + stop)
        if writer.done[out_model, rows].all():
            continue
        block = cache.logprobs[start:stop, model]  # copied as stored: no rounding twice
        writer.write(out_model, rows, block, argmax=cache.argmax[start:stop, model])
