"""Gymnasium ids of the mindloop worlds (``mindloop/<Task>-v0``), with string entry points.

``import envs`` registers them; ``gymnasium.make("envs:mindloop/MuscleReach-v0")`` also works
without importing ``envs`` first (Gymnasium imports the module before the ``:``).
A change to a task's reward, observations or dynamics gets a new version number.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

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
    """``gymnasium.make`` with a one-line error naming the known ids for an unknown one."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown task {env_id!r}; registered: {', '.join(TASK_IDS)}")
    return gym.make(env_id, **kwargs)
