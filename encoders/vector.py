"""Encoders for flat float vectors: body state (``proprio``) and contact sensors (``touch``).

Both are MLPs behind a running normalization (``RunningNorm``): joint angles, velocities and
muscle forces differ by orders of magnitude and no fixed scale fits every body. The running
statistics are buffers (saved with the weights) that update only in ``train()`` mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from encoders.base import ENCODERS, Encoder, EncoderConfig, require_box, space_str
from encoders.normalization import RunningNorm

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


@dataclass
class MLPConfig(EncoderConfig):
    """Config of the vector (proprio / touch) encoders."""

    hidden: tuple[int, ...] = (128,)
    """Hidden layer sizes of the MLP."""
    embed_dim: int = 64
    """Size of the output vector."""
    activation: Literal["relu", "tanh", "elu", "silu"] = "relu"
    """Nonlinearity after every layer (the output included)."""
    normalize: bool = True
    """Running mean/std normalization of the input (updated in train() mode only)."""
    clip: float = 10.0
    """Normalized inputs are clipped to [-clip, clip]."""
    symlog: bool = False
    """Compress the input with sign(x) * log1p(|x|) first (for spiky contact forces)."""

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if any(h <= 0 for h in self.hidden) or self.embed_dim <= 0:
            raise ValueError(
                f"hidden sizes and embed_dim must be positive, got {self.hidden}, {self.embed_dim}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {self.activation!r} is unknown; choose from {', '.join(ACTIVATIONS)}"
            )
        if self.clip <= 0:
            raise ValueError(f"clip must be positive, got {self.clip}")


@ENCODERS.register("mlp")
class MLPEncoder(Encoder):
    """A 1-D float Box ``(B, N)`` -> symlog? -> RunningNorm -> MLP -> ``(B, embed_dim)``."""

    config_class = MLPConfig
    modality = "vector"

    def __init__(self, space: gym.Space, config: MLPConfig | None = None) -> None:
        super().__init__(space, config)
        cfg: MLPConfig = self.config
        name = self.registered_name()
        box = require_box(space, name, 1, "a 1-D float Box, shape (N,)")
        if not np.issubdtype(box.dtype, np.floating):
            raise ValueError(f"encoder {name!r} needs a 1-D float Box; got {space_str(space)}")
        n_in = box.shape[0]
        self.norm: nn.Module = (
            RunningNorm((n_in,), clip=cfg.clip) if cfg.normalize else nn.Identity()
        )
        act = ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        for width in (*cfg.hidden, cfg.embed_dim):
            layers += [nn.Linear(n_in, width), act()]
            n_in = width
        self.mlp = nn.Sequential(*layers)
        self.embed_dim = cfg.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # (B, N)
        if self.config.symlog:
            x = torch.sign(x) * torch.log1p(x.abs())
        return self.mlp(self.norm(x))  # (B, embed_dim)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Box(-np.inf, np.inf, (12,), np.float32)


@ENCODERS.register("proprio")
class ProprioEncoder(MLPEncoder):
    """Body state: joint angles/velocities, muscle length/velocity/force/activation."""

    modality = "proprio"


@ENCODERS.register("touch")
class TouchEncoder(MLPEncoder):
    """Contact sensors: non-negative, mostly zero, with spikes on impact (hence symlog)."""

    modality = "touch"

    @classmethod
    def default_config(cls) -> MLPConfig:
        return MLPConfig(hidden=(64,), embed_dim=32, symlog=True)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Box(0.0, np.inf, (5,), np.float32)
