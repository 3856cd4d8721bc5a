"""Audio encoder: per-channel log-mel spectrogram (``torch.stft``) + a small conv net.

Input is the env's ``audio`` observation, ``(B, 2, S)`` float32 in [-1, 1]: the stereo samples
of the last control step (S = sample_rate / control rate, e.g. 320 at 16 kHz and 50 Hz).
Direction survives because the two channels stay separate input planes of the conv net, an
explicit interaural level difference plane (left dB - right dB) is added, and a short
normalized cross-correlation between the channels (lags of +-1 ms) carries the interaural time
difference that magnitude spectra lose. torchaudio does not match our torch pin, so the mel
filterbank is built here (HTK mel scale, Slaney area normalization, like librosa's).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import ENCODERS, Encoder, EncoderConfig, output_numel, require_box, space_str


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> torch.Tensor:
    """Triangular mel filters, ``(n_mels, n_fft // 2 + 1)``, each with unit area (Slaney).

    Raises a one-line ValueError if a filter falls between FFT bins and would be all zero.
    """
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M + 2,)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (center - lower)  # (M, F)
    falling = (upper - freqs[None]) / (upper - center)
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    empty = np.flatnonzero(fb.max(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"n_mels={n_mels} is too many for n_fft={n_fft} at {sample_rate} Hz: mel filters "
            f"{empty.tolist()} cover no FFT bin; lower n_mels or raise n_fft"
        )
    fb *= 2.0 / (upper - lower)  # equal area per filter
    return torch.from_numpy(fb).float()


@dataclass
class LogMelAudioConfig(EncoderConfig):
    """Config of the log-mel audio encoder."""

    sample_rate: int = 16_000
    """Sample rate of the audio observation in Hz (mindloop worlds synthesize 16 kHz)."""
    n_fft: int = 128
    """FFT size (8 ms at 16 kHz); must not exceed the samples per step S in the space."""
    hop_length: int = 32
    """Samples between STFT frames (2 ms at 16 kHz): S=320 gives 7 frames."""
    n_mels: int = 24
    """Mel bands per channel."""
    f_min: float = 0.0
    """Lowest mel band edge in Hz."""
    f_max: float | None = None
    """Highest mel band edge in Hz (None: sample_rate / 2)."""
    channels: tuple[int, ...] = (16, 32, 32)
    """Conv channels; the first conv keeps the resolution, later ones halve mel and time."""
    ild: bool = True
    """Add a left-minus-right dB plane (interaural level difference) for stereo input."""
    xcorr_lag_ms: float = 1.0
    """Max lag of the interaural cross-correlation features in ms (0 disables them)."""
    embed_dim: int = 128
    """Size of the output vector."""

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2={nyquist:g}; "
                f"got f_min={self.f_min}, f_max={self.f_max}"
            )
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be positive ints, got {self.channels}")
        if self.xcorr_lag_ms < 0:
            raise ValueError(f"xcorr_lag_ms must be >= 0, got {self.xcorr_lag_ms}")


class LogMel(nn.Module):
    """Samples ``(B, C, S)`` -> scaled log-mel ``(B, C, n_mels, T)``, roughly in [-1, 1].

    Power is normalized by the window's energy so a full-scale sine sits near 0 dB; dB values
    are mapped by ``dB / 50 + 1`` (-100 dB -> -1), a fixed scaling with no state to train.
    """

    def __init__(self, n_samples: int, cfg: LogMelAudioConfig) -> None:
        super().__init__()
        if n_samples < cfg.n_fft:
            raise ValueError(
                f"audio window of {n_samples} samples is shorter than n_fft={cfg.n_fft}; "
                f"use n_fft <= {n_samples} (e.g. LogMelAudioConfig(n_fft=64, hop_length=16))"
            )
        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        self.n_frames = 1 + (n_samples - cfg.n_fft) // cfg.hop_length
        f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
        fb = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, f_max)
        window = torch.hann_window(cfg.n_fft, periodic=True)
        # Derived from the config, so not saved in checkpoints (persistent=False).
        self.register_buffer("fb", fb, persistent=False)  # (M, F)
        self.register_buffer("window", window, persistent=False)  # (n_fft,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s = x.shape
        spec = torch.stft(
            x.reshape(b * c, s).float(),
            n_fft=self.n_fft,
            hop_length=self.hop,
            window=self.window,
            center=False,  # frames lie inside the step's samples: no padding artefacts
            return_complex=True,
        )  # (B*C, F, T)
        power = spec.real.square() + spec.imag.square()
        power = power * (4.0 / self.window.sum().square())  # full-scale sine ~ 1
        mel = torch.matmul(self.fb, power)  # (B*C, M, T)
        db = 10.0 * torch.log10(mel + 1e-10)
        return (db / 50.0 + 1.0).reshape(b, c, *mel.shape[1:])  # (B, C, M, T)


def interaural_xcorr(x: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Normalized cross-correlation of left and right at lags ``-max_lag..max_lag``.

    ``x``: ``(B, 2, S)`` -> ``(B, 2 * max_lag + 1)`` in [-1, 1]; silence gives zeros. Entry
    ``max_lag + k`` is ``sum_s left[s] * right[s + k]``: a sound that reaches the left ear
    ``d`` samples first peaks at ``k = +d``.
    """
    left, right = x[:, 0].float(), x[:, 1].float()  # (B, S)
    s = left.shape[-1]
    padded = F.pad(right, (max_lag, max_lag))  # (B, S + 2L)
    windows = padded.unfold(-1, s, 1)  # (B, 2L + 1, S): right shifted by -L..L
    dots = torch.einsum("bs,bls->bl", left, windows)
    norm = left.norm(dim=-1, keepdim=True) * right.norm(dim=-1, keepdim=True)
    return dots / (norm + 1e-8)


@ENCODERS.register("logmel")
class LogMelAudioEncoder(Encoder):
    """Stereo (or mono) samples -> log-mel planes (+ ILD plane) -> conv net, + ITD features."""

    config_class = LogMelAudioConfig
    modality = "audio"

    def __init__(self, space: gym.Space, config: LogMelAudioConfig | None = None) -> None:
        super().__init__(space, config)
        cfg: LogMelAudioConfig = self.config
        box = require_box(space, "logmel", 2, "an audio Box of shape (channels, samples)")
        n_ch, n_samples = box.shape
        if n_ch not in (1, 2) or not np.issubdtype(box.dtype, np.floating):
            raise ValueError(
                f"encoder 'logmel' needs float audio of shape (1 or 2, samples); got {space_str(space)}"
            )
        self.stereo = n_ch == 2
        self.logmel = LogMel(n_samples, cfg)
        self.use_ild = cfg.ild and self.stereo
        self.max_lag = round(cfg.xcorr_lag_ms * cfg.sample_rate / 1000) if self.stereo else 0
        self.max_lag = min(self.max_lag, n_samples - 1)

        layers: list[nn.Module] = []
        n_planes = n_ch + int(self.use_ild)
        c_in = n_planes
        for i, c_out in enumerate(cfg.channels):
            stride = 1 if i == 0 else 2  # (mel, time) halved after the first conv
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Flatten())
        self.conv = nn.Sequential(*layers)
        n_conv = output_numel(self.conv, (n_planes, cfg.n_mels, self.logmel.n_frames))
        n_xcorr = 2 * self.max_lag + 1 if self.max_lag > 0 else 0
        self.head = nn.Sequential(nn.Linear(n_conv + n_xcorr, cfg.embed_dim), nn.ReLU())
        self.embed_dim = cfg.embed_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv net's input planes, ``(B, C (+1), n_mels, T)``."""
        mel = self.logmel(x)  # (B, C, M, T)
        if self.use_ild:
            ild = mel[:, :1] - mel[:, 1:2]  # (B, 1, M, T), left louder -> positive
            mel = torch.cat([mel, ild], dim=1)
        return mel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.conv(self.features(x))]  # (B, n_conv)
        if self.max_lag > 0:
            parts.append(interaural_xcorr(x, self.max_lag))  # (B, 2L + 1)
        return self.head(torch.cat(parts, dim=1))  # (B, embed_dim)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Box(-1.0, 1.0, (2, 320), np.float32)
