"""Sensor encoders: each maps one observation space to a vector; ``FusedEncoder`` joins them.

Entry points:

- ``build_encoder(name, space, config=None)``: one encoder by registry name
  (``"cnn"``, ``"timm"`` / ``"timm/<model>"``, ``"logmel"``, ``"proprio"``, ``"touch"``,
  ``"mlp"``, ``"text"``, ``"embedding"``, or any plug-in from the ``mindloop.encoders`` entry-point group).
- ``build_fused_encoder(observation_space, config=None)``: one vector per frame for a whole
  ``Dict`` observation space.
- ``encoders.sb3``: the same encoders as a Stable-Baselines3 features extractor.
"""

import importlib.util

# Load triton (which torch pulls in through torchvision/timm and torch.compile) before any
# MuJoCo frame is rendered: importing it after Mesa's llvmpipe has loaded its LLVM segfaults
# the process (measured: `env.reset(); import triton` -> SIGSEGV; the reverse order works).
# Costs ~0.15 s; timm itself stays a lazy import.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

from encoders import audio, discrete, image, text, vector  # noqa: F401  (registers the built-ins)
from encoders.audio import LogMelAudioConfig, LogMelAudioEncoder
from encoders.base import ENCODERS, Encoder, EncoderConfig, build_encoder, make_config
from encoders.discrete import EmbeddingConfig, EmbeddingEncoder
from encoders.fusion import (
    DEFAULT_ENCODERS,
    FusedEncoder,
    FusedEncoderConfig,
    build_fused_encoder,
    default_encoder_name,
    obs_to_tensors,
)
from encoders.image import CNNImageConfig, CNNImageEncoder, TimmImageConfig, TimmImageEncoder
from encoders.normalization import RunningNorm
from encoders.registry import Registry, UnknownNameError
from encoders.text import TextConfig, TextEncoder
from encoders.vector import MLPConfig, MLPEncoder, ProprioEncoder, TouchEncoder

__all__ = [
    "DEFAULT_ENCODERS",
    "ENCODERS",
    "CNNImageConfig",
    "CNNImageEncoder",
    "EmbeddingConfig",
    "EmbeddingEncoder",
    "Encoder",
    "EncoderConfig",
    "FusedEncoder",
    "FusedEncoderConfig",
    "LogMelAudioConfig",
    "LogMelAudioEncoder",
    "MLPConfig",
    "MLPEncoder",
    "ProprioEncoder",
    "Registry",
    "RunningNorm",
    "TextConfig",
    "TextEncoder",
    "TimmImageConfig",
    "TimmImageEncoder",
    "TouchEncoder",
    "UnknownNameError",
    "build_encoder",
    "build_fused_encoder",
    "default_encoder_name",
    "make_config",
    "obs_to_tensors",
]
