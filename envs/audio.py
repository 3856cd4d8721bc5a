"""Stereo sound synthesized from the simulation, one control step at a time.

Two ears sit on the agent's head (the task camera), ``ear_distance`` apart along the camera's
right axis. Every sound reaches each ear with

* a delay of ``distance / speed_of_sound`` (so the interaural time difference follows the
  direction: up to ~0.5 ms, 8 samples at 16 kHz, for a source straight to one side),
* a level falling as ``1 / distance`` (clamped at ``min_distance``), and
* a head shadow: the far ear gets ``1 - head_shadow`` of the near ear's level for a source
  straight to the side (the interaural level difference).

Sources are tones (a sine per source, phase-continuous across steps because it is evaluated at
the absolute simulation time; level changes are ramped over the step so they do not click) and
impacts (a decaying ring plus a noise burst, amplitude proportional to the contact impulse,
noise drawn from the env's seeded generator so audio is deterministic). Nothing sounding gives
exact zeros. Everything is vectorized over sources, ears and samples with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class AudioConfig:
    """How sound is made and heard. All lengths in metres, times in seconds."""

    sample_rate: int = SAMPLE_RATE
    ear_distance: float = 0.18
    """Distance between the two ears (a human head is ~0.18 m wide)."""
    speed_of_sound: float = 343.0
    head_shadow: float = 0.5
    """Level lost at the far ear for a source straight to the side (0: no shadow)."""
    min_distance: float = 0.1
    """Distances are clamped here so a source at the ear does not blow up."""
    impact_gain: float = 2.0
    """Peak amplitude at 1 m per N*s of contact impulse, for small impulses."""
    impact_knee: float = 0.5
    """Impulse (N*s) above which loudness grows ever more slowly (``J / (1 + J / knee)``):
    a hopper's foot strike stays loud without clipping for many samples; still monotonic."""
    impact_decay: float = 0.015
    """Time constant of an impact's exponential decay (its tail carries into later steps)."""
    impact_min_impulse: float = 1e-3
    """Contact onsets with a smaller impulse (resting contacts flickering) make no sound."""


class Ears:
    """Positions of the two ears from a camera pose: ``(2, 3)``, left first."""

    def __init__(self, ear_distance: float) -> None:
        self.half = 0.5 * ear_distance
        self.pos = np.zeros((2, 3))
        self.right = np.array([1.0, 0.0, 0.0])
        self.center = np.zeros(3)

    def set_pose(self, center: np.ndarray, right: np.ndarray) -> None:
        """``center``: the camera position; ``right``: its unit x axis (image right)."""
        self.center[:] = center
        self.right[:] = right
        self.pos[0] = center - self.half * right
        self.pos[1] = center + self.half * right

    def set_from_camera(self, data: mujoco.MjData, cam_id: int) -> None:
        # cam_xmat is row-major 3x3 with the camera axes as columns: x = image right.
        xmat = data.cam_xmat[cam_id]
        self.set_pose(data.cam_xpos[cam_id], xmat[[0, 3, 6]])


class AudioSynth:
    """Makes the ``(2, S)`` float32 stereo buffer of one control step.

    Per step: :meth:`begin` with the step's start time, then :meth:`add_tones` /
    :meth:`add_impacts`, then :meth:`end` returns the samples (clipped to [-1, 1]). Tones are
    identified by a stable integer ``source_id`` so level changes ramp smoothly.
    """

    def __init__(self, config: AudioConfig, dt: float) -> None:
        self.config = config
        self.samples_per_step = round(config.sample_rate * dt)
        self.ears = Ears(config.ear_distance)
        s = self.samples_per_step
        self._n = np.arange(s, dtype=np.float64)
        self._ramp = self._n / s  # (S,) 0 -> 1 across the step
        # Impacts ring for ~6 decay constants; their tails spill into the next steps.
        self._tail_len = int(6 * config.impact_decay * config.sample_rate) + 16
        self._acc = np.zeros((2, s + self._tail_len))
        self._prev_gain: dict[int, np.ndarray] = {}
        self._t0 = 0.0
        self._active_tones: set[int] = set()

    def reset(self) -> None:
        self._acc[:] = 0.0
        self._prev_gain.clear()

    def _ear_geometry(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-ear distances ``(K, 2)`` and gains ``(K, 2)`` for source positions ``(K, 3)``."""
        cfg = self.config
        rel = pos[:, None, :] - self.ears.pos[None, :, :]  # (K, 2, 3)
        dist = np.sqrt(np.einsum("kej,kej->ke", rel, rel))  # (K, 2)
        to_src = pos - self.ears.center  # (K, 3)
        norm = np.sqrt(np.einsum("kj,kj->k", to_src, to_src)) + 1e-9
        side = (to_src @ self.ears.right) / norm  # (K,) -1 = left, +1 = right
        # Near ear full level, far ear reduced: gain = 1 - shadow * (1 -/+ side) / 2.
        shadow = np.stack([1.0 - cfg.head_shadow * (1.0 + side) / 2.0,
                           1.0 - cfg.head_shadow * (1.0 - side) / 2.0], axis=1)  # fmt: skip
        gain = shadow / np.maximum(dist, cfg.min_distance)
        return dist, gain

    def begin(self, t0: float) -> None:
        """Start a step that begins at simulation time ``t0`` (seconds)."""
        self._t0 = t0
        self._active_tones = set()

    def add_tones(
        self, source_ids: np.ndarray, pos: np.ndarray, freq: np.ndarray, level: np.ndarray
    ) -> None:
        """Tones ``(K,)`` ids, ``(K, 3)`` positions, ``(K,)`` Hz, ``(K,)`` amplitude at 1 m."""
        if len(source_ids) == 0:
            return
        s = self.samples_per_step
        dist, gain = self._ear_geometry(np.asarray(pos, dtype=np.float64))
        gain = gain * np.asarray(level, dtype=np.float64)[:, None]  # (K, 2)
        prev = np.stack(
            [self._prev_gain.get(int(i), g) for i, g in zip(source_ids, gain, strict=True)]
        )
        for i, g in zip(source_ids, gain, strict=True):
            self._prev_gain[int(i)] = g
            self._active_tones.add(int(i))
        # Time each sample left the source, per ear: (K, 2, S).
        t = self._t0 + self._n / self.config.sample_rate
        t_emit = t[None, None, :] - (dist / self.config.speed_of_sound)[:, :, None]
        wave = np.sin(2.0 * np.pi * np.asarray(freq, dtype=np.float64)[:, None, None] * t_emit)
        ramp = prev[:, :, None] + (gain - prev)[:, :, None] * self._ramp  # (K, 2, S)
        self._acc[:, :s] += np.einsum("kes,kes->es", wave, ramp)

    def add_impacts(
        self,
        t_offset: np.ndarray,
        pos: np.ndarray,
        impulse: np.ndarray,
        freq: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Impacts at ``t_offset`` (K,) seconds into the step, ``(K, 3)`` positions, ``(K,)``
        impulses in N*s and ring frequencies in Hz. ``rng`` makes the noise burst."""
        cfg = self.config
        keep = np.asarray(impulse) >= cfg.impact_min_impulse
        if not keep.any():
            return
        t_offset, pos, impulse, freq = (np.asarray(a)[keep] for a in (t_offset, pos, impulse, freq))
        dist, gain = self._ear_geometry(np.asarray(pos, dtype=np.float64))
        loud = cfg.impact_gain * impulse / (1.0 + impulse / cfg.impact_knee)  # (K,)
        amp = gain * loud[:, None]  # (K, 2)
        length = self._tail_len
        tau = np.arange(length) / cfg.sample_rate  # (L,)
        env = np.exp(-tau / cfg.impact_decay)
        noise = rng.standard_normal((len(impulse), length)) * 0.5  # (K, L)
        ring = np.sin(2.0 * np.pi * freq[:, None] * tau[None, :])  # (K, L)
        shape = (ring + noise) * env  # (K, L)
        # Integer sample onset per ear: when the impact happened plus the travel time.
        onset = np.rint((t_offset[:, None] + dist / cfg.speed_of_sound) * cfg.sample_rate).astype(
            int
        )
        limit = self._acc.shape[1]
        for k in range(len(impulse)):
            for e in range(2):
                start = min(int(onset[k, e]), limit)
                stop = min(start + length, limit)
                self._acc[e, start:stop] += amp[k, e] * shape[k, : stop - start]

    def end(self) -> np.ndarray:
        """The step's ``(2, S)`` float32 samples; shifts impact tails to the next step."""
        s = self.samples_per_step
        out = np.clip(self._acc[:, :s], -1.0, 1.0).astype(np.float32)
        self._acc[:, :-s] = self._acc[:, s:]
        self._acc[:, -s:] = 0.0
        # Tones that stopped sounding restart from silence (ramp up) when they come back.
        for i in list(self._prev_gain):
            if i not in self._active_tones:
                del self._prev_gain[i]
        return out


class ContactTracker:
    """Finds contact onsets between MuJoCo substeps and measures their impulse.

    An onset is a geom pair in contact now that was not in contact at the previous substep.
    Its impulse is the effective mass times the approach speed along the contact normal
    (``m_eff = m1 m2 / (m1 + m2)``, the world counts as infinitely heavy), i.e. the momentum
    a perfectly inelastic collision would exchange. Resting contacts make no new onsets, so a
    ball lying still is silent while a ball landing clicks.
    """

    def __init__(self, model: mujoco.MjModel, geom_freq: np.ndarray | None = None) -> None:
        self.model = model
        self._ngeom = model.ngeom
        self._prev_keys = np.empty(0, dtype=np.int64)
        mass = model.body_subtreemass.copy()
        # Bodies welded to the world (static) and mocap bodies cannot be pushed: infinite mass.
        static = (model.body_weldid == 0) | (model.body_mocapid >= 0)
        mass[static] = np.inf
        self._body_mass = mass
        # Ring frequency of each geom: smaller things ring higher. Tasks may override.
        if geom_freq is None:
            size = np.maximum(model.geom_rbound, 1e-3)
            geom_freq = np.clip(60.0 / size, 300.0, 4000.0)
        self.geom_freq = np.asarray(geom_freq, dtype=np.float64)
        self._vel = np.zeros(6)
        self.reset()

    def reset(self) -> None:
        self._prev_keys = np.empty(0, dtype=np.int64)
        self.events: list[tuple[float, np.ndarray, float, float]] = []

    def prime(self, data: mujoco.MjData) -> None:
        """Take the current contacts as already touching (call after reset/set_state)."""
        n = data.ncon
        g = data.contact.geom[:n]
        self._prev_keys = np.sort(g[:, 0].astype(np.int64) * self._ngeom + g[:, 1])

    def after_substep(self, data: mujoco.MjData, t_offset: float) -> None:
        """Record onsets of the substep that just ran, ``t_offset`` seconds into the step."""
        n = data.ncon
        if n == 0:
            if len(self._prev_keys):
                self._prev_keys = np.empty(0, dtype=np.int64)
            return
        g = data.contact.geom[:n]
        keys = g[:, 0].astype(np.int64) * self._ngeom + g[:, 1]
        new = ~np.isin(keys, self._prev_keys)
        self._prev_keys = keys
        if not new.any():
            return
        # A pair can touch at several points (a box on a plane: 4); it makes one sound.
        _, first = np.unique(keys, return_index=True)
        model = self.model
        for i in first[new[first]]:
            con = data.contact[int(i)]
            g1, g2 = int(con.geom[0]), int(con.geom[1])
            b1, b2 = int(model.geom_bodyid[g1]), int(model.geom_bodyid[g2])
            normal = con.frame[:3]
            # Velocity of each body at the contact point, world frame: [angular, linear].
            mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, b1, self._vel, 0)
            v1 = self._vel[3:] + np.cross(self._vel[:3], con.pos - data.xpos[b1])
            mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, b2, self._vel, 0)
            v2 = self._vel[3:] + np.cross(self._vel[:3], con.pos - data.xpos[b2])
            speed = abs(float(np.dot(v2 - v1, normal)))
            m1, m2 = self._body_mass[b1], self._body_mass[b2]
            if np.isinf(m1) and np.isinf(m2):
                continue
            m_eff = m2 if np.isinf(m1) else m1 if np.isinf(m2) else m1 * m2 / (m1 + m2)
            freq = 0.5 * (self.geom_freq[g1] + self.geom_freq[g2])
            self.events.append((t_offset, con.pos.copy(), m_eff * speed, freq))

    def pop_events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The step's onsets as arrays ``(K,)`` times, ``(K, 3)`` positions, impulses, Hz."""
        ev = self.events
        self.events = []
        if not ev:
            return (np.empty(0), np.empty((0, 3)), np.empty(0), np.empty(0))
        t, p, j, f = zip(*ev, strict=True)
        return np.array(t), np.array(p), np.array(j), np.array(f)
