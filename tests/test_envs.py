"""Contract tests for every registered mindloop world (parametrized over ``envs.TASK_IDS``):
Gymnasium's and SB3's env checkers, spaces, determinism (audio included), replay state,
bad arguments, and the scripted expert against a random policy."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.wrappers import FlattenActionWrapper

IDS = list(envs.TASK_IDS)
SLOW_RENDER = {"mindloop/MyoElbowReach-v0"}  # real bone meshes: ~40 frames/s in software GL


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, **kwargs)


def fast_keys(env_id: str) -> tuple[str, ...]:
    """Observation keys that skip rendering (and audio where possible): state-only runs."""
    with make(env_id, obs_keys=None) as env:
        keys = list(env.observation_space.spaces)
    cheap = [k for k in keys if k not in ("image", "audio")]
    return tuple(cheap or ["audio"])


def rollout(env: gym.Env, seed: int, steps: int, policy: str = "random") -> list[dict]:
    """Observations (copied) of a seeded rollout with seeded random or expert actions."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [{k: np.array(v) for k, v in obs.items()}]
    for _ in range(steps):
        action = env.unwrapped.expert_action() if policy == "expert" else env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        out.append({k: np.array(v) for k, v in obs.items()})
        if terminated or truncated:
            break
    return out


def success_rate(env: gym.Env, episodes: int, policy: str, seed: int) -> float:
    wins = 0
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        env.action_space.seed(seed + ep)
        while True:
            if policy == "expert":
                action = env.unwrapped.expert_action()
            else:
                action = env.action_space.sample()
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        wins += bool(info["is_success"])
    return wins / episodes


def test_registry_lists_every_task() -> None:
    expected = {"MuscleReach", "MyoElbowReach", "SoundReach", "CueRecall", "CountAnswer",
                "InstructedReach"}  # fmt: skip
    assert {i.split("/")[1].split("-")[0] for i in IDS} == expected
    assert envs.DEFAULT_TASK_ID in IDS
    for env_id in IDS:
        assert env_id in gym.registry


def test_module_prefix_make_works() -> None:
    # Gymnasium imports the module named before ':' first, so no `import envs` is needed.
    with gym.make("envs:mindloop/MuscleReach-v0", obs_keys=("proprio",)) as env:
        env.reset(seed=0)


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env(env_id: str) -> None:
    with make(env_id, render_mode="rgb_array", render_size=64) as env, warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no Gymnasium warning may be left
        gym_check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env(env_id: str) -> None:
    with FlattenActionWrapper(make(env_id)) as env:
        sb3_check_env(env, warn=False)


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_and_observations(env_id: str) -> None:
    with make(env_id) as env:
        obs_space, act_space = env.observation_space, env.action_space
        assert isinstance(obs_space, gym.spaces.Dict) and isinstance(act_space, gym.spaces.Dict)
        assert set(obs_space.spaces) <= {"image", "audio", "proprio", "touch", "text"}
        assert set(act_space.spaces) <= {"muscles", "text"}
        u = env.unwrapped
        assert obs_space["audio"].shape == (2, round(16_000 * u.dt))
        if "muscles" in act_space.spaces:
            m = act_space["muscles"]
            assert m.dtype == np.float32 and (m.low == 0).all() and (m.high == 1).all()
        if "text" in act_space.spaces:
            assert act_space["text"].n == envs.vocab.VOCAB_SIZE
        if "text" in obs_space.spaces:
            assert (obs_space["text"].nvec == envs.vocab.VOCAB_SIZE).all()
        steps = 3 if env_id in SLOW_RENDER else 10
        for obs in rollout(env, seed=0, steps=steps):
            assert obs_space.contains(obs)
            image = obs["image"]
            # The camera sees a scene, not a black or flat frame.
            assert image.mean() > 20 and image.std() > 5
            assert np.isfinite(obs["audio"]).all() and np.abs(obs["audio"]).max() <= 1.0


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_observations(env_id: str) -> None:
    steps = 4 if env_id in SLOW_RENDER else 25
    kwargs = {"delay_steps": 5} if "CueRecall" in env_id else {}
    with make(env_id, **kwargs) as a, make(env_id, **kwargs) as b:
        first, second = rollout(a, 7, steps), rollout(b, 7, steps)
        other = rollout(a, 8, steps)
    assert len(first) == len(second)
    for x, y in zip(first, second, strict=True):
        for key in x:  # audio included
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert any(
        not np.array_equal(x[k], y[k]) for x, y in zip(first, other, strict=False) for k in x
    ), "a different seed should give a different episode"


@pytest.mark.parametrize("env_id", IDS)
def test_obs_keys_subset_skips_rendering(env_id: str) -> None:
    keys = fast_keys(env_id)
    with make(env_id, obs_keys=keys) as env:
        assert tuple(env.observation_space.spaces) == tuple(sorted(keys))
        obs, _ = env.reset(seed=0)
        env.step(env.action_space.sample())
        assert set(obs) == set(keys)
        assert env.unwrapped._eye is None  # no GL context was ever made


@pytest.mark.parametrize("env_id", IDS)
def test_state_replay_rerenders_the_same_frame(env_id: str) -> None:
    steps = 3 if env_id in SLOW_RENDER else 12
    with make(env_id, render_mode="rgb_array") as env, make(env_id) as replay:
        env.reset(seed=3)
        env.action_space.seed(3)
        for _ in range(steps):
            obs, *_ = env.step(env.action_space.sample())
        state = env.unwrapped.get_state()
        frame = env.render()
        action = env.action_space.sample()
        after, *_ = env.step(action)

        replay.reset(seed=99)  # a different episode, then overwritten by the snapshot
        replay.unwrapped.set_state(state)
        assert frame.shape == (256, 256, 3)
        np.testing.assert_array_equal(replay.unwrapped._observe()["image"], obs["image"])
        if "text" in obs:
            np.testing.assert_array_equal(replay.unwrapped._text, obs["text"])
        # Physics resumes identically from the snapshot.
        again, *_ = replay.step(action)
        for key in ("proprio", "touch", "text"):
            if key in after:
                np.testing.assert_array_equal(again[key], after[key], err_msg=key)


@pytest.mark.parametrize("env_id", IDS)
def test_reset_info_has_the_step_infos_keys(env_id: str) -> None:
    """Reset's info is analogous to step's (Gymnasium), key for key and type for type:
    Minari's DataCollector(record_infos=True) refused every mindloop episode, whose first
    frame lacked the reward terms."""

    def kinds(info: dict) -> dict:
        return {k: (np.asarray(v).dtype.kind, np.shape(v)) for k, v in info.items()}

    with make(env_id, obs_keys=fast_keys(env_id)) as env:
        _, reset_info = env.reset(seed=0)
        for _ in range(3):
            *_, info = env.step(env.unwrapped.expert_action())
            assert kinds(info) == kinds(reset_info)
    assert all(v == 0.0 for k, v in reset_info.items() if k.startswith("reward_"))


def test_render_none_warns_and_returns_none() -> None:
    with make(envs.DEFAULT_TASK_ID, obs_keys=("proprio",)) as env:
        env.reset(seed=0)
        with pytest.warns(UserWarning, match="render_mode"):
            assert env.unwrapped.render() is None


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("env_id", "kwargs", "fragments"),
    [
        ("mindloop/CueRecall-v0", {"delay_steps": -1}, ["delay_steps", "-1"]),
        ("mindloop/MuscleReach-v0", {"image_size": 0}, ["image_size", "0"]),
        ("mindloop/MuscleReach-v0", {"arm": "octopus"}, ["octopus", "capsule", "myoelbow"]),
        ("mindloop/MuscleReach-v0", {"obs_keys": ("smell",)}, ["smell", "image", "proprio"]),
        ("mindloop/MuscleReach-v0", {"target_color": "plaid"}, ["plaid", "red"]),
        ("mindloop/CueRecall-v0", {"cue": "smell"}, ["smell", "color", "sound"]),
        ("mindloop/CountAnswer-v0", {"max_events": 40}, ["40", "31"]),
        ("mindloop/CountAnswer-v0", {"max_events": 20}, ["watch_steps"]),
        ("mindloop/InstructedReach-v0", {"instruction": "shape", "num_objects": 4}, ["4"]),
    ],
)
def test_bad_arguments_raise_one_line_errors(env_id: str, kwargs: dict, fragments: list) -> None:
    with pytest.raises(ValueError) as err:
        make(env_id, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("env_id", "kwargs", "fragments"),
    [  # unknown keyword: named, with the accepted ones (read from the constructor)
        ("mindloop/MuscleReach-v0", {"bogus": 1}, ["'bogus'", "arm", "max_steps", "audio_info"]),
        ("envs:mindloop/MuscleReach-v0", {"bogus": 1}, ["'bogus'", "arm"]),
        ("CartPole-v1", {"bogus": 1}, ["'bogus'", "sutton_barto_reward", "render_mode"]),
        # wrong type: the option, the value and the expected type
        ("mindloop/CueRecall-v0", {"delay_steps": "abc"}, ["delay_steps", "'abc'", "int"]),
        ("mindloop/CueRecall-v0", {"delay_steps": 2.5}, ["delay_steps", "2.5", "int"]),
        ("mindloop/CueRecall-v0", {"cue_stays": 1}, ["cue_stays", "1", "bool"]),
        ("mindloop/CueRecall-v0", {"success_radius": "x"}, ["success_radius", "float or None"]),
    ],
)
def test_bad_constructor_arguments_are_one_line_errors_before_the_env_is_made(
    env_id: str, kwargs: dict, fragments: list
) -> None:
    """gym.make reports these as a TypeError from inside the constructor, or (2.5 steps)
    not at all; envs.make and every vector env maker check them first."""
    with pytest.raises(ValueError) as err:
        envs.check_env_kwargs(env_id, kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if not env_id.startswith("envs:"):
        with pytest.raises(ValueError, match=fragments[0]):
            envs.make(env_id, **kwargs)


def test_good_constructor_arguments_pass_the_check() -> None:
    envs.check_env_kwargs(
        "mindloop/CueRecall-v0",
        {"delay_steps": np.int64(3), "tone_level": 1, "success_radius": None,
         "cue_stays": True, "obs_keys": ("proprio",), "max_episode_steps": 9},
    )  # fmt: skip
    envs.check_env_kwargs("Hopper-v5", {"anything": 1})  # takes **kwargs: any keyword


def test_async_vector_env_checks_arguments_before_starting_workers() -> None:
    """A bad argument in an AsyncVectorEnv worker is a traceback from a dead worker."""
    from agent.config import EnvConfig
    from agent.vector import make_vector_env

    config = EnvConfig(id="mindloop/CueRecall-v0", kwargs={"delay_steps": "abc"}, num_envs=2)
    with pytest.raises(ValueError, match="delay_steps must be int"):
        make_vector_env(config, vectorization="async")


def test_unknown_task_raises_one_line_error_with_the_known_ids() -> None:
    with pytest.raises(ValueError) as err:
        envs.make("mindloop/Juggle-v0")
    message = str(err.value)
    assert "\n" not in message and "Juggle" in message and "mindloop/MuscleReach-v0" in message


# ---------------------------------------------------------------- experts
EXPERT_EPISODES = 40


@pytest.mark.parametrize("env_id", IDS)
def test_expert_succeeds_and_random_policy_does_not(env_id: str) -> None:
    # Default difficulty; CueRecall with the 200-step delay the issue asks for.
    kwargs = {"delay_steps": 200} if "CueRecall" in env_id else {}
    with make(env_id, obs_keys=fast_keys(env_id), **kwargs) as env:
        expert = success_rate(env, EXPERT_EPISODES, "expert", seed=10_000)
        random = success_rate(env, 20, "random", seed=20_000)
    assert expert >= 0.95, f"expert success {expert:.2f} < 0.95 on {env_id}"
    assert random <= 0.2, f"random success {random:.2f} should be far below the expert"


@pytest.mark.parametrize("env_id", IDS)
def test_expert_latent_is_a_fixed_size_vector(env_id: str) -> None:
    """BC's auxiliary target: one float32 vector per frame, the same size all episode long,
    and not a constant (it says something the frame alone does not)."""
    with make(env_id, obs_keys=fast_keys(env_id)) as env:
        latents = []
        for seed in (0, 1):
            env.reset(seed=seed)
            while True:
                latents.append(env.unwrapped.expert_latent())
                _, _, terminated, truncated, _ = env.step(env.unwrapped.expert_action())
                if terminated or truncated:
                    break
    assert {x.dtype for x in latents} == {np.dtype(np.float32)}
    assert len({x.shape for x in latents}) == 1 and latents[0].ndim == 1
    stacked = np.stack(latents)
    assert np.isfinite(stacked).all() and stacked.std(axis=0).max() > 0


def test_flattened_expert_action_matches_the_dict_one() -> None:
    with FlattenActionWrapper(
        make(envs.DEFAULT_TASK_ID, obs_keys=("proprio",)), rescale=True
    ) as env:
        env.reset(seed=0)
        flat = env.expert_action()
        assert env.action_space.contains(flat.astype(np.float32))
        np.testing.assert_allclose(
            env.action(flat)["muscles"], env.unwrapped.expert_action()["muscles"], atol=1e-6
        )


def test_obs_keys_as_a_string_is_one_key_or_a_comma_list() -> None:
    """--env-kwargs obs_keys proprio passes a str: one key, not the letters p, r, o..."""
    with make("mindloop/MuscleReach-v0", obs_keys="proprio") as env:
        assert tuple(env.observation_space.spaces) == ("proprio",)
    with make("mindloop/MuscleReach-v0", obs_keys="proprio, touch") as env:
        assert set(env.observation_space.spaces) == {"proprio", "touch"}
    with pytest.raises(ValueError, match="observation key 'nope'"):
        make("mindloop/MuscleReach-v0", obs_keys="proprio,nope")
