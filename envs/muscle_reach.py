"""MuscleReach: move a muscle-driven arm's hand to a target seen in the image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envs import vocab
from envs.audio import AudioConfig
from envs.base import check_choice
from envs.reach import ReachEnv


class MuscleReachEnv(ReachEnv):
    """Reach a coloured ball with a muscle-driven arm.

    Each episode the arm starts near its home posture and a ball appears at a reachable
    point at least ``min_separation`` away from the hand. The hand must dwell on it.

    **Observation** (``Dict``; ``obs_keys`` picks a subset):

    * ``image`` ``Box(0, 255, (image_size, image_size, 3), uint8)``: the head camera.
    * ``audio`` ``Box(-1, 1, (2, 640), float32)``: stereo sound of the last 40 ms at 16 kHz
      (a tap when the hand touches the ball; silence otherwise).
    * ``proprio`` ``Box(-inf, inf, (2J + 4M,), float32)``: joint angles, joint velocities,
      and per muscle its normalized length, lengthening speed, force and activation
      (J = 2 joints, M = 6 muscles: 28 values for both arms).
    * ``touch`` ``Box(0, inf, (1,), float32)``: the hand's touch sensor (N).

    **Action** ``Dict(muscles=Box(0, 1, (M,), float32))``: muscle excitations.

    **Reward** per step: ``-distance_weight * |hand - target|`` (m)
    ``- effort_weight * mean(excitation^2)`` ``+ success_bonus`` on success. The terms are in
    ``info`` as ``reward_distance``, ``reward_effort``, ``reward_success``.

    **Termination**: success, i.e. the hand within ``success_radius`` of the target and
    slower than ``dwell_speed`` for ``hold_steps`` consecutive steps (``info["is_success"]``).
    **Truncation** after ``max_steps`` control steps (25 Hz: 50 steps = 2 s).

    **Arguments**: ``arm`` (muscle model: ``"capsule"``, the fast light arm, or
    ``"myoelbow"``, MyoSuite's myoElbow), ``target_color`` (a vocabulary colour, or ``None``
    for a random colour per episode), the reward weights and dwell rule above,
    ``obs_keys``, ``image_size``, ``render_size`` (``render()`` frames),
    ``render_mode`` (``"rgb_array"`` or ``None``), ``audio`` (an :class:`AudioConfig`),
    ``audio_info`` (also put each step's audio in ``info["audio"]``, e.g. for videos when
    ``audio`` is not observed).

    **Version history**: v0: initial version.
    """

    def __init__(
        self,
        *,
        arm: str = "capsule",
        target_color: str | None = "red",
        max_steps: int = 50,
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
        if target_color is not None:
            check_choice("target_color", target_color, vocab.COLORS)
        self.target_color = target_color
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
        if self.target_color is None:
            color = int(self.np_random.integers(len(vocab.COLORS)))
        else:
            color = vocab.COLORS.index(self.target_color)
        self._show_object(0, qs[0], points[0], color)
        self._goal = 0

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        return self._reach_step()
