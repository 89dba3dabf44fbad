"""The one way every entry point builds its command line and reports a user's mistake.

Flags are made from config dataclasses (as in litgpt): one `--flag` per field, its help the
docstring written under the field, its default the field's default, so each option and each
default has one source of truth. `exit_on_user_error` turns a user's mistake into one line on
stderr and exit status 2 (Ctrl-C into one line and 130), and leaves a bug its traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (as in litgpt), read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        is_doc = isinstance(following, ast.Expr) and isinstance(
            getattr(following, "value", None), ast.Constant
        )
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


# Field types a flag can parse; anything else (a tuple of rungs, a dict) is not a flag.
_FLAG_TYPES = {int: int, float: float, str: str, bool: bool, Path: Path}


@dataclasses.dataclass(frozen=True)
class FlagType:
    """How a field's flag parses: the type of each value, and whether it takes several."""

    kind: type
    many: bool = False


def _flag_type(cls: type, field: dataclasses.Field) -> FlagType | None:
    """How a field's flag parses (int, float, str, bool, Path, or a list of one of them but bool;
    a tuple is a fixed shape, not a flag), None if it has no flag."""
    hint = typing.get_type_hints(cls).get(field.name, field.type)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    if typing.get_origin(hint) is list:
        kind = _FLAG_TYPES.get(typing.get_args(hint)[0])
        return FlagType(kind, many=True) if kind not in (None, bool) else None
    kind = _FLAG_TYPES.get(hint)
    return FlagType(kind) if kind is not None else None


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, FlagType]]:
    """The fields of `cls` that are flags, with how they parse (metadata cli=False opts out)."""
    fields = []
    for f in dataclasses.fields(cls):
        kind = _flag_type(cls, f)
        if f.metadata.get("cli") is not False and kind is not None:
            fields.append((f, kind))
    return fields


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str | None = None,
    *,
    only_given=False,
    exclude: Collection[str] = (),
) -> None:
    """One --flag per field of dataclass `cls`, with the field's docstring and default as help.

    `only_given`: a flag not on the command line is absent from the parsed namespace (rather than
    set to the default), so that `config_from_args` can tell "not given" from "given as the
    default", e.g. to keep the recorded configuration of something already built.

    A list field takes one or more values, and a repeated flag adds to them
    (`--cache a b` or `--cache a --cache b`). Field metadata: `choices` (the values allowed),
    `flag` (another flag name than the field's), `metavar` (how the help names a value) and
    `cli=False` (no flag).
    """
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    docs = field_docs(cls)
    for f, flag_type in cli_fields(cls):
        if f.name in exclude:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = _default(f)
        shown = list(default) if flag_type.many and default is not None else default
        # "%" is argparse's format character: a docstring's "95%" must reach the help as is
        text = f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")
        options = dict(dest=f.name, help=text)
        options["default"] = argparse.SUPPRESS if only_given else default
        kind = flag_type.kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        options["metavar"] = f.metadata.get("metavar") or (
            "PATH" if kind is Path else kind.__name__.upper()
        )
        if "choices" in options:
            options.pop("metavar")
        if flag_type.many:
            # Absent unless given, so that the values given replace the field's default rather
            # than extend it; config_from_args fills in the default.
            options.update(nargs="+", action="extend", default=argparse.SUPPRESS)
        group.add_argument(flag, type=kind, **options)


@dataclasses.dataclass(frozen=True)
class FlagGroup:
    """One group of a command's flags: the fields of a config dataclass, under a title."""

    config: type
    title: str
    only_given: bool = False
    """Flags not given are absent from the parsed namespace (see `add_config_arguments`)."""
    exclude: frozenset[str] = frozenset()
    """Fields of `config` this command has no flag for (see `add_config_arguments`)."""


def add_flag_groups(parser: argparse.ArgumentParser, groups: Sequence[FlagGroup]) -> None:
    """Every group's flags, in order: a command's whole command line."""
    for group in groups:
        add_config_arguments(
            parser, group.config, group.title, only_given=group.only_given, exclude=group.exclude
        )


def command_parser(
    prog: str, doc: str, groups: Sequence[FlagGroup], epilog: str | None = None
) -> argparse.ArgumentParser:
    """A command's parser: the first paragraph of its docstring `doc` above the flags, the rest
    (or `epilog`) below them, and the flags of `groups`."""
    description, _, rest = doc.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=rest if epilog is None else epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flag_groups(parser, groups)
    return parser


def given_fields(cls: type, args: argparse.Namespace) -> dict:
    """The fields of `cls` given on the command line (for flags added with `only_given`)."""
    return {f.name: getattr(args, f.name) for f, _ in cli_fields(cls) if hasattr(args, f.name)}


def config_from_args(cls: type, args: argparse.Namespace, base=None):
    """An instance of `cls` from parsed flags; fields without a flag keep `base`'s values (or the
    defaults). Validation is the dataclass's own `__post_init__`."""
    given = given_fields(cls, args)
    if base is not None:
        return dataclasses.replace(base, **given)
    return cls(**given)


@dataclasses.dataclass
class RunOptions:
    """Options every command shares: where the demo suite lives, CPU threads, progress bars."""

    suite_dir: Path | None = None
    """Where the demo suite is built and kept (default: ~/.cache/emergence-model/demo, or
    $XDG_CACHE_HOME/emergence-model/demo)."""
    threads: int | None = None
    """torch CPU threads (default: torch's own choice, one per core)."""
    progress: bool = True
    """Show progress bars and progress lines (--no-progress for logs)."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")

    def apply(self) -> None:
        """Set what belongs to the process: torch's thread count."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)


# Exit status of a command stopped by Ctrl-C (SIGINT), as a shell reports it: 128 + 2.
INTERRUPTED_STATUS = 130


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a command; a user's mistake becomes one line on stderr and exit status 2, Ctrl-C one
    line and exit status 130.

    User errors are ValueErrors (CacheError and CheckpointError among them) and OSErrors (a
    missing file or model path); anything else is a bug and keeps its traceback. Every command
    keeps what it finished when interrupted (rows, folds), so the same command resumes.
    """
    try:
        main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None
    except SystemExit as e:
        # Lightning handles Ctrl-C during training itself, and exits (status 1) while handling it.
        if isinstance(e.__context__, KeyboardInterrupt):
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            raise SystemExit(INTERRUPTED_STATUS) from None
        raise
