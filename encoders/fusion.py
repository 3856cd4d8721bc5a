"""One vector per frame from whatever keys a ``Dict`` observation space has.

>>> import envs, gymnasium as gym                                    # doctest: +SKIP
>>> env = gym.make("mindloop/MuscleReach-v0")
>>> enc = build_fused_encoder(env.observation_space)               # defaults per key
>>> obs, _ = env.reset(seed=0)
>>> enc(obs).shape                                                 # numpy, unbatched: fine
torch.Size([256])
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from encoders.base import ENCODERS, build_encoder, space_str

DEFAULT_ENCODERS: dict[str, str] = {
    "image": "cnn",
    "audio": "logmel",
    "proprio": "proprio",
    "touch": "touch",
    "text": "text",
}
"""The encoder used for each standard observation key unless overridden."""


def default_encoder_name(key: str, space: gym.Space) -> str:
    """The encoder for observation ``key``: the standard one, a plug-in named like the key, or
    one chosen by the space's kind (image-like Box -> cnn, 1-D float Box -> mlp,
    Discrete -> embedding)."""
    if key in DEFAULT_ENCODERS:
        return DEFAULT_ENCODERS[key]
    if key in ENCODERS:
        return key
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) == 3 and space.dtype == np.uint8:
            return "cnn"
        if len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating):
            return "mlp"
    if isinstance(space, gym.spaces.Discrete):
        return "embedding"
    raise ValueError(
        f"no default encoder for observation key {key!r} ({space_str(space)}); choose one with "
        f"FusedEncoderConfig(encoders={{{key!r}: NAME}}), NAME in: {', '.join(ENCODERS.names())}"
    )


@dataclass
class FusedEncoderConfig:
    """Which encoder reads each observation key, and how their vectors are joined."""

    encoders: dict[str, str] = field(default_factory=dict)
    """Encoder name per observation key, overriding the defaults (image: cnn, audio: logmel,
    proprio: proprio, touch: touch, text: text; a key named like a registered encoder uses it).
    Variants are allowed: {"image": "timm/resnet10t"} (on train.py's command line
    ``--agent.encoders.encoders image timm/resnet10t``)."""
    configs: dict[str, Any] = field(default_factory=dict)
    """Config per observation key: the encoder's config dataclass, or a dict of the fields to
    change from its defaults (JSON-friendly)."""
    options: dict[str, str] = field(default_factory=dict)
    """Single config fields from the command line, "KEY.FIELD" -> value, applied over
    ``configs`` (values read as Python literals, else kept as strings, like timm's
    ``--model-kwargs``): ``--agent.encoders.options image.pool mean image.embed_dim 128``."""
    keys: tuple[str, ...] | None = None
    """Observation keys to encode (None: every key of the space)."""
    embed_dim: int | None = 256
    """Project the concatenated per-key vectors to this size (Linear + LayerNorm + ReLU);
    None: return the concatenation itself."""

    def __post_init__(self) -> None:
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive or None, got {self.embed_dim}")
        if self.keys is not None:
            self.keys = tuple(self.keys)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable data (for a checkpoint's config.json)."""
        return {
            "encoders": dict(self.encoders),
            "configs": {
                k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else dict(v)
                for k, v in self.configs.items()
            },
            "options": dict(self.options),
            "keys": list(self.keys) if self.keys is not None else None,
            "embed_dim": self.embed_dim,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusedEncoderConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown FusedEncoderConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def key_configs(self) -> dict[str, Any]:
        """``configs`` with ``options`` applied: key -> config dataclass or dict of fields."""
        merged: dict[str, Any] = dict(self.configs)
        for dotted, raw in self.options.items():
            key, _, name = dotted.partition(".")
            if not key or not name:
                raise ValueError(f"option {dotted!r} must look like KEY.FIELD, e.g. image.freeze")
            base = merged.get(key) or {}
            fields = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base)
            fields[name] = parse_option(raw)
            merged[key] = fields
        return merged


def parse_option(raw: str) -> Any:
    """A command-line value as a Python literal ("True", "128", "(16, 32)"), else the string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def obs_to_tensors(
    obs: Mapping[str, Any], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """A dict of numpy arrays (or tensors) as tensors on ``device``, dtypes kept (uint8 stays
    uint8: the encoders convert, so frames cross to the GPU at a quarter of the bytes)."""
    return {
        k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, device=device)
        for k, v in obs.items()
    }


class FusedEncoder(nn.Module):
    """An encoder per observation key; their vectors concatenated (and projected).

    ``forward`` takes a dict of tensors or numpy arrays shaped ``(*lead, *space_shape)`` per
    key, where ``lead`` is any batch shape shared by all keys (``()`` for one unbatched
    observation, ``(B,)`` for a vector env, ``(T, B)`` for a training sequence), and returns
    ``(*lead, embed_dim)``. Images go in as raw uint8 straight from the env.
    """

    def __init__(
        self, observation_space: gym.spaces.Dict, config: FusedEncoderConfig | None = None
    ) -> None:
        super().__init__()
        config = FusedEncoderConfig() if config is None else config
        if not isinstance(observation_space, gym.spaces.Dict):
            raise ValueError(
                f"FusedEncoder needs a gymnasium.spaces.Dict observation space; got "
                f"{space_str(observation_space)} (use build_encoder for a single space)"
            )
        keys = tuple(sorted(observation_space.keys())) if config.keys is None else config.keys
        configs = config.key_configs()
        missing = [
            k for k in (*keys, *config.encoders, *configs) if k not in observation_space.spaces
        ]
        if missing:
            raise ValueError(
                f"observation key(s) {', '.join(map(repr, dict.fromkeys(missing)))} not in the "
                f"space; it has: {', '.join(observation_space.keys())}"
            )
        if not keys:
            raise ValueError("FusedEncoder needs at least one observation key")
        bad = [k for k in keys if "." in k or not k]
        if bad:
            raise ValueError(f"observation keys may not be empty or contain '.': {bad}")

        self.observation_space = observation_space
        self.encoders = nn.ModuleDict()
        names: dict[str, str] = {}
        for key in keys:
            space = observation_space[key]
            names[key] = config.encoders.get(key) or default_encoder_name(key, space)
            self.encoders[key] = build_encoder(names[key], space, configs.get(key))
        self.shapes = {k: tuple(observation_space[k].shape) for k in keys}
        concat_dim = sum(enc.embed_dim for enc in self.encoders.values())
        if config.embed_dim is None:
            self.proj: nn.Module = nn.Identity()
            self.embed_dim = concat_dim
        else:
            self.proj = nn.Sequential(
                nn.Linear(concat_dim, config.embed_dim), nn.LayerNorm(config.embed_dim), nn.ReLU()
            )
            self.embed_dim = config.embed_dim
        # Every choice made explicit: enough, with the space, to rebuild this module exactly.
        self.config = FusedEncoderConfig(
            encoders=names,
            configs={k: enc.config for k, enc in self.encoders.items()},
            keys=keys,
            embed_dim=config.embed_dim,
        )

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def encode_keys(
        self, obs: Mapping[str, Any], token_key: str | None = None
    ) -> tuple[dict[str, torch.Tensor], tuple[int, ...], torch.Tensor | None]:
        """Each key's embedding ``(N, d_key)`` (N = prod(lead)), the shared ``lead`` shape, and
        the tokens ``(N, n_tokens, token_dim)`` of ``token_key``'s encoder (None if not asked)."""
        device = self._device()
        out: dict[str, torch.Tensor] = {}
        tokens: torch.Tensor | None = None
        lead: tuple[int, ...] | None = None
        for key, encoder in self.encoders.items():
            if key not in obs:
                raise ValueError(
                    f"observation has no key {key!r}; the encoder reads {', '.join(self.keys)}"
                )
            x = obs[key]
            x = (
                x.to(device)
                if torch.is_tensor(x)
                else torch.as_tensor(np.asarray(x), device=device)
            )
            shape = self.shapes[key]
            n = x.ndim - len(shape)
            if n < 0 or tuple(x.shape[n:]) != shape:
                raise ValueError(
                    f"observation {key!r} has shape {tuple(x.shape)}; expected (..., *{shape})"
                )
            if lead is None:
                lead = tuple(x.shape[:n])
            elif tuple(x.shape[:n]) != lead:
                raise ValueError(
                    f"observation {key!r} has batch shape {tuple(x.shape[:n])}, others {lead}"
                )
            if key == token_key:
                out[key], tokens = encoder.forward_tokens(x.reshape(-1, *shape))
            else:
                out[key] = encoder(x.reshape(-1, *shape))  # (N, d_key)
        assert lead is not None
        return out, lead, tokens

    def forward(
        self, obs: Mapping[str, Any], token_key: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(*lead, embed_dim)``; with ``token_key``, also that observation as tokens from
        the same pass, ``(*lead, n_tokens, token_dim)`` (what the ``attend`` and ``scan``
        think inputs read), returned as a pair."""
        if token_key is not None:
            self.token_dim(token_key)
        parts, lead, tokens = self.encode_keys(obs, token_key)
        fused = self.proj(torch.cat(list(parts.values()), dim=-1))  # (N, embed_dim)
        fused = fused.reshape(*lead, self.embed_dim)
        if tokens is None:
            return fused
        return fused, tokens.reshape(*lead, *tokens.shape[1:])

    def token_dim(self, key: str) -> int:
        """Size of the tokens observation ``key``'s encoder gives (one-line error if none)."""
        if key not in self.encoders:
            raise ValueError(
                f"no observation key {key!r} to take think tokens from; keys: {', '.join(self.keys)}"
            )
        encoder = self.encoders[key]
        if not encoder.gives_tokens or encoder.token_dim is None:
            raise encoder.no_tokens_error()
        return int(encoder.token_dim)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}"


def build_fused_encoder(
    observation_space: gym.spaces.Dict, config: FusedEncoderConfig | None = None
) -> FusedEncoder:
    """The encoder for a whole ``Dict`` observation space (the one entry point for agents)."""
    return FusedEncoder(observation_space, config)
