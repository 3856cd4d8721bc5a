"""Wrappers: senses for any Gymnasium MuJoCo env, and flat actions for Stable-Baselines3.

:class:`MujocoSensesWrapper` gives a Gymnasium MuJoCo env (``Reacher-v5``, ``Hopper-v5``,
...) mindloop's ``image`` and contact-``audio`` observations, next to its own observation
vector (as ``proprio``)::

    env = MujocoSensesWrapper(gymnasium.make("Hopper-v5"))   # obs: Dict(proprio, image, audio)

:class:`DictActionWrapper` puts such an env's ``Box`` actions under a ``muscles`` key in
[0, 1], so ``train.py`` can train a mindloop agent in it (mindloop agents read and act through
``Dict`` spaces). :class:`FlattenActionWrapper` turns a single-key ``Dict`` action space into
that key's space (SB3 has no ``Dict`` actions)::

    env = FlattenActionWrapper(gymnasium.make("mindloop/MuscleReach-v0"))  # Box(0, 1, (6,))
    PPO("MultiInputPolicy", env)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.audio import AudioConfig, AudioSynth, ContactTracker, as_audio_config
from envs.base import check_choice, check_positive
from envs.rendering import OffscreenRenderer

SENSE_KEYS = ("image", "audio")


class MujocoSensesWrapper(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Adds ``image`` (a camera frame) and ``audio`` (contact impacts, stereo) observations.

    The wrapped env must be a Gymnasium ``MujocoEnv`` (it has ``model``, ``data``,
    ``frame_skip`` and ``_step_mujoco_simulation``). Its own observation becomes the
    ``proprio`` key (or, if it already is a ``Dict``, its keys are kept).

    * ``image`` ``Box(0, 255, (image_size, image_size, 3), uint8)`` from ``camera`` (a camera
      name or id of the model); by default the env's own render camera: a free camera with
      the env's ``default_camera_config``, tracking ``trackbodyid`` when it names a body.
      Shadows and multisampling are off for this camera only (they cost ~20 ms a frame in
      software GL); the env's own ``render()`` is unchanged.
    * ``audio`` ``Box(-1, 1, (2, 16 kHz x dt), float32)``: an impact sound at every contact
      onset (a foot hitting the floor, a ball bouncing), loudness following the impulse, heard
      by two ears on that camera; silence (exact zeros) in a model whose geoms cannot collide
      (Reacher's all have ``contype=0``). To see every contact onset, the wrapper
      steps the physics one substep at a time through the env's own
      ``_step_mujoco_simulation`` (same result, a little slower); it restores it on close.
    """

    def __init__(
        self,
        env: gym.Env,
        keys: Sequence[str] = SENSE_KEYS,
        image_size: int = 64,
        camera: str | int | None = None,
        audio: AudioConfig | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, keys=keys, image_size=image_size, camera=camera, audio=audio
        )
        super().__init__(env)
        base = env.unwrapped
        for attr in ("model", "data", "frame_skip", "_step_mujoco_simulation"):
            if not hasattr(base, attr):
                raise ValueError(
                    f"MujocoSensesWrapper needs a Gymnasium MujocoEnv; {type(base).__name__} "
                    f"has no {attr!r}"
                )
        if isinstance(keys, str):  # "image" would be read as the keys "i", "m", ...
            keys = tuple(k.strip() for k in keys.split(","))
        for key in keys:
            check_choice("sense key", key, SENSE_KEYS)
        check_positive("image_size", image_size)
        self.keys = tuple(keys)
        self.image_size = int(image_size)
        self._base = base
        self.model: mujoco.MjModel = base.model
        self.data: mujoco.MjData = base.data
        self._camera = self._make_camera(camera)
        self._renderer: OffscreenRenderer | None = None
        self._cam_scene = mujoco.MjvScene(self.model, maxgeom=1)
        self._synth = AudioSynth(as_audio_config(audio), base.dt)
        self._contacts = ContactTracker(self.model)
        # impact noise draws from the wrapper's own stream (seeded by reset's seed), never from
        # the env's np_random: adding senses must not change the env's episodes
        self._noise_seeds = np.random.SeedSequence()
        self._rng = np.random.default_rng(0)
        self._original_step = None
        if "audio" in self.keys:
            self._patch_stepping()

        inner = env.observation_space
        out = dict(inner.spaces) if isinstance(inner, spaces.Dict) else {"proprio": inner}
        if "image" in self.keys:
            out["image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        if "audio" in self.keys:
            out["audio"] = spaces.Box(-1.0, 1.0, (2, self._synth.samples_per_step), np.float32)
        self.observation_space = spaces.Dict(out)

    def _make_camera(self, camera: str | int | None) -> mujoco.MjvCamera:
        if camera is not None:
            return OffscreenRenderer._make_camera(self.model, camera)
        renderer = getattr(self._base, "mujoco_renderer", None)
        cam_id = getattr(renderer, "camera_id", -1)
        if cam_id is not None and cam_id >= 0:
            return OffscreenRenderer._make_camera(self.model, int(cam_id))
        # Mirror Gymnasium's default free camera, then apply the env's camera config.
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = np.median(self.data.geom_xpos, axis=0)
        cam.distance = self.model.stat.extent
        for key, value in (getattr(renderer, "default_cam_config", None) or {}).items():
            if isinstance(value, np.ndarray):
                getattr(cam, key)[:] = value
            else:
                setattr(cam, key, value)
        if cam.trackbodyid > 0:
            cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING  # follow the robot, as videos do
        return cam

    def _patch_stepping(self) -> None:
        """Step one substep at a time through the env's own method, noting contact onsets."""
        base = self._base
        original = base._step_mujoco_simulation
        h = self.model.opt.timestep

        def step_with_contacts(ctrl: Any, n_frames: int) -> None:
            for k in range(n_frames):
                original(ctrl, 1)
                self._contacts.after_substep(self.data, (k + 1) * h)

        # Remember whether the env had its own instance attribute, to undo exactly on close.
        self._original_step = vars(base).get("_step_mujoco_simulation", original)
        self._had_instance_step = "_step_mujoco_simulation" in vars(base)
        base._step_mujoco_simulation = step_with_contacts

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:  # the same seeds give the same sounds
            self._noise_seeds = np.random.SeedSequence(seed)
        self._rng = np.random.default_rng(self._noise_seeds.spawn(1)[0])
        self._contacts.reset()
        self._contacts.prime(self.data)
        self._synth.reset()
        self._synth.begin(self.data.time - self._base.dt)
        return self.observation(obs, started=False), info

    def step(self, action: Any):
        self._synth.begin(self.data.time)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs, started=True), reward, terminated, truncated, info

    def observation(self, observation: Any, started: bool = True) -> dict[str, np.ndarray]:
        out = dict(observation) if isinstance(observation, dict) else {"proprio": observation}
        if "image" in self.keys:
            if self._renderer is None:
                self._renderer = OffscreenRenderer(
                    self.model, self.image_size, self.image_size, self._camera
                )
            out["image"] = self._renderer.render(self.data)
            self._restore_env_gl_context()
        if "audio" in self.keys:
            out["audio"] = self._audio()
        return out

    def _restore_env_gl_context(self) -> None:
        """Make the env's own viewer's GL context current again. Gymnasium's
        ``MujocoRenderer`` makes its context current only when it has several viewers, so
        after this wrapper's frame its ``render()`` drew into the wrong context (blank
        frames from the first step on). The renderer itself restores a foreign EGL/glfw
        context after each frame; this covers OSMesa too."""
        viewer = getattr(getattr(self._base, "mujoco_renderer", None), "viewer", None)
        if viewer is not None and hasattr(viewer, "make_context_current"):
            viewer.make_context_current()

    def _audio(self) -> np.ndarray:
        mujoco.mjv_updateCamera(self.model, self.data, self._camera, self._cam_scene)
        eye = self._cam_scene.camera[0]
        right = np.cross(eye.forward, eye.up)
        self._synth.ears.set_pose(np.array(eye.pos), right / (np.linalg.norm(right) + 1e-12))
        t, pos, impulse, freq = self._contacts.pop_events()
        if len(t):
            self._synth.add_impacts(t, pos, impulse, freq, self._rng)
        return self._synth.end()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._original_step is not None:
            if self._had_instance_step:
                self._base._step_mujoco_simulation = self._original_step
            else:
                del self._base._step_mujoco_simulation  # the class's method shows again
            self._original_step = None
        super().close()


class DictActionWrapper(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Puts a ``Box`` action space under one ``Dict`` key, in mindloop's muscle units [0, 1]
    (the inverse of :class:`FlattenActionWrapper`), so a mindloop agent can act in a
    Gymnasium MuJoCo env: its action heads are built per ``Dict`` key, and a bounded ``Box``
    gets a Beta distribution on [0, 1]. The env receives ``low + a (high - low)``::

        env = DictActionWrapper(MujocoSensesWrapper(gymnasium.make("Hopper-v5")))
        env.action_space   # Dict('muscles': Box(0.0, 1.0, (3,), float32))
    """

    def __init__(self, env: gym.Env, key: str = "muscles") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, key=key)
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, spaces.Box) or not (
            np.all(np.isfinite(inner.low)) and np.all(np.isfinite(inner.high))
        ):
            raise ValueError(
                f"DictActionWrapper needs a Box action space with finite bounds, got {inner}"
            )
        self.key = key
        self._inner = inner
        self.action_space = spaces.Dict({key: spaces.Box(0.0, 1.0, inner.shape, np.float32)})

    def action(self, action: dict[str, Any]) -> np.ndarray:
        a = np.clip(np.asarray(action[self.key], dtype=np.float64), 0.0, 1.0)
        low, high = self._inner.low, self._inner.high
        return (low + a * (high - low)).astype(self._inner.dtype)

    def reverse_action(self, action: np.ndarray) -> dict[str, np.ndarray]:
        low, high = self._inner.low, self._inner.high
        unit = (np.asarray(action, dtype=np.float64) - low) / (high - low)
        return {self.key: unit.astype(np.float32)}


class FlattenActionWrapper(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Exposes the only space of a single-key ``Dict`` action space (for SB3 and friends).

    ``rescale=True`` also maps a ``Box`` to ``[-1, 1]`` (SB3's PPO samples Gaussian actions
    and recommends symmetric, normalized boxes): the env gets ``low + (a + 1) (high - low)/2``.
    ``expert_action()`` returns the wrapped env's expert action in the same flat form.
    """

    def __init__(self, env: gym.Env, rescale: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, rescale=rescale)
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Dict) or len(space.spaces) != 1:
            keys = list(space.spaces) if isinstance(space, spaces.Dict) else type(space).__name__
            raise ValueError(
                f"FlattenActionWrapper needs a Dict action space with exactly one key, got {keys}"
            )
        ((self.key, inner),) = space.spaces.items()
        self.rescale = bool(rescale) and isinstance(inner, spaces.Box)
        self._inner = inner
        if self.rescale:
            self.action_space = spaces.Box(-1.0, 1.0, inner.shape, np.float32)
        else:
            self.action_space = inner

    def action(self, action: Any) -> dict[str, Any]:
        if self.rescale:
            a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
            low, high = self._inner.low, self._inner.high
            action = (low + (a + 1.0) * 0.5 * (high - low)).astype(self._inner.dtype)
        return {self.key: action}

    def reverse_action(self, action: dict[str, Any]) -> Any:
        flat = action[self.key]
        if self.rescale:
            low, high = self._inner.low, self._inner.high
            return (2.0 * (np.asarray(flat) - low) / (high - low) - 1.0).astype(np.float32)
        return flat

    def expert_action(self) -> Any:
        """The expert's action for the current state, as this wrapper's flat action."""
        return self.reverse_action(self.env.unwrapped.expert_action())
