"""Stepping a vector env with an agent: the loop PPO, behaviour cloning and evaluation share.

:class:`EnvRunner` owns what persists between steps of a vector env: the last observation,
the agent's recurrent state, the episode-start flags and the running episode statistics.
It records finished episodes (return, length, success, think steps, memory calls) and can
snapshot all of it for an exact resume (:meth:`EnvRunner.state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agent.agent import MindloopAgent
from agent.policy import StepInfo
from agent.state import State
from agent.vector import VectorStep, episode_quota, step_vector_env


@dataclass
class EpisodeLog:
    """Finished episodes since the last :meth:`drain` (one entry per episode)."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    think_steps: list[float] = field(default_factory=list)
    """Mean think steps per frame of each episode."""
    memory_calls: list[float] = field(default_factory=list)
    """Mean memory calls (set + get) per frame of each episode."""
    env_index: list[int] = field(default_factory=list)
    """Which env of the vector env ran the episode."""
    success_reported: list[bool] = field(default_factory=list)
    """Whether the episode's env gave ``info["is_success"]`` at its end."""

    FIELDS = (
        "returns", "lengths", "successes", "think_steps", "memory_calls", "env_index",
        "success_reported",
    )  # fmt: skip

    def __len__(self) -> int:
        return len(self.returns)

    def extend(self, other: EpisodeLog) -> None:
        for name in self.FIELDS:
            getattr(self, name).extend(getattr(other, name))

    def select(self, keep: list[int]) -> EpisodeLog:
        """The episodes at positions ``keep``."""
        out = EpisodeLog()
        for name in self.FIELDS:
            values = getattr(self, name)
            setattr(out, name, [values[i] for i in keep])
        return out

    def summary(self) -> dict[str, float]:
        """Means over the logged episodes (empty dict when there are none)."""
        if not self.returns:
            return {}
        return {
            "episodes": float(len(self.returns)),
            "success_rate": self._success_rate(),
            "episode_return": float(np.mean(self.returns)),
            "episode_length": float(np.mean(self.lengths)),
            "think_steps": float(np.mean(self.think_steps)),
            "memory_calls": float(np.mean(self.memory_calls)),
        }

    def _success_rate(self) -> float:
        """Over the episodes whose env reports success; NaN where none does (an env without
        ``info["is_success"]``: no success rate, rather than a made-up 0)."""
        if len(self.success_reported) != len(self.successes):  # a log filled by hand
            return float(np.mean(self.successes))
        reported = [s for s, r in zip(self.successes, self.success_reported, strict=True) if r]
        return float(np.mean(reported)) if reported else float("nan")


def memory_calls(info: StepInfo) -> torch.Tensor:
    """(...,) number of memory calls (set or get) a frame made, over its observe/think steps."""
    return (info.decisions.mem_ops > 0).sum(-1)


class EnvRunner:
    """A vector env plus the agent-side state that goes with it.

    Args:
        envs: a vector env made by :func:`agent.vector.make_vector_env` (``SAME_STEP``).
        agent: the agent whose recurrent state is carried (its ``initial_state``).
        seeds: one seed per env for the first reset.
    """

    def __init__(self, envs: VectorEnv, agent: MindloopAgent, seeds: list[int]) -> None:
        self.envs = envs
        self.agent = agent
        self.num_envs = envs.num_envs
        obs, _ = envs.reset(seed=list(seeds))
        self.obs: dict[str, np.ndarray] = obs
        self.state: State = agent.initial_state(self.num_envs)
        self.episode_start = torch.ones(self.num_envs, dtype=torch.bool)
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_think = np.zeros(self.num_envs)
        self._ep_calls = np.zeros(self.num_envs)
        self.log = EpisodeLog()
        self.steps = 0

    def act(self, deterministic: bool = False) -> tuple[dict[str, torch.Tensor], State, StepInfo]:
        """The agent's decision for the current observations (state not yet advanced)."""
        return self.agent.act_tensors(self.obs, self.state, self.episode_start, deterministic)

    def step(
        self,
        actions: dict[str, np.ndarray],
        new_state: State,
        info: StepInfo | None = None,
    ) -> VectorStep:
        """Send ``actions`` to the envs, advance the recurrent state to ``new_state`` (what
        ``act`` returned), and book-keep episodes. ``info`` adds think/memory statistics."""
        out = step_vector_env(self.envs, actions)
        self._ep_return += out.reward
        self._ep_length += 1
        if info is not None:
            self._ep_think += info.think_steps.cpu().numpy()
            self._ep_calls += memory_calls(info).cpu().numpy()
        for i in np.flatnonzero(out.done):
            n = max(int(self._ep_length[i]), 1)
            self.log.returns.append(float(self._ep_return[i]))
            self.log.lengths.append(int(self._ep_length[i]))
            self.log.successes.append(bool(out.success[i]))
            reported = out.success_reported
            self.log.success_reported.append(True if reported is None else bool(reported[i]))
            self.log.think_steps.append(float(self._ep_think[i]) / n)
            self.log.memory_calls.append(float(self._ep_calls[i]) / n)
            self.log.env_index.append(int(i))
            self._ep_return[i] = self._ep_length[i] = self._ep_think[i] = self._ep_calls[i] = 0
        self.obs = out.obs
        self.state = new_state
        self.episode_start = torch.as_tensor(out.done)
        self.steps += self.num_envs
        return out

    def drain(self) -> EpisodeLog:
        """The episodes finished since the last call (and forget them)."""
        log, self.log = self.log, EpisodeLog()
        return log

    # ------------------------------------------------------------------ exact resume

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: env snapshots, last obs, recurrent state, flags,
        running episode sums (numpy / tensors / JSON; see ``agent.checkpoint.pack``)."""
        return {
            "envs": list(self.envs.get_attr("resume_state")),
            "obs": {k: np.array(v, copy=True) for k, v in self.obs.items()},
            "state": {k: v.detach().cpu().clone() for k, v in self.state.items()},
            "episode_start": self.episode_start.clone(),
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
            "ep_think": self._ep_think.copy(),
            "ep_calls": self._ep_calls.copy(),
            "steps": self.steps,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if len(data["envs"]) != self.num_envs:
            raise ValueError(
                f"the checkpoint holds {len(data['envs'])} envs, this run has {self.num_envs}; "
                "resume with the same env.num_envs"
            )
        self.envs.set_attr("resume_state", list(data["envs"]))
        self.obs = {k: np.asarray(v) for k, v in data["obs"].items()}
        device = self.agent.device
        self.state = {k: torch.as_tensor(v).to(device) for k, v in data["state"].items()}
        self.episode_start = torch.as_tensor(data["episode_start"]).bool()
        self._ep_return = np.asarray(data["ep_return"], dtype=np.float64).copy()
        self._ep_length = np.asarray(data["ep_length"], dtype=np.int64).copy()
        self._ep_think = np.asarray(data["ep_think"], dtype=np.float64).copy()
        self._ep_calls = np.asarray(data["ep_calls"], dtype=np.float64).copy()
        self.steps = int(data["steps"])


def run_episodes(
    runner: EnvRunner,
    episodes: int,
    deterministic: bool = True,
    on_step: Callable[[EnvRunner, VectorStep], None] | None = None,
    max_steps: int = 1_000_000,
) -> EpisodeLog:
    """Step the agent until ``episodes`` episodes finished and return their log.

    Env i contributes its first ``(episodes + i) // N`` episodes (SB3's ``evaluate_policy``
    rule): taking whichever episodes finish first would favour short ones, and in reaching
    tasks the short episodes are the successes.
    """
    n = runner.num_envs
    targets = episode_quota(episodes, n)
    counts = [0] * n
    done = EpisodeLog()
    runner.drain()
    for _ in range(max_steps):
        if counts == targets:
            break
        actions, state, info = runner.act(deterministic)
        out = runner.step(runner.agent.actions_to_numpy(actions), state, info)
        if on_step is not None:
            on_step(runner, out)
        log = runner.drain()
        keep = []
        for j, i in enumerate(log.env_index):
            if counts[i] < targets[i]:
                counts[i] += 1
                keep.append(j)
        done.extend(log.select(keep))
    return done


__all__ = ["EnvRunner", "EpisodeLog", "memory_calls", "run_episodes"]
