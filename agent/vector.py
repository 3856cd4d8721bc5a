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
import os
import signal
from collections.abc import Callable, Sequence
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
            "(or a registered Gymnasium id with Dict observations and actions)"
        )


def make_env(env_id: str, kwargs: dict[str, Any] | None = None, **extra: Any) -> gym.Env:
    """One env, wrapped in :class:`ResumableEnv` (runs inside a worker for async envs)."""
    mindloop_envs.register_envs()  # a spawned/forkserver worker starts with an empty registry
    kwargs = {**(kwargs or {}), **extra}
    mindloop_envs.check_env_kwargs(env_id, kwargs)
    env = gym.make(env_id, **kwargs)
    return ResumableEnv(env)


def _ignore_interrupts_in_worker(parent_pid: int, env: gym.Env) -> gym.Env:
    """In an env worker process (any process but ``parent_pid``), ignore SIGINT from now on;
    returns ``env`` unchanged.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group, env workers
    included. The parent is the one that handles it (stops, closes its vector envs, says how
    to resume); a worker that raised KeyboardInterrupt too would only print a traceback from
    the middle of its step and die before the parent closes it. The parent is left alone:
    Gymnasium's ``AsyncVectorEnv`` builds one env in the parent too, to read its spaces."""
    if os.getpid() != parent_pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return env


def worker_interrupt_wrapper() -> Callable[[gym.Env], gym.Env]:
    """A ``gym.make_vec`` wrapper (it runs wherever an env is built) that makes env worker
    processes, not this one, ignore Ctrl-C (:func:`_ignore_interrupts_in_worker`)."""
    return functools.partial(_ignore_interrupts_in_worker, os.getpid())


def _make_in_worker(parent_pid: int, make: Callable[[], gym.Env]) -> gym.Env:
    return _ignore_interrupts_in_worker(parent_pid, make())


def worker_env_fns(fns: Sequence[Callable[[], gym.Env]]) -> list[Callable[[], gym.Env]]:
    """``fns`` for a vector env's worker processes (``AsyncVectorEnv``, SB3's
    ``SubprocVecEnv``): the workers ignore Ctrl-C, which this process handles."""
    return [functools.partial(_make_in_worker, os.getpid(), fn) for fn in fns]


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
    # here, not only in make_env: a bad argument would otherwise kill every async worker
    mindloop_envs.check_env_kwargs(config.id, {**config.make_kwargs(), **extra_kwargs})
    n = config.num_envs if num_envs is None else num_envs
    mode = vectorization or config.vectorization
    fns = [
        functools.partial(make_env, config.id, config.make_kwargs(), **extra_kwargs)
        for _ in range(n)
    ]
    if mode == "sync" or n == 1:
        return SyncVectorEnv(fns, autoreset_mode=AUTORESET_MODE)
    return AsyncVectorEnv(
        worker_env_fns(fns),
        context=config.start_method,
        autoreset_mode=AUTORESET_MODE,
        shared_memory=True,
    )


SEED_ENVS, SEED_DEMOS, SEED_DAGGER = 0, 1, 2
"""What a run's seed is used for (:func:`derived_seed`'s ``purpose``)."""


def derived_seed(run_seed: int, purpose: int, *more: int) -> int:
    """The base seed (< 2**31) of one use of a run's seed: its training envs, its
    demonstrations, DAgger round ``more[0]``...

    numpy's ``SeedSequence`` spreads ``(run_seed, purpose, *more)`` over the whole range, so
    runs whose seeds differ by one draw unrelated episodes. (With ``run_seed + k`` per env or
    episode, SB3's convention, runs 1 and 2 shared seven of eight env streams and all but one
    demonstration: "several seeds" were nearly one data set.) Consecutive seeds from the base
    (``base + k``) stay distinct from other bases except with negligible chance.
    """
    state = np.random.SeedSequence([run_seed, purpose, *more]).generate_state(1)[0]
    return int(state >> 1)  # headroom for base + k under 2**32 (numpy's legacy seeding)


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
    success_reported: np.ndarray | None = None
    """(N,) bool: the finished episode's env gave ``info["is_success"]`` (Gymnasium's own
    MuJoCo envs do not: their ``success`` False means nothing); None: not known."""

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
    reported = np.zeros(len(done), dtype=bool)
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
                success[i], reported[i] = bool(flags[i]), True
    return VectorStep(
        obs=obs,
        reward=np.asarray(reward, dtype=np.float32),
        terminated=terminated,
        truncated=truncated,
        success=success,
        final_obs=final_obs,
        info=info,
        success_reported=reported,
    )


def expert_actions(envs: VectorEnv) -> dict[str, np.ndarray]:
    """Every sub-env's scripted expert action for its current state, batched (N, ...)."""
    per_env = envs.call("expert_action")
    return {k: np.stack([np.asarray(a[k]) for a in per_env]) for k in per_env[0]}


def expert_latents(envs: VectorEnv, probe: bool = True) -> np.ndarray | None:
    """(N, d) float32 latents of the sub-envs' experts for their current state
    (``expert_latent()``, behaviour cloning's auxiliary target), or None when the task has
    none. ``probe=False``: the caller knows every sub-env has it (probing is a round trip to
    every worker: probe once per run, not every step)."""
    latents = (
        envs.call("expert_latent") if not probe else call_if_every_env_has(envs, "expert_latent")
    )
    return None if latents is None else np.stack([np.asarray(x, np.float32) for x in latents])


def episode_quota(episodes: int, num_envs: int) -> list[int]:
    """How many episodes each env of a vector env contributes to a sample of ``episodes``:
    env i its first ``(episodes + i) // num_envs`` (SB3's ``evaluate_policy`` rule). Taking
    whichever episodes finish first instead would favour short ones (in reaching tasks, the
    successes)."""
    return [(episodes + i) // num_envs for i in range(num_envs)]


def every_env_has(envs: VectorEnv, *names: str) -> bool:
    """Whether every sub-env (through its wrappers) has all of ``names``.

    The way to probe a vector env: ``get_attr``/``call`` of a missing name in an
    ``AsyncVectorEnv`` worker does not just raise, the worker shuts down and the vector env
    is dead for the rest of the run.
    """
    return all(all(envs.call("has_wrapper_attr", name)) for name in names)


def call_if_every_env_has(envs: VectorEnv, name: str) -> tuple[Any, ...] | None:
    """``envs.call(name)`` if every sub-env has ``name`` (:func:`every_env_has`), else None."""
    return envs.call(name) if every_env_has(envs, name) else None


def stack_obs(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A list of single observations -> a batch (N, ...) per key."""
    return {k: np.stack([np.asarray(o[k]) for o in items]) for k in items[0]}


# --------------------------------------------------------------------------- exact resume


class ResumableEnv(gym.Wrapper):
    """Adds ``resume_state``: everything needed to continue an env exactly where it was.

    Getting it returns nested plain data (numpy arrays, numbers, strings, lists, dicts):

    - ``env``: the task's own ``get_state()`` (MuJoCo integration state, colours, task
      variables), restored first with ``set_state()``;
    - ``rng``: the bit-generator state of every ``numpy.random.Generator`` the env holds (its
      ``np_random`` and e.g. an audio-noise stream);
    - ``attrs``: every plain-data attribute of the env and of its helper objects from the
      ``envs`` package (the audio synthesizer's carried impact tail, the contact tracker's
      previous contacts, ...), restored last. ``get_state()`` is made for replaying a moment
      to video; continuing a *training run* bit for bit also needs this carried state, and
      capturing it generically keeps resume exact when a task adds such state.

    Through a vector env: ``envs.get_attr("resume_state")`` / ``envs.set_attr(...)``.
    """

    @property
    def resume_state(self) -> dict[str, Any]:
        env = self.env.unwrapped
        if not hasattr(env, "get_state"):
            raise ValueError(
                f"{type(env).__name__} has no get_state(); exact resume needs it (mindloop "
                "tasks have it)"
            )
        return {
            "env": env.get_state(),
            "rng": {name: g.bit_generator.state for name, g in _generators(env).items()},
            "attrs": _snapshot_attrs(env, depth=2),
        }

    @resume_state.setter
    def resume_state(self, state: dict[str, Any]) -> None:
        env = self.env.unwrapped
        env.set_state(state["env"])
        gens = _generators(env)
        for name, bit_state in state["rng"].items():
            gens[name].bit_generator.state = bit_state
        _restore_attrs(env, state.get("attrs", {}))


def _generators(env: gym.Env) -> dict[str, np.random.Generator]:
    """Every numpy Generator attribute of the env, by attribute name (``np_random`` first)."""
    out = {"np_random": env.np_random}
    for name, value in sorted(vars(env).items()):
        if isinstance(value, np.random.Generator) and name != "_np_random":
            out[name] = value
    return out


_SCALARS = (bool, int, float, str, type(None), np.generic)


def _encode(value: Any) -> Any:
    """A plain-data value as tagged JSON/array data, or ``_SKIP`` if it is not plain data."""
    if isinstance(value, np.ndarray):
        return {"t": "array", "v": value.copy()} if value.dtype != object else _SKIP
    if isinstance(value, _SCALARS):
        return {"t": "scalar", "v": value.item() if isinstance(value, np.generic) else value}
    if isinstance(value, bytes):
        return {"t": "bytes", "v": np.frombuffer(value, dtype=np.uint8).copy()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        encoded = [_encode(v) for v in items]
        if any(e is _SKIP for e in encoded):
            return _SKIP
        return {"t": type(value).__name__, "v": encoded}
    if isinstance(value, dict):
        pairs = [(_encode(k), _encode(v)) for k, v in value.items()]
        if any(k is _SKIP or v is _SKIP for k, v in pairs):
            return _SKIP
        return {"t": "dict", "v": [[k, v] for k, v in pairs]}
    return _SKIP


def _decode(data: Any) -> Any:
    kind, v = data["t"], data["v"]
    if kind == "array":
        return np.array(v, copy=True)
    if kind == "scalar":
        return v
    if kind == "bytes":
        return np.asarray(v, dtype=np.uint8).tobytes()
    if kind in ("list", "tuple", "set", "frozenset"):
        items = [_decode(x) for x in v]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
    if kind == "dict":
        return {_decode(k): _decode(x) for k, x in v}
    raise ValueError(f"unknown env snapshot entry {kind!r}")


_SKIP = object()


def _snapshot_attrs(obj: Any, depth: int) -> dict[str, Any]:
    """Plain-data attributes of ``obj`` (and, ``depth`` levels down, of its helper objects
    defined in the ``envs`` package). MuJoCo objects, renderers and spaces are not plain data
    and are skipped (physics is in ``get_state``)."""
    out: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if isinstance(value, np.random.Generator):
            continue
        encoded = _encode(value)
        if encoded is not _SKIP:
            out[name] = encoded
        elif depth > 0 and _is_env_helper(value):
            out[name] = {"t": "object", "v": _snapshot_attrs(value, depth - 1)}
    return out


def _is_env_helper(value: Any) -> bool:
    """A mutable helper object of a mindloop task (frozen dataclasses are configs: no state)."""
    if type(value).__module__.split(".")[0] != "envs" or not hasattr(value, "__dict__"):
        return False
    params = getattr(value, "__dataclass_params__", None)
    return not (params is not None and params.frozen)


def _restore_attrs(obj: Any, snapshot: dict[str, Any]) -> None:
    for name, data in snapshot.items():
        if data["t"] == "object":
            _restore_attrs(getattr(obj, name), data["v"])
        else:
            setattr(obj, name, _decode(data))


__all__ = [
    "AUTORESET_MODE",
    "ResumableEnv",
    "VectorStep",
    "check_env_id",
    "env_seeds",
    "episode_quota",
    "expert_actions",
    "expert_latents",
    "make_env",
    "make_vector_env",
    "stack_obs",
    "step_vector_env",
]
