"""Muscle-driven arms (the "muscle model" argument of the reaching tasks), built as ``MjSpec``.

Each builder returns an :class:`Arm`: an editable spec holding the arm, its stage (lights,
the ``head`` camera the agent sees and hears from) and a ``hand`` site with a touch sensor,
plus what tasks need to place reachable targets. Tasks add their objects to the spec and
compile it. Builders are registered by name with :func:`register_arm`::

    @register_arm("myarm")
    def my_arm() -> Arm: ...

* ``capsule``: the light six-muscle planar arm of ``assets/capsule_arm.xml`` (fast default).
* ``myoelbow``: MyoSuite's myoElbow (2 joints, 6 muscles: triceps x3, biceps x2,
  brachialis) from the ``myo-sim`` package, with its real bone meshes, moving in a vertical
  plane against gravity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import mujoco
import numpy as np

from envs.registry import Registry

OBJECT_BIT = 2
"""contype/conaffinity bit shared by the hand and task objects (and nothing else)."""


@dataclass
class Arm:
    """An arm in its stage, ready for a task to add objects and compile."""

    name: str
    spec: mujoco.MjSpec
    joints: tuple[str, ...]
    target_qrange: np.ndarray
    """``(n_joints, 2)`` joint box (radians) that reachable targets are sampled from."""
    home_qpos: np.ndarray
    frame_skip: int
    """Physics steps per control step (control at 25 Hz for both arms)."""
    object_radius: float
    """Radius of the spheres tasks use as targets, scaled to the arm."""
    min_separation: float
    """Minimum distance between two task objects (and between a new target and the hand)."""
    success_radius: float
    """How close (m) the hand must come to a target point to count as reaching it."""
    hand_radius: float
    """Radius of the hand's collision sphere (geom ``hand``, contype bit :data:`OBJECT_BIT`)."""
    plane_normal: np.ndarray
    """Unit normal of the hand's plane of motion. Objects sit just beyond that plane so the
    hand grazes them (the contact pushes along the normal, which the joints absorb): the
    hand feels a target under it without being blocked by it."""
    home_noise: float = 0.1
    hand_site: str = "hand"
    touch_sensor: str = "hand_touch"
    camera: str = "head"
    cue_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """Where tasks show cues (a light visible to the head camera, off the workspace)."""
    side_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    """World direction of the head camera's image-right (distractors appear to the sides)."""
    park_pos: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, -5.0]))
    """Where hidden objects wait (out of every camera's view)."""


ArmBuilder = Callable[[], Arm]
ARMS: Registry[ArmBuilder] = Registry("arm (muscle model)")
register_arm = ARMS.register
"""Decorator adding an arm builder under a name: ``@register_arm("myarm")``."""


def make_arm(name: str) -> Arm:
    """A fresh :class:`Arm` by name; an unknown name is a one-line error listing the choices."""
    return ARMS.get(name)()


def _sweep_lengthranges(spec: mujoco.MjSpec, points: int = 41) -> np.ndarray:
    """``(nu, 2)`` min/max tendon lengths of the muscles over a grid of the joint ranges.

    Exact for tendons that depend only on the joint angles (no free bodies in the path), and
    robust where MuJoCo's simulation-based estimate fails to converge on wrapping tendons.
    """
    model = spec.compile()
    data = mujoco.MjData(model)
    grids = [np.linspace(lo, hi, points) for lo, hi in model.jnt_range[: model.njnt]]
    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, model.njnt)
    lengths = np.empty((len(mesh), model.nu))
    tendon = model.actuator_trnid[:, 0]
    for i, q in enumerate(mesh):
        data.qpos[: model.njnt] = q
        mujoco.mj_fwdPosition(model, data)
        lengths[i] = data.ten_length[tendon]
    return np.stack([lengths.min(0), lengths.max(0)], axis=1)


@cache
def _capsule_lengthranges() -> np.ndarray:
    return _sweep_lengthranges(_capsule_spec())


def _capsule_spec() -> mujoco.MjSpec:
    xml = resources.files("envs").joinpath("assets/capsule_arm.xml").read_text()
    return mujoco.MjSpec.from_string(xml)


@register_arm("capsule")
def capsule_arm() -> Arm:
    """The light planar arm: 2 joints, 6 muscles, ~140k physics steps/s, 25 Hz control."""
    spec = _capsule_spec()
    for actuator, lr in zip(spec.actuators, _capsule_lengthranges(), strict=True):
        actuator.lengthrange = lr
    return Arm(
        name="capsule",
        spec=spec,
        joints=("shoulder", "elbow"),
        target_qrange=np.deg2rad([[-70.0, 70.0], [20.0, 115.0]]),
        home_qpos=np.deg2rad([0.0, 70.0]),
        frame_skip=8,  # 8 x 5 ms = 40 ms
        object_radius=0.045,
        min_separation=0.15,
        success_radius=0.06,
        hand_radius=0.028,
        plane_normal=np.array([0.0, 0.0, -1.0]),  # objects lie on the table under the hand
        cue_pos=np.array([0.62, 0.03, 0.15]),
        side_axis=np.array([0.0, -1.0, 0.0]),
    )


@register_arm("myoelbow")
def myoelbow_arm() -> Arm:
    """MyoSuite's myoElbow (myo-sim ``myoelbow_2dof6muscles``): real bones and muscles.

    The decorative full-body skeleton is removed (it never moves and is ~100k of the model's
    211k mesh faces); a side camera, lights, a backdrop and a hand site/collider are added.
    """
    import myo_sim

    spec = myo_sim.load_spec("myoelbow_2dof")
    spec.delete(spec.body("body_decor"))
    q = spec.visual.quality
    q.shadowsize, q.offsamples, q.numslices, q.numstacks, q.numquads = 0, 0, 12, 6, 1
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    world = spec.worldbody
    world.add_light(
        name="sun", pos=[1.0, 0.0, 3.0], dir=[-0.3, 0.0, -1.0],
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL, diffuse=[0.5, 0.5, 0.5], castshadow=False,
    )  # fmt: skip
    # A dark backdrop behind the arm's plane of motion (the y-z plane at x ~ -0.2).
    world.add_geom(
        name="backdrop", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.1],
        pos=[-0.6, 0.0, 1.2], zaxis=[1.0, 0.0, 0.0], rgba=[0.22, 0.24, 0.27, 1.0],
        contype=0, conaffinity=0,
    )  # fmt: skip
    # The head looks at the arm from its side (+x), image right = +y.
    world.add_camera(name="head", pos=[1.2, 0.06, 1.05], xyaxes=[0, 1, 0, 0, 0, 1], fovy=44)
    forearm = spec.body("r_ulna_radius_hand")
    palm = [0.02, -0.31, 0.05]  # centre of the metacarpals in the forearm frame
    forearm.add_site(name="hand", pos=palm, size=[0.035, 0, 0], group=4)
    forearm.add_geom(
        name="hand", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.03, 0, 0], pos=palm,
        contype=OBJECT_BIT, conaffinity=OBJECT_BIT, condim=1, group=4, mass=0.0,
        rgba=[0.9, 0.9, 0.9, 0.0],
    )  # fmt: skip
    spec.add_sensor(
        name="hand_touch", type=mujoco.mjtSensor.mjSENS_TOUCH,
        objtype=mujoco.mjtObj.mjOBJ_SITE, objname="hand",
    )  # fmt: skip
    return Arm(
        name="myoelbow",
        spec=spec,
        joints=("r_shoulder_elev", "r_elbow_flex"),
        # Postures the muscles can hold against gravity (the static least-squares residual is
        # zero over this box; higher shoulder elevations are beyond the biarticular muscles).
        target_qrange=np.array([[-0.65, -0.1], [0.2, 1.9]]),
        home_qpos=np.array([-0.4, 1.0]),
        frame_skip=20,  # 20 x 2 ms = 40 ms
        object_radius=0.045,
        min_separation=0.2,
        success_radius=0.07,
        hand_radius=0.03,
        plane_normal=np.array([1.0, 0.0, 0.0]),  # objects float between the hand and the head
        cue_pos=np.array([-0.2, -0.05, 1.3]),
        side_axis=np.array([0.0, 1.0, 0.0]),
    )
