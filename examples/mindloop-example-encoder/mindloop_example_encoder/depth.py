"""A depth-image encoder, plugged into mindloop from outside the repository.

The whole plug-in is this one decorated class plus the entry point in ``pyproject.toml``:

    [project.entry-points."mindloop.encoders"]
    depth = "mindloop_example_encoder.depth:DepthEncoder"

mindloop imports this module the first time someone asks for the name "depth"
(``build_encoder("depth", space)``, or a ``depth`` key in a ``Dict`` observation space given
to ``build_fused_encoder``); the decorator registers the class under that name.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from encoders import ENCODERS, Encoder, EncoderConfig


@dataclass
class DepthConfig(EncoderConfig):
    """Config of the depth encoder (every field has a default: built from the space alone)."""

    max_depth: float = 5.0
    """Depths beyond this many metres read as "far" (the far plane of the encoder)."""
    channels: tuple[int, ...] = (16, 32, 32)
    """Output channels of each 3x3 stride-2 convolution."""
    embed_dim: int = 64
    """Size of the output vector."""

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)  # a JSON round trip gives a list
        if self.max_depth <= 0:
            raise ValueError(f"max_depth must be positive, got {self.max_depth}")
        if not self.channels or min(self.channels) <= 0 or self.embed_dim <= 0:
            raise ValueError(f"channels and embed_dim must be positive, got {self}")


@ENCODERS.register("depth")
class DepthEncoder(Encoder):
    """Depth in metres, ``(B, H, W)`` or ``(B, H, W, 1)`` float -> ``(B, embed_dim)``.

    Depth is turned into *nearness* ``1 - min(d, max_depth) / max_depth`` (1 = touching,
    0 = far), so that the far background is zero and near objects dominate, then read by a
    small CNN.
    """

    config_class = DepthConfig
    modality = "depth"

    def __init__(self, space: gym.Space, config: DepthConfig | None = None) -> None:
        super().__init__(space, config)  # sets self.space, self.config (default if None)
        cfg: DepthConfig = self.config
        # Check the space at build time, with a one-line error that says what is accepted.
        shape = getattr(space, "shape", None)
        ok = isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating)
        if not ok or len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] != 1):
            raise ValueError(
                f"encoder 'depth' needs a float Box of shape (H, W) or (H, W, 1) in metres; "
                f"got {space}"
            )
        self.height, self.width = shape[0], shape[1]
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        # Size computed by a dummy forward, never written by hand.
        with torch.no_grad():
            n_flat = self.conv(torch.zeros(1, 1, self.height, self.width)).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat, cfg.embed_dim), nn.ReLU())
        self.embed_dim = cfg.embed_dim  # the contract: every encoder exposes embed_dim

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        x = depth.float().reshape(-1, 1, self.height, self.width)  # (B, 1, H, W)
        max_depth = self.config.max_depth
        nearness = 1.0 - x.clamp(0.0, max_depth) / max_depth  # (B, 1, H, W) in [0, 1]
        return self.head(self.conv(nearness))  # (B, embed_dim)

    @classmethod
    def example_space(cls) -> gym.Space:
        """A space it accepts: mindloop's registry-wide tests and benchmarks use it."""
        return gym.spaces.Box(0.0, np.inf, (32, 32, 1), np.float32)
