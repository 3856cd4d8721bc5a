"""SB3 baselines (agent/baselines.py): every baseline --algo end to end on a tiny budget,
safetensors checkpoints that rebuild the same policy, the Gymnasium-vector-env adapter
against SB3's own VecEnv, resume, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from agent.baselines import (
    BASELINES,
    GymnasiumVecEnv,
    build_sb3_model,
    env_spaces,
    is_sb3_checkpoint,
    load_sb3_eval_policy,
    load_sb3_policy,
    make_sb3_env,
    make_sb3_vec_env,
    policy_state_dict,
    save_sb3_checkpoint,
    train_sb3,
    unbatch_info,
)
from agent.checkpoint import resolve_checkpoint
from agent.config import (
    AgentConfig,
    EnvConfig,
    PPOConfig,
    RunConfig,
    TrainConfig,
    config_to_dict,
)
from agent.evaluation import SB3Policy, evaluate, sb3_space_mismatch
from encoders.fusion import FusedEncoderConfig

TASK = "mindloop/MuscleReach-v0"
# Short episodes and a small fused encoder keep every run to a few seconds.
ENV_KWARGS = {"max_steps": 12, "image_size": 32}
SMALL_ENCODERS = FusedEncoderConfig(
    configs={"image": {"channels": (8, 16), "embed_dim": 32}, "audio": {"embed_dim": 16}},
    embed_dim=32,
)


def tiny_config(algo: str, run_dir: Path, total_steps: int = 64, **run: object) -> TrainConfig:
    agent = AgentConfig(encoders=SMALL_ENCODERS)
    agent.core.hidden_dim = 16
    return TrainConfig(
        env=EnvConfig(id=TASK, num_envs=2, vectorization="sync", kwargs=dict(ENV_KWARGS)),
        agent=agent,
        algo=algo,
        ppo=PPOConfig(
            total_steps=total_steps, rollout_steps=16, bptt_steps=8, epochs=2, minibatches=2
        ),
        run=RunConfig(
            dir=str(run_dir),
            seed=3,
            eval_episodes=2,
            eval_every=1,
            checkpoint_every=1,
            keep_checkpoints=2,
            video=False,
            progress=False,
            **run,  # type: ignore[arg-type]
        ),
    )


def tensorboard_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("algo", BASELINES.names())
def test_every_baseline_trains_end_to_end(algo: str, tmp_path: Path) -> None:
    """``--algo`` through train.py's entry point: a tiny run writes the mindloop run layout
    and a checkpoint eval.py can use."""
    from agent.training import train

    config = tiny_config(algo, tmp_path / "run")
    result = train(config)

    run = tmp_path / "run"
    assert result.run_dir == run and result.success_rate is not None
    assert json.loads((run / "config.json").read_text())["algo"] == algo
    latest = run / "checkpoints" / "latest"
    assert (latest / "model.safetensors").is_file() and (latest / "config.json").is_file()
    assert len(list((run / "checkpoints").glob("step_*"))) == 2  # keep_checkpoints
    meta = json.loads((latest / "config.json").read_text())
    assert meta["step"] == 64 and meta["sb3"]["algo"] == algo
    assert not list(run.rglob("*.zip")) and not list(run.rglob("*.pkl"))  # no pickles
    assert is_sb3_checkpoint(run)
    summary = json.loads((run / "eval.json").read_text())["summary"]
    assert summary["episodes"] == 2

    # eval.py rebuilds the SB3 policy from the run directory alone (SB3Policy adapter).
    import eval as eval_cli

    out = tmp_path / "eval.json"
    assert eval_cli.main(["--checkpoint", str(run), "--episodes", "1", "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["policy"].startswith(algo) and evaluated["env_kwargs"] == ENV_KWARGS

    # periodic evaluation kept the best-evaluated weights (the final evaluation competing),
    # beside ``latest``, loadable by eval.py like any checkpoint
    best = run / "checkpoints" / "best"
    record = json.loads((best / "config.json").read_text())["eval"]
    assert (record["success_rate"], record["episode_return"]) >= (
        summary["success_rate"],
        summary["return_mean"],
    )
    assert resolve_checkpoint(run).name.startswith("step_")
    assert eval_cli.main(["--checkpoint", str(best), "--episodes", "1", "--json", str(out)]) == 0

    tags = tensorboard_tags(run / "tb")
    for tag in (
        "charts/episode_return",
        "charts/success_rate",
        "charts/fps",
        "losses/value_loss",
        "losses/entropy",
        "eval/success_rate",
    ):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert "rollout/ep_rew_mean" in tags and "train/value_loss" in tags  # SB3's names too


@pytest.mark.parametrize("algo", BASELINES.names())
def test_checkpoint_rebuilds_the_same_policy(algo: str, tmp_path: Path) -> None:
    """save -> load gives identical actions and values, recurrent state included, and the
    same evaluation through the SB3Policy adapter."""
    config = tiny_config(algo, tmp_path)
    venv = make_sb3_vec_env(config.env, seed=0, backend="gymnasium")
    try:
        model = build_sb3_model(config, venv)
        model.learn(32)  # weights (and running norms) move away from their initial values
        env = make_sb3_env(TASK, ENV_KWARGS)
        ckpt = save_sb3_checkpoint(
            tmp_path, model, config, env.unwrapped.observation_space, env.unwrapped.action_space
        )
        env.close()
    finally:
        venv.close()

    loaded, loaded_config, sb3 = load_sb3_policy(ckpt)
    assert config_to_dict(loaded_config) == config_to_dict(config) and sb3["algo"] == algo
    saved, restored = policy_state_dict(model.policy), policy_state_dict(loaded)
    assert saved.keys() == restored.keys()
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key

    # Same actions over frames with an episode boundary (12-step episodes) among them.
    env = make_sb3_env(TASK, ENV_KWARGS)
    obs, _ = env.reset(seed=5)
    states: list = [None, None]
    start = np.array([True])
    for _ in range(20):
        batch = {k: v[None] for k, v in obs.items()}
        a, states[0] = model.policy.predict(batch, states[0], start, deterministic=True)
        b, states[1] = loaded.predict(batch, states[1], start, deterministic=True)
        np.testing.assert_array_equal(a, b)
        if states[0] is not None:
            for x, y in zip(states[0], states[1], strict=True):
                np.testing.assert_array_equal(x, y)
        obs, _, terminated, truncated, _ = env.step(a[0])
        start = np.array([terminated or truncated])
        if start[0]:
            obs, _ = env.reset()
    env.close()

    rescale = isinstance(model.action_space, spaces.Box)
    kwargs = dict(seed=7, env_kwargs=ENV_KWARGS)
    before = evaluate(SB3Policy(model.policy, rescale=rescale), TASK, 2, **kwargs)
    policy, env_id, env_kwargs = load_sb3_eval_policy(ckpt)
    assert env_id == TASK and env_kwargs == ENV_KWARGS
    after = evaluate(policy, TASK, 2, **kwargs)
    assert [e.episode_return for e in before.episodes] == [e.episode_return for e in after.episodes]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (  # another task: SB3 would look "text" up in its spaces (KeyError in obs_to_tensor)
            ["--env", "mindloop/CountAnswer-v0"],
            "was trained on observation keys audio, image, proprio, touch; this env's are ",
        ),
        (  # same keys, other image size (the checkpoint's is channels-first: shown as the env's)
            ["--env-kwargs", "image_size", "48"],
            "was trained on observation 'image' of shape (32, 32, 3); this env's is (48, 48, 3)",
        ),
    ],
)
def test_eval_on_a_mismatched_env_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval.py checks an SB3 checkpoint's observation space against the env's before any
    step, as a mindloop checkpoint fails in one line (an untrained model is enough)."""
    import eval as eval_cli

    config = tiny_config("sb3-ppo", tmp_path)
    venv = make_sb3_vec_env(config.env, seed=0, backend="gymnasium")
    try:
        model = build_sb3_model(config, venv)
        save_sb3_checkpoint(tmp_path, model, config, *env_spaces(config.env))
    finally:
        venv.close()
    code = eval_cli.main(["--checkpoint", str(tmp_path), "--episodes", "1", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in out + err
    assert err.startswith("eval.py: error: sb3-ppo:") and message in err
    assert "leave out --env and --env-kwargs" in err


def test_sb3_space_mismatch_names_what_differs() -> None:
    """The channels-last image an env gives matches SB3's channels-first space; keys, shapes
    and the flat action's shape are compared."""
    image = spaces.Box(0, 255, (3, 8, 8), np.uint8)  # SB3's view of an (8, 8, 3) image
    trained = spaces.Dict(image=image, proprio=spaces.Box(-1, 1, (4,), np.float32))
    env = spaces.Dict(image=spaces.Box(0, 255, (8, 8, 3), np.uint8), proprio=trained["proprio"])
    action = spaces.Box(-1, 1, (2,), np.float32)
    assert sb3_space_mismatch(trained, env, action, spaces.Box(0, 1, (2,), np.float32)) is None
    assert sb3_space_mismatch(trained, trained) is None  # an env giving channels-first
    other = spaces.Dict(proprio=trained["proprio"])
    assert sb3_space_mismatch(trained, other) == (
        "observation keys image, proprio; this env's are proprio"
    )
    flat = spaces.Box(-1, 1, (5,), np.float32)
    assert sb3_space_mismatch(flat, trained["proprio"]) == (
        "observations of shape (5,); this env's is (4,)"
    )
    assert sb3_space_mismatch(None, env, action, spaces.Box(0, 1, (3,), np.float32)) == (
        "actions of shape (2,); this env's are (3,)"
    )


def test_gymnasium_vec_env_matches_sb3_vec_env() -> None:
    """The adapter gives SB3 what its own DummyVecEnv gives: observations, rewards, dones,
    terminal observations, TimeLimit.truncated and Monitor's episode stats."""
    config = EnvConfig(id=TASK, num_envs=2, vectorization="sync", kwargs={"max_steps": 5})
    ours = make_sb3_vec_env(config, seed=11, backend="gymnasium")
    theirs = make_sb3_vec_env(config, seed=11, backend="sb3")
    assert isinstance(ours, GymnasiumVecEnv) and isinstance(theirs, DummyVecEnv)
    try:
        assert ours.observation_space == theirs.observation_space
        assert ours.action_space == theirs.action_space
        o1, o2 = ours.reset(), theirs.reset()
        for key in o1:
            np.testing.assert_array_equal(o1[key], o2[key])
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(12):
            action = rng.uniform(-1, 1, (2, *ours.action_space.shape)).astype(np.float32)
            o1, r1, d1, i1 = ours.step(action)
            o2, r2, d2, i2 = theirs.step(action)
            np.testing.assert_allclose(r1, r2, rtol=1e-6)
            np.testing.assert_array_equal(d1, d2)
            for key in o1:
                np.testing.assert_array_equal(o1[key], o2[key])
            for a, b, done in zip(i1, i2, d1, strict=True):
                assert a["TimeLimit.truncated"] == b["TimeLimit.truncated"]
                if done:
                    ends += 1
                    assert a["episode"]["l"] == b["episode"]["l"]
                    assert a["is_success"] == b["is_success"]
                    for key in o1:
                        np.testing.assert_array_equal(
                            a["terminal_observation"][key], b["terminal_observation"][key]
                        )
        assert ends >= 4  # every env finished at least two 5-step episodes
    finally:
        ours.close()
        theirs.close()


def test_unbatch_info_follows_masks() -> None:
    info = {
        "is_success": np.array([True, False, True]),
        "_is_success": np.array([True, False, True]),
        "episode": {"r": np.array([1.0, 0.0, 2.0]), "_r": np.array([True, False, True])},
        "_episode": np.array([True, False, True]),
    }
    out = unbatch_info(info, 3)
    assert out == [
        {"is_success": True, "episode": {"r": 1.0}},
        {},
        {"is_success": True, "episode": {"r": 2.0}},
    ]


def test_train_py_prints_periodic_evaluations_and_the_checkpoint_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.py's console for a baseline matches mindloop PPO's: an ``eval @ N steps`` line
    per periodic evaluation (2 updates of 32 steps: one before the final evaluation) and
    one ``checkpoint:`` line at the end."""
    import train as train_script

    config = tiny_config("sb3-ppo", tmp_path / "run")
    config.run.eval_episodes = 1
    monkeypatch.setattr(train_script, "parse_config", lambda argv: config)
    assert train_script.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    evals = [line for line in lines if line.startswith("eval @ ")]
    assert len(evals) == 1, lines
    assert evals[0].startswith("eval @ 32 steps: success ") and ", return " in evals[0]
    assert evals[0].endswith("(best so far: checkpoints/best)")  # the first one is the best
    assert [line for line in lines if line.startswith("checkpoint: ")] == [
        f"checkpoint: {resolve_checkpoint(tmp_path / 'run')}"
    ]


def test_resume_continues_from_the_latest_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train_sb3(tiny_config("sb3-ppo", run, total_steps=32), final_eval=False, log=print)
    weights = policy_state_dict(first.model.policy)
    config = tiny_config("sb3-ppo", run, total_steps=32)
    config.resume = str(run)
    seen: list[str] = []
    resumed = train_sb3(config, final_eval=False, log=seen.append)
    # Nothing left to do: the resumed model holds the saved weights and step counter.
    assert resumed.model.num_timesteps == 32 and any("resumed" in line for line in seen)
    for key, value in policy_state_dict(resumed.model.policy).items():
        assert torch.equal(value, weights[key]), key

    more = tiny_config("sb3-ppo", run, total_steps=64)
    more.resume = str(run)
    with pytest.raises(ValueError, match=r"ppo\.total_steps"):
        train_sb3(more, final_eval=False, log=seen.append)


@pytest.mark.parametrize(
    ("total_steps", "budget", "steps"),
    [(64, None, 64), (70, None, 64), (10, None, 32), (64, 50, 32), (64, 1000, 64)],
)
def test_baselines_train_whole_rollouts_within_the_budget(
    total_steps: int, budget: int | None, steps: int, tmp_path: Path
) -> None:
    """As mindloop's PPO counts whole updates: ``ppo.total_steps`` worth of rollouts (2 envs x
    16 steps here; at least one), never past ``run.max_env_steps`` (SB3 alone would finish
    the rollout that crosses it)."""
    from agent.baselines import baseline_steps

    config = tiny_config("sb3-ppo", tmp_path, total_steps=total_steps, max_env_steps=budget)
    assert baseline_steps(config) == steps


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"algo": "sb3-a2c"}, "unknown baseline 'sb3-a2c'"),
        ({"use_memory": True}, "has no memory tool"),
        ({"env": "mindloop/Nope-v0"}, "unknown task 'mindloop/Nope-v0'"),
        ({"torchrun": True}, "without torchrun"),
    ],
)
def test_bad_input_is_one_line(
    change: dict, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("sb3-ppo", tmp_path)
    if "torchrun" in change:
        monkeypatch.setenv("WORLD_SIZE", "2")
    if "algo" in change:
        config.algo = change["algo"]
    if "use_memory" in change:
        config.agent.use_memory = True
    if "env" in change:
        config.env.id = change["env"]
    with pytest.raises(ValueError, match=match) as err:
        train_sb3(config, log=lambda _: None)
    assert "\n" not in str(err.value)
