"""The base of every mindloop world: a MuJoCo scene, its senses, its clock.

A task subclasses :class:`MindloopEnv`, builds its scene as an ``mujoco.MjSpec`` and fills in
the hooks (``_reset_task``, ``_apply_action``, ``_task_step``, ``_tones``, ``_proprio``,
``_touch``, ``expert_action``). The base class owns what every task shares:

* observation spaces (README, Worlds): ``image`` ``(H, W, 3)`` uint8 from the task camera,
  ``audio`` ``(2, S)`` float32 in [-1, 1] (the stereo samples of the last control step,
  ``S = 16 kHz x dt``), ``proprio``/``touch`` float32, ``text`` ``MultiDiscrete([V] * L)``;
  ``obs_keys`` drops keys a run does not need (no image: no rendering cost at all);
* physics stepping (``frame_skip`` MuJoCo steps per control step) with contact-onset
  tracking for impact sounds, done per substep only when audio is wanted;
* ``render()`` for ``render_mode="rgb_array"`` at ``render_size`` (muscles drawn, hidden task
  objects shown faintly), independent of the agent's ``image_size``;
* ``get_state()`` / ``set_state()`` for replaying recorded episodes;
* the episode clock: ``truncated`` when ``max_steps`` control steps have passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs import vocab
from envs.audio import AudioConfig, AudioSynth, ContactTracker, as_audio_config
from envs.rendering import OffscreenRenderer

Obs = dict[str, np.ndarray]
Action = dict[str, Any]

STANDARD_OBS_KEYS: tuple[str, ...] = ("image", "audio", "proprio", "touch", "text")
PROPRIO_LIMIT = 100.0
"""Proprio values are clipped here (never reached in practice: angles in rad, speeds in
rad/s or muscle ranges/s, normalized lengths/forces/activations ~[0, 2]); finite bounds keep
the spaces checkable and normalizable."""
TOUCH_LIMIT = 1000.0
"""Touch sensors read newtons, clipped here."""
HIDDEN_GROUP = 3
"""Geom group of things the agent must not see (drawn in ``render()`` videos only)."""
OFF_GROUP = 5
"""Geom group of things switched off for this episode (never drawn)."""
_STATE_SIG = mujoco.mjtState.mjSTATE_INTEGRATION  # qpos, qvel, act, ctrl, mocap, eq_active, ...


def clip_(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip ``x`` in place and return it (two ufunc calls: ``np.clip``'s Python wrapper
    costs several microseconds per call, which adds up every control step)."""
    np.maximum(x, low, out=x)
    return np.minimum(x, high, out=x)


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, choices))}")


def _obs_key_tuple(obs_keys: str | Sequence[str]) -> tuple[str, ...]:
    """``obs_keys`` as a tuple. A str is one key, or several separated by commas
    (``"proprio,touch"``): the CLI's ``--env-kwargs obs_keys proprio`` passes a str, which
    ``tuple()`` would split into letters."""
    if isinstance(obs_keys, str):
        return tuple(k.strip() for k in obs_keys.split(","))
    return tuple(obs_keys)


class MindloopEnv(gym.Env[Obs, Action]):
    """Shared machinery of the mindloop tasks (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 25}
    OBS_KEYS: ClassVar[tuple[str, ...]] = ()
    """The observation keys this task offers (``obs_keys`` picks a subset)."""
    _STATE_ATTRS: ClassVar[tuple[str, ...]] = ()
    """Task attributes saved by ``get_state()`` (beyond physics and colours)."""

    def __init__(
        self,
        spec: mujoco.MjSpec,
        *,
        frame_skip: int,
        camera: str,
        max_steps: int,
        obs_keys: Sequence[str] | None,
        image_size: int,
        render_size: int,
        render_mode: str | None,
        text_length: int,
        audio: AudioConfig | None,
        audio_info: bool,
    ) -> None:
        check_positive("image_size", image_size)
        check_positive("render_size", render_size)
        check_positive("text_length", text_length)
        check_positive("max_steps", max_steps)
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        keys = _obs_key_tuple(self.OBS_KEYS if obs_keys is None else obs_keys)
        for key in keys:
            check_choice("observation key", key, self.OBS_KEYS)
        if not keys:
            raise ValueError(f"obs_keys is empty; pick some of: {', '.join(self.OBS_KEYS)}")
        self.obs_keys = keys
        self.image_size, self.render_size = int(image_size), int(render_size)
        self.render_mode = render_mode
        self.text_length = int(text_length)
        self.max_steps = int(max_steps)
        self.frame_skip = int(frame_skip)
        self.camera = camera

        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.dt)}
        self._cam_id = self.model.camera(camera).id
        # A camera fixed to the world never moves: place the ears once per episode.
        self._cam_static = bool(
            self.model.cam_bodyid[self._cam_id] == 0
            and self.model.cam_mode[self._cam_id] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        )

        # Audio is synthesized when observed or asked for in info (for videos).
        self.audio_config = as_audio_config(audio)
        self.audio_info = bool(audio_info)
        self._audio_on = "audio" in keys or self.audio_info
        self._synth = AudioSynth(self.audio_config, self.dt)
        self._contacts = ContactTracker(self.model)
        self._eye: OffscreenRenderer | None = None
        self._video: OffscreenRenderer | None = None

        self._step_count = 0
        self._text = np.zeros(self.text_length, dtype=np.int64)
        self._text_str = ""
        self._last_audio = np.zeros((2, self._synth.samples_per_step), dtype=np.float32)
        self._audio_rng = np.random.default_rng(0)
        self._setup()
        mujoco.mj_forward(self.model, self.data)
        self.observation_space = self._make_observation_space()
        self.action_space = self._make_action_space()

    # ----------------------------------------------------------------- task hooks
    def _setup(self) -> None:
        """Look up ids in the compiled model (called once, before the spaces are made)."""

    def _make_action_space(self) -> spaces.Dict:
        raise NotImplementedError

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        """Start a new episode: set posture, objects, colours, text (``data`` is reset)."""
        raise NotImplementedError

    def _apply_action(self, action: Action) -> None:
        raise NotImplementedError

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        """After physics: ``(reward, terminated, info)`` with reward terms in ``info``."""
        raise NotImplementedError

    def _reset_info(self) -> dict[str, Any]:
        return {"is_success": False}

    def _tones(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Sounding tones ``(ids (K,), positions (K, 3), Hz (K,), level at 1 m (K,))``."""
        return None

    def _proprio(self) -> np.ndarray:
        raise NotImplementedError

    def _touch(self) -> np.ndarray:
        raise NotImplementedError

    def expert_action(self) -> Action:
        """The scripted expert's action for the current state."""
        raise NotImplementedError

    # Optional: ``expert_latent() -> np.ndarray`` (float32, fixed size per task), the
    # expert's internal variables that decide its action and that the agent cannot read off
    # one frame (the posture it heads for, the count so far). Behaviour cloning regresses
    # them from the core's state as an auxiliary target (agent/bc.py), a privileged signal
    # that training alone sees, like a teacher's latent in teacher-student distillation.

    # ----------------------------------------------------------------- spaces
    def _make_observation_space(self) -> spaces.Dict:
        out: dict[str, spaces.Space] = {}
        for key in self.obs_keys:
            if key == "image":
                shape = (self.image_size, self.image_size, 3)
                out[key] = spaces.Box(0, 255, shape, dtype=np.uint8)
            elif key == "audio":
                out[key] = spaces.Box(-1.0, 1.0, (2, self._synth.samples_per_step), np.float32)
            elif key == "proprio":
                # Sizes come from the model: one sample tells the length.
                shape = self._proprio().shape
                out[key] = spaces.Box(-PROPRIO_LIMIT, PROPRIO_LIMIT, shape, np.float32)
            elif key == "touch":
                out[key] = spaces.Box(0.0, TOUCH_LIMIT, self._touch().shape, np.float32)
            elif key == "text":
                out[key] = spaces.MultiDiscrete(np.full(self.text_length, vocab.VOCAB_SIZE))
        return spaces.Dict(out)

    # ----------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Audio noise gets its own stream, drawn once per episode, so turning audio on or off
        # never changes what else happens in an episode with the same seed.
        self._audio_rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        mujoco.mj_resetData(self.model, self.data)
        self._step_count = 0
        self._set_text("")
        self._reset_task(options)
        mujoco.mj_forward(self.model, self.data)
        self._contacts.reset()
        self._contacts.prime(self.data)
        self._synth.reset()
        self._synth.ears.set_from_camera(self.data, self._cam_id)
        # The first audio frame is the sound of the moment before t=0: tones, no impacts.
        if self._audio_on:
            self._synth.begin(self.data.time - self.dt)
        info = self._reset_info()
        info.update(self._common_info())
        return self._observe(), info

    def step(self, action: Action):
        self._apply_action(action)
        if self._audio_on:
            self._synth.begin(self.data.time)
        self._simulate()
        self._step_count += 1
        reward, terminated, info = self._task_step()
        truncated = (not terminated) and self._step_count >= self.max_steps
        obs = self._observe()
        info.update(self._common_info())
        return obs, float(reward), bool(terminated), bool(truncated), info

    def _simulate(self) -> None:
        m, d = self.model, self.data
        if self._audio_on:
            h = m.opt.timestep
            for k in range(self.frame_skip):
                mujoco.mj_step(m, d)
                self._contacts.after_substep(d, (k + 1) * h)
        else:
            mujoco.mj_step(m, d, self.frame_skip)
        # Bring positions, contacts and sensors up to date with the final state, so what
        # is seen and felt is the state a replay of get_state() would show.
        mujoco.mj_forward(m, d)

    def _observe(self) -> Obs:
        obs: Obs = {}
        keys = self.obs_keys
        if self._audio_on:
            self._last_audio = self._make_audio()
        if "image" in keys:
            obs["image"] = self._eye_renderer().render(self.data)
        if "audio" in keys:
            obs["audio"] = self._last_audio
        if "proprio" in keys:
            obs["proprio"] = clip_(self._proprio(), -PROPRIO_LIMIT, PROPRIO_LIMIT)
        if "touch" in keys:
            obs["touch"] = clip_(self._touch(), 0.0, TOUCH_LIMIT)
        if "text" in keys:
            obs["text"] = self._text.copy()
        return obs

    def _make_audio(self) -> np.ndarray:
        synth = self._synth
        if not self._cam_static:
            synth.ears.set_from_camera(self.data, self._cam_id)
        tones = self._tones()
        if tones is not None:
            synth.add_tones(*tones)
        t, pos, impulse, freq = self._contacts.pop_events()
        if len(t):
            synth.add_impacts(t, pos, impulse, freq, self._audio_rng)
        return synth.end()

    def _common_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"text_shown": self._text_str}
        if self.audio_info:
            info["audio"] = self._last_audio
        return info

    def _set_text(self, text: str) -> None:
        """Show ``text`` in the ``text`` observation (padded token ids)."""
        self._text = vocab.encode(text, self.text_length) if text else np.zeros_like(self._text)
        self._text_str = text

    # ----------------------------------------------------------------- rendering
    def _eye_renderer(self) -> OffscreenRenderer:
        if self._eye is None:
            option = mujoco.MjvOption()
            # Tendon drawing costs ~10x the rest of the scene in software GL; the agent sees
            # its arm's bones/capsules, videos show the muscles too.
            option.flags[mujoco.mjtVisFlag.mjVIS_TENDON] = False
            option.geomgroup[HIDDEN_GROUP] = 0
            option.geomgroup[OFF_GROUP] = 0
            self._eye = OffscreenRenderer(
                self.model, self.image_size, self.image_size, self.camera, option
            )
        return self._eye

    def render(self) -> np.ndarray | None:
        """A ``(render_size, render_size, 3)`` frame for videos (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() called with render_mode=None; make the env with "
                'render_mode="rgb_array" to get frames'
            )
            return None
        if self._video is None:
            option = mujoco.MjvOption()
            option.geomgroup[HIDDEN_GROUP] = 1
            option.geomgroup[OFF_GROUP] = 0
            self._video = OffscreenRenderer(
                self.model, self.render_size, self.render_size, self.camera, option
            )
        return self._video.render(self.data)

    def close(self) -> None:
        for r in (self._eye, self._video):
            if r is not None:
                r.close()
        self._eye = self._video = None

    # ----------------------------------------------------------------- replay
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to re-render this moment (what replay to video uses).

        Stepping on from a restored snapshot is not the episode's own continuation: the env's
        random streams (later distractors, targets, impact noise) and the sound still ringing
        from earlier impacts are not in it. :class:`agent.vector.ResumableEnv`'s
        ``resume_state`` adds them, and continues an episode exactly (what ``--resume`` uses).

        ``physics`` is MuJoCo's integration state (``mjSTATE_INTEGRATION``: time, qpos, qvel,
        activations, controls, mocap poses, ...), ``geom_rgba`` the per-episode colours,
        ``text`` the shown tokens, and ``task/<name>`` the task's own variables.
        """
        m, d = self.model, self.data
        physics = np.empty(mujoco.mj_stateSize(m, _STATE_SIG))
        mujoco.mj_getState(m, d, physics, _STATE_SIG)
        state = {
            "physics": physics,
            # Tasks recolour, hide (geom_group) and disable (contype) objects per episode.
            "geom_rgba": m.geom_rgba.copy(),
            "geom_group": m.geom_group.copy(),
            "geom_contype": m.geom_contype.copy(),
            "geom_conaffinity": m.geom_conaffinity.copy(),
            "text": self._text.copy(),
            "step": np.array(self._step_count),
        }
        for name in self._STATE_ATTRS:
            state[f"task/{name}"] = np.array(getattr(self, name))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`get_state` snapshot (then ``render()`` shows that moment)."""
        m, d = self.model, self.data
        mujoco.mj_setState(m, d, np.asarray(state["physics"], dtype=np.float64), _STATE_SIG)
        m.geom_rgba[:] = state["geom_rgba"]
        m.geom_group[:] = state["geom_group"]
        m.geom_contype[:] = state["geom_contype"]
        m.geom_conaffinity[:] = state["geom_conaffinity"]
        text = np.asarray(state["text"], dtype=np.int64)
        self._text = text.copy()
        self._text_str = vocab.decode(text)
        self._step_count = int(state["step"])
        for name in self._STATE_ATTRS:
            value = np.asarray(state[f"task/{name}"])
            setattr(self, name, value.item() if value.ndim == 0 else value.copy())
        mujoco.mj_forward(m, d)
        self._contacts.reset()
        self._contacts.prime(d)
        self._synth.ears.set_from_camera(d, self._cam_id)
