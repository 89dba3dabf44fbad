"""Command-line help made from config dataclasses, so each option has one source of truth."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Callable


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
