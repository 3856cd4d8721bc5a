"""Command-line parsing shared by ``train.py`` and ``eval.py``."""

from __future__ import annotations

from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def cli(cls: type[T], **kwargs: Any) -> T:
    """``tyro.cli``, except that a config that rejects its values (a ``ValueError`` from a
    dataclass ``__post_init__``: unknown core, bad sizes, ...) raises that one-line
    ``ValueError`` instead of tyro's multi-line box, so the caller prints it like every user
    error. (tyro's hook is marked unstable: without it, tyro's own message is shown.)"""
    hooks = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    if hooks is None:
        return tyro.cli(cls, **kwargs)

    def raise_value_errors(event: Any) -> None:
        if type(event).__name__ == "InstantiationFailure":
            raise ValueError(str(event.message).strip().splitlines()[0])

    with hooks(raise_value_errors):
        return tyro.cli(cls, **kwargs)
