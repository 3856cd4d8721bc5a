"""Running mean/variance normalization whose statistics live in the module's buffers."""

from __future__ import annotations

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Normalize features with a running mean and variance (Chan et al.'s parallel update).

    The statistics are buffers, so they travel with ``state_dict()`` (and a safetensors round
    trip restores them). They update only in ``train()`` mode, from the batch being encoded;
    in ``eval()`` mode the module is a fixed affine map. Before the first update it is the
    identity (mean 0, variance 1). Output is clipped to ``[-clip, clip]`` like SB3's
    ``VecNormalize``, so a rare outlier cannot blow up the next layer.
    """

    def __init__(self, shape: tuple[int, ...], eps: float = 1e-5, clip: float = 10.0) -> None:
        super().__init__()
        self.eps = eps
        self.clip = clip
        # float32 (not float64) so the module moves to MPS and other float64-less devices.
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, *shape)
        if self.training:
            self.update(x)
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, *self.mean.shape).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        # Combine the two populations' second moments (Chan, Golub & LeVeque 1979).
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, clip={self.clip}"
