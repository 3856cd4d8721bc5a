"""The encoder contract, the ``ENCODERS`` registry and ``build_encoder``.

An encoder is an ``nn.Module`` built from a ``gymnasium.Space`` and its own typed config
dataclass. It exposes ``embed_dim`` (computed from its parts, never passed in) and maps a
batch ``(B, *space.shape)`` to ``(B, embed_dim)``. Adding one is one decorated class:

>>> @ENCODERS.register("my_sensor")                       # doctest: +SKIP
... class MySensorEncoder(Encoder):
...     config_class = MySensorConfig
...     def __init__(self, space, config=None): ...

Code outside mindloop registers the same class through the entry-point group
``mindloop.encoders`` (see ``examples/mindloop-example-encoder``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from encoders.registry import Registry

ENCODERS: Registry[type[Encoder]] = Registry(
    "encoder", entry_point_group="mindloop.encoders", plugin_base=lambda: Encoder
)
"""Every encoder by name: built-ins register on import of ``encoders``, plug-ins on first use."""


@dataclass
class EncoderConfig:
    """Base class of encoder configs (plain dataclasses, JSON-friendly via ``to_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Encoder(nn.Module):
    """Base class of mindloop encoders.

    Subclasses set ``config_class`` (their config dataclass) and ``modality`` (a label used by
    benchmarks and docs, e.g. ``"image"``), build their layers in ``__init__`` from the space,
    and set ``self.embed_dim``. ``example_space`` gives a small space the encoder accepts; the
    registry-wide tests and the throughput benchmark use it, so a plug-in that defines it gets
    those tests for free.
    """

    config_class: ClassVar[type[EncoderConfig]] = EncoderConfig
    modality: ClassVar[str] = "other"
    embed_dim: int
    gives_tokens: ClassVar[bool] = False
    """Whether :meth:`forward_tokens` gives the input as tokens (then ``self.token_dim`` is
    their size)."""
    token_dim: int | None = None

    def __init__(self, space: gym.Space, config: EncoderConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = self.default_config()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.space = space
        self.config = config

    @classmethod
    def default_config(cls) -> EncoderConfig:
        """The config used when none is given (and the base that a dict of options edits)."""
        return cls.config_class()

    @classmethod
    def registered_name(cls) -> str:
        """The name this class is registered under (its class name if unregistered)."""
        return next((n for n in ENCODERS.names() if ENCODERS.get(n) is cls), cls.__name__)

    @classmethod
    def example_space(cls) -> gym.Space:
        """A small space this encoder accepts (for tests and benchmarks)."""
        raise NotImplementedError(f"{cls.__name__} defines no example_space")

    @classmethod
    def example_config(cls) -> EncoderConfig:
        """A config that is quick to build and run (for tests); the default config by default."""
        return cls.default_config()

    @classmethod
    def apply_variant(cls, config: EncoderConfig, variant: str) -> EncoderConfig:
        """Config for a name like ``"timm/resnet10t"``: encoders with variants override this."""
        raise ValueError(
            f"encoder {cls.__name__} has no variants; use its plain registry name, not "
            f"'.../{variant}'"
        )

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, *space)`` -> the embedding ``(B, embed_dim)`` and the input as tokens
        ``(B, N, token_dim)``, from one pass: what the ``attend`` and ``scan`` think inputs
        re-read (image cells, words). Encoders that set ``gives_tokens`` override this."""
        raise self.no_tokens_error()

    def no_tokens_error(self) -> ValueError:
        """The one-line error for asking this encoder for tokens it does not give."""
        with_tokens = [n for n in ENCODERS.names() if ENCODERS.get(n).gives_tokens]
        return ValueError(
            f"encoder {self.registered_name()!r} gives no tokens for the think steps to read; "
            f"encoders that do: {', '.join(with_tokens) or '(none)'}"
        )

    def extra_repr(self) -> str:
        return f"embed_dim={getattr(self, 'embed_dim', '?')}"


def make_config(
    cls: type[Encoder], config: EncoderConfig | Mapping[str, Any] | None
) -> EncoderConfig:
    """``config`` as an instance of ``cls.config_class``.

    None gives the encoder's default config; a dict (e.g. read from a checkpoint's JSON)
    replaces those fields of the default config, so it may name only what it changes.
    """
    config_class = cls.config_class
    if config is None:
        return cls.default_config()
    if isinstance(config, config_class):
        return config
    if isinstance(config, Mapping):
        fields = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"options: {', '.join(sorted(fields)) or '(none)'}"
            )
        return dataclasses.replace(cls.default_config(), **config)
    raise TypeError(
        f"{cls.__name__} needs a {config_class.__name__} or a dict of its fields, "
        f"got {type(config).__name__}"
    )


def build_encoder(
    name: str,
    space: gym.Space,
    config: EncoderConfig | Mapping[str, Any] | None = None,
) -> Encoder:
    """Build the encoder registered as ``name`` for ``space``.

    ``name`` may carry a variant after a slash, e.g. ``"timm/mobilenetv3_small_050"`` (the
    encoder's ``apply_variant`` puts it into the config). ``config`` is the encoder's config
    dataclass, a dict of its fields, or None for the defaults. A mismatch between encoder and
    space raises a one-line ``ValueError`` here, at build time.
    """
    family, _, variant = name.partition("/")
    cls = ENCODERS.get(family)
    cfg = make_config(cls, config)
    if variant:
        cfg = cls.apply_variant(cfg, variant)
    encoder = cls(space, cfg)
    embed_dim = getattr(encoder, "embed_dim", None)
    if not isinstance(embed_dim, int) or embed_dim <= 0:
        raise ValueError(
            f"encoder {name!r} ({cls.__name__}) must set a positive int embed_dim, "
            f"got {embed_dim!r}"
        )
    return encoder


# --- space checks shared by the built-in encoders (one-line errors at build time) -----------


def space_str(space: gym.Space) -> str:
    """A short, one-line description of a space for error messages."""
    if isinstance(space, gym.spaces.Box):
        return f"Box(shape={space.shape}, dtype={space.dtype})"
    if isinstance(space, gym.spaces.MultiDiscrete):
        return f"MultiDiscrete(shape={space.shape}, nvec max={int(np.max(space.nvec))})"
    return type(space).__name__


def require_box(
    space: gym.Space, who: str, ndim: int | tuple[int, ...], what: str
) -> gym.spaces.Box:
    """``space`` if it is a Box with ``ndim`` dimensions, else a one-line ValueError."""
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(space, gym.spaces.Box) or len(space.shape) not in ndims:
        raise ValueError(f"encoder {who!r} needs {what}; got {space_str(space)}")
    return space


@torch.no_grad()
def output_numel(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Features per sample that ``module`` produces for one input of ``input_shape``.

    The dummy forward that keeps sizes computed instead of hand-written (STYLE item 5).
    """
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return int(out[0].numel())
