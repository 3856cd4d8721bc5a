"""mindloop's worlds: muscle-driven MuJoCo tasks with image, stereo audio, touch and text.

Importing ``envs`` first picks a headless GL backend (before anything imports ``mujoco``),
then registers the Gymnasium ids ``mindloop/<Task>-v0`` (listed in :data:`TASK_IDS`).
"""

from envs.gl import select_gl_backend

select_gl_backend()  # must run before mujoco is imported anywhere below

from envs.registration import (  # noqa: E402
    DEFAULT_TASK_ID,
    TASK_IDS,
    check_env_kwargs,
    make,
    register_envs,
)

register_envs()

__all__ = [
    "DEFAULT_TASK_ID",
    "TASK_IDS",
    "check_env_kwargs",
    "make",
    "register_envs",
    "select_gl_backend",
]
