"""``DepthObservation``: give any MuJoCo Gymnasium env a ``depth`` observation key.

The sensor side of the example: it renders a depth image from the env's own ``MjModel`` /
``MjData`` each step. A ``Dict`` observation gains a ``depth`` key; any other observation is
kept under ``proprio``, so ``Reacher-v5`` becomes ``Dict(proprio, depth)`` and mindloop's
``build_fused_encoder`` reads both with no configuration (``depth`` is found by name).
Set ``MUJOCO_GL=egl`` (or ``osmesa``) before importing mujoco on a machine with no display.
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np


class DepthObservation(gym.ObservationWrapper):
    """Add ``depth``: ``(height, width, 1)`` float32 metres from ``camera`` (name or id;
    -1 is MuJoCo's free camera)."""

    def __init__(
        self, env: gym.Env, height: int = 32, width: int = 32, camera: str | int = -1
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "model") or not hasattr(base, "data"):
            raise ValueError(
                f"DepthObservation needs a MuJoCo env with .model and .data; got {base!r}"
            )
        self.camera = camera
        self.renderer = mujoco.Renderer(base.model, height=height, width=width)
        self.renderer.enable_depth_rendering()
        depth = gym.spaces.Box(0.0, np.inf, (height, width, 1), np.float32)
        if isinstance(env.observation_space, gym.spaces.Dict):
            self.observation_space = gym.spaces.Dict(
                {**env.observation_space.spaces, "depth": depth}
            )
        else:
            self.observation_space = gym.spaces.Dict(
                {"proprio": env.observation_space, "depth": depth}
            )

    def observation(self, observation):
        base = self.env.unwrapped
        self.renderer.update_scene(base.data, camera=self.camera)
        depth = self.renderer.render()[..., None].astype(np.float32)  # (H, W, 1) metres
        if isinstance(observation, dict):
            return {**observation, "depth": depth}
        return {"proprio": observation, "depth": depth}

    def close(self) -> None:
        self.renderer.close()
        super().close()
