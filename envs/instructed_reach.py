"""InstructedReach: a text instruction names which of several objects to reach."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from envs import vocab
from envs.audio import AudioConfig
from envs.base import check_choice
from envs.reach import ReachEnv

INSTRUCTION_MODES = ("both", "color", "shape")


class InstructedReachEnv(ReachEnv):
    """Reach the object a text instruction names: vision, language and action together.

    ``num_objects`` objects (balls, boxes, cylinders) of different colours appear at
    reachable points. The ``text`` observation holds the instruction in vocabulary words:
    ``"reach the <color> <shape>"`` (``instruction="both"``, e.g. "reach the red box"),
    ``"reach the <color>"`` (``"color"``) or ``"reach the <shape>"`` (``"shape"``, which needs
    ``num_objects <= 3``). Colours are always distinct, and so are shapes when there are at
    most three objects.

    **Observation**: ``image``, ``audio``, ``proprio``, ``touch`` as MuscleReach, plus
    ``text`` ``MultiDiscrete([VOCAB_SIZE] * text_length)``: the instruction's token ids from
    :mod:`envs.vocab`, padded with 0. ``info["text_shown"]`` is the decoded instruction.

    **Action** ``Dict(muscles=Box(0, 1, (6,), float32))``.

    **Reward**: as MuscleReach toward the named object, ``-wrong_penalty`` for dwelling on
    another. **Termination**: success or a wrong choice. **Truncation**: ``max_steps``.

    **Version history**: v0: initial version.
    """

    OBS_KEYS: ClassVar[tuple[str, ...]] = ("image", "audio", "proprio", "touch", "text")

    def __init__(
        self,
        *,
        arm: str = "capsule",
        num_objects: int = 3,
        instruction: str = "both",
        max_steps: int = 60,
        text_length: int = 8,
        success_radius: float | None = None,
        hold_steps: int = 3,
        dwell_speed: float = 0.15,
        distance_weight: float = 1.0,
        success_bonus: float = 5.0,
        effort_weight: float = 0.05,
        wrong_penalty: float = 5.0,
        obs_keys: Sequence[str] | None = None,
        image_size: int = 64,
        render_size: int = 256,
        render_mode: str | None = None,
        audio: AudioConfig | None = None,
        audio_info: bool = False,
    ) -> None:
        check_choice("instruction", instruction, INSTRUCTION_MODES)
        limit = len(vocab.SHAPES) if instruction == "shape" else len(vocab.COLORS)
        if not 2 <= num_objects <= limit:
            raise ValueError(
                f"num_objects must be in [2, {limit}] with instruction={instruction!r}, "
                f"got {num_objects}"
            )
        self.instruction = instruction
        super().__init__(
            arm=arm,
            num_objects=num_objects,
            max_steps=max_steps,
            shapes=vocab.SHAPES,
            success_radius=success_radius,
            hold_steps=hold_steps,
            dwell_speed=dwell_speed,
            distance_weight=distance_weight,
            success_bonus=success_bonus,
            effort_weight=effort_weight,
            wrong_penalty=wrong_penalty,
            obs_keys=obs_keys,
            image_size=image_size,
            render_size=render_size,
            render_mode=render_mode,
            text_length=text_length,
            audio=audio,
            audio_info=audio_info,
        )

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        self._reset_arm()
        n, rng = self.num_objects, self.np_random
        colors = rng.choice(len(vocab.COLORS), size=n, replace=False)
        if n <= len(vocab.SHAPES):
            shapes = rng.choice(len(vocab.SHAPES), size=n, replace=False)
        else:
            shapes = rng.integers(len(vocab.SHAPES), size=n)
        qs, points = self._sample_points(n, avoid=[self.hand_pos()])
        for i in range(n):
            self._show_object(i, qs[i], points[i], int(colors[i]), int(shapes[i]))
        self._goal = int(rng.integers(n))
        color, shape = vocab.COLORS[colors[self._goal]], vocab.SHAPES[shapes[self._goal]]
        words = {"both": f"{color} {shape}", "color": color, "shape": shape}[self.instruction]
        self._set_text(f"reach the {words}")

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        return self._reach_step()

    def target_description(self) -> tuple[str, str]:
        """``(colour, shape)`` of the object the instruction names (for tests and overlays)."""
        return (
            vocab.COLORS[self._obj_color[self._goal]],
            vocab.SHAPES[self._obj_shape[self._goal]],
        )
