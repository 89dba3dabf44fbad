"""What every bench script shares: where things are beside the repository, a command line made
from config dataclasses with the options every command shares (`cli.RunOptions`) and
--results-dir, and the stamped results file each benchmark and experiment writes
(`emergence_model.results`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emergence_model.cli import RunOptions, add_config_arguments, config_from_args
from emergence_model.results import Section, write_results

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
# WikiText-2, the GPT-NeoX-20B tokenizer and GLUE RTE, beside the repository: benchmarks and
# builders read them; tests never do (a fresh clone has no ../shared).
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "docs" / "results"
# Field metadata: the field takes every argument after "--" (flags passed on to another command);
# its value says what they are, for the --help.
AFTER_DASHES = "after_dashes"


def gpt_neox_tokenizer(data_dir: Path = SHARED_DATA) -> PreTrainedTokenizerFast:
    """Pythia's tokenizer (GPT-NeoX-20B's) from `data_dir`, without a download."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(data_dir / "gpt-neox-20b-tokenizer.json"),
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )


@dataclass
class ResultsOptions:
    """Where a benchmark's or an experiment's results go."""

    results_dir: Path = RESULTS_DIR
    """Where the results are written, as NAME.md and NAME.json (NAME: the script's)."""


@dataclass
class Run:
    """One run of a bench script: its module (bench.experiments.predictor_cv) and arguments, when
    it started (the stamp of the results it writes), the shared options, where results go."""

    script: str
    argv: list[str]
    options: RunOptions
    results_dir: Path | None
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def command(self) -> str:
        return " ".join(["python -m", self.script, shlex.join(self.argv)]).rstrip()

    def write(self, title: str, sections: Sequence[Section]) -> Path:
        """Write results_dir/NAME.md and NAME.json, stamped; print the Markdown and both paths."""
        if self.results_dir is None:  # a bug: start_run was told the script writes none
            raise RuntimeError(f"{self.script} has no --results-dir")
        name = self.script.rpartition(".")[2]
        markdown, numbers = write_results(
            self.results_dir / f"{name}.md",
            title,
            sections,
            command=self.command,
            wall_seconds=time.perf_counter() - self.started,
        )
        print(f"\n{markdown.read_text(encoding='utf-8')}\nresults: {markdown} and {numbers}")
        return markdown


def module_name(file: str) -> str:
    """A script's dotted module name from its path in the repository (what `python -m` runs)."""
    return ".".join(Path(file).resolve().relative_to(REPO).with_suffix("").parts)


def start_run(
    file: str,
    doc: str,
    argv: Sequence[str] | None,
    *configs: type,
    reads_suite: bool = False,
    writes_results: bool = True,
) -> tuple[list, Run]:
    """Parse a script's command line: one flag per field of each config dataclass, then
    `RunOptions` (applied: torch's threads) and, for a script that writes results,
    --results-dir. Returns the configs, in order, and the run.

    `file`, `doc`: the script's `__file__` and `__doc__` (the docstring's first two paragraphs,
    what it is and how to run it, are the --help's description). `reads_suite`: whether the
    script reads --suite-dir; one that does not has no such flag. A field (not a
    flag) with metadata `AFTER_DASHES` takes the arguments after "--", for another command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {module_name(file)}",
        description="\n\n".join(doc.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for cls in (*configs, RunOptions, *([ResultsOptions] if writes_results else [])):
        exclude = () if cls is not RunOptions or reads_suite else ("suite_dir",)
        add_config_arguments(parser, cls, cls.__name__, exclude=exclude)
    passed_on = {
        cls: f for cls in configs for f in dataclasses.fields(cls) if f.metadata.get(AFTER_DASHES)
    }
    flags, rest = argv, []
    if passed_on:
        parser.epilog = "after --: " + "; ".join(
            f.metadata[AFTER_DASHES] for f in passed_on.values()
        )
        if "--" in argv:
            flags, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(flags)
    options = config_from_args(RunOptions, args)
    options.apply()
    built = []
    for cls in configs:
        config = config_from_args(cls, args)
        if cls in passed_on:
            config = dataclasses.replace(config, **{passed_on[cls].name: rest})
        built.append(config)
    results_dir = config_from_args(ResultsOptions, args).results_dir if writes_results else None
    return built, Run(module_name(file), argv, options, results_dir)
