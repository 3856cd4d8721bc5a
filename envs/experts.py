"""Scripted experts: joint-space reaching with muscles.

:class:`MuscleReacher` turns "put the joints at ``q*``" into muscle excitations:

1. Computed-torque PD: ``tau = M(q) (w^2 (q* - q) - 2 zeta w qdot) + c(q, qdot) - passive``,
   i.e. a critically damped second-order response of natural frequency ``w`` in every joint,
   with gravity, Coriolis and joint damping cancelled (``qfrc_bias``, ``qfrc_passive``).
2. Muscles: a muscle's force is ``gain(L, V) * act + bias(L)`` (MuJoCo's force-length-velocity
   curve and passive force), and joint torque is ``R^T force`` with ``R`` the moment arms from
   ``mj_forward`` (``data.actuator_moment``). The activations come from the bounded
   least-squares problem ``min |R^T diag(gain) a - (tau - R^T bias)|^2 + reg |a|^2`` subject
   to ``0 <= a <= 1``, solved exactly by :func:`bounded_lsq` (there are more muscles than joints,
   so the small ``reg`` picks the least-effort solution, without needless co-contraction).
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np


def bounded_lsq(
    a: np.ndarray,
    b: np.ndarray,
    reg: float = 1e-2,
    lo: float = 0.0,
    hi: float = 1.0,
    max_iter: int | None = None,
) -> np.ndarray:
    """``argmin_x |a x - b|^2 + reg * s |x|^2`` subject to ``lo <= x <= hi``.

    ``s`` is the mean diagonal of ``a^T a``, so ``reg`` is relative (1e-2: the least-effort
    solution, costing ~1% of the torque, which the feedback loop corrects). Solved exactly by
    a primal active-set method (Lawson-Hanson style for box bounds): start with every
    variable at ``lo``, free the variable whose bound most blocks descent, solve the
    unconstrained problem on the free set, and step back to the first bound it crosses.
    Small dense problems only: ``a`` is ``(m, n)`` with ``n`` muscles.
    """
    n = a.shape[1]
    h = a.T @ a  # (n, n)
    h = h + reg * max(float(np.trace(h)) / n, 1e-12) * np.eye(n)
    g = a.T @ b  # (n,)
    x = np.full(n, lo, dtype=np.float64)
    free = np.zeros(n, dtype=bool)
    at_hi = np.zeros(n, dtype=bool)
    for _ in range(max_iter or 4 * n + 8):
        if free.any():
            z = x.copy()
            fixed = ~free
            z[free] = np.linalg.solve(
                h[np.ix_(free, free)], g[free] - h[np.ix_(free, fixed)] @ x[fixed]
            )
            outside = free & ((z < lo) | (z > hi))
            if outside.any():
                # Walk from x toward z until the first free variable reaches a bound.
                d = z - x
                with np.errstate(divide="ignore", invalid="ignore"):
                    limit = np.where(d < 0, (lo - x) / d, np.where(d > 0, (hi - x) / d, np.inf))
                alpha = float(np.clip(np.min(limit[outside]), 0.0, 1.0))
                x = np.clip(x + alpha * d, lo, hi)
                hit_lo = free & (x <= lo + 1e-12)
                hit_hi = free & (x >= hi - 1e-12)
                x[hit_lo], x[hit_hi] = lo, hi
                at_hi = (at_hi & ~free) | hit_hi
                free &= ~(hit_lo | hit_hi)
                continue
            x = z
        grad = h @ x - g
        # A variable held at lo could lower the cost if grad < 0; at hi if grad > 0.
        blocked = np.where(free, 0.0, np.where(at_hi, grad, -grad))
        j = int(np.argmax(blocked))
        if blocked[j] <= 1e-12 * (1.0 + abs(g).max()):
            break
        free[j] = True
        at_hi[j] = False
    return x


class MuscleReacher:
    """Muscle excitations that drive ``joints`` toward a target posture.

    ``omega`` (rad/s) sets how fast the joints converge (critically damped with
    ``zeta=1``); both are per-arm choices since a heavy arm against gravity needs more.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        joints: Sequence[str],
        omega: float = 9.0,
        zeta: float = 1.0,
        reg: float = 1e-2,
    ) -> None:
        self.model = model
        self.omega, self.zeta, self.reg = omega, zeta, reg
        jids = [model.joint(j).id for j in joints]
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in jids])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in jids])
        self.muscles = np.flatnonzero(model.actuator_dyntype == mujoco.mjtDyn.mjDYN_MUSCLE)
        self._moment = np.zeros((model.nu, model.nv))
        self._mass = np.zeros((model.nv, model.nv))

    def muscle_gain_bias(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """Per-muscle ``(gain, bias)``: force = gain * activation + bias (both usually < 0)."""
        m = self.model
        gain = np.empty(len(self.muscles))
        bias = np.empty(len(self.muscles))
        for k, i in enumerate(self.muscles):
            length, vel = data.actuator_length[i], data.actuator_velocity[i]
            lr, acc0 = m.actuator_lengthrange[i], m.actuator_acc0[i]
            gain[k] = mujoco.mju_muscleGain(length, vel, lr, acc0, m.actuator_gainprm[i, :9])
            bias[k] = mujoco.mju_muscleBias(length, lr, acc0, m.actuator_biasprm[i, :9])
        return gain, bias

    def __call__(self, data: mujoco.MjData, q_target: np.ndarray) -> np.ndarray:
        """Excitations ``(n_muscles,)`` in [0, 1] for the state in ``data`` (after a forward)."""
        m = self.model
        dofs = self.dof_adr
        q = data.qpos[self.qpos_adr]
        qd = data.qvel[dofs]
        w, z = self.omega, self.zeta
        mujoco.mj_fullM(m, data, self._mass)
        acc = w * w * (np.asarray(q_target) - q) - 2.0 * z * w * qd
        tau = self._mass[np.ix_(dofs, dofs)] @ acc + data.qfrc_bias[dofs] - data.qfrc_passive[dofs]
        mujoco.mju_sparse2dense(
            self._moment, data.actuator_moment, data.moment_rownnz, data.moment_rowadr,
            data.moment_colind,
        )  # fmt: skip
        r = self._moment[np.ix_(self.muscles, dofs)]  # (n_muscles, n_joints)
        gain, bias = self.muscle_gain_bias(data)
        a_mat = r.T * gain[None, :]  # (n_joints, n_muscles)
        rhs = tau - r.T @ bias
        return bounded_lsq(a_mat, rhs, reg=self.reg)
