"""Tiny Gymnasium envs for fast training tests (in the spirit of SB3's identity envs).

Both follow the mindloop task contract (Dict spaces, ``info["is_success"]``, a scripted
``expert_action()``, ``get_state()``/``set_state()`` for exact resume) at a microsecond a
step, so PPO/BC/resume/DDP tests finish in seconds:

- ``mindloop_test/TinyReach-v0``: ``proprio`` = [target (2), position (2)]; the action
  ``muscles`` in [0, 1]^2 moves the position a fraction toward the action point; reward is
  minus the distance; success when within 0.1 for 2 steps. The expert outputs the target.
- ``mindloop_test/TinyAnswer-v0``: ``text`` shows a token for a few steps, then a question
  mark; the agent must answer the shown token (``text`` action) when asked. Reward +1 for
  the right answer, 0 otherwise; the expert says silence, then the token. Needs memory of
  the first steps (the recurrent core). Its ``expert_latent()`` is the token to answer, one-hot
  (what the core must carry).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TinyReachEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, max_steps: int = 20, gain: float = 0.5) -> None:
        self.max_steps, self.gain = max_steps, gain
        self.observation_space = spaces.Dict(
            proprio=spaces.Box(-1.0, 2.0, (4,), np.float32),
        )
        self.action_space = spaces.Dict(muscles=spaces.Box(0.0, 1.0, (2,), np.float32))
        self._target = np.zeros(2)
        self._pos = np.zeros(2)
        self._t = 0
        self._hold = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"proprio": np.concatenate([self._target, self._pos]).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._target = self.np_random.uniform(0.1, 0.9, 2)
        self._pos = self.np_random.uniform(0.1, 0.9, 2)
        self._t = self._hold = 0
        return self._obs(), {"is_success": False}

    def step(self, action: dict[str, Any]):
        a = np.clip(np.asarray(action["muscles"], dtype=np.float64), 0.0, 1.0)
        self._pos = self._pos + self.gain * (a - self._pos)
        self._t += 1
        dist = float(np.linalg.norm(self._pos - self._target))
        self._hold = self._hold + 1 if dist < 0.1 else 0
        success = self._hold >= 2
        reward = -dist + (1.0 if success else 0.0)
        truncated = (not success) and self._t >= self.max_steps
        return self._obs(), reward, success, truncated, {"is_success": success}

    def expert_action(self) -> dict[str, np.ndarray]:
        return {"muscles": self._target.astype(np.float32)}

    def get_state(self) -> dict[str, np.ndarray]:
        return {"target": self._target.copy(), "pos": self._pos.copy(),
                "t": np.array(self._t), "hold": np.array(self._hold)}  # fmt: skip

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self._target = np.array(state["target"], dtype=np.float64)
        self._pos = np.array(state["pos"], dtype=np.float64)
        self._t, self._hold = int(state["t"]), int(state["hold"])


class TinyAnswerEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    VOCAB = 5  # 0 = silence, 1..3 = answers, 4 = the question mark

    def __init__(self, show_steps: int = 2, wait_steps: int = 1) -> None:
        self.show_steps, self.wait_steps = show_steps, wait_steps
        self.observation_space = spaces.Dict(text=spaces.MultiDiscrete([self.VOCAB] * 2))
        self.action_space = spaces.Dict(text=spaces.Discrete(self.VOCAB))
        self._token = 1
        self._t = 0

    @property
    def _asking(self) -> bool:
        return self._t >= self.show_steps + self.wait_steps

    def _obs(self) -> dict[str, np.ndarray]:
        if self._t < self.show_steps:
            text = [self._token, 0]
        elif self._asking:
            text = [4, 0]
        else:
            text = [0, 0]
        return {"text": np.array(text, dtype=np.int64)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._token = int(self.np_random.integers(1, 4))
        self._t = 0
        return self._obs(), {"is_success": False}

    def step(self, action: dict[str, Any]):
        said = int(action["text"])
        asking = self._asking
        self._t += 1
        if asking:
            success = said == self._token
            return self._obs(), float(success), True, False, {"is_success": success}
        return self._obs(), 0.0, False, False, {"is_success": False}

    def expert_action(self) -> dict[str, int]:
        return {"text": self._token if self._asking else 0}

    def expert_latent(self) -> np.ndarray:
        return np.eye(3, dtype=np.float32)[self._token - 1]

    def get_state(self) -> dict[str, np.ndarray]:
        return {"token": np.array(self._token), "t": np.array(self._t)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self._token, self._t = int(state["token"]), int(state["t"])


def reacher_without_expert(**kwargs: Any) -> gym.Env:
    """Gymnasium's Reacher made trainable by mindloop's wrappers (the README's recipe): Dict
    observations and actions, but no scripted expert."""
    from envs.wrappers import DictActionWrapper, MujocoSensesWrapper

    return DictActionWrapper(MujocoSensesWrapper(gym.make("Reacher-v5", **kwargs), keys=()))


def register() -> None:
    for name, cls in (("TinyReach-v0", TinyReachEnv), ("TinyAnswer-v0", TinyAnswerEnv)):
        env_id = f"mindloop_test/{name}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"tests.tiny_envs:{cls.__name__}")
    if "mindloop_test/ReacherNoExpert-v0" not in gym.registry:
        gym.register(
            id="mindloop_test/ReacherNoExpert-v0",
            entry_point="tests.tiny_envs:reacher_without_expert",
            max_episode_steps=50,
        )


register()
