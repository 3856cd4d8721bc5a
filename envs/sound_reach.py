"""SoundReach: reach an invisible target by ear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.audio import AudioConfig
from envs.base import check_positive
from envs.reach import ReachEnv


class SoundReachEnv(ReachEnv):
    """Reach a target that cannot be seen but keeps sounding a tone.

    The target is invisible to the head camera (videos from ``render()`` show it faintly).
    It emits a steady tone; its level at each ear falls with distance and is shadowed by
    the head, and it reaches the far ear later (up to ~0.5 ms): the interaural level and
    time differences tell the direction, the overall level the distance. The hand can also
    feel the target (touch sensor) when it is right over it.

    **Observation**: as MuscleReach (``image``, ``audio``, ``proprio``, ``touch``); the image
    shows the arm only. ``audio`` ``Box(-1, 1, (2, 640), float32)`` carries the tone.

    **Action** ``Dict(muscles=Box(0, 1, (6,), float32))``.

    **Reward**, **termination**, **truncation**: as MuscleReach (``max_steps`` 75 by default,
    3 s: finding a sound takes longer than seeing it).

    **Arguments**: ``tone_hz`` (the target's pitch), ``tone_level`` (amplitude at 1 m; the
    signal at the ears is clipped to [-1, 1]), and MuscleReach's arguments.

    **Version history**: v0: initial version.
    """

    def __init__(
        self,
        *,
        arm: str = "capsule",
        tone_hz: float = 440.0,
        tone_level: float = 0.25,
        max_steps: int = 75,
        success_radius: float | None = None,
        hold_steps: int = 3,
        dwell_speed: float = 0.15,
        distance_weight: float = 1.0,
        success_bonus: float = 5.0,
        effort_weight: float = 0.05,
        obs_keys: Sequence[str] | None = None,
        image_size: int = 64,
        render_size: int = 256,
        render_mode: str | None = None,
        audio: AudioConfig | None = None,
        audio_info: bool = False,
    ) -> None:
        check_positive("tone_hz", tone_hz)
        check_positive("tone_level", tone_level)
        self.tone_hz, self.tone_level = float(tone_hz), float(tone_level)
        super().__init__(
            arm=arm,
            num_objects=1,
            max_steps=max_steps,
            success_radius=success_radius,
            hold_steps=hold_steps,
            dwell_speed=dwell_speed,
            distance_weight=distance_weight,
            success_bonus=success_bonus,
            effort_weight=effort_weight,
            wrong_penalty=0.0,
            obs_keys=obs_keys,
            image_size=image_size,
            render_size=render_size,
            render_mode=render_mode,
            audio=audio,
            audio_info=audio_info,
        )

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        self._reset_arm()
        qs, points = self._sample_points(1, avoid=[self.hand_pos()])
        self._show_object(0, qs[0], points[0], color=0, hidden=True)
        self._goal = 0

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        return self._reach_step()

    def _tones(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pos = self.data.mocap_pos[self._obj_mocap[:1]]  # (1, 3): the sounding target
        return np.zeros(1, np.int64), pos, np.array([self.tone_hz]), np.array([self.tone_level])
