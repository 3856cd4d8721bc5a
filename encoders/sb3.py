"""Stable-Baselines3 bridge: mindloop's fused encoder as an SB3 features extractor.

>>> from stable_baselines3 import PPO                                  # doctest: +SKIP
>>> from encoders.sb3 import sb3_policy_kwargs
>>> model = PPO("MultiInputPolicy", env, policy_kwargs=sb3_policy_kwargs())
>>> from sb3_contrib import RecurrentPPO
>>> model = RecurrentPPO("MultiInputLstmPolicy", env, policy_kwargs=sb3_policy_kwargs())

SB3's ``preprocess_obs`` changes observations before the extractor sees them; this module
undoes that so the mindloop encoders get what the env produced:

- uint8 image Boxes are divided by 255 when the policy's ``normalize_images=True`` (SB3's
  default). ``sb3_policy_kwargs`` sets ``normalize_images=False``; the extractor then gets the
  pixel values as floats in [0, 255] and the image encoder normalizes them its own way (a
  timm backbone with its own mean/std). Pass ``normalize_images=True`` to both the policy and
  the extractor to keep SB3's division instead; the extractor multiplies back. A mismatch is
  caught on the first batch with a one-line error.
- ``MultiDiscrete`` (text) arrives one-hot, ``(B, sum(nvec))``, and ``Discrete`` one-hot
  ``(B, n)``: the extractor turns them back into ids with an argmax per slot.
- SB3 transposes channels-last images to channels-first (``VecTransposeImage``) and builds
  the extractor from the transposed space; mindloop image encoders accept both layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from encoders.fusion import FusedEncoder, FusedEncoderConfig


class MindloopFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 ``BaseFeaturesExtractor`` around ``FusedEncoder``; ``features_dim = embed_dim``.

    :param observation_space: the (possibly SB3-transposed) ``Dict`` observation space.
    :param config: a ``FusedEncoderConfig`` or its ``to_dict()`` form (None: defaults).
    :param normalize_images: must equal the policy's ``normalize_images``.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        config: FusedEncoderConfig | Mapping[str, Any] | None = None,
        normalize_images: bool = False,
    ) -> None:
        if isinstance(config, Mapping):
            config = FusedEncoderConfig.from_dict(config)
        fused = FusedEncoder(observation_space, config)
        super().__init__(observation_space, features_dim=fused.embed_dim)
        self.fused = fused
        self.normalize_images = normalize_images
        spaces = observation_space.spaces
        # The keys whose tensors SB3 changed, found with SB3's own tests for it.
        self.image_keys = [k for k in fused.keys if is_image_space(spaces[k])]
        self.multi_discrete = {
            k: [int(n) for n in spaces[k].nvec]
            for k in fused.keys
            if isinstance(spaces[k], gym.spaces.MultiDiscrete)
        }
        self.discrete = {
            k: int(spaces[k].start)
            for k in fused.keys
            if isinstance(spaces[k], gym.spaces.Discrete)
        }

    def undo_preprocessing(
        self, observations: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Observations as the env produced them (pixels in [0, 255], token ids)."""
        obs = dict(observations)
        for key in self.image_keys:
            x = obs[key]
            if x.numel() == 0:
                continue
            peak = float(x.max())
            if self.normalize_images:
                if peak > 1.0 + 1e-6:
                    raise ValueError(
                        f"image {key!r} arrives in [0, 255] but the extractor was told "
                        f"normalize_images=True; set the same normalize_images in policy_kwargs "
                        f"and features_extractor_kwargs (sb3_policy_kwargs() does)"
                    )
                obs[key] = (x * 255.0).round()
            # Pixels divided by 255 are fractions, or at most 1 where the frame is not black.
            elif x.is_floating_point() and (0.0 < peak <= 1.0 or not torch.equal(x, x.round())):
                raise ValueError(
                    f"image {key!r} arrives already divided by 255 (SB3 normalize_images=True); "
                    f"pass policy_kwargs=encoders.sb3.sb3_policy_kwargs(), or normalize_images="
                    f"False in policy_kwargs (or True in features_extractor_kwargs too)"
                )
        for key, nvec in self.multi_discrete.items():
            x = obs[key]
            if x.shape[-1] == sum(nvec) and (len(nvec) > 1 or nvec[0] > 1):
                # (B, sum(nvec)) one-hots -> (B, L) ids
                slots = torch.split(x, nvec, dim=-1)
                obs[key] = torch.stack([s.argmax(dim=-1) for s in slots], dim=-1)
        for key in self.discrete:
            x = obs[key]
            if x.ndim == 2:  # (B, n) one-hot of the raw value (SB3 supports only start=0)
                obs[key] = x.argmax(dim=-1)
        return obs

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fused(self.undo_preprocessing(observations))  # (B, features_dim)


def sb3_policy_kwargs(
    config: FusedEncoderConfig | None = None, **policy_kwargs: Any
) -> dict[str, Any]:
    """``policy_kwargs`` for SB3 ``PPO("MultiInputPolicy", ...)`` / sb3-contrib
    ``RecurrentPPO("MultiInputLstmPolicy", ...)`` that encode with mindloop's encoders.

    Extra keyword arguments (``net_arch``, ``lstm_hidden_size``, ...) are passed through. The
    config travels as plain data, so SB3's saved model holds no mindloop classes.
    """
    config = FusedEncoderConfig() if config is None else config
    kwargs: dict[str, Any] = {
        "features_extractor_class": MindloopFeaturesExtractor,
        "features_extractor_kwargs": {"config": config.to_dict(), "normalize_images": False},
        "normalize_images": False,
    }
    kwargs.update(policy_kwargs)
    return kwargs
