"""Encoder for a single categorical observation (``Discrete(n)``), e.g. a task or phase id."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn

from encoders.base import ENCODERS, Encoder, EncoderConfig, space_str


@dataclass
class EmbeddingConfig(EncoderConfig):
    """Config of the categorical encoder."""

    embed_dim: int = 16
    """Size of the learned vector per category."""

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")


@ENCODERS.register("embedding")
class EmbeddingEncoder(Encoder):
    """``Discrete(n)`` ids ``(B,)`` -> a learned vector per category ``(B, embed_dim)``."""

    config_class = EmbeddingConfig
    modality = "discrete"

    def __init__(self, space: gym.Space, config: EmbeddingConfig | None = None) -> None:
        super().__init__(space, config)
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"encoder 'embedding' needs a Discrete space; got {space_str(space)}")
        self.start = int(space.start)
        self.table = nn.Embedding(int(space.n), self.config.embed_dim)
        self.embed_dim = self.config.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x.long().reshape(-1) - self.start)  # (B, embed_dim)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Discrete(5)
