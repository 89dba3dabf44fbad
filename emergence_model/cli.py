"""The one way every entry point builds its command line and reports a user's mistake.

Flags are made from config dataclasses (as in litgpt): one `--flag` per field, its help the
docstring written under the field, its default the field's default, so each option and each
default has one source of truth. `exit_on_user_error` turns a user's mistake into one line on
stderr and exit status 2, and leaves a bug its traceback.
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
from collections.abc import Callable
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


def _flag_type(cls: type, field: dataclasses.Field):
    """The parser of a field's flag (int, float, str, bool, Path), None if it has none."""
    hint = typing.get_type_hints(cls).get(field.name, field.type)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return _FLAG_TYPES.get(hint)


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """The fields of `cls` that are flags, with their types (metadata cli=False opts out)."""
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
    parser: argparse.ArgumentParser, cls: type, title: str | None = None, *, only_given=False
) -> None:
    """One --flag per field of dataclass `cls`, with the field's docstring and default as help.

    `only_given`: a flag not on the command line is absent from the parsed namespace (rather than
    set to the default), so that `config_from_args` can tell "not given" from "given as the
    default", e.g. to keep the recorded configuration of something already built.
    """
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    docs = field_docs(cls)
    for f, kind in cli_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        # "%" is argparse's format character: a docstring's "95%" must reach the help as is
        text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        options = dict(dest=f.name, help=text)
        options["default"] = argparse.SUPPRESS if only_given else default
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            metavar = "PATH" if kind is Path else kind.__name__.upper()
            group.add_argument(flag, type=kind, metavar=metavar, **options)


def config_from_args(cls: type, args: argparse.Namespace, base=None):
    """An instance of `cls` from parsed flags; fields without a flag keep `base`'s values (or the
    defaults). Validation is the dataclass's own `__post_init__`."""
    given = {f.name: getattr(args, f.name) for f, _ in cli_fields(cls) if hasattr(args, f.name)}
    if base is not None:
        return dataclasses.replace(base, **given)
    return cls(**given)


def given_fields(cls: type, args: argparse.Namespace) -> dict:
    """The fields of `cls` given on the command line (for flags added with `only_given`)."""
    return {f.name: getattr(args, f.name) for f, _ in cli_fields(cls) if hasattr(args, f.name)}


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a command; a user's mistake becomes one line on stderr and exit status 2.

    User errors are ValueErrors (CacheError and CheckpointError among them) and OSErrors (a
    missing file or model path); anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
