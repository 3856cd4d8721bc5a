"""What the reaching tasks share: a muscle arm, coloured objects, the dwell rule, the expert.

Objects are mocap bodies (placed per episode, part of the replayable physics state). Each
target *point* is where the hand is at a posture sampled from the arm's ``target_qrange``,
so every target is reachable; the object itself sits just beyond the hand's plane of motion
so the hand grazes it (touch sensor, a tap sound) without being blocked.

Reaching an object means **dwelling** on it: the hand within ``success_radius`` of its point
and slower than ``dwell_speed`` for ``hold_steps`` consecutive control steps. Dwelling on the
goal is success; dwelling on another object ends the episode as a failure (so sweeping over
every object is not a strategy), while passing over one on the way is fine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces

from envs import vocab
from envs.arms import OBJECT_BIT, Arm, make_arm
from envs.audio import AudioConfig
from envs.base import (
    HIDDEN_GROUP,
    OFF_GROUP,
    Action,
    MindloopEnv,
    check_non_negative,
    check_positive,
    clip_,
)
from envs.experts import MuscleReacher

COLOR_RGBA: dict[str, tuple[float, float, float, float]] = {
    "red": (0.9, 0.1, 0.1, 1.0),
    "green": (0.1, 0.8, 0.1, 1.0),
    "blue": (0.15, 0.25, 0.95, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "magenta": (0.9, 0.1, 0.85, 1.0),
    "cyan": (0.1, 0.85, 0.9, 1.0),
}
assert tuple(COLOR_RGBA) == vocab.COLORS, "every vocabulary colour needs an RGBA"
COLOR_TONE_HZ: dict[str, float] = {c: 330.0 * 2 ** (i / 4) for i, c in enumerate(vocab.COLORS)}
"""Each colour's tone (CueRecall's sound cue): 330 Hz up in steps of a major third."""

_SHAPE_GEOM = {
    "ball": mujoco.mjtGeom.mjGEOM_SPHERE,
    "box": mujoco.mjtGeom.mjGEOM_BOX,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
}
assert tuple(_SHAPE_GEOM) == vocab.SHAPES
_GRAZE = 0.003
"""How far (m) an object reaches into the hand's plane: a light touch, never a wall."""
REWARD_TERMS = ("reward_distance", "reward_effort", "reward_success", "reward_wrong")
"""The reach reward's terms, each in ``info`` (their sum is the reward)."""


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is a contiguous ascending run, else unchanged."""
    index = np.asarray(index)
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


class ReachEnv(MindloopEnv):
    """Base of the reaching tasks (not registered itself). See the module docstring."""

    OBS_KEYS: ClassVar[tuple[str, ...]] = ("image", "audio", "proprio", "touch")
    _STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        "_obj_point", "_obj_q", "_obj_color", "_obj_shape", "_obj_active", "_goal", "_dwell",
        "_prev_hand", "_hold_q",
    )  # fmt: skip

    def __init__(
        self,
        *,
        arm: str,
        num_objects: int,
        max_steps: int,
        shapes: Sequence[str] = ("ball",),
        success_radius: float | None,
        hold_steps: int,
        dwell_speed: float,
        distance_weight: float,
        success_bonus: float,
        effort_weight: float,
        wrong_penalty: float,
        obs_keys: Sequence[str] | None,
        image_size: int,
        render_size: int,
        render_mode: str | None,
        text_length: int = 8,
        audio: AudioConfig | None,
        audio_info: bool,
    ) -> None:
        check_positive("num_objects", num_objects)
        check_positive("hold_steps", hold_steps)
        check_positive("dwell_speed", dwell_speed)
        for name, value in (
            ("distance_weight", distance_weight), ("success_bonus", success_bonus),
            ("effort_weight", effort_weight), ("wrong_penalty", wrong_penalty),
        ):  # fmt: skip
            check_non_negative(name, value)
        self.arm: Arm = make_arm(arm)
        self.success_radius = self.arm.success_radius if success_radius is None else success_radius
        check_positive("success_radius", self.success_radius)
        self.num_objects = int(num_objects)
        self.shapes = tuple(shapes)
        self.hold_steps = int(hold_steps)
        self.dwell_speed = float(dwell_speed)
        self.distance_weight = float(distance_weight)
        self.success_bonus = float(success_bonus)
        self.effort_weight = float(effort_weight)
        self.wrong_penalty = float(wrong_penalty)

        spec = self.arm.spec
        self._add_objects(spec)
        self._build_extras(spec)
        super().__init__(
            spec,
            frame_skip=self.arm.frame_skip,
            camera=self.arm.camera,
            max_steps=max_steps,
            obs_keys=obs_keys,
            image_size=image_size,
            render_size=render_size,
            render_mode=render_mode,
            text_length=text_length,
            audio=audio,
            audio_info=audio_info,
        )

    # ----------------------------------------------------------------- scene
    def _add_objects(self, spec: mujoco.MjSpec) -> None:
        r = self.arm.object_radius
        for i in range(self.num_objects):
            body = spec.worldbody.add_body(name=f"obj{i}", mocap=True, pos=self.arm.park_pos)
            for shape in self.shapes:
                # Box and cylinder a little smaller than the ball so they look the same size.
                size = {"ball": [r, 0, 0], "box": [0.8 * r] * 3, "cylinder": [0.85 * r, 0.8 * r, 0]}
                body.add_geom(
                    name=f"obj{i}_{shape}", type=_SHAPE_GEOM[shape], size=size[shape],
                    rgba=[1, 1, 1, 1], contype=OBJECT_BIT, conaffinity=OBJECT_BIT, condim=1,
                )  # fmt: skip

    def _build_extras(self, spec: mujoco.MjSpec) -> None:
        """Subclasses add cue lights and the like."""

    def _setup(self) -> None:
        m = self.model
        arm = self.arm
        self._hand = m.site(arm.hand_site).id
        self._touch_adr = m.sensor_adr[m.sensor(arm.touch_sensor).id]
        self._qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in arm.joints])
        self._vadr = np.array([m.jnt_dofadr[m.joint(j).id] for j in arm.joints])
        self._muscles = np.flatnonzero(m.actuator_dyntype == mujoco.mjtDyn.mjDYN_MUSCLE)
        self._obj_mocap = np.array([m.body(f"obj{i}").mocapid[0] for i in range(self.num_objects)])
        self._obj_geoms = np.array(
            [[m.geom(f"obj{i}_{s}").id for s in self.shapes] for i in range(self.num_objects)]
        )  # (n_objects, n_shapes)
        # Slices, not index arrays: both arms' joints and muscles are contiguous, and slicing
        # MjData arrays is several times cheaper than fancy indexing every step.
        self._qadr = _as_slice(self._qadr)
        self._vadr = _as_slice(self._vadr)
        self._ctrl_slice = _as_slice(self._muscles)
        self._act_slice = _as_slice(m.actuator_actadr[self._muscles])
        self._n_joints, self._n_muscles = len(arm.joints), len(self._muscles)
        self._proprio_buf = np.zeros(2 * self._n_joints + 4 * self._n_muscles)
        lr = m.actuator_lengthrange[self._muscles]
        self._len0, self._len_span = lr[:, 0], np.maximum(lr[:, 1] - lr[:, 0], 1e-6)
        # Peak isometric force: the ``force`` attribute, or MuJoCo's automatic scale / acc0.
        gp = m.actuator_gainprm[self._muscles]
        self._fmax = np.where(gp[:, 2] > 0, gp[:, 2], gp[:, 3] / m.actuator_acc0[self._muscles])
        self._neg_fmax = -self._fmax  # muscle force is negative when pulling
        self._fk = mujoco.MjData(m)
        self._expert = MuscleReacher(m, arm.joints)
        n = self.num_objects
        self._obj_point = np.zeros((n, 3))
        self._obj_q = np.zeros((n, len(arm.joints)))
        self._obj_color = np.zeros(n, dtype=np.int64)
        self._obj_shape = np.zeros(n, dtype=np.int64)
        self._obj_active = np.zeros(n, dtype=bool)
        self._goal = 0
        self._dwell = np.zeros(n, dtype=np.int64)
        self._prev_hand = np.zeros(3)
        self._hold_q = arm.home_qpos.copy()

    def _make_action_space(self) -> spaces.Dict:
        return spaces.Dict({"muscles": spaces.Box(0.0, 1.0, (len(self._muscles),), np.float32)})

    # ----------------------------------------------------------------- objects
    def hand_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._hand]

    def _fk_point(self, q: np.ndarray) -> np.ndarray:
        self._fk.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self._fk)
        return self._fk.site_xpos[self._hand].copy()

    def _sample_points(
        self, n: int, avoid: Sequence[np.ndarray] = (), tries: int = 200
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` reachable postures ``(n, J)`` and hand points ``(n, 3)``, at least
        ``min_separation`` from each other and from the points in ``avoid``."""
        lo, hi = self.arm.target_qrange[:, 0], self.arm.target_qrange[:, 1]
        qs, pts = [], []
        taken = [np.asarray(p) for p in avoid]
        sep = self.arm.min_separation
        for _ in range(n):
            for attempt in range(tries):
                q = self.np_random.uniform(lo, hi)
                p = self._fk_point(q)
                # After many tries accept a closer point rather than loop forever.
                need = sep if attempt < tries // 2 else 0.5 * sep
                if all(np.linalg.norm(p - t) >= need for t in taken):
                    break
            qs.append(q)
            pts.append(p)
            taken.append(p)
        return np.array(qs), np.array(pts)

    def _show_object(
        self, i: int, q: np.ndarray, point: np.ndarray, color: int, shape: int = 0,
        hidden: bool = False,
    ) -> None:  # fmt: skip
        """Put object ``i`` just beyond the hand plane at ``point`` (the hand's position at
        posture ``q``), in ``color``/``shape``. ``hidden``: touchable but invisible to the
        agent (drawn faintly in ``render()`` videos only)."""
        m = self.model
        geoms = self._obj_geoms[i]
        r = self.arm.object_radius
        extent = (r, 0.8 * r, 0.8 * r)[vocab.SHAPES.index(self.shapes[shape])]
        offset = self.arm.hand_radius + extent - _GRAZE
        self.data.mocap_pos[self._obj_mocap[i]] = point + offset * self.arm.plane_normal
        rgba = np.array(COLOR_RGBA[vocab.COLORS[color]])
        if hidden:
            rgba[3] = 0.35
        for k, g in enumerate(geoms):
            on = k == shape
            m.geom_group[g] = (HIDDEN_GROUP if hidden else 0) if on else OFF_GROUP
            m.geom_contype[g] = m.geom_conaffinity[g] = OBJECT_BIT if on else 0
            m.geom_rgba[g] = rgba
        self._obj_q[i] = q
        self._obj_point[i] = point
        self._obj_color[i] = color
        self._obj_shape[i] = shape
        self._obj_active[i] = True

    def _hide_object(self, i: int) -> None:
        self.data.mocap_pos[self._obj_mocap[i]] = self.arm.park_pos
        self._obj_active[i] = False
        self._dwell[i] = 0

    # ----------------------------------------------------------------- episode
    def _reset_arm(self) -> None:
        noise = self.np_random.uniform(-self.arm.home_noise, self.arm.home_noise, self._n_joints)
        self.data.qpos[self._qadr] = self.arm.home_qpos + noise
        mujoco.mj_kinematics(self.model, self.data)
        self._prev_hand[:] = self.hand_pos()
        self._dwell[:] = 0
        self._hold_q = self.data.qpos[self._qadr].copy()
        for i in range(self.num_objects):
            self._hide_object(i)

    def _apply_action(self, action: Action) -> None:
        self.data.ctrl[self._ctrl_slice] = clip_(
            np.array(action["muscles"], dtype=np.float64), 0.0, 1.0
        )

    def _reach_step(self, goal_visible: bool = True) -> tuple[float, bool, dict[str, Any]]:
        """Dwell bookkeeping and reward for the current goal; used by every reach task.

        Plain Python over the few objects: numpy's per-call overhead on 3-vectors would
        cost more than the arithmetic, and this runs every control step.
        """
        hx, hy, hz = self.data.site_xpos[self._hand].tolist()
        px, py, pz = self._prev_hand.tolist()
        speed = math.sqrt((hx - px) ** 2 + (hy - py) ** 2 + (hz - pz) ** 2) / self.dt
        self._prev_hand[:] = (hx, hy, hz)
        slow = speed < self.dwell_speed
        goal, radius, hold = self._goal, self.success_radius, self.hold_steps
        success = wrong = False
        dist = 0.0
        for i, ((x, y, z), active) in enumerate(
            zip(self._obj_point.tolist(), self._obj_active.tolist(), strict=True)
        ):
            d = math.sqrt((x - hx) ** 2 + (y - hy) ** 2 + (z - hz) ** 2)
            dwell = int(self._dwell[i]) + 1 if (active and slow and d < radius) else 0
            self._dwell[i] = dwell
            if i == goal:
                dist = d if goal_visible else 0.0
                success = dwell >= hold and goal_visible
            elif dwell >= hold:
                wrong = True
        ctrl = self.data.ctrl[self._ctrl_slice]
        terms = {
            "reward_distance": -self.distance_weight * dist,
            "reward_effort": -self.effort_weight * float(ctrl @ ctrl) / len(ctrl),
            "reward_success": self.success_bonus if success else 0.0,
            "reward_wrong": -self.wrong_penalty if wrong else 0.0,
        }
        info = {"is_success": success, "distance": dist, "hand_speed": speed, **terms}
        return sum(terms.values()), success or wrong, info

    def _reset_info(self, goal_visible: bool = True) -> dict[str, Any]:
        """A step's info keys for the first frame too: the hand at rest, no reward yet.
        Gymnasium asks reset's info to be analogous to step's, and Minari's
        ``DataCollector(record_infos=True)`` refuses an episode whose keys change."""
        dist = 0.0
        if goal_visible:
            gx, gy, gz = self._obj_point[self._goal].tolist()
            hx, hy, hz = self.hand_pos().tolist()
            dist = math.sqrt((gx - hx) ** 2 + (gy - hy) ** 2 + (gz - hz) ** 2)
        return {
            "is_success": False,
            "distance": dist,
            "hand_speed": 0.0,
            **dict.fromkeys(REWARD_TERMS, 0.0),
        }

    # ----------------------------------------------------------------- senses
    def _proprio(self) -> np.ndarray:
        """Joint angles and velocities, then per muscle: length (0..1 over its range),
        lengthening speed (ranges/s), force (fraction of peak, pulling > 0), activation."""
        d = self.data
        mus = self._ctrl_slice
        out = self._proprio_buf  # (2J + 4M,) float64 scratch; the result is a fresh float32
        j, m = self._n_joints, self._n_muscles
        out[:j] = d.qpos[self._qadr]
        out[j : 2 * j] = d.qvel[self._vadr]
        k = 2 * j
        np.subtract(d.actuator_length[mus], self._len0, out=out[k : k + m])
        out[k : k + m] /= self._len_span
        np.divide(d.actuator_velocity[mus], self._len_span, out=out[k + m : k + 2 * m])
        np.divide(d.actuator_force[mus], self._neg_fmax, out=out[k + 2 * m : k + 3 * m])
        out[k + 3 * m :] = d.act[self._act_slice] if self.model.na else d.ctrl[mus]
        return out.astype(np.float32)

    def _touch(self) -> np.ndarray:
        """The hand's touch sensor: normal force (N) of whatever the hand is touching."""
        return self.data.sensordata[self._touch_adr : self._touch_adr + 1].astype(np.float32)

    # ----------------------------------------------------------------- expert
    def _expert_target_q(self) -> np.ndarray:
        """Posture the expert heads for: the goal's, or stay put while there is none."""
        return self._obj_q[self._goal] if self._obj_active[self._goal] else self._hold_q

    def expert_latent(self) -> np.ndarray:
        """(n_joints,) float32: the posture the expert heads for (the goal's joint angles, or
        the held posture before a goal shows): which ball, resolved into where to go."""
        return np.asarray(self._expert_target_q(), dtype=np.float32)

    def expert_action(self) -> Action:
        """Computed-torque PD toward the goal posture, mapped to muscles by bounded least
        squares (:class:`envs.experts.MuscleReacher`)."""
        act = self._expert(self.data, self._expert_target_q())
        return {"muscles": act.astype(np.float32)}
