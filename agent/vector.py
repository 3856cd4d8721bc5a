"""Vector envs for training and evaluation, and the one place their autoreset is handled.

Gymnasium 1.x vector envs reset a finished sub-env automatically; *when* depends on the
``autoreset_mode``. mindloop sets ``SAME_STEP`` explicitly everywhere: the ``step`` that ends
an episode already returns the next episode's first observation, and the last observation and
info of the finished one come in ``info["final_obs"]`` / ``info["final_info"]``. That keeps
every action a real action (``NEXT_STEP`` would spend a step whose action is ignored), needs
no pending-reset flags inside the vector env (so a checkpoint captures everything), and gives
PPO the final observation it bootstraps a truncated episode from. :func:`step_vector_env` is
the single function that reads those fields; trainers and evaluators call it instead of
``envs.step``.

Workers (``AsyncVectorEnv``) start with ``forkserver`` by default: each worker process builds
its env, and the env creates its EGL/OSMesa renderer lazily at its first frame, inside the
worker, so no GL context ever crosses a fork. Worker code does not import torch.

:class:`ResumableEnv` gives every sub-env ``resume_state`` (get and set) so a checkpoint can
hold the exact state of every env, RNGs included, and ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

import envs as mindloop_envs

if TYPE_CHECKING:
    from agent.config import EnvConfig

AUTORESET_MODE = AutoresetMode.SAME_STEP


# --------------------------------------------------------------------------- making envs


def check_env_id(env_id: str) -> None:
    """A one-line error naming the known tasks for an unknown id. ``"module:id"`` (Gymnasium's
    syntax for an env registered by importing ``module``) is accepted."""
    mindloop_envs.register_envs()
    if ":" in env_id:
        module, _, env_id = env_id.rpartition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"cannot import {module!r} for task {env_id!r}: {err}") from None
    if env_id not in gym.registry:
        raise ValueError(
            f"unknown task {env_id!r}; mindloop tasks: {', '.join(mindloop_envs.TASK_IDS)} "
            "(or any registered Gymnasium id)"
        )


def make_env(env_id: str, kwargs: dict[str, Any] | None = None, **extra: Any) -> gym.Env:
    """One env, wrapped in :class:`ResumableEnv` (runs inside a worker for async envs)."""
    mindloop_envs.register_envs()  # a spawned/forkserver worker starts with an empty registry
    env = gym.make(env_id, **{**(kwargs or {}), **extra})
    return ResumableEnv(env)


def make_vector_env(
    config: EnvConfig,
    num_envs: int | None = None,
    *,
    vectorization: str | None = None,
    **extra_kwargs: Any,
) -> VectorEnv:
    """The vector env a config describes, with ``SAME_STEP`` autoreset.

    Args:
        config: task id, constructor kwargs, number of envs, sync/async and start method.
        num_envs: override ``config.num_envs`` (e.g. for evaluation).
        vectorization: override ``config.vectorization``.
        extra_kwargs: more constructor arguments (e.g. ``render_mode="rgb_array"``).

    Seed it with ``envs.reset(seed=[s0, s1, ...])`` (see :func:`env_seeds`).
    """
    check_env_id(config.id)
    n = config.num_envs if num_envs is None else num_envs
    mode = vectorization or config.vectorization
    fns = [
        functools.partial(make_env, config.id, config.make_kwargs(), **extra_kwargs)
        for _ in range(n)
    ]
    if mode == "sync" or n == 1:
        return SyncVectorEnv(fns, autoreset_mode=AUTORESET_MODE)
    return AsyncVectorEnv(
        fns, context=config.start_method, autoreset_mode=AUTORESET_MODE, shared_memory=True
    )


def env_seeds(seed: int, num_envs: int, rank: int = 0) -> list[int]:
    """Distinct env seeds for a rank: ``seed + 1000 * rank + i``."""
    return [seed + 1000 * rank + i for i in range(num_envs)]


# --------------------------------------------------------------------------- stepping


@dataclass
class VectorStep:
    """One ``step`` of a ``SAME_STEP`` vector env, unpacked.

    ``obs`` is what the agent sees next (a reset observation where an episode ended);
    ``done = terminated | truncated`` ends an episode at this step and its ``final_obs`` /
    ``final_info`` belong to the finished episode.
    """

    obs: dict[str, np.ndarray]
    reward: np.ndarray
    """(N,) float32."""
    terminated: np.ndarray
    """(N,) bool: the episode ended in a terminal state (no bootstrapping)."""
    truncated: np.ndarray
    """(N,) bool: the episode was cut by a time limit (bootstrap from ``final_obs``)."""
    success: np.ndarray
    """(N,) bool: ``info["is_success"]`` of the finished episode (False where not done)."""
    final_obs: dict[int, dict[str, np.ndarray]]
    """Last observation of each env whose episode ended here, by env index."""
    info: dict[str, Any]

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


def step_vector_env(envs: VectorEnv, actions: Any) -> VectorStep:
    """``envs.step(actions)`` read the ``SAME_STEP`` way (the one autoreset helper)."""
    if getattr(envs, "autoreset_mode", AUTORESET_MODE) != AUTORESET_MODE:
        raise ValueError(
            f"vector env autoreset_mode is {envs.autoreset_mode}; mindloop needs "
            f"{AUTORESET_MODE} (make it with agent.vector.make_vector_env)"
        )
    obs, reward, terminated, truncated, info = envs.step(actions)
    terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
    done = terminated | truncated
    success = np.zeros(len(done), dtype=bool)
    final_obs: dict[int, dict[str, np.ndarray]] = {}
    if done.any():
        finals = info.get("final_obs")
        final_info = info.get("final_info", {})
        flags = final_info.get("is_success")
        mask = final_info.get("_is_success")
        for i in np.flatnonzero(done):
            if finals is not None and finals[i] is not None:
                final_obs[int(i)] = finals[i]
            if flags is not None and (mask is None or mask[i]):
                success[i] = bool(flags[i])
    return VectorStep(
        obs=obs,
        reward=np.asarray(reward, dtype=np.float32),
        terminated=terminated,
        truncated=truncated,
        success=success,
        final_obs=final_obs,
        info=info,
    )


def expert_actions(envs: VectorEnv) -> dict[str, np.ndarray]:
    """Every sub-env's scripted expert action for its current state, batched (N, ...)."""
    per_env = envs.call("expert_action")
    return {k: np.stack([np.asarray(a[k]) for a in per_env]) for k in per_env[0]}


def stack_obs(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A list of single observations -> a batch (N, ...) per key."""
    return {k: np.stack([np.asarray(o[k]) for o in items]) for k in items[0]}


# --------------------------------------------------------------------------- exact resume


class ResumableEnv(gym.Wrapper):
    """Adds ``resume_state``: everything needed to continue an env exactly where it was.

    Getting it returns a dict of numpy arrays and JSON-able values: the task's own
    ``get_state()`` (physics, colours, task variables), the bit-generator state of every
    ``numpy.random.Generator`` the env holds (its ``np_random`` and e.g. an audio-noise
    stream), and the audio synthesizer's carried tail (impact sounds ring into the next step)
    and tone gains. Setting it restores all of that. Through a vector env:
    ``envs.get_attr("resume_state")`` and ``envs.set_attr("resume_state", states)``.
    """

    @property
    def resume_state(self) -> dict[str, Any]:
        env = self.env.unwrapped
        if not hasattr(env, "get_state"):
            raise ValueError(
                f"{type(env).__name__} has no get_state(); exact resume needs it (mindloop "
                "tasks have it)"
            )
        state: dict[str, Any] = {"env": env.get_state(), "rng": {}}
        for name, value in _generators(env).items():
            state["rng"][name] = value.bit_generator.state
        synth = getattr(env, "_synth", None)
        if synth is not None:  # the audio carried from one step into the next
            state["audio_acc"] = synth._acc.copy()
            state["audio_gain"] = {str(k): v.copy() for k, v in synth._prev_gain.items()}
            state["last_audio"] = np.array(env._last_audio, copy=True)
        return state

    @resume_state.setter
    def resume_state(self, state: dict[str, Any]) -> None:
        env = self.env.unwrapped
        env.set_state(state["env"])
        gens = _generators(env)
        for name, bit_state in state["rng"].items():
            gens[name].bit_generator.state = bit_state
        synth = getattr(env, "_synth", None)
        if synth is not None and "audio_acc" in state:
            synth._acc[...] = state["audio_acc"]
            synth._prev_gain = {int(k): np.asarray(v) for k, v in state["audio_gain"].items()}
            env._last_audio = np.asarray(state["last_audio"], dtype=np.float32)


def _generators(env: gym.Env) -> dict[str, np.random.Generator]:
    """Every numpy Generator attribute of the env, by attribute name (``np_random`` first)."""
    out = {"np_random": env.np_random}
    for name, value in sorted(vars(env).items()):
        if isinstance(value, np.random.Generator) and name != "_np_random":
            out[name] = value
    return out


__all__ = [
    "AUTORESET_MODE",
    "ResumableEnv",
    "VectorStep",
    "check_env_id",
    "env_seeds",
    "expert_actions",
    "make_env",
    "make_vector_env",
    "stack_obs",
    "step_vector_env",
]
