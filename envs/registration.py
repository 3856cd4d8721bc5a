"""Gymnasium ids of the mindloop worlds (``mindloop/<Task>-v0``), with string entry points.

``import envs`` registers them; ``gymnasium.make("envs:mindloop/MuscleReach-v0")`` also works
without importing ``envs`` first (Gymnasium imports the module before the ``:``).
A change to a task's reward, observations or dynamics gets a new version number.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator

NAMESPACE = "mindloop"

# id -> (entry point, default kwargs). Time limits live in the tasks themselves (their
# length depends on arguments such as CueRecall's delay_steps), so no TimeLimit is added.
_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "MuscleReach-v0": ("envs.muscle_reach:MuscleReachEnv", {}),
    "MyoElbowReach-v0": ("envs.muscle_reach:MuscleReachEnv", {"arm": "myoelbow"}),
    "SoundReach-v0": ("envs.sound_reach:SoundReachEnv", {}),
    "CueRecall-v0": ("envs.cue_recall:CueRecallEnv", {}),
    "CountAnswer-v0": ("envs.count_answer:CountAnswerEnv", {}),
    "InstructedReach-v0": ("envs.instructed_reach:InstructedReachEnv", {}),
}

TASK_IDS: tuple[str, ...] = tuple(f"{NAMESPACE}/{name}" for name in _TASKS)
"""Every registered mindloop id, for tests and benchmarks."""
DEFAULT_TASK_ID = f"{NAMESPACE}/MuscleReach-v0"


def register_envs() -> None:
    """Register every mindloop id with Gymnasium (idempotent)."""
    for name, (entry_point, kwargs) in _TASKS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=False)


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with a one-line error naming the known ids for an unknown one, or
    for a constructor argument the task does not take (:func:`check_env_kwargs`)."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown task {env_id!r}; registered: {', '.join(TASK_IDS)}")
    check_env_kwargs(env_id, kwargs)
    return gym.make(env_id, **kwargs)


_MAKE_KWARGS = ("max_episode_steps", "disable_env_checker")
"""Keywords ``gymnasium.make`` takes itself (not passed to the env's constructor)."""


def check_env_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> None:
    """A one-line ``ValueError`` for constructor arguments the registered ``env_id`` cannot
    take: an unknown keyword (naming the accepted ones) or a value of the wrong type for an
    ``int``/``float``/``bool``/``str`` parameter (``delay_steps="abc"`` or ``2.5``).

    Run it where an env is made from an id and kwargs, before any worker process starts:
    ``gymnasium.make`` reports these as a ``TypeError`` from deep inside the constructor (a
    traceback, or a dead ``AsyncVectorEnv`` worker), and a float where an int belongs is often
    accepted silently and truncated later. The signature is read from the registered entry
    point (a class or a function); a constructor taking ``**kwargs`` accepts any keyword.
    """
    creator = env_creator(env_id)
    if creator is None:
        return
    try:
        params = inspect.signature(creator).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return
    named = {
        name: p
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(creator)
    for name, value in kwargs.items():
        if name in _MAKE_KWARGS:
            continue
        if name not in named:
            if open_ended:
                continue
            raise ValueError(
                f"{env_id} has no constructor argument {name!r}; it takes: "
                f"{', '.join(named) or '(none)'}"
            )
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ValueError(
                f"{env_id} argument {name} must be {_type_name(hint)}, got {value!r} "
                f"({type(value).__name__})"
            )


def env_creator(env_id: str) -> Callable[..., Any] | None:
    """The registered creator of ``env_id`` (``"module:id"`` once ``module`` is imported), or
    None for an id not in the registry (``gymnasium.make`` reports that itself)."""
    spec = gym.registry.get(env_id.rpartition(":")[2])
    if spec is None:
        return None
    entry = spec.entry_point
    if isinstance(entry, str):
        return load_env_creator(entry)
    return entry


def _type_hints(creator: Callable[..., Any]) -> dict[str, Any]:
    """The creator's parameter annotations, resolved; {} when they cannot be (a name imported
    only for type checking): the keyword check still runs, only the type check is skipped."""
    target = creator.__init__ if isinstance(creator, type) else creator
    try:
        return typing.get_type_hints(target)
    except Exception:  # any failure to evaluate an annotation string
        return {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint``; True for hints other than unions of int, float,
    bool, str and None (a Sequence, a config object: left to the constructor)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool | np.bool_)
    if hint is int:  # bool is an int subclass, but True is no step count
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))
