"""What the demo's caches show at a glance, printed by `python -m emergence_model.demo caches`.

For each prefix set: its size, how often each model's top token is the continuation the set
expects (for demo-induction the in-context copy: a curve along size and along training time; for
demo-rte-fewshot the right answer), and the noise ceiling (how often the target trained again
from another seed agrees with the target). The study reports all of it with the strategies
beside it; this is the check that the caches hold what they should.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, open_cache
from emergence_model.lm import load_tokenizer_spec
from emergence_model.prefixes import source_field
from emergence_model.prompts import expected_token_ids
from emergence_model.stats import mean_with_ci


def expected_tokens(cache: FeatureCache) -> np.ndarray | None:
    """(n,) the token that starts each prefix's expected continuation, in the cache's tokenizer
    (-1 where there is none); None for a set that expects nothing."""
    expected = source_field(cache.meta.get("source") or {}, "expected")
    if expected is None:
        return None
    tokenizer = load_tokenizer_spec(cache.meta["tokenizer"])
    return np.asarray(expected_token_ids(tokenizer, cache.prefixes, expected))


def expected_hit_rates(cache: FeatureCache) -> dict[str, dict] | None:
    """Each model's share of prefixes whose top token is the expected one, with a 95% bootstrap
    interval, over the prefixes that have one; None for a set that expects nothing."""
    expected = expected_tokens(cache)
    if expected is None:
        return None
    known = expected >= 0
    hits = np.asarray(cache.argmax)[known] == expected[known, None]  # (n, M)
    return {name: mean_with_ci(hits[:, m]) for m, name in enumerate(cache.model_names)}


def agreement_with_target(cache: FeatureCache) -> dict[str, dict]:
    """Each model's top-1 agreement with the target, with a 95% bootstrap interval."""
    argmax = np.asarray(cache.argmax)
    return {
        name: mean_with_ci(argmax[:, m] == argmax[:, -1])
        for m, name in enumerate(cache.model_names[:-1])
    }


def _percent(entry: dict) -> str:
    lo, hi = entry["ci"]
    return f"{100 * entry['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _short(name: str) -> str:
    """A model's short name: its directory, with its checkpoint's step."""
    path = Path(name)
    return f"{path.parent.name}/{path.name}" if path.name.startswith("step") else path.name


def summary_lines(
    size: Mapping[str, Path], steps: Mapping[str, Path], ceiling: Mapping[str, Path]
) -> list[str]:
    """Per set: prefixes, each small model's agreement with the target, the noise ceiling, and
    the expected-token curves along size and training time."""
    lines = []
    for dataset, path in size.items():
        cache = open_cache(path)
        lines.append(f"{dataset}: {cache.num_prefixes:,} prefixes")
        agreement = agreement_with_target(cache)
        lines.append(
            "  agreement with the target: "
            + ", ".join(f"{_short(n)} {_percent(e)}" for n, e in agreement.items())
        )
        if dataset in ceiling:
            replica = agreement_with_target(open_cache(ceiling[dataset]))
            ((name, entry),) = replica.items()
            lines.append(f"  noise ceiling ({_short(name)}): {_percent(entry)}")
        for axis, ladder in (("size", path), ("steps", steps.get(dataset))):
            rates = expected_hit_rates(open_cache(ladder)) if ladder is not None else None
            if rates:
                lines.append(
                    f"  top token is the expected one, along {axis}: "
                    + ", ".join(f"{_short(n)} {_percent(e)}" for n, e in rates.items())
                )
    return lines
