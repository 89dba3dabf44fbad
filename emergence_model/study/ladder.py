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
from emergence_model.lm import load_tokenizer_spec
from emergence_model.prefixes import source_field, source_task
from emergence_model.prompts import expected_token_ids
from emergence_model.selection import guided
from emergence_model.stats import ClusterBootstrap
from emergence_model.strategies import NetworkStrategy, model_basename
from emergence_model.study.analysis import (
    ceiling_agreement,
    check_ceiling,
    choose_best,
    compare_to_reference,
    copy_rates,
    copy_split,
    draft_costs,
    draft_names,
    emergence_rows,
    most_emergent,
    summarize_set,
)
from emergence_model.study.answers import answer_summary, copy_control_summary, model_scores
from emergence_model.study.config import StudyConfig
from emergence_model.study.controls import (
    control_rows,
    entropy_edges,
    jump_controls,
    kl_by_entropy,
    matched_difference,
    normalised_kl,
)
from emergence_model.study.costs import measure_costs
from emergence_model.study.generate import held_out_prompts, models_on_disk, run_generation
from emergence_model.study.rungs import rung_curve, train_rung_networks
from emergence_model.study.scoring import (
    choice_folds,
    open_ladder,
    score_sets,
    train_subset_networks,
)


def load_cache_tokenizer(caches: Sequence[FeatureCache]):
    """The tokenizer every cache names, loaded once; ValueError when it does not load."""
    name = _tokenizer_name(caches)
    try:
        return load_tokenizer_spec(name)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{caches[0].path} names tokenizer {name!r}, which does not load "
            f"({type(e).__name__}); the study decodes tokens with it, so study caches whose "
            "suite's tokenizer is on disk or on the hub"
        ) from None


def cache_tokenizer(caches: Sequence[FeatureCache]) -> tuple[object | None, str | None]:
    """The tokenizer every cache names, or None and why (the study then shows token ids and
    skips what needs text: copies, answers, real decoding). Caches naming different tokenizers
    are refused."""
    name = _tokenizer_name(caches)
    try:
        return load_cache_tokenizer(caches), None
    except ValueError:
        note = (
            f"the caches' tokenizer {name!r} does not load: tokens are shown as ids, and what "
            "needs the text (in-context copies, task answers, real decoding) is skipped; import "
            "a challenge pickle with --tokenizer to study it with text"
        )
        print(f"note: {note}")
        return None, note


def _tokenizer_name(caches: Sequence[FeatureCache]) -> str:
    names = {cache.meta["tokenizer"] for cache in caches}
    if len(names) > 1:
        raise ValueError(
            f"the caches name different tokenizers ({', '.join(sorted(names))}); study caches "
            "of one suite together"
        )
    return names.pop()


def token_decoder(tokenizer):
    """token id -> its text (or "<id N>" without a tokenizer)."""

    def decode(token: int) -> str:
        if tokenizer is None:
            return f"<id {int(token)}>"
        return tokenizer.decode([int(token)])

    return decode


def set_clusters(cache: FeatureCache) -> tuple[np.ndarray | None, str]:
    """Per prefix, what it shares with other prefixes of the set (the document it was cut from,
    the question of a chain of thought), from the cache's source; None where the source records
    none (then prefixes are resampled one by one), and how they were found."""
    source = cache.meta.get("source") or {}
    for field, what in (("documents", "source document"), ("rows", "source question")):
        values = source_field(source, field)
        if values is not None and len(values) == len(cache):
            return np.asarray(values), what
    return None, "none recorded (prefixes resampled one by one)"


def expected_tokens(cache: FeatureCache, tokenizer) -> np.ndarray | None:
    """(n,) the token that starts each prefix's expected continuation (-1 where none), for a
    set whose source records them; None for other sets or without a tokenizer."""
    expected = source_field(cache.meta.get("source") or {}, "expected")
    if not expected or tokenizer is None:
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
    same prefixes (its first model's agreement with the target is the noise ceiling, its KL from
    the target the floor of KL, and it is the jump's control)."""
    out = Path(out)
    ladder = open_ladder(checkpoint, caches)
    tokenizer, tokenizer_note = cache_tokenizer(ladder.caches)
    ceiling_caches = {name: open_cache(path) for name, path in (ceilings or {}).items()}
    for cache in ladder.caches:
        if cache.path.name in ceiling_caches:
            check_ceiling(cache, ceiling_caches[cache.path.name])
    # cheaper drafts: a ladder along training time has none (every checkpoint costs the target)
    drafts_apply = ladder.reference.scale_axis == "parameters"
    subsets = (
        train_subset_networks(ladder, out, config)
        if config.subset_networks and drafts_apply
        else []
    )
    sets = score_sets(ladder, config, subsets)
    samplers = [_attach_sampler(i, result, config) for i, result in enumerate(sets)]
    reference = sets[0]
    best = choose_best(reference)
    rows = [emergence_rows(result, best, i == 0) for i, result in enumerate(sets)]
    on_disk = models_on_disk(reference["cache"])
    named = reference["strategies"]
    measured = None
    if config.measure_costs and on_disk and reference["cache"].scale_axis == "parameters":
        drafts = {name: named[name] for name in draft_names(named)}
        measured = measure_costs(reference["cache"], drafts, config.cost_threads)
    given = config.given_costs(draft_names(named))
    costs = draft_costs(named, reference["cache"], measured, given)
    catch_up = measured["catch_up_token"] if measured else 1.0
    summaries = [
        summarize_set(result, r, reference, config, costs, catch_up)
        for result, r in zip(sets, rows, strict=True)
    ]
    compare_to_reference(summaries, rows, sets)
    decode = token_decoder(tokenizer)
    edges = None
    for i, (result, r, summary) in enumerate(zip(sets, rows, summaries, strict=True)):
        ceiling = ceiling_caches.get(summary["name"])
        cache, per_row = result["cache"], result["per_row"]
        true_tokens = expected_tokens(cache, tokenizer)
        in_rows = None if true_tokens is None else true_tokens[per_row["rows"]]
        controls = control_rows(cache, per_row["rows"], ceiling, in_rows, config.chunk_rows)
        r.update(controls)  # per prefix: entropy, floor KL, the jump's controls
        if edges is None:  # the reference set's entropy quantiles bin every set alike
            edges = entropy_edges(controls["entropy"], config.entropy_bins)
        bins = kl_by_entropy(r["kl"], controls["entropy"], edges, result["sampler"])
        result["entropy_bins"] = bins
        summary["kl_entropy"] = {"edges": edges.tolist(), "bins": bins["bins"]}
        if i:
            matched = matched_difference(bins, sets[0]["entropy_bins"])
            summary["kl_entropy"]["matched_vs_reference"] = matched
        if ceiling is not None:
            summary["floor"] = result["sampler"].mean(controls["floor_kl"])
            summary["kl_normalised"] = normalised_kl(
                r["kl"], controls["floor_kl"], result["sampler"]
            )
            summary["ceiling"] = ceiling_agreement(cache, ceiling, result)
        summary["jump_controls"] = jump_controls(r["jump"], controls, result["sampler"])
        _task_measures(result, r, summary, tokenizer, on_disk, config, samplers[i])
        summary["most_emergent"] = most_emergent(result, r, config.top_emergent, decode)
    rungs_skipped = None
    if config.rung_curve:
        own = choice_folds(ladder, config)[1]
        networks, rungs_skipped = train_rung_networks(ladder, out, config.folds, own)
        for result, summary, sampler in zip(sets, summaries, samplers, strict=True):
            if networks:
                summary["rung_curve"] = rung_curve(
                    result["cache"], networks, sampler, config.chunk_rows
                )
    study = {
        "title": title or ladder.checkpoint_path.stem,
        "checkpoint": str(ladder.checkpoint_path),
        "scale_axis": ladder.reference.scale_axis,
        "target": ladder.checkpoint["target_name"],
        "small_models": ladder.small_names,
        "best_predictor": best,
        "subset_networks": [s["k"] for s in subsets],
        "tokenizer_note": tokenizer_note,
        "costs": measured,
        "rung_curve_skipped": rungs_skipped,
        "sets": summaries,
    }
    if config.generate_prompts and ladder.reference.scale_axis == "parameters":
        study["generation"] = generation(ladder, sets, summaries, tokenizer, config)
    return {"study": study, "sets": sets, "rows": rows, "decode": decode}


def _attach_sampler(i: int, result: dict, config: StudyConfig):
    """Give a scored set its clusters and its `ClusterBootstrap` (seed + i: the sets are
    resampled independently of each other); returns `rows -> ClusterBootstrap` for subsets of its
    rows."""
    ids, how = set_clusters(result["cache"])
    rows = result["per_row"]["rows"]

    def sampler_for(subset: np.ndarray) -> ClusterBootstrap:
        return ClusterBootstrap(
            None if ids is None else ids[subset], len(subset), config.bootstrap, config.seed + i
        )

    result["sampler"] = sampler_for(rows)
    result["clusters"] = {
        "by": how,
        "clusters": result["sampler"].num_clusters,
        "prefixes": int(len(rows)),
    }
    return sampler_for


def _task_measures(result, r, summary, tokenizer, on_disk, config, sampler_for) -> None:
    """A task set's copy rates and copy split (in-context copying), and every model's score on
    its expected answers, discontinuous and continuous (`answers`)."""
    cache, per_row = result["cache"], result["per_row"]
    source = cache.meta.get("source") or {}
    expected = source_field(source, "expected")
    if tokenizer is None or not expected:
        return
    induction = source_task(source) == "induction"
    rows = per_row["rows"]
    if induction:
        copy_tokens = np.array(
            expected_token_ids(tokenizer, cache.prefixes, expected), dtype=np.int64
        )[rows]
        r["expected"] = copy_tokens
        summary["copies"] = copy_rates(cache, copy_tokens, result)
        summary["copies"]["split"] = copy_split(copy_tokens, result, r)
    scores = model_scores(
        cache,
        rows,
        [expected[i] for i in rows],
        tokenizer,
        on_disk=on_disk and config.answer_metrics,
        copy_control=induction,
        seed=config.seed,
    )
    if not len(scores["kept"]):
        return
    sampler = sampler_for(scores["kept"])
    summary["answers"] = answer_summary(cache, scores, sampler)
    control = copy_control_summary(cache, scores, sampler)
    if induction and control is not None:
        summary["copies"]["control"] = control


def generation(ladder, sets: list[dict], summaries: list[dict], tokenizer, config) -> dict:
    """The real speculative decoding run on held-out prefixes of the reference set's first fold
    (the network head that never saw them drafts), or why it was skipped."""
    reference = sets[0]
    cache = reference["cache"]
    if tokenizer is None:
        return {"skipped": "the caches' tokenizer does not load"}
    if not models_on_disk(cache):
        return {"skipped": "the suite's models are not local directories"}
    fold_rows = np.flatnonzero(reference["folds"] == 0)
    rows = held_out_prompts(fold_rows, cache.prefixes, config.generate_prompts, config.seed)
    named = reference["strategies"]  # strategies of some part; the network replaced below
    fold = 0 if reference["cross_fitted"] else None
    network = NetworkStrategy(
        ladder.predictor if fold is None else ladder.predictor.member(fold),
        ladder.small_names,
        ladder.checkpoint["target_name"],
    )
    if ladder.selection is not None:  # with the guide the checkpoint chose for that network
        network = guided(network, ladder.selection.choice(fold))
    speculative = summaries[0]["speculative"]
    largest = int(np.argmax(cache.scales[:-1]))
    names = [f"model:{model_basename(cache.model_names[largest])}", "mean-prob", "network"]
    drafts = {}
    for name in names:
        strategy = network if name == "network" else named[name]
        lengths = {mode: speculative[name][mode]["draft_length"] for mode in ("greedy", "sampled")}
        drafts[name] = (strategy, lengths)
    levels = summaries[0]["cascade"]["network"]["levels"]
    thresholds = {level: point["thresholds"][0] for level, point in levels.items()}
    return {
        "prompts": len(rows),
        "max_new_tokens": config.generate_tokens,
        **run_generation(
            cache,
            [cache.prefixes[i] for i in rows],
            drafts,
            tokenizer,
            max_new_tokens=config.generate_tokens,
            seed=config.seed,
            threads=config.cost_threads,
            cascade=("network", thresholds),
        ),
    }
