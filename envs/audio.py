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

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

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


def as_audio_config(audio: AudioConfig | Mapping[str, Any] | None) -> AudioConfig:
    """``audio`` as an :class:`AudioConfig`: ``None`` gives the defaults, a mapping sets the
    fields it names. A JSON round trip of an env spec (what Minari stores and
    ``recover_environment`` / ``gymnasium.make(EnvSpec.from_json(...))`` rebuild from)
    turns an ``audio=AudioConfig(...)`` argument into such a mapping."""
    if audio is None:
        return AudioConfig()
    if isinstance(audio, AudioConfig):
        return audio
    if isinstance(audio, Mapping):
        names = [f.name for f in fields(AudioConfig)]
        unknown = sorted(str(k) for k in audio if k not in names)
        if unknown:
            raise ValueError(
                f"unknown audio setting {', '.join(unknown)}; AudioConfig has: {', '.join(names)}"
            )
        return AudioConfig(**audio)
    raise ValueError(
        f"audio must be an AudioConfig, a mapping of its fields or None, got {audio!r}"
    )


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
    identified by a stable integer ``source_id``: a tone's level is ramped across a step when
    it changes, it fades in over the step where it starts and out over the step after the
    one where it was last added, so nothing clicks.
    """

    def __init__(self, config: AudioConfig, dt: float) -> None:
        self.config = config
        self.samples_per_step = s = round(config.sample_rate * dt)
        self.ears = Ears(config.ear_distance)
        self._n = np.arange(s, dtype=np.float64)
        self._basis_cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._ramp = self._n / s  # (S,) 0 -> 1 across the step
        # Impacts ring for ~6 decay constants; their tails spill into the next steps.
        self._tail_len = int(6 * config.impact_decay * config.sample_rate) + 16
        self._acc = np.zeros((2, s + self._tail_len))
        self._tau = np.arange(self._tail_len) / config.sample_rate  # (L,) seconds after impact
        self._decay = np.exp(-self._tau / config.impact_decay)  # (L,) impact envelope
        self._tail_steps = 0  # steps for which _acc beyond this step still holds a tail
        self._dirty = False  # something was added to this step
        # source id -> (gain (2,), distance (2,), Hz) of the last step it sounded in
        self._tones: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self._active: set[int] = set()
        self._t0 = 0.0

    def reset(self) -> None:
        self._acc[:] = 0.0
        self._tail_steps = 0
        self._dirty = False
        self._tones.clear()
        self._active = set()

    def _ear_geometry(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-ear distances ``(K, 2)`` and gains ``(K, 2)`` for source positions ``(K, 3)``.

        Plain Python per source: K is a handful, and numpy's per-call overhead on 3-vectors
        would cost more than the arithmetic.
        """
        cfg = self.config
        (lx, ly, lz), (rx, ry, rz) = self.ears.pos.tolist()
        cx, cy, cz = self.ears.center.tolist()
        ux, uy, uz = self.ears.right.tolist()
        half, floor = 0.5 * cfg.head_shadow, cfg.min_distance
        dist, gain = [], []
        for x, y, z in np.asarray(pos, dtype=np.float64).reshape(-1, 3).tolist():
            dl = math.sqrt((x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2)
            dr = math.sqrt((x - rx) ** 2 + (y - ry) ** 2 + (z - rz) ** 2)
            vx, vy, vz = x - cx, y - cy, z - cz
            # side: -1 straight left ... +1 straight right. Near ear full level, far ear less.
            side = (vx * ux + vy * uy + vz * uz) / (math.sqrt(vx * vx + vy * vy + vz * vz) + 1e-9)
            dist.append((dl, dr))
            gain.append(
                (
                    (1.0 - half * (1.0 + side)) / max(dl, floor),
                    (1.0 - half * (1.0 - side)) / max(dr, floor),
                )
            )
        return np.array(dist), np.array(gain)

    def begin(self, t0: float) -> None:
        """Start a step that begins at simulation time ``t0`` (seconds)."""
        self._t0 = t0
        self._active = set()
        self._dirty = False

    def _basis(self, freq: float) -> tuple[np.ndarray, np.ndarray]:
        """``(sin(w n), cos(w n))`` over the step's samples for a tone of ``freq`` Hz."""
        basis = self._basis_cache.get(freq)
        if basis is None:
            w = 2.0 * np.pi * freq / self.config.sample_rate
            basis = (np.sin(w * self._n), np.cos(w * self._n))
            if len(self._basis_cache) < 256:
                self._basis_cache[freq] = basis
        return basis

    def _render_tones(
        self, dist: np.ndarray, freq: np.ndarray, g0: np.ndarray, g1: np.ndarray
    ) -> None:
        """Add sines ``(K,)`` Hz heard at ear distances ``(K, 2)``, level ``g0 -> g1``."""
        c = self.config.speed_of_sound
        head = self._acc[:, : self.samples_per_step]  # (2, S)
        for k, f in enumerate(freq.tolist()):
            sin_n, cos_n = self._basis(f)
            # Each ear hears the wave emitted dist/c earlier, evaluated at absolute time so
            # the phase continues exactly from the previous step:
            # sin(phi + w n) = sin(phi) cos(w n) + cos(phi) sin(w n).
            phi = [2.0 * np.pi * f * (self._t0 - d / c) for d in dist[k].tolist()]
            cos_phi = np.array([math.cos(p) for p in phi])
            sin_phi = np.array([math.sin(p) for p in phi])
            if g0[k].tolist() == g1[k].tolist():  # steady level: fold it into the weights
                head += np.outer(g1[k] * cos_phi, sin_n)
                head += np.outer(g1[k] * sin_phi, cos_n)
            else:
                wave = np.outer(cos_phi, sin_n) + np.outer(sin_phi, cos_n)  # (2, S)
                wave *= g0[k][:, None] + (g1[k] - g0[k])[:, None] * self._ramp
                head += wave
        self._dirty = True

    def add_tones(
        self, source_ids: np.ndarray, pos: np.ndarray, freq: np.ndarray, level: np.ndarray
    ) -> None:
        """Tones ``(K,)`` ids, ``(K, 3)`` positions, ``(K,)`` Hz, ``(K,)`` amplitude at 1 m."""
        ids = [int(i) for i in source_ids]
        if not ids:
            return
        freq = np.asarray(freq, dtype=np.float64)
        dist, gain = self._ear_geometry(np.asarray(pos, dtype=np.float64).reshape(-1, 3))
        gain *= np.asarray(level, dtype=np.float64)[:, None]
        silent = np.zeros(2)
        prev = np.array([self._tones[i][0] if i in self._tones else silent for i in ids])
        self._render_tones(dist, freq, prev, gain)
        for k, i in enumerate(ids):
            self._tones[i] = (gain[k], dist[k], float(freq[k]))
            self._active.add(i)

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
        length, tau = self._tail_len, self._tau
        noise = rng.standard_normal((len(impulse), length)) * 0.5  # (K, L)
        ring = np.sin((2.0 * np.pi * freq)[:, None] * tau)  # (K, L)
        shape = (ring + noise) * self._decay  # (K, L)
        # Integer sample onset per ear: when the impact happened plus the travel time.
        travel = t_offset[:, None] + dist / cfg.speed_of_sound  # (K, 2)
        onset = np.rint(travel * cfg.sample_rate).astype(int)
        limit = self._acc.shape[1]
        for k in range(len(impulse)):
            for e in range(2):
                start = min(int(onset[k, e]), limit)
                stop = min(start + length, limit)
                self._acc[e, start:stop] += amp[k, e] * shape[k, : stop - start]
        self._dirty = True
        self._tail_steps = -(-self._acc.shape[1] // self.samples_per_step)  # ceil

    def end(self) -> np.ndarray:
        """The step's ``(2, S)`` float32 samples; shifts impact tails to the next step."""
        s = self.samples_per_step
        gone = [i for i in self._tones if i not in self._active]
        if gone:  # tones that stopped fade out over this step
            g0 = np.array([self._tones[i][0] for i in gone])
            dist = np.array([self._tones[i][1] for i in gone])
            freq = np.array([self._tones[i][2] for i in gone])
            self._render_tones(dist, freq, g0, np.zeros_like(g0))
            for i in gone:
                del self._tones[i]
        if not self._dirty and self._tail_steps == 0:
            return np.zeros((2, s), dtype=np.float32)  # silence: exact zeros
        out = self._acc[:, :s].astype(np.float32)
        np.clip(out, -1.0, 1.0, out=out)
        if self._tail_steps > 0:
            self._acc[:, :-s] = self._acc[:, s:]
            self._acc[:, -s:] = 0.0
            self._tail_steps -= 1
        else:
            self._acc[:, :s] = 0.0
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
        self._prev_raw = b""
        self.events: list[tuple[float, np.ndarray, float, float]] = []

    def prime(self, data: mujoco.MjData) -> None:
        """Take the current contacts as already touching (call after reset/set_state)."""
        g = data.contact.geom[: data.ncon]
        self._prev_raw = g.tobytes()
        self._prev_keys = g[:, 0].astype(np.int64) * self._ngeom + g[:, 1]

    def after_substep(self, data: mujoco.MjData, t_offset: float) -> None:
        """Record onsets of the substep that just ran, ``t_offset`` seconds into the step."""
        n = data.ncon
        if n == 0:
            if self._prev_raw:
                self._prev_raw = b""
                self._prev_keys = np.empty(0, dtype=np.int64)
            return
        g = data.contact.geom[:n]
        raw = g.tobytes()
        # Common case: the same contacts as a substep ago, in the same order (collision
        # detection visits pairs in a fixed order), so nothing new touched.
        if raw == self._prev_raw:
            return
        self._prev_raw = raw
        keys = g[:, 0].astype(np.int64) * self._ngeom + g[:, 1]
        prev = self._prev_keys
        self._prev_keys = keys
        new = ~np.isin(keys, prev)
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
