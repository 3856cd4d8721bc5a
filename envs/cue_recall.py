"""CueRecall: remember a cue through a delay full of distractors, then reach its match."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import mujoco
import numpy as np

from envs import vocab
from envs.audio import AudioConfig
from envs.base import OFF_GROUP, check_choice, check_non_negative, check_positive
from envs.reach import COLOR_RGBA, COLOR_TONE_HZ, ReachEnv

CUE_MODES = ("color", "sound", "both")
LAYOUTS = ("random", "slots", "fixed")
"""Where the balls appear: new places every episode; the same places, with the colours
shuffled among them; or the same places and colours (only the cue changes)."""
_SLOTS_SEED, _SLOT_CANDIDATES = 0, 512  # the fixed places: spread over 512 seeded postures
PHASES = ("cue", "delay", "reach")
MEMORY_OPS = ("none", "set", "get")
"""Memory calls the scripted expert labels frames with (``expert_memory_op``): the names of a
get/set memory tool's ops (mindloop's ``agent.memory.OP_NAMES``)."""


class CueRecallEnv(ReachEnv):
    """A cue, a delay with distractors, then reach the target that matched the cue.

    1. **cue** (``cue_steps``): a light above the workspace shows the cue colour (``cue`` in
       ``"color"``/``"both"``) and/or sounds that colour's tone (``"sound"``/``"both"``; each
       vocabulary colour has a pitch, :data:`envs.reach.COLOR_TONE_HZ`).
    2. **delay** (``delay_steps``, 0 to 1000+; with ``min_delay_steps`` each episode draws
       its delay uniformly from ``[min_delay_steps, delay_steps]``): the cue is gone. Each
       step a distractor starts with probability ``distractor_rate``: for
       ``distractor_steps`` a light of a random colour (the cue's colour included) flashes
       to the left or right of the cue light, with its colour's tone when the cue has sound.
    3. **reach** (``reach_steps``): ``num_targets`` balls of different colours appear; the
       hand must dwell on the one with the cue's colour. Dwelling on another ends the
       episode as a failure. With ``layout="random"`` (the default) the balls show at new
       places every episode, so finding the cued colour in the image is part of the task;
       with ``layout="slots"`` they always show at the same ``num_targets`` places (drawn
       once, away from the hand's start) and only which colour sits where changes: no
       visual search, but the cue still has to be matched to a ball by colour; with
       ``layout="fixed"`` each place also keeps its colour (the first ``num_targets``
       vocabulary colours) and the cue is one of them: the memory test alone, as in the
       classic T-maze (which colour was cued decides where to reach).

    **Observation**: ``image``, ``audio``, ``proprio``, ``touch`` as MuscleReach; nothing
    tells the cue once it is gone: the agent must remember it. With ``cue_stays=True`` the
    cue light stays on for the whole episode (its tone still sounds only in the cue phase):
    the visually guided control condition of a memory-guided task, which needs no memory
    and measures the colour-matched reach on its own (and can serve as a curriculum).

    **Action** ``Dict(muscles=Box(0, 1, (6,), float32))``.

    **Reward**: in the reach phase as MuscleReach (distance to the matching ball, effort,
    ``success_bonus``) plus ``-wrong_penalty`` for dwelling on a wrong ball; before it only
    the effort term. ``info["phase"]`` names the phase, ``info["cue"]`` the cue colour.

    **Termination**: success or a wrong choice. **Truncation**: after
    ``cue_steps + delay_steps + reach_steps`` steps (the episode's own delay when it is
    drawn).

    **Variable delays** (``min_delay_steps``): with the delay drawn per episode, a policy
    cannot time the reach by counting frames, and training can mix short holds with long
    ones. ``None`` (the default) keeps every episode at ``delay_steps`` and draws nothing.

    **Expert**: ``expert_action()`` reaches for the matching ball once the balls show (it
    holds still before); ``expert_memory_op()`` labels each frame with the memory call a
    get/set memory tool should make there: ``set`` on the cue frames (store the cue), ``get``
    on the first reach frame (fetch it back when the balls appear), ``none`` elsewhere, so
    behaviour cloning can teach *when* to call the tool.

    **Version history**: v0: initial version.
    """

    _STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        *ReachEnv._STATE_ATTRS, "_cue", "_distractor_left", "_distractor_color",
    )  # fmt: skip

    def __init__(
        self,
        *,
        arm: str = "capsule",
        cue: str = "both",
        cue_steps: int = 5,
        delay_steps: int = 20,
        min_delay_steps: int | None = None,
        reach_steps: int = 50,
        num_targets: int = 3,
        distractor_rate: float = 0.1,
        distractor_steps: int = 3,
        tone_level: float = 0.25,
        cue_stays: bool = False,
        layout: str = "random",
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
        check_choice("cue", cue, CUE_MODES)
        check_choice("layout", layout, LAYOUTS)
        check_positive("cue_steps", cue_steps)
        check_non_negative("delay_steps", delay_steps)
        if min_delay_steps is not None and not 0 <= min_delay_steps <= delay_steps:
            raise ValueError(
                f"min_delay_steps must be in [0, delay_steps={delay_steps}], got "
                f"{min_delay_steps}; or None for every episode at delay_steps"
            )
        check_positive("reach_steps", reach_steps)
        if not 2 <= num_targets <= len(vocab.COLORS):
            raise ValueError(f"num_targets must be in [2, {len(vocab.COLORS)}], got {num_targets}")
        if not 0.0 <= distractor_rate <= 1.0:
            raise ValueError(f"distractor_rate must be in [0, 1], got {distractor_rate}")
        check_positive("distractor_steps", distractor_steps)
        check_positive("tone_level", tone_level)
        self.cue_mode = cue
        self.cue_steps, self.delay_steps = int(cue_steps), int(delay_steps)
        self.min_delay_steps = None if min_delay_steps is None else int(min_delay_steps)
        self.reach_steps = int(reach_steps)
        self.reach_start = self.cue_steps + self.delay_steps  # this episode's (drawn at reset)
        if self.min_delay_steps is not None:
            # the episode's delay is task state: snapshots (resume, replay) carry it
            self._STATE_ATTRS = (*type(self)._STATE_ATTRS, "reach_start", "max_steps")
        self.distractor_rate, self.distractor_steps = float(distractor_rate), int(distractor_steps)
        self.tone_level = float(tone_level)
        self.cue_stays = bool(cue_stays)
        self.layout = layout
        super().__init__(
            arm=arm,
            num_objects=num_targets,
            max_steps=self.reach_start + int(reach_steps),
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
            audio=audio,
            audio_info=audio_info,
        )

    def _build_extras(self, spec: mujoco.MjSpec) -> None:
        # Cue and distractor lights: visual only (no contact), placed once, shown by group.
        r = 0.8 * self.arm.object_radius
        for name in ("cue", "distractor"):
            body = spec.worldbody.add_body(name=f"{name}_light", mocap=True, pos=self.arm.cue_pos)
            body.add_geom(
                name=f"{name}_light", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[r, 0, 0],
                rgba=[1, 1, 1, 1], contype=0, conaffinity=0, group=OFF_GROUP,
            )  # fmt: skip

    def _setup(self) -> None:
        super()._setup()
        m = self.model
        self._cue_geom = m.geom("cue_light").id
        self._dis_geom = m.geom("distractor_light").id
        self._dis_mocap = m.body("distractor_light").mocapid[0]
        self._cue = 0
        self._distractor_left = 0  # steps the current distractor still shows (0: none)
        self._distractor_color = 0
        # (n, J) postures and (n, 3) hand points of the fixed places, or None (random layout)
        self._slots: tuple[np.ndarray, np.ndarray] | None = None
        if self.layout != "random":
            self._slots = self._spread_slots()

    def _spread_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed places of ``layout="slots"``/``"fixed"``: farthest-point sampling over
        ``_SLOT_CANDIDATES`` seeded reachable postures, starting from the hand's home, so each
        place is as far as it can be from the home and the places before it. The same for
        every env of an arm and ``num_targets``. Returns postures (n, J), hand points (n, 3).

        Raises if the places end up closer than half the arm's ``min_separation`` (the random
        layout's floor): too many targets for the arm's reach."""
        lo, hi = self.arm.target_qrange[:, 0], self.arm.target_qrange[:, 1]
        qs = np.random.default_rng(_SLOTS_SEED).uniform(lo, hi, (_SLOT_CANDIDATES, len(lo)))
        points = np.array([self._fk_point(q) for q in qs])  # (M, 3)
        home = self._fk_point(self.arm.home_qpos)
        gap = np.linalg.norm(points - home, axis=1)  # (M,) to the nearest place taken so far
        chosen = []
        for _ in range(self.num_objects):
            i = int(gap.argmax())
            if gap[i] < 0.5 * self.arm.min_separation:
                raise ValueError(
                    f"layout {self.layout!r} cannot place {self.num_objects} balls on the "
                    f"{self.arm.name} arm at least {0.5 * self.arm.min_separation:g} apart; "
                    "use fewer num_targets"
                )
            chosen.append(i)
            gap = np.minimum(gap, np.linalg.norm(points - points[i], axis=1))
        return qs[chosen], points[chosen]

    @property
    def phase(self) -> str:
        t = self._step_count
        return "cue" if t < self.cue_steps else "delay" if t < self.reach_start else "reach"

    def expert_memory_op(self) -> str:
        """The memory call for the current frame (one of :data:`MEMORY_OPS`): ``set`` while
        the cue shows, ``get`` on the frame the balls first show, else ``none``."""
        t = self._step_count
        if t < self.cue_steps:
            return "set"
        return "get" if t == self.reach_start else "none"

    def _light(self, geom: int, color: int | None) -> None:
        m = self.model
        if color is None:
            m.geom_group[geom] = OFF_GROUP
        else:
            m.geom_group[geom] = 0
            m.geom_rgba[geom] = COLOR_RGBA[vocab.COLORS[color]]

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        self._reset_arm()
        # fixed layout: the cue is one of the balls' colours (place i has colour i)
        cues = self.num_objects if self.layout == "fixed" else len(vocab.COLORS)
        self._cue = int(self.np_random.integers(cues))
        self._distractor_left = 0
        self._light(self._dis_geom, None)
        self._light(self._cue_geom, self._cue if self.cue_mode != "sound" else None)
        self._goal = 0
        if self.min_delay_steps is not None:  # drawn last: the fixed-delay draws stay as they were
            delay = int(self.np_random.integers(self.min_delay_steps, self.delay_steps + 1))
            self.reach_start = self.cue_steps + delay
            self.max_steps = self.reach_start + self.reach_steps

    def _update_phase(self) -> None:
        """Runs after each step: switch lights, start/stop distractors, show targets."""
        t = self._step_count
        if t == self.cue_steps and not self.cue_stays:
            self._light(self._cue_geom, None)
        if self.cue_steps <= t < self.reach_start:
            if self._distractor_left > 0:
                self._distractor_left -= 1
            elif self.np_random.random() < self.distractor_rate:
                self._distractor_left = self.distractor_steps
                self._distractor_color = int(self.np_random.integers(len(vocab.COLORS)))
                side = 1.0 if self.np_random.random() < 0.5 else -1.0
                pos = self.arm.cue_pos + side * 0.25 * self.arm.side_axis
                self.data.mocap_pos[self._dis_mocap] = pos
            self._light(self._dis_geom, self._distractor_color if self._distractor_left else None)
        if t == self.reach_start:
            self._light(self._dis_geom, None)
            self._distractor_left = 0
            self._show_targets()

    def _show_targets(self) -> None:
        n = self.num_objects
        if self.layout == "fixed":
            qs, points = self._slots
            for slot in range(n):
                self._show_object(slot, qs[slot], points[slot], slot)
            self._goal = self._cue
            return
        others = [c for c in range(len(vocab.COLORS)) if c != self._cue]
        colors = [self._cue, *self.np_random.choice(others, size=n - 1, replace=False)]
        if self._slots is None:
            qs, points = self._sample_points(n, avoid=[self.hand_pos()])
        else:
            qs, points = self._slots
        order = self.np_random.permutation(n)  # the goal's slot is random, not always 0
        for slot, k in enumerate(order):
            self._show_object(slot, qs[slot], points[slot], int(colors[k]))
        self._goal = int(np.flatnonzero(order == 0)[0])

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        in_reach = self._step_count > self.reach_start
        reward, done, info = self._reach_step(goal_visible=in_reach)
        self._update_phase()
        mujoco.mj_kinematics(self.model, self.data)  # moved lights/targets: seen this frame
        info.update(phase=self.phase, cue=vocab.COLORS[self._cue])
        return reward, done, info

    def _reset_info(self) -> dict[str, Any]:
        info = super()._reset_info(goal_visible=False)  # no goal before the reach phase
        return {**info, "phase": self.phase, "cue": vocab.COLORS[self._cue]}

    def _tones(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        if self.cue_mode == "color":
            return None
        ids, pos, hz = [], [], []
        if self._step_count < self.cue_steps:
            ids.append(0)
            pos.append(self.arm.cue_pos)
            hz.append(COLOR_TONE_HZ[vocab.COLORS[self._cue]])
        if self._distractor_left > 0:
            ids.append(1)
            pos.append(self.data.mocap_pos[self._dis_mocap].copy())
            hz.append(COLOR_TONE_HZ[vocab.COLORS[self._distractor_color]])
        if not ids:
            return None
        level = np.full(len(ids), self.tone_level)
        return np.array(ids), np.array(pos), np.array(hz), level
