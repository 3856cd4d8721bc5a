"""The codec between workable vectors and the compact codes the encoded store keeps.

Seed note: a person holds ~7 workable things yet remembers a whole film, because workable
vectors are *encoded* for storage and *decoded* back when they must be used again. Here a
workable vector ``w`` (B, slot_dim) is encoded to a code (B, code_dim) with
``code_dim < slot_dim``, optionally quantized to int8 with one float32 scale per item
(symmetric, per-item max-abs), and decoded back to (B, slot_dim).

Training: :meth:`Codec.reconstruction_loss` is differentiable through the quantizer with a
straight-through estimator, so a trainer can add it as an auxiliary loss on the workable
vectors a policy produces (``TwoTierMemory.apply`` returns it per env as ``codec_loss``), or
:func:`train_codec` fits the codec alone on sampled workable vectors. Compression is lossy:
a cosine of 0.95 or more needs vectors whose intrinsic dimension is at most about the code
size, as the workable vectors of a trained core are; arbitrary Gaussian vectors of
``slot_dim`` dimensions cannot be squeezed into fewer numbers that well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STORE_DTYPES: dict[str, torch.dtype] = {
    "int8": torch.int8,
    "float16": torch.float16,
    "float32": torch.float32,
}
"""How codes (and keys) are held in the store. int8 adds a float32 scale per item."""

_INT8_MAX = 127.0


def quantize_int8(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of z (..., n) -> (codes int8 (..., n), scale (...,))."""
    scale = z.detach().abs().amax(dim=-1).clamp_min(1e-8) / _INT8_MAX  # (...,)
    codes = torch.round(z / scale[..., None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return codes, scale.to(torch.float32)


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_int8`: (..., n) int8 and (...,) scale -> (..., n) float32."""
    return codes.to(torch.float32) * scale[..., None]


def fake_quantize_int8(z: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (the codec learns the int8 noise)."""
    codes, scale = quantize_int8(z)
    return z + (dequantize_int8(codes, scale) - z).detach()


class Codec(nn.Module):
    """Encoder slot_dim -> code_dim and decoder code_dim -> slot_dim (two-layer MLPs).

    ``store_dtype`` picks what :meth:`encode` returns for the store: ``int8`` (codes plus a
    float32 scale per item), ``float16`` or ``float32`` (no scale; ``scale`` is None).

    Inputs are standardized with running per-feature statistics (buffers ``center`` and
    ``spread``, as SB3's VecNormalize does for observations): workable vectors share a large
    common part (biases), and the code should spend its few numbers on what differs between
    items. The statistics change only in :meth:`update_statistics` (called by
    :func:`train_codec`, or by a trainer once per update on a batch of workable vectors),
    never inside a forward pass, so a rollout and its BPTT replay see the same codec.
    """

    def __init__(
        self, slot_dim: int, code_dim: int, hidden_dim: int = 0, store_dtype: str = "int8"
    ) -> None:
        super().__init__()
        if store_dtype not in STORE_DTYPES:
            raise ValueError(
                f"codec store_dtype {store_dtype!r} is not one of {', '.join(STORE_DTYPES)}"
            )
        if not 0 < code_dim < slot_dim:
            raise ValueError(
                f"codec code_dim={code_dim} must be in [1, slot_dim={slot_dim}) to compress"
            )
        hidden = hidden_dim or max(slot_dim, 2 * code_dim)
        self.slot_dim = slot_dim
        self.code_dim = code_dim
        self.store_dtype = store_dtype
        self.encoder = nn.Sequential(
            nn.Linear(slot_dim, hidden), nn.GELU(), nn.Linear(hidden, code_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, slot_dim)
        )
        self.momentum = 0.01
        self.register_buffer("center", torch.zeros(slot_dim))
        self.register_buffer("spread", torch.ones(slot_dim))
        self.register_buffer("stats_seen", torch.zeros((), dtype=torch.bool))

    def standardize(self, w: torch.Tensor) -> torch.Tensor:
        return (w - self.center) / self.spread

    def unstandardize(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.spread + self.center

    @torch.no_grad()
    def update_statistics(self, w: torch.Tensor) -> None:
        """Move the running center/spread toward those of the batch w (N, slot_dim)."""
        w = w.reshape(-1, self.slot_dim).to(self.center)  # keeps the codec's dtype and device
        if w.shape[0] < 2:
            return
        mean, std = w.mean(0), w.std(0).clamp_min(1e-4)
        if bool(self.stats_seen):
            mean = self.center.lerp(mean, self.momentum)
            std = self.spread.lerp(std, self.momentum)
        # New tensors, not in-place updates: a graph built earlier (a get decoded this step)
        # saved the old ones for its backward pass.
        self.center, self.spread = mean, std
        self.stats_seen = torch.ones((), dtype=torch.bool, device=w.device)

    @property
    def quantized(self) -> bool:
        return self.store_dtype == "int8"

    @property
    def bytes_per_code(self) -> int:
        """Bytes one stored code takes (with its scale when int8)."""
        item = torch.empty((), dtype=STORE_DTYPES[self.store_dtype]).element_size()
        return self.code_dim * item + (4 if self.quantized else 0)

    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """w (..., slot_dim) -> codes (..., code_dim) in the store dtype, scale (...,) or None.

        No gradient: what enters the store is outside the gradient path.
        """
        with torch.no_grad():
            z = self.encoder(self.standardize(w))
            if self.quantized:
                return quantize_int8(z)
            return z.to(STORE_DTYPES[self.store_dtype]), None

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """codes (..., code_dim) + scale (...,) -> w_hat (..., slot_dim), differentiable in the
        decoder's weights (the task that uses a fetched item trains the decoder too)."""
        z = dequantize_int8(codes, scale) if self.quantized else codes
        return self.unstandardize(self.decoder(z.to(self.center.dtype)))  # in the codec's dtype

    def _roundtrip_standardized(self, u: torch.Tensor) -> torch.Tensor:
        z = self.encoder(u)
        if self.quantized:
            z = fake_quantize_int8(z)
        elif self.store_dtype == "float16":
            z = z + (z.half().float() - z).detach()
        return self.decoder(z)

    def roundtrip(self, w: torch.Tensor) -> torch.Tensor:
        """Encode, quantize (straight-through) and decode: what a stored item comes back as."""
        return self.unstandardize(self._roundtrip_standardized(self.standardize(w)))

    def reconstruction_loss(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item loss (B,) and cosine (B,) of the round trip against w (B, slot_dim).

        Loss, in standardized units: (1 - cosine) + MSE relative to the item's mean square,
        so what differs between items is reconstructed, not only the common part. The
        returned cosine is in raw units (what the core gets back).
        """
        w = w.detach()  # train the codec to fit the workable vectors, not the other way round
        u = self.standardize(w)
        u_hat = self._roundtrip_standardized(u)
        cos_u = F.cosine_similarity(u_hat, u, dim=-1, eps=1e-8)
        rel_mse = (u_hat - u).pow(2).mean(-1) / u.pow(2).mean(-1).clamp_min(1e-8)
        cos = F.cosine_similarity(self.unstandardize(u_hat), w, dim=-1, eps=1e-8)
        return (1.0 - cos_u) + rel_mse, cos.detach()


def train_codec(
    codec: Codec,
    samples: torch.Tensor | Callable[[int], torch.Tensor],
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``codec`` alone on workable vectors; returns the final mean loss and cosine.

    ``samples`` is a tensor (N, slot_dim) to draw mini-batches from, or a function
    ``batch_size -> (batch_size, slot_dim)`` (e.g. running a core on fresh inputs). Only the
    codec's parameters and input statistics are updated.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(
            f"train_codec needs steps >= 1 and batch_size >= 1, got {steps}, {batch_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(codec.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss = cos = torch.zeros(())
    for _ in range(steps):
        if callable(samples):
            batch = samples(batch_size)
        else:
            idx = torch.randint(0, samples.shape[0], (batch_size,), generator=gen)
            batch = samples[idx]
        batch = batch.to(codec.center)  # e.g. float64 samples from numpy, a float32 codec
        codec.update_statistics(batch)
        losses, cosines = codec.reconstruction_loss(batch)
        loss, cos = losses.mean(), cosines.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {"loss": float(loss.detach()), "cosine": float(cos)}
