"""Command-line parsing shared by ``train.py`` and ``eval.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def cli(cls: type[T], **kwargs: Any) -> T:
    """``tyro.cli``, except that a config that rejects its values (a ``ValueError`` from a
    dataclass ``__post_init__``: unknown core, bad sizes, ...) raises that one-line
    ``ValueError`` instead of tyro's multi-line box, so the caller prints it like every user
    error. (tyro's hook is marked unstable: without it, tyro's own message is shown.)"""
    if "description" in kwargs:
        kwargs["description"] = plain_help(kwargs["description"])
    hooks = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    with _plain_docstrings():
        if hooks is None:
            return tyro.cli(cls, **kwargs)

        def raise_value_errors(event: Any) -> None:
            if type(event).__name__ == "InstantiationFailure":
                message = str(event.message).strip().splitlines()[0]
                raise ValueError(_with_option(message, getattr(event, "argument", None)))

        with hooks(raise_value_errors):
            return tyro.cli(cls, **kwargs)


def path_error_line(e: Exception) -> str:
    """An OSError (or PyAV error) as ``<path>: <reason>`` on one line (the path is what the
    user can act on); one raised with a message only (Minari, timm) as that message."""
    path = getattr(e, "filename", None)
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{path}: {reason}" if path else reason


def _with_option(message: str, argument: Any) -> str:
    """tyro's message about one value, with the option it was given to (a bad int or a
    dangling KEY of KEY VALUE pairs named no option: "Failed to parse key-value pairs!")."""
    field = getattr(argument, "field", None)
    name = getattr(field, "extern_name", None)
    if not name:
        return message
    prefix = getattr(argument, "extern_prefix", "")
    option = "--" + (f"{prefix}.{name}" if prefix else name).replace("_", "-")
    if message.startswith("Failed to parse key-value pairs"):
        message = "expected KEY VALUE pairs (an even number of words)"
    return f"{option}: {message}"


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`build_core` -> build_core
_LITERAL = re.compile(r"``([^`]+)``")  # ``CORES.names()`` -> CORES.names()
_LIST_ITEM = re.compile(r"([-*]|\d+[.)])\s")


def plain_help(docstring: str) -> str:
    """A docstring as ``--help`` text: each paragraph on one line (a list item keeps its line
    break; the terminal wraps the rest), reST roles and literals as plain text.

    tyro keeps a docstring's line break before any line that does not start with a letter,
    so a field documented over lines starting with ``(`` or a backquote printed ragged."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", docstring.strip()):
        lines: list[str] = []
        for line in (raw.strip() for raw in paragraph.splitlines()):
            if lines and not _LIST_ITEM.match(line):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", "\n\n".join(paragraphs)))


@contextmanager
def _plain_docstrings() -> Iterator[None]:
    """tyro's help text of every field and group through :func:`plain_help` (tyro has no
    option for it: its line-break rule is swapped while the command line is parsed)."""
    strings = getattr(tyro, "_strings", None)
    original = getattr(strings, "remove_single_line_breaks", None)
    if original is None:  # another tyro version: its own help text
        yield
        return
    strings.remove_single_line_breaks = plain_help
    try:
        yield
    finally:
        strings.remove_single_line_breaks = original
