"""Text encoder: token embeddings over the shared vocabulary (``envs.vocab``) + a reader.

Input is the env's ``text`` observation: ``(B, L)`` token ids from a ``MultiDiscrete([V] * L)``
space, words left-aligned and padded with 0 (``envs.vocab.PAD``). Padding is masked: it gets
a zero embedding (``padding_idx=0``) and the reader ignores it. A frame with no text at all
encodes to the same fixed vector, the "nothing is being said" input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from encoders.base import ENCODERS, Encoder, EncoderConfig, space_str
from envs.vocab import PAD, VOCAB_SIZE


@dataclass
class TextConfig(EncoderConfig):
    """Config of the text encoder."""

    token_dim: int = 32
    """Size of each token embedding."""
    reader: Literal["gru", "mean"] = "gru"
    """'gru': a GRU reads the tokens and its state at the last word is kept (word order
    matters: "left of red" vs "red of left"); 'mean': masked mean of the token embeddings."""
    hidden_dim: int = 64
    """GRU state size (reader='gru')."""
    embed_dim: int = 64
    """Size of the output vector."""

    def __post_init__(self) -> None:
        if self.reader not in ("gru", "mean"):
            raise ValueError(f"reader {self.reader!r} is unknown; choose 'gru' or 'mean'")
        for name in ("token_dim", "hidden_dim", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token per row of ``mask`` ``(B, L)``; 0 for empty rows."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (L,)
    return ((mask * positions).argmax(dim=1)).long()  # (B,)


@ENCODERS.register("text")
class TextEncoder(Encoder):
    """Token ids ``(B, L)`` -> embeddings -> GRU (or masked mean) -> ``(B, embed_dim)``."""

    config_class = TextConfig
    modality = "text"
    gives_tokens = True

    def __init__(self, space: gym.Space, config: TextConfig | None = None) -> None:
        super().__init__(space, config)
        cfg: TextConfig = self.config
        if not isinstance(space, gym.spaces.MultiDiscrete) or len(space.shape) != 1:
            raise ValueError(
                "encoder 'text' needs token ids as MultiDiscrete([VOCAB_SIZE] * L) "
                f"(see envs.vocab); got {space_str(space)}"
            )
        nvec = np.asarray(space.nvec)
        if np.any(nvec != nvec[0]):
            raise ValueError(
                f"encoder 'text' needs one vocabulary size for every slot; got nvec={nvec.tolist()}"
            )
        # The space says how many ids can occur; normally envs.vocab.VOCAB_SIZE.
        self.vocab_size = int(nvec[0])
        self.length = int(space.shape[0])
        self.embedding = nn.Embedding(self.vocab_size, cfg.token_dim, padding_idx=PAD)
        if cfg.reader == "gru":
            self.gru: nn.GRU | None = nn.GRU(cfg.token_dim, cfg.hidden_dim, batch_first=True)
            reader_dim = cfg.hidden_dim
        else:
            self.gru = None
            reader_dim = cfg.token_dim
        self.head = nn.Sequential(nn.Linear(reader_dim, cfg.embed_dim), nn.ReLU())
        self.embed_dim = cfg.embed_dim
        self.token_dim = cfg.token_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(ids)[0]

    def forward_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Also the words themselves: the token embeddings ``(B, L, token_dim)``, in order,
        zeros at padding (so a ``scan`` past the last word reads nothing)."""
        ids = ids.long()  # (B, L); SB3 hands floats
        mask = ids != PAD  # (B, L)
        has_text = mask.any(dim=1, keepdim=True)  # (B, 1)
        tokens = self.embedding(ids)  # (B, L, E), zeros at padding
        if self.gru is not None:
            out, _ = self.gru(tokens)  # (B, L, H)
            idx = last_token_index(mask)  # (B,)
            read = out[torch.arange(ids.shape[0], device=ids.device), idx]  # (B, H)
        else:
            n = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
            read = tokens.sum(dim=1) / n  # (B, E): padding embeds to zero, so sum is masked
        read = read * has_text  # no text -> zero reading -> one fixed output
        return self.head(read), tokens

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.MultiDiscrete([VOCAB_SIZE] * 8)
