"""The study of one ladder (a checkpoint and caches of its suite): scoring, then the measures.

    study = study_ladder("checkpoints/demo.ckpt", ["caches/demo-wiki", "caches/demo-rte"], out)

The first cache is the reference set, on whose folds every choice is made. Returns the
summaries (JSON-ready) and, per set, the per-prefix rows the report writes out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, open_cache
from emergence_model.lm import load_tokenizer
from emergence_model.prefixes import source_field, source_task
from emergence_model.prompts import expected_token_ids
from emergence_model.study.analysis import (
    ceiling_agreement,
    choose_best,
    compare_to_reference,
    copy_rates,
    copy_split,
    emergence_rows,
    most_emergent,
    summarize_set,
)
from emergence_model.study.config import StudyConfig
from emergence_model.study.generate import (
    GENERATION_DRAFTS,
    held_out_prompts,
    models_on_disk,
    run_generation,
)
from emergence_model.study.scoring import (
    open_ladder,
    score_sets,
    train_subset_networks,
)
from emergence_model.suites import parse_model_spec


def load_cache_tokenizer(caches: Sequence[FeatureCache]):
    """The tokenizer every cache names (the study decodes tokens with it), loaded once."""
    names = {cache.meta["tokenizer"] for cache in caches}
    if len(names) > 1:
        raise ValueError(
            f"the caches name different tokenizers ({', '.join(sorted(names))}); study caches "
            "of one suite together"
        )
    name = names.pop()
    model_id, revision = parse_model_spec(name)
    try:
        return load_tokenizer(model_id, revision)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{caches[0].path} names tokenizer {name!r}, which does not load "
            f"({type(e).__name__}); the study decodes tokens with it, so study caches whose "
            "suite's tokenizer is on disk or on the hub"
        ) from None


def token_decoder(tokenizer):
    def decode(token: int) -> str:
        return tokenizer.decode([int(token)])

    return decode


def expected_copy_tokens(cache: FeatureCache, tokenizer) -> np.ndarray | None:
    """(n,) the in-context copy token of each prefix of an induction set (-1 where the text
    gives none), from the continuations its source recorded (`prompts.expected_token_ids`);
    None for other sets (an RTE answer is expected, not copied)."""
    source = cache.meta.get("source") or {}
    expected = source_field(source, "expected")
    if source_task(source) != "induction" or not expected:
        return None
    return np.array(expected_token_ids(tokenizer, cache.prefixes, expected), dtype=np.int64)


def study_ladder(
    checkpoint: str | Path,
    caches: Sequence[str | Path],
    out: str | Path,
    config: StudyConfig,
    *,
    ceilings: Mapping[str, str | Path] | None = None,
    title: str | None = None,
) -> dict:
    """Score every set, choose on the reference set's folds, measure; see the module docstring.

    `ceilings`: set name -> cache of [the target retrained with another seed, the target] on the
    same prefixes (its first model's agreement with the target is the noise ceiling)."""
    out = Path(out)
    ladder = open_ladder(checkpoint, caches)
    tokenizer = load_cache_tokenizer(ladder.caches)
    ceiling_caches = {name: open_cache(path) for name, path in (ceilings or {}).items()}
    subsets = train_subset_networks(ladder, out, config) if config.subset_networks else []
    sets = score_sets(ladder, config, subsets)
    reference = sets[0]
    best = choose_best(reference)
    rows = [emergence_rows(result, best, i == 0) for i, result in enumerate(sets)]
    summaries = [
        summarize_set(result, r, reference, config) for result, r in zip(sets, rows, strict=True)
    ]
    compare_to_reference(summaries, rows, sets, config)
    decode = token_decoder(tokenizer)
    for result, r, summary in zip(sets, rows, summaries, strict=True):
        cache = result["cache"]
        expected = expected_copy_tokens(cache, tokenizer)
        r["expected"] = expected
        if expected is not None:
            in_rows = expected[result["per_row"]["rows"]]
            summary["copies"] = copy_rates(cache, in_rows, result["per_row"], config)
            summary["copies"]["split"] = copy_split(in_rows, result["per_row"], r, config)
        if summary["name"] in ceiling_caches:
            summary["ceiling"] = ceiling_agreement(cache, ceiling_caches[summary["name"]], config)
        summary["most_emergent"] = most_emergent(result, r, config.top_emergent, decode)
    study = {
        "title": title or ladder.checkpoint_path.stem,
        "checkpoint": str(ladder.checkpoint_path),
        "scale_axis": ladder.reference.scale_axis,
        "target": ladder.checkpoint["target_name"],
        "small_models": ladder.small_names,
        "best_predictor": best,
        "subset_networks": [s["k"] for s in subsets],
        "sets": summaries,
    }
    if config.generate_prompts and ladder.reference.scale_axis == "parameters":
        study["generation"] = generation(ladder, sets, summaries, tokenizer, config)
    return {"study": study, "sets": sets, "rows": rows, "decode": decode}


def generation(ladder, sets: list[dict], summaries: list[dict], tokenizer, config) -> dict:
    """The real speculative decoding run on held-out prefixes of the reference set's first fold
    (the network head that never saw them drafts), or why it was skipped."""
    reference = sets[0]
    cache = reference["cache"]
    if not models_on_disk(cache):
        return {"skipped": "the suite's models are not local directories"}
    fold_rows = np.flatnonzero(reference["folds"] == 0)
    rows = held_out_prompts(fold_rows, cache.prefixes, config.generate_prompts, config.seed)
    named = reference["strategies"]  # strategies of some part; the network replaced below
    from emergence_model.strategies import NetworkStrategy

    network = NetworkStrategy(
        ladder.predictor.member(0) if reference["cross_fitted"] else ladder.predictor,
        ladder.small_names,
        ladder.checkpoint["target_name"],
    )
    speculative = summaries[0]["speculative"]
    drafts = {}
    for name in GENERATION_DRAFTS:
        strategy = network if name == "network" else named[name]
        scored = reference["per_row"]["strategies"][name]
        offline = {
            "greedy": float(scored["top1"][rows].mean()),
            "sampled": float(scored["accept"][rows].mean()),
        }
        key = name if name in speculative else "mean-prob"
        length = max(1, speculative.get(key, {}).get("greedy", {}).get("draft_length", 4))
        drafts[name] = (strategy, length, offline)
    return {
        "prompts": len(rows),
        "max_new_tokens": config.generate_tokens,
        "drafts": run_generation(
            cache,
            [cache.prefixes[i] for i in rows],
            drafts,
            tokenizer,
            max_new_tokens=config.generate_tokens,
            seed=config.seed,
        ),
    }
