"""The senses carry information: impacts sound, tones are heard from their side, target
colours are in the image, instructions name the object; plus the audio synthesis itself,
the muscle expert's solver, the wrappers and the GL backend choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs
from envs import gl, vocab
from envs.audio import AudioConfig, AudioSynth, ContactTracker
from envs.count_answer import QUESTION
from envs.experts import bounded_lsq
from envs.reach import COLOR_RGBA
from envs.wrappers import DictActionWrapper, FlattenActionWrapper, MujocoSensesWrapper


def energy(audio: np.ndarray) -> np.ndarray:
    """Per-channel energy ``(2,)`` of a ``(2, S)`` buffer."""
    return (audio.astype(np.float64) ** 2).sum(axis=1)


# ---------------------------------------------------------------- hearing
def test_impacts_make_sound_and_silence_is_exact_zero() -> None:
    with gym.make(
        "mindloop/CountAnswer-v0", min_events=2, max_events=2, obs_keys=("audio",)
    ) as env:
        obs, _ = env.reset(seed=0)
        u = env.unwrapped
        first_release = int(u._release_steps[:2].min())
        loud = []
        for t in range(1, u.watch_steps + 1):
            obs, *_ = env.step({"text": 0})
            e = energy(obs["audio"]).sum()
            if t < first_release + 3:  # nothing can have landed yet (a fall takes ~11 steps)
                assert e == 0.0, f"sound at step {t} before any ball could land"
            loud.append(e)
    # Two balls landed: at least two clearly audible steps.
    assert sum(e > 1.0 for e in loud) >= 2


def drop_energy(height: float) -> float:
    """Total sound energy of one ball dropped from ``height`` onto a floor."""
    model = mujoco.MjModel.from_xml_string(f"""
        <mujoco><option timestep="0.002"/><worldbody>
          <geom type="plane" size="2 2 .1"/><camera name="ear" pos="0 -1 0.3" xyaxes="1 0 0 0 0 1"/>
          <body pos="0 0 {height}"><freejoint/><geom type="sphere" size="0.03" mass="0.05"/></body>
        </worldbody></mujoco>""")
    data = mujoco.MjData(model)
    synth, tracker = AudioSynth(AudioConfig(), dt=0.04), ContactTracker(model)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(30):
        synth.begin(data.time)
        for k in range(20):
            mujoco.mj_step(model, data)
            tracker.after_substep(data, (k + 1) * 0.002)
        synth.ears.set_from_camera(data, 0)
        synth.add_impacts(*tracker.pop_events(), rng)
        total += energy(synth.end()).sum()
    return total


def test_impact_loudness_follows_the_impulse() -> None:
    low, high = drop_energy(0.1), drop_energy(0.6)
    assert low > 0 and high > 1.5 * low


def sound_reach_at(side: float) -> np.ndarray:
    """Audio of one step with SoundReach's hidden target moved to image-``side`` (-1 left)."""
    with gym.make("mindloop/SoundReach-v0", obs_keys=("audio",)) as env:
        env.reset(seed=0)
        u = env.unwrapped
        arm = u.arm
        head = u.data.cam_xpos[u._cam_id]
        # A reachable point well to one side: the shoulder swung toward image left or right.
        for swing in (1.0, -1.0):
            q = np.deg2rad([60.0 * swing, 60.0])
            point = u._fk_point(q)
            if np.sign((point - head) @ arm.side_axis) == side:
                break
        u._show_object(0, q, point, color=0, hidden=True)
        obs, *_ = env.step({"muscles": np.zeros(6, np.float32)})
        return obs["audio"]


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_tone_is_louder_and_earlier_at_the_near_ear(side: float) -> None:
    audio = sound_reach_at(side)
    left, right = energy(audio)
    near, far = (left, right) if side < 0 else (right, left)
    # The head looks down on the table, so sources are ~25 degrees off the midline: a
    # modest but clear level difference (energy ratio ~1.3-1.7).
    assert near > 1.15 * far, (left, right)
    # Interaural time difference: the far ear hears the tone later. ``roll(right, lag)``
    # matches ``left`` at ``lag = -(right ear's delay)``, within half a 440 Hz period.
    lags = np.arange(-10, 11)
    a, b = audio[0].astype(np.float64), audio[1].astype(np.float64)
    xcorr = [np.dot(a[20:-20], np.roll(b, lag)[20:-20]) for lag in lags]
    best = lags[int(np.argmax(xcorr))]
    assert (best < 0) if side < 0 else (best > 0), best


def test_level_and_delay_follow_the_ear_geometry() -> None:
    cfg = AudioConfig()
    synth = AudioSynth(cfg, dt=0.04)
    synth.ears.set_pose(np.zeros(3), np.array([1.0, 0.0, 0.0]))  # right ear at +x
    synth.begin(0.0)
    synth.add_tones(np.array([0]), np.array([[2.0, 0.0, 0.0]]), np.array([500.0]), np.array([1.0]))
    audio = synth.end()
    left, right = np.abs(audio).max(axis=1)
    # Straight to the right, 2 m away: the left ear is 0.18 m farther and in the head's shadow.
    expected = (1.0 - cfg.head_shadow) * (2.0 - 0.09) / (2.0 + 0.09)
    assert left / right == pytest.approx(expected, rel=0.02)
    silence = AudioSynth(cfg, dt=0.04)
    silence.begin(0.0)
    assert not silence.end().any()


def test_tones_are_phase_continuous_across_steps() -> None:
    with gym.make("mindloop/SoundReach-v0", obs_keys=("audio",)) as env:
        env.reset(seed=0)
        a, *_ = env.step({"muscles": np.zeros(6, np.float32)})
        b, *_ = env.step({"muscles": np.zeros(6, np.float32)})
    joined = np.concatenate([a["audio"][0], b["audio"][0]])
    # No click at the boundary: the jump there is like any other sample-to-sample change.
    steps = np.abs(np.diff(joined))
    assert steps[len(a["audio"][0]) - 1] <= 1.05 * steps.max()


# ---------------------------------------------------------------- seeing
def color_pixels(image: np.ndarray, color: str) -> int:
    """Pixels whose colour points the way of ``color``'s RGB (shading changes brightness)."""
    rgb = image.reshape(-1, 3).astype(np.float64)
    ref = np.array(COLOR_RGBA[color][:3])
    cos = rgb @ ref / (np.linalg.norm(rgb, axis=1) * np.linalg.norm(ref) + 1e-9)
    return int(((cos > 0.97) & (rgb.max(axis=1) > 60)).sum())


@pytest.mark.parametrize("color", vocab.COLORS)
def test_target_colour_is_in_the_image(color: str) -> None:
    with gym.make("mindloop/MuscleReach-v0", target_color=color, obs_keys=("image",)) as env:
        for seed in range(8):  # wherever the target is, the camera sees it
            obs, _ = env.reset(seed=seed)
            assert color_pixels(obs["image"], color) >= 4, seed
        env.unwrapped._hide_object(0)
        mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
        assert color_pixels(env.unwrapped._observe()["image"], color) == 0


def test_sound_target_is_invisible_but_shown_in_videos() -> None:
    with gym.make("mindloop/SoundReach-v0", render_mode="rgb_array") as env:
        obs, _ = env.reset(seed=0)
        color = vocab.COLORS[int(env.unwrapped._obj_color[0])]
        assert color_pixels(obs["image"], color) == 0
        assert color_pixels(env.render(), color) > 0


def test_cue_recall_shows_the_cue_then_hides_it() -> None:
    with gym.make("mindloop/CueRecall-v0", cue="color", distractor_rate=0.0, delay_steps=10) as env:
        obs, info = env.reset(seed=2)
        assert color_pixels(obs["image"], info["cue"]) >= 2
        for _ in range(env.unwrapped.cue_steps):
            obs, _, _, _, info = env.step({"muscles": np.zeros(6, np.float32)})
        assert info["phase"] == "delay" and color_pixels(obs["image"], info["cue"]) == 0


def test_cue_recall_cue_stays_is_the_visually_guided_control() -> None:
    kwargs = {"cue": "color", "distractor_rate": 0.0, "delay_steps": 10, "cue_stays": True}
    with gym.make("mindloop/CueRecall-v0", **kwargs) as env:
        for seed in (2, 3):  # the light is switched back on at every reset
            obs, info = env.reset(seed=seed)
            shown = color_pixels(obs["image"], info["cue"])
            for _ in range(env.unwrapped.cue_steps + 5):
                obs, _, _, _, info = env.step({"muscles": np.zeros(6, np.float32)})
            assert info["phase"] == "delay" and color_pixels(obs["image"], info["cue"]) == shown


def _balls_at_reach(env: gym.Env, seed: int) -> tuple[np.ndarray, list[str], int, str]:
    """Run one episode to its first reach frame: ball points (n, 3), colours, goal, cue."""
    _, info = env.reset(seed=seed)
    u = env.unwrapped
    for _ in range(u.reach_start):
        _, _, _, _, info = env.step({"muscles": np.zeros(6, np.float32)})
    assert info["phase"] == "reach"
    colors = [vocab.COLORS[c] for c in u._obj_color]
    return u._obj_point.copy(), colors, u._goal, info["cue"]


@pytest.mark.parametrize("arm", ["capsule", "myoelbow"])
def test_cue_recall_slots_layout_moves_only_the_colours(arm: str) -> None:
    """``layout="slots"``: the balls show at the same well-spread places every episode (and
    in every env), the cued colour's place and the colours change, the goal is the cued one."""
    kwargs = {"delay_steps": 2, "layout": "slots", "arm": arm, "obs_keys": ("proprio",)}
    with (
        gym.make("mindloop/CueRecall-v0", **kwargs) as env,
        gym.make("mindloop/CueRecall-v0", **kwargs) as other,
    ):
        u = env.unwrapped
        episodes = [_balls_at_reach(env, seed) for seed in range(8)]
        places = {tuple(np.round(p, 9).ravel()) for p, *_ in episodes}
        assert len(places) == 1  # the same places every episode
        np.testing.assert_allclose(_balls_at_reach(other, 99)[0], episodes[0][0])  # every env
        assert len({goal for _, _, goal, _ in episodes}) > 1  # the cued ball's place varies
        assert len({tuple(c) for _, c, _, _ in episodes}) > 1  # and the colours do
        for _, colors, goal, cue in episodes:
            assert colors[goal] == cue and colors.count(cue) == 1
        # spread: apart from each other and from the hand's home by the arm's separation
        points = episodes[0][0]
        home = u._fk_point(u.arm.home_qpos)
        every = np.vstack([points, home])
        gaps = np.linalg.norm(every[:, None] - every[None], axis=-1)
        assert gaps[np.triu_indices(len(every), 1)].min() >= u.arm.min_separation
    with gym.make("mindloop/CueRecall-v0", delay_steps=2, arm=arm) as env:
        first = _balls_at_reach(env, 0)[0]
        assert not np.allclose(first, _balls_at_reach(env, 1)[0])  # the default: random places


def test_cue_recall_fixed_layout_moves_only_the_cue() -> None:
    """``layout="fixed"``: the slots' places, each always in its own colour; the cue is one of
    those colours, so the cue alone says where to reach (the memory test on its own)."""
    kwargs = {"delay_steps": 2, "layout": "fixed", "obs_keys": ("proprio",)}
    with gym.make("mindloop/CueRecall-v0", **kwargs) as env:
        with gym.make("mindloop/CueRecall-v0", **{**kwargs, "layout": "slots"}) as slots:
            places = _balls_at_reach(slots, 0)[0]
        episodes = [_balls_at_reach(env, seed) for seed in range(10)]
        n = env.unwrapped.num_objects
        for points, colors, goal, cue in episodes:
            np.testing.assert_allclose(points, places)
            assert colors == list(vocab.COLORS[:n]) and colors[goal] == cue
        assert {cue for *_, cue in episodes} == set(vocab.COLORS[:n])


@pytest.mark.parametrize("arm", ["capsule", "myoelbow"])
def test_cue_recall_fixed_places_are_each_reachable(arm: str) -> None:
    """A fixed place the expert cannot reach (or reaches only by dwelling on another ball on
    the way) would fail its cue in every episode: the expert succeeds for every cue."""
    kwargs = {"delay_steps": 2, "layout": "fixed", "arm": arm, "obs_keys": ("proprio",)}
    with gym.make("mindloop/CueRecall-v0", **kwargs) as env:
        u = env.unwrapped
        solved: dict[int, list[bool]] = {}
        for seed in range(12):
            env.reset(seed=seed)
            done, info = False, {}
            while not done:
                _, _, term, trunc, info = env.step(u.expert_action())
                done = term or trunc
            solved.setdefault(u._goal, []).append(bool(info["is_success"]))
    assert sorted(solved) == list(range(u.num_objects))
    assert all(all(runs) for runs in solved.values()), solved


def test_cue_recall_layout_with_no_room_for_its_places_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from envs import cue_recall

    monkeypatch.setattr(cue_recall, "_SLOT_CANDIDATES", 1)  # one candidate: no second place
    with pytest.raises(ValueError, match=r"cannot place 3 balls on the capsule arm.*fewer"):
        gym.make("mindloop/CueRecall-v0", layout="slots")


# seed 0's balls at the first reach frame, from the code before the layout option (9c6699f)
PINNED_POINTS = [
    [0.1521893, 0.3757695, 0.1],
    [-0.110925, 0.3104299, 0.1],
    [0.2994636, -0.1024704, 0.1],
]
PINNED_COLORS, PINNED_GOAL, PINNED_CUE = ["red", "yellow", "green"], 0, "red"


def test_cue_recall_random_layout_draws_as_before() -> None:
    """The default layout's episodes are those of the version before the layout option
    (recorded datasets and benchmark seeds stay valid): the balls of seed 0, pinned."""
    with gym.make("mindloop/CueRecall-v0", delay_steps=2, obs_keys=("proprio",)) as env:
        points, colors, goal, cue = _balls_at_reach(env, 0)
    assert (colors, goal, cue) == (PINNED_COLORS, PINNED_GOAL, PINNED_CUE)
    np.testing.assert_allclose(points, PINNED_POINTS, atol=1e-6)


def _steps_to_end(env: gym.Env) -> int:
    """Steps a still arm takes from here until the episode ends."""
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step({"muscles": np.zeros(6, np.float32)})
        steps, done = steps + 1, term or trunc
    return steps


def test_cue_recall_min_delay_draws_each_episodes_delay() -> None:
    """``min_delay_steps``: each episode's delay is drawn from [min, delay_steps]; the balls
    show after it and a still arm is truncated after its own cue + delay + reach; the draws
    vary and cover the range's ends over many seeds."""
    kwargs = {"delay_steps": 12, "min_delay_steps": 2, "reach_steps": 3, "obs_keys": ("proprio",)}
    with gym.make("mindloop/CueRecall-v0", **kwargs) as env:
        u = env.unwrapped
        delays = []
        for seed in range(40):
            env.reset(seed=seed)
            delay = u.reach_start - u.cue_steps
            delays.append(delay)
            assert 2 <= delay <= 12 and u.max_steps == u.reach_start + 3
        assert min(delays) == 2 and max(delays) == 12 and len(set(delays)) > 5
        for seed in range(3):
            env.reset(seed=seed)
            delay = u.reach_start - u.cue_steps
            assert _steps_to_end(env) == u.cue_steps + delay + 3
            _, info = env.reset(seed=seed)
            for _ in range(u.cue_steps + delay - 1):
                _, _, _, _, info = env.step({"muscles": np.zeros(6, np.float32)})
            assert info["phase"] == "delay"
            _, _, _, _, info = env.step({"muscles": np.zeros(6, np.float32)})
            assert info["phase"] == "reach" and u._obj_active.any()


def test_cue_recall_min_delay_is_restored_with_the_state() -> None:
    """Resume and replay restore a snapshot into an env that drew another delay: the
    snapshot's delay must come with it (when the balls show, when the episode ends)."""
    kwargs = {"delay_steps": 30, "min_delay_steps": 0, "reach_steps": 4, "obs_keys": ("proprio",)}
    with (
        gym.make("mindloop/CueRecall-v0", **kwargs) as env,
        gym.make("mindloop/CueRecall-v0", **kwargs) as other,
    ):
        env.reset(seed=0)
        for seed in range(1, 50):  # an episode of `other` with another delay than env's
            other.reset(seed=seed)
            if other.unwrapped.reach_start != env.unwrapped.reach_start:
                break
        assert other.unwrapped.reach_start != env.unwrapped.reach_start
        env.step({"muscles": np.zeros(6, np.float32)})
        other.unwrapped.set_state(env.unwrapped.get_state())
        assert other.unwrapped.reach_start == env.unwrapped.reach_start
        lengths = [1 + _steps_to_end(e) for e in (env, other)]  # the first step was taken
        assert lengths[0] == lengths[1] == env.unwrapped.max_steps


def test_cue_recall_fixed_delay_snapshot_keys_are_unchanged() -> None:
    """Without ``min_delay_steps`` the snapshot has the keys it had (older records replay)."""
    with gym.make("mindloop/CueRecall-v0", delay_steps=3, obs_keys=("proprio",)) as env:
        env.reset(seed=0)
        keys = {k for k in env.unwrapped.get_state() if k.startswith("task/")}
    assert "task/reach_start" not in keys and "task/max_steps" not in keys
    with gym.make("mindloop/CueRecall-v0", delay_steps=3, min_delay_steps=1) as env:
        env.reset(seed=0)
        assert {"task/reach_start", "task/max_steps"} <= set(env.unwrapped.get_state())


@pytest.mark.parametrize("low", [-1, 21])
def test_cue_recall_min_delay_out_of_range_is_an_error(low: int) -> None:
    with pytest.raises(
        ValueError, match=rf"min_delay_steps must be in \[0, delay_steps=20\], got {low}"
    ):
        gym.make("mindloop/CueRecall-v0", delay_steps=20, min_delay_steps=low)


def test_cue_recall_unknown_layout_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown layout 'grid'; allowed: random, slots, fixed"):
        gym.make("mindloop/CueRecall-v0", layout="grid")


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("mode", ["both", "color", "shape"])
def test_instruction_tokens_decode_to_the_intended_object(mode: str) -> None:
    with gym.make("mindloop/InstructedReach-v0", instruction=mode, obs_keys=("text",)) as env:
        for seed in range(5):
            obs, info = env.reset(seed=seed)
            u = env.unwrapped
            color, shape = u.target_description()
            words = {"both": f"{color} {shape}", "color": color, "shape": shape}[mode]
            assert vocab.decode(obs["text"]) == f"reach the {words}" == info["text_shown"]
            # Exactly one object fits the words, and it is the goal.
            colors = [vocab.COLORS[c] for c in u._obj_color]
            shapes = [vocab.SHAPES[s] for s in u._obj_shape]
            fits = [
                i for i in range(u.num_objects)
                if (mode == "shape" or colors[i] == color) and (mode == "color" or shapes[i] == shape)
            ]  # fmt: skip
            assert fits == [u._goal]
            geom = u._obj_geoms[u._goal][u._obj_shape[u._goal]]
            np.testing.assert_allclose(u.model.geom_rgba[geom], COLOR_RGBA[color])


def test_count_answer_asks_the_question_and_grades_the_answer() -> None:
    with gym.make("mindloop/CountAnswer-v0", obs_keys=("text",)) as env:
        obs, info = env.reset(seed=4)
        u = env.unwrapped
        assert not obs["text"].any()
        for _ in range(u.watch_steps):
            obs, _, _, _, info = env.step({"text": 0})
        assert vocab.decode(obs["text"]) == QUESTION
        wrong = vocab.number_token((info["count"] + 1) % (vocab.MAX_NUMBER + 1))
        obs, reward, terminated, _, info = env.step({"text": wrong})
        assert terminated and not info["is_success"] and reward <= 0
        obs, info = env.reset(seed=4)
        for _ in range(u.watch_steps):
            env.step({"text": 0})
        obs, reward, terminated, _, info = env.step({"text": vocab.number_token(info["count"])})
        assert terminated and info["is_success"] and reward == 1.0
        assert info["text_emitted"] == str(info["count"])


# ---------------------------------------------------------------- feeling
def test_hand_feels_the_target_under_it() -> None:
    with gym.make("mindloop/MuscleReach-v0", obs_keys=("touch",)) as env:
        env.reset(seed=0)
        u = env.unwrapped
        assert u._observe()["touch"][0] == 0.0
        for _ in range(30):  # the expert brings the hand over the target
            obs, _, terminated, _, info = env.step(u.expert_action())
            if terminated:
                break
        assert info["is_success"] and obs["touch"][0] > 0.0


# ---------------------------------------------------------------- muscle solver
def test_bounded_lsq_matches_projected_gradient() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m, n = int(rng.integers(1, 4)), int(rng.integers(2, 9))
        a, b = rng.normal(size=(m, n)), 3 * rng.normal(size=m)
        x = bounded_lsq(a, b, reg=1e-2)
        h = a.T @ a
        h += 1e-2 * np.trace(h) / n * np.eye(n)
        g = a.T @ b
        y = np.zeros(n)
        step = 1.0 / np.linalg.eigvalsh(h)[-1]
        for _ in range(3000):
            y = np.clip(y - step * (h @ y - g), 0.0, 1.0)
        assert (x >= 0).all() and (x <= 1).all()
        assert 0.5 * x @ h @ x - g @ x <= 0.5 * y @ h @ y - g @ y + 1e-9


# ---------------------------------------------------------------- wrappers
@pytest.mark.filterwarnings("ignore:.*(infinity|different from the unwrapped).*:UserWarning")
def test_senses_wrapper_gives_gymnasium_mujoco_envs_eyes_and_ears() -> None:
    from gymnasium.utils.env_checker import check_env

    with MujocoSensesWrapper(gym.make("Hopper-v5")) as env:
        check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=0)
        assert set(obs) == {"proprio", "image", "audio"}
        assert obs["image"].shape == (64, 64, 3) and obs["image"].std() > 5
        assert obs["audio"].shape == (2, round(16_000 * env.unwrapped.dt))
        env.action_space.seed(0)
        heard = 0.0
        for _ in range(200):  # a random hopper falls over: its body hits the floor
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            heard += energy(obs["audio"]).sum()
            if terminated or truncated:
                env.reset()
        assert heard > 0.0
    # The wrapper puts the env's own stepping back when closed.
    assert "_step_mujoco_simulation" not in vars(env.unwrapped)


@pytest.mark.parametrize("keys", [("image", "audio"), "image"])
def test_senses_wrapper_leaves_the_envs_episodes_as_they_are(keys) -> None:
    """The wrapped env starts every episode where the bare one does (the impact noise draws
    from the wrapper's own stream, not the env's), and the same seed gives the same sound.
    A plain string names one key (it was split into letters)."""
    bare = gym.make("Hopper-v5")
    starts = [bare.reset(seed=0)[0], bare.reset()[0], bare.reset()[0]]
    bare.close()
    with MujocoSensesWrapper(gym.make("Hopper-v5"), keys=keys) as env:
        assert env.keys == ((keys,) if isinstance(keys, str) else keys)
        wrapped = [env.reset(seed=0)[0], env.reset()[0], env.reset()[0]]
    for a, b in zip(starts, wrapped, strict=True):
        np.testing.assert_array_equal(a, b["proprio"])
    if "audio" not in keys:
        return
    sounds = []
    for _ in range(2):
        with MujocoSensesWrapper(gym.make("Hopper-v5"), keys=keys) as env:
            env.reset(seed=3)
            env.action_space.seed(3)
            sounds.append(
                np.stack([env.step(env.action_space.sample())[0]["audio"] for _ in range(60)])
            )
    assert energy(sounds[0]).sum() > 0
    np.testing.assert_array_equal(sounds[0], sounds[1])


@pytest.mark.parametrize("which", ["task", "wrapper"])
def test_audio_config_survives_a_json_round_trip_of_the_env_spec(which: str) -> None:
    """Minari stores an env's spec as JSON and rebuilds the env from it (recover_environment):
    an ``audio=AudioConfig(...)`` argument comes back as a dict, which failed deep inside
    (AttributeError: 'dict' object has no attribute 'sample_rate')."""
    from gymnasium.envs.registration import EnvSpec

    audio = AudioConfig(impact_gain=3.0, ear_distance=0.2)
    if which == "task":
        env = gym.make(envs.DEFAULT_TASK_ID, obs_keys=("proprio",), audio=audio)
    else:
        env = MujocoSensesWrapper(gym.make("Hopper-v5"), keys=("audio",), audio=audio)
    with env, gym.make(EnvSpec.from_json(env.spec.to_json())) as again:
        if which == "task":
            assert again.unwrapped.audio_config == audio
        else:
            assert isinstance(again, MujocoSensesWrapper) and again._synth.config == audio
    with pytest.raises(ValueError, match="unknown audio setting loudness; AudioConfig has"):
        gym.make(envs.DEFAULT_TASK_ID, obs_keys=("proprio",), audio={"loudness": 2.0})


def test_senses_wrapper_leaves_the_envs_own_render_as_it_is() -> None:
    """The wrapper's camera has its own GL context; Gymnasium's renderer makes its context
    current only when it has several viewers, so the env's render() drew blank frames from
    the first step on."""

    def frames(wrap: bool) -> list[np.ndarray]:
        env = gym.make("Hopper-v5", render_mode="rgb_array", width=48, height=48)
        if wrap:
            env = MujocoSensesWrapper(env, keys=("image",), image_size=16)
        with env:
            env.reset(seed=0)
            env.action_space.seed(0)
            out = [env.render()]
            for _ in range(2):
                env.step(env.action_space.sample())
                out.append(env.render())
        return out

    for bare, wrapped in zip(frames(False), frames(True), strict=True):
        assert bare.std() > 5
        np.testing.assert_array_equal(bare, wrapped)


@pytest.mark.skipif(gl.gl_backend() != "egl", reason="foreign contexts are restored on EGL")
def test_mindloop_renderers_leave_another_libraries_context_current() -> None:
    """A Gymnasium MuJoCo env rendering in the same process as mindloop envs: its renderer
    makes its context current once and then draws into whatever is current, so a mindloop
    renderer made, used or closed in between used to leave it drawing blank frames."""

    def frames(with_mindloop: bool) -> list[np.ndarray]:
        env = gym.make("Hopper-v5", render_mode="rgb_array", width=48, height=48)
        with env:
            env.reset(seed=0)
            env.action_space.seed(0)
            out = [env.render()]  # the Gymnasium viewer's context is current from here on
            other = gym.make(envs.DEFAULT_TASK_ID) if with_mindloop else None
            for _ in range(2):
                if other is not None:
                    other.reset(seed=0)  # makes its renderer and draws a frame
                    other.step(other.action_space.sample())
                env.step(env.action_space.sample())
                out.append(env.render())
            if other is not None:
                other.close()  # frees its context
            out.append(env.render())
        return out

    for bare, mixed in zip(frames(False), frames(True), strict=True):
        assert bare.std() > 5
        np.testing.assert_array_equal(bare, mixed)


def test_a_mindloop_renderer_never_restores_its_own_context(monkeypatch) -> None:
    """Only another library's context is made current again: with mindloop renderers alone
    nothing is restored, not even on close (restoring a context being freed failed with
    EGL_BAD_CONTEXT, and with glfw it would use a destroyed window)."""
    from envs import rendering

    restored: list[object] = []
    restore = rendering._ForeignContext.restore

    def spy(self) -> None:
        restored.append(self.saved)
        restore(self)

    monkeypatch.setattr(rendering._ForeignContext, "restore", spy)
    env = gym.make(envs.DEFAULT_TASK_ID)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()
    assert restored and all(saved is None for saved in restored), restored


def test_senses_wrapper_rejects_non_mujoco_envs() -> None:
    with pytest.raises(ValueError, match="MujocoEnv"):
        MujocoSensesWrapper(gym.make("CartPole-v1"))


def test_flatten_wrapper() -> None:
    with FlattenActionWrapper(gym.make("mindloop/CountAnswer-v0", obs_keys=("text",))) as env:
        assert env.action_space == gym.spaces.Discrete(vocab.VOCAB_SIZE)
        env.reset(seed=0)
        env.step(0)
    with pytest.raises(ValueError, match="exactly one key"):
        FlattenActionWrapper(gym.make("CartPole-v1"))


def test_dict_action_wrapper_maps_unit_muscles_to_the_envs_box() -> None:
    """Hopper's Box(-1, 1, (3,)) becomes Dict(muscles=Box(0, 1, (3,))): 0 -> low, 1 -> high,
    and reverse_action undoes it."""
    with DictActionWrapper(MujocoSensesWrapper(gym.make("Hopper-v5"), keys=())) as env:
        assert env.action_space == gym.spaces.Dict(
            muscles=gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        )
        unit = np.array([0.0, 0.5, 1.0], np.float32)
        np.testing.assert_allclose(env.action({"muscles": unit}), [-1.0, 0.0, 1.0])
        np.testing.assert_allclose(env.reverse_action(np.array([-1.0, 0.0, 1.0]))["muscles"], unit)
        env.reset(seed=0)
        env.step({"muscles": unit})
    with pytest.raises(ValueError, match="Box action space with finite bounds"):
        DictActionWrapper(gym.make("CartPole-v1"))


def _reacher_for_mindloop(**kwargs: object) -> gym.Env:
    return DictActionWrapper(MujocoSensesWrapper(gym.make("Reacher-v5", **kwargs), keys=()))


@pytest.mark.parametrize("algo", ["ppo", "sb3-ppo"])
def test_train_py_trains_in_a_wrapped_gymnasium_mujoco_env(algo, tmp_path, capsys) -> None:
    """The README's recipe: a Gymnasium MuJoCo env with Dict observations and actions trains
    end to end, with periodic evaluations (an SB3 baseline's formatted a success rate the
    env does not have: a TypeError), and ends without a video (it cannot replay episodes)
    instead of failing after training."""
    from agent.config import TrainConfig
    from agent.training import train

    env_id = "mindloop_test/ReacherDict-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_reacher_for_mindloop, max_episode_steps=50)
    cfg = TrainConfig(algo=algo)
    cfg.run.eval_every = 1
    cfg.env.id, cfg.env.num_envs, cfg.env.vectorization = env_id, 2, "sync"
    cfg.agent.encoders.embed_dim, cfg.agent.core.hidden_dim = 16, 16
    cfg.ppo.total_steps, cfg.ppo.rollout_steps, cfg.ppo.bptt_steps = 64, 16, 4
    cfg.run.dir, cfg.run.eval_episodes = str(tmp_path / "run"), 1
    cfg.run.progress, cfg.run.tensorboard = False, False
    result = train(cfg)
    assert result.checkpoint is not None and result.checkpoint.exists()
    # Reacher has no info["is_success"]: no success rate, rather than a made-up 0%
    assert result.success_rate is None
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["summary"]["success_rate"] is None
    evals = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval @")]
    assert evals and all("success n/a" in line for line in evals), evals  # was "success 0%"
    assert not (tmp_path / "run" / "video.mp4").exists()


def test_sb3_ppo_runs_on_a_dict_observation_world() -> None:
    from stable_baselines3 import PPO

    env = gym.make(envs.DEFAULT_TASK_ID, obs_keys=("image", "proprio"))
    with FlattenActionWrapper(env, rescale=True) as env:
        model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0)
        model.learn(16)
        action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
        assert env.action_space.contains(action)


def test_async_vector_env_workers_render() -> None:
    # Workers inherit the GL choice through MUJOCO_GL (spawned: nothing GL is inherited).
    vec = gym.make_vec(
        envs.DEFAULT_TASK_ID, num_envs=2, vectorization_mode="async",
        vector_kwargs={"context": "spawn"},
    )  # fmt: skip
    try:
        obs, _ = vec.reset(seed=0)
        obs, *_ = vec.step(vec.action_space.sample())
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].std() > 5
    finally:
        vec.close()


_FORK_AFTER_RENDER = """
import os, time, mujoco, envs
from envs.rendering import OffscreenRenderer
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
with OffscreenRenderer(m, 8, 8) as r:  # the parent has rendered
    r.render(d)
pid = os.fork()
if pid == 0:  # the child's first context: a clear error, not a wait forever
    try:
        with OffscreenRenderer(m, 8, 8) as r:
            r.render(d)
        print('child rendered', flush=True)
    except RuntimeError as e:
        print(e, flush=True)
    os._exit(0)
for _ in range(200):  # 20 s
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    print('child hung', flush=True)
"""


def test_a_process_forked_after_rendering_gets_a_clear_error_not_a_hang() -> None:
    # Gymnasium's AsyncVectorEnv forks by default on Linux: an env used in the parent first
    # left every worker waiting forever at its first frame.
    out = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_RENDER], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert message.startswith("this process was forked from process"), message
    assert "forkserver" in message and "\n" not in message


_CLOSE_AFTER_EGL_TERMINATED = """
import gymnasium as gym, envs
from mujoco import egl
from OpenGL import EGL
env = gym.make("mindloop/MuscleReach-v0", render_mode="rgb_array", render_size=32)
env.reset(seed=0)
env.render()
EGL.eglTerminate(egl.EGL_DISPLAY)  # what pygame.quit() does under SDL's offscreen driver
env.close()
env.close()
print("closed", flush=True)
"""


@pytest.mark.skipif(gl.gl_backend() != "egl", reason="terminates the EGL display")
def test_close_after_the_egl_display_is_gone_does_not_raise() -> None:
    # Gymnasium's HumanRendering on a headless machine with pygame installed: its close()
    # quits pygame, which terminates the EGL display MuJoCo shares, and the env's close()
    # then raised EGLError (and again from the atexit hook and __del__).
    out = subprocess.run(
        [sys.executable, "-c", _CLOSE_AFTER_EGL_TERMINATED],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "closed", out.stderr[-2000:]
    assert "Error" not in out.stderr, out.stderr[-2000:]


# ---------------------------------------------------------------- GL backend
def test_gl_backend_is_exported_for_subprocesses() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    code = "import os, envs; print(os.environ['MUJOCO_GL'], envs.gl.gl_backend())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    chosen, reported = out.stdout.split()
    assert chosen == reported and chosen in gl.HEADLESS_BACKENDS


def test_torch_optimizer_after_rendering_does_not_crash() -> None:
    # Regression: Triton's LLVM segfaulted when loaded after Mesa's (envs.gl.preload_triton).
    code = (
        "import envs, gymnasium as gym\n"
        "env = gym.make('mindloop/MuscleReach-v0'); env.reset(seed=0); env.close()\n"
        "import torch\n"
        "torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_mujoco_imported_first_with_osmesa_warns_instead_of_crashing() -> None:
    """``import mujoco`` with ``MUJOCO_GL=osmesa`` loads Mesa's LLVM; preloading Triton after
    it segfaulted ``import envs``. Now the import warns, naming the fix."""
    if not gl._probe("osmesa"):
        pytest.skip("OSMesa is not installed")
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa")
    code = "import mujoco\nimport envs\nprint('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    # the warning points at the user's `import envs` (line 2 of the snippet), not at envs/
    assert "<string>:2: RuntimeWarning: Mesa's LLVM" in out.stderr
    assert "import envs before mujoco" in out.stderr


def test_user_mujoco_gl_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gl, "_selected", gl._selected)
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert gl.select_gl_backend() == "osmesa"


def test_broken_user_mujoco_gl_is_a_one_line_error() -> None:
    env = dict(os.environ, MUJOCO_GL="nonsense")
    out = subprocess.run(
        [sys.executable, "-c", "import envs"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: MUJOCO_GL='nonsense' does not work here"), last
    assert "unset MUJOCO_GL" in last


def test_no_working_backend_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gl, "_selected", None)
    monkeypatch.setattr(gl, "_failure", None)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(gl, "_probe", lambda backend, timeout=60.0: False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert gl.select_gl_backend() is None
    with pytest.raises(RuntimeError) as err:
        gl.gl_context_class()
    message = str(err.value)
    assert "\n" not in message
    for package in ("libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libosmesa6"):
        assert package in message
