import json

import pytest
from synthetic_cache import write_synthetic_cache

from emergence_model.evaluate import evaluate_cache, make_baselines
from emergence_model.report import (
    agreement_figure,
    format_markdown,
    format_number,
    format_stat,
    format_table,
    write_reports,
)


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    cache = write_synthetic_cache(tmp_path_factory.mktemp("report") / "cache", num_prefixes=40)
    return evaluate_cache(cache, [(None, make_baselines())], num_bootstrap=50)


def test_stats_are_shown_with_their_intervals():
    assert format_stat({"value": 0.7512, "ci": [0.74, 0.76]}, percent=True) == "75.1 [74.0, 76.0]"
    assert format_stat({"value": -1.23456, "ci": [-1.3, -1.1]}, percent=False) == (
        "-1.235 [-1.300, -1.100]"
    )
    assert format_stat({"value": float("nan"), "ci": [0, 0]}, percent=False) == "-"
    assert format_stat(None, percent=True) == "-"


def test_differences_and_other_precisions_share_the_one_format():
    diff = {"value": 0.0123, "ci": [-0.004, 0.0311]}
    assert format_stat(diff, percent=True, signed=True) == "+1.2 [-0.4, +3.1]"
    assert format_stat(diff, percent=True, digits=2, signed=True) == "+1.23 [-0.40, +3.11]"
    assert format_stat(diff, digits=4) == "0.0123 [-0.0040, 0.0311]"
    assert format_number(0.7711, percent=True, digits=2) == "77.11"
    assert format_number(-0.0002, signed=True) == "-0.000"
    assert format_number(0.5) == "0.500"


def test_table_and_markdown_show_every_strategy_best_first(summary):
    table = format_table(summary, "synthetic")
    markdown = format_markdown(summary, "synthetic")
    order = sorted(summary["strategies"], key=lambda s: -summary["strategies"][s]["top1"]["value"])
    positions = [table.index(f"\n{name} ") for name in order]
    assert positions == sorted(positions)
    for name in order:
        assert f"| {name} |" in markdown


def test_figure_draws_each_strategy_value_and_interval(summary):
    figure = agreement_figure([("a", summary), ("b", summary)])
    axes = figure.axes
    assert len(axes) == 2
    bars = {t.get_text(): None for t in axes[0].get_yticklabels()}
    assert set(bars) == set(summary["strategies"])
    widths = {
        label.get_text(): patch.get_width()
        for label, patch in zip(axes[0].get_yticklabels(), axes[0].patches, strict=True)
    }
    for name, width in widths.items():
        assert width == pytest.approx(100 * summary["strategies"][name]["top1"]["value"])


def test_reports_are_written_next_to_each_other(summary, tmp_path):
    paths = write_reports(tmp_path / "out", [("synthetic", summary)])
    assert [p.name for p in paths] == ["results.json", "results.md", "agreement.png"]
    assert set(json.loads(paths[0].read_text())) == {"synthetic"}
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
