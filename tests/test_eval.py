"""agent.evaluation and eval.py: numbers match hand-computed rollouts, bad input fails in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the mindloop/ ids)
from agent.evaluation import (
    POLICIES,
    AgentPolicy,
    EvalPolicy,
    evaluate,
    make_eval_env,
    make_policy,
)

REACH = "mindloop/MuscleReach-v0"
ROOT = Path(__file__).resolve().parents[1]
# A fast body-only variant for agents: no image, so no CNN and no rendering per step.
BODY_ONLY = {"obs_keys": ["proprio", "touch"], "max_steps": 8}


def tiny_agent(env_id: str = REACH, env_kwargs: dict | None = None, memory: bool = True):
    """A small MindloopAgent (GRU 32, k_max 2, optional two-tier memory) for env_id."""
    from agent.agent import MindloopAgent
    from agent.config import AgentConfig
    from agent.cores import CoreConfig
    from agent.memory import MemoryConfig
    from agent.think import ThinkConfig
    from encoders.fusion import FusedEncoderConfig

    torch.manual_seed(0)
    env = gym.make(env_id, **(env_kwargs or {}))
    config = AgentConfig(
        encoders=FusedEncoderConfig(embed_dim=32),
        core=CoreConfig(hidden_dim=32),
        think=ThinkConfig(k_max=2),
        # Even op logits: the untrained agent calls set and get often, so stats are non-zero.
        memory=MemoryConfig(
            slot_dim=16, code_dim=8, key_dim=8, capacity=4, op_init_logits=(0.0, 0.0, 0.0)
        ),
        use_memory=memory,
    )
    agent = MindloopAgent(env.observation_space, env.action_space, config)
    env.close()
    return agent, config


def hand_rollout(env_id: str, seed: int, choose, env_kwargs: dict | None = None):
    """(return, length, success) of one episode in a plain env, actions from choose(env)."""
    env = gym.make(env_id, **(env_kwargs or {}))
    env.reset(seed=seed)
    total, steps, done, info = 0.0, 0, False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(choose(env))
        total += reward
        steps += 1
        done = terminated or truncated
    env.close()
    return total, steps, bool(info["is_success"])


def test_registry_has_expert_and_random():
    assert {"expert", "random"} <= set(POLICIES.names())
    for name in ("expert", "random"):
        assert isinstance(make_policy(name), EvalPolicy)
    with pytest.raises(ValueError, match=r"unknown policy 'nope'; available: expert, random"):
        make_policy("nope")


@pytest.mark.parametrize("num_envs", [1, 2])
def test_expert_matches_hand_rollout(num_envs):
    """Episode k runs on seed + k whatever the number of envs; the numbers are the env's."""
    result = evaluate(make_policy("expert"), REACH, episodes=3, seed=5, num_envs=num_envs)
    assert [e.seed for e in result.episodes] == [5, 6, 7]
    for e in result.episodes:
        ret, length, success = hand_rollout(
            REACH, e.seed, lambda env: env.unwrapped.expert_action()
        )
        assert e.length == length
        assert e.success == success
        assert e.episode_return == pytest.approx(ret, abs=1e-9)
    summary = result.summary()
    assert summary["success_rate"] == np.mean([e.success for e in result.episodes])
    assert summary["length_mean"] == np.mean([e.length for e in result.episodes])
    assert summary["env_steps"] == sum(e.length for e in result.episodes)


def test_random_matches_hand_rollout():
    """The random policy samples a seeded copy of the single action space, once per frame."""
    env_id, kwargs = "mindloop/CountAnswer-v0", {"obs_keys": ["text"]}
    result = evaluate(make_policy("random"), env_id, episodes=2, seed=7, env_kwargs=kwargs)
    space = copy.deepcopy(gym.make(env_id, **kwargs).action_space)
    space.seed(7)
    for e in result.episodes:  # episodes run one after the other in one env: one RNG stream
        ret, length, success = hand_rollout(env_id, e.seed, lambda env: space.sample(), kwargs)
        assert (e.episode_return, e.length, e.success) == (pytest.approx(ret), length, success)
    # A random speaker says something; its words are reported.
    assert all(e.said for e in result.episodes)


def test_agent_think_and_memory_match_hand_rollout():
    """Think steps per frame and memory calls equal what the agent's StepInfo said."""
    agent, _ = tiny_agent(env_kwargs=BODY_ONLY)
    result = evaluate(
        AgentPolicy(agent, deterministic=True), REACH, episodes=2, seed=1, env_kwargs=BODY_ONLY
    )
    for e in result.episodes:
        env = gym.make(REACH, **BODY_ONLY)
        obs, _ = env.reset(seed=e.seed)
        state, start, done = agent.initial_state(1), True, False
        think, sets, gets, ret = [], 0.0, 0.0, 0.0
        while not done:
            batch = {k: v[None] for k, v in obs.items()}
            actions, state, info = agent.act(batch, state, torch.tensor([start]), True)
            think.append(int(info.think_steps[0]))
            sets += float(info.memory_stats["set"][0].sum())
            gets += float(info.memory_stats["get"][0].sum())
            obs, reward, terminated, truncated, _ = env.step({k: v[0] for k, v in actions.items()})
            ret += reward
            start, done = False, terminated or truncated
        env.close()
        assert e.think_steps == think
        assert e.memory["set"] == sets and e.memory["get"] == gets
        assert e.episode_return == pytest.approx(ret, abs=1e-6)
        assert 0 <= e.memory["max_occupancy"] <= 4  # capacity
    s = result.summary()
    all_think = [k for e in result.episodes for k in e.think_steps]
    assert s["think_steps_mean"] == pytest.approx(np.mean(all_think))
    assert sum(s["think_steps_hist"]) == len(all_think)
    assert s["memory_set_per_episode"] == pytest.approx(
        np.mean([e.memory["set"] for e in result.episodes])
    )
    assert s["state_bytes_per_env"] > 0
    table = result.table()
    assert "think/frame" in table and "mem set/get/hit" in table
    peak = f", peak {s['memory_max_occupancy']:.0f} items / {s['memory_max_store_bytes']:.0f} B"
    assert peak in table.splitlines()[-1]  # the store's levels, for a policy that has one


def test_expert_memory_calls_without_a_store_in_the_table():
    """The expert labels memory calls (set/get/hit) but has no store: the summary line
    shows its calls and no "peak 0 items / 0 B" store levels."""
    result = evaluate(make_policy("expert"), "mindloop/CueRecall-v0", episodes=1, seed=0)
    summary = result.table().splitlines()[-1]
    assert "memory set " in summary and "hit rate" in summary
    assert "peak" not in summary and "items" not in summary
    assert "memory_max_occupancy" not in result.summary()


def test_json_and_table(tmp_path):
    result = evaluate(make_policy("expert"), REACH, episodes=2, seed=0)
    path = result.save_json(tmp_path / "out" / "eval.json")
    data = json.loads(path.read_text())
    assert data["env_id"] == REACH and data["policy"] == "expert"
    assert data["summary"]["success_rate"] == result.success_rate
    assert [e["return"] for e in data["episodes"]] == [e.episode_return for e in result.episodes]
    assert not list(tmp_path.glob("out/.*"))  # no temp file left
    assert "success" in result.table().splitlines()[-1]


class _NoSuccessInfo(gym.Wrapper):
    """A task seen as a Gymnasium env that defines no success (no ``info["is_success"]``)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {k: v for k, v in info.items() if k != "is_success"}

    def step(self, action):
        *out, info = self.env.step(action)
        return *out, {k: v for k, v in info.items() if k != "is_success"}


def test_env_without_success_reports_none_not_zero(tmp_path):
    """Gymnasium's own MuJoCo envs give no ``info["is_success"]``: the table, the JSON and
    the result say so instead of a made-up 0% success."""
    plain = evaluate(make_policy("expert"), REACH, episodes=1, seed=0)
    assert plain.reports_success and plain.summary()["success_rate"] == plain.success_rate
    env = _NoSuccessInfo(gym.make(REACH, **BODY_ONLY))
    result = evaluate(make_policy("random"), env, episodes=2, seed=0)
    env.close()
    assert not result.reports_success and result.summary()["success_rate"] is None
    table = result.table().splitlines()
    assert "success n/a" in table[-1]
    assert all(row.split()[2] == "-" for row in table[2:-1])  # the success column
    saved = json.loads(result.save_json(tmp_path / "eval.json").read_text())
    assert saved["summary"]["success_rate"] is None
    assert not any(e["reports_success"] for e in saved["episodes"])


def test_accepts_single_and_vector_envs():
    single = gym.make(REACH)
    a = evaluate(make_policy("expert"), single, episodes=2, seed=3)
    vec = make_eval_env(REACH, num_envs=2)
    b = evaluate(make_policy("expert"), vec, episodes=2, seed=3)
    vec.close()
    single.close()
    assert [e.episode_return for e in a.episodes] == [e.episode_return for e in b.episodes]
    auto = gym.make_vec(REACH, num_envs=1)  # autoreset on: evaluate refuses it
    with pytest.raises(ValueError, match=r"AutoresetMode\.DISABLED"):
        evaluate(make_policy("expert"), auto, episodes=1)
    auto.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"episodes": 0}, "episodes must be >= 1"),
        ({"env": "mindloop/Nope-v0"}, "unknown task 'mindloop/Nope-v0'; mindloop tasks: "),
        ({"vectorization": "threads"}, "unknown vectorization 'threads'; allowed: sync, async"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"env": REACH, "episodes": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(make_policy("expert"), args.pop("env"), **args)


# --------------------------------------------------------------------------- eval.py


def run_cli(argv, capsys):
    import eval as eval_cli

    code = eval_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_expert_video_record_json_and_replay(tmp_path, capsys):
    video, rec, js = tmp_path / "e.mp4", tmp_path / "rec", tmp_path / "e.json"
    code, out, _ = run_cli(
        ["--policy", "expert", "--episodes", 2, "--video", video, "--video-size", 128,
         "--record", rec, "--json", js],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "success 100.0%" in out and f"video: {video}" in out and f"record: {rec}" in out
    assert video.stat().st_size > 0 and (rec / "data" / "metadata.json").is_file()
    assert json.loads(js.read_text())["summary"]["episodes"] == 2
    # a run given the record as bc.dataset counts the env steps it took (1 env: its frames)
    from agent.datasets import load_demonstrations, recording_env_steps

    assert recording_env_steps(rec) == len(load_demonstrations(rec))
    code, out, _ = run_cli(["replay", rec, "--video", tmp_path / "r.mp4", "--size", 128], capsys)
    assert code == 0 and (tmp_path / "r.mp4").stat().st_size > 0


def test_cli_checkpoint(tmp_path, capsys):
    """eval.py rebuilds the agent and its env from the checkpoint directory alone."""
    from agent.checkpoint import save_checkpoint
    from agent.config import EnvConfig, TrainConfig

    agent, agent_config = tiny_agent(env_kwargs=BODY_ONLY)
    config = TrainConfig(
        env=EnvConfig(id=REACH, kwargs={"max_steps": 8}, obs_keys=("proprio", "touch")),
        agent=agent_config,
    )
    save_checkpoint(tmp_path / "run" / "checkpoints", agent, config, step=1)
    code, out, err = run_cli(["--checkpoint", tmp_path / "run", "--episodes", 2], capsys)
    assert code == 0, err
    assert f"on {REACH}" in out and "think/frame" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'; available: expert, random"),
        (
            ["--policy", "runs/x"],
            "a trained agent's run or checkpoint directory goes to --checkpoint",
        ),
        (["--policy", "expert", "--env", "mindloop/Nope-v0"], "unknown task 'mindloop/Nope-v0'"),
        (["--checkpoint", "/no/such/run"], "no checkpoint at '/no/such/run'"),
        (  # checked before the checkpoint is read (train.py's check, named for eval.py)
            ["--checkpoint", "/no/such/run", "--device", "foo"],
            "unknown --device 'foo'; choose from: auto, cpu, cuda, cuda:N",
        ),
        (["--policy", "expert", "--video", "out.avi"], "video path must end in .mp4"),
        (["replay", "/no/such/record"], "record /no/such/record does not exist"),
        (
            ["--policy", "expert", "--env-kwargs", "bogus", "1"],
            "mindloop/MuscleReach-v0 has no constructor argument 'bogus'; it takes: arm,",
        ),
        (  # checked before the async workers start (2.5 steps was accepted silently)
            "--policy expert --env mindloop/CueRecall-v0 --env-kwargs delay_steps 2.5 "
            "--num-envs 2 --vectorization async".split(),
            "argument delay_steps must be int, got 2.5 (float)",
        ),
        (  # any Gymnasium env evaluates; only mindloop envs (get_state) can be recorded
            ["--policy", "random", "--env", "Reacher-v5", "--episodes", "1", "--video", "r.mp4"],
            "needs an env with get_state() and set_state()",
        ),
    ],
)
def test_cli_bad_input_one_line(argv, message, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("eval.py: error: ") and message in err
    assert "Traceback" not in err + out


def test_cli_device_cuda_without_cuda(monkeypatch, capsys):
    """--device cuda where torch sees no CUDA device: one line, not torch's traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["--checkpoint", "/no/such/run", "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err + out
    assert "--device is cuda but no CUDA device is available; use cpu or auto" in err


def test_cli_not_a_record(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text('{"dataset_id": "x/y-v0"}')
    code, _, err = run_cli(["replay", tmp_path], capsys)
    assert code == 2 and "not a mindloop record" in err and err.count("\n") == 1


def test_cli_overwrite_refuses_a_directory_that_is_not_a_record(tmp_path, capsys):
    """--record RUN_DIR --overwrite: one line before any episode, and the run dir is kept."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_text("weights")
    code, out, err = run_cli(
        ["--policy", "expert", "--episodes", 1, "--record", run, "--overwrite"], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert f"{run} exists and is not a mindloop record, so overwrite will not delete it" in err
    assert "success" not in out  # refused before the episodes ran
    assert (run / "checkpoints" / "latest.pt").read_text() == "weights"


@pytest.mark.parametrize(
    ("option", "where", "message"),
    [
        ("--json", "afile/x.json", "afile is a file, not a directory"),
        ("--json", "adir", "is a directory; give a file path"),
        ("--video", "d.mp4", "is a directory; give a file path"),
        ("--video", "afile/sub/v.mp4", "afile is a file, not a directory"),
        ("--record", "afile/rec", "afile is a file, not a directory"),
        ("--video", "/proc/x.mp4", "cannot write in /proc"),
    ],
)
def test_cli_output_paths_checked_before_the_episodes(option, where, message, tmp_path, capsys):
    """A path that cannot be written: one line naming the option and the path, before any
    episode (they failed after every episode, with a traceback)."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "d.mp4").mkdir()
    path = tmp_path / where
    code, out, err = run_cli(["--policy", "expert", "--episodes", 1, option, path], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err + out
    assert f"{option} {path}" in err and message in err
    assert "success" not in out  # no episode ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "d.mp4"]


def test_cli_replay_video_path_checked_before_rendering(tmp_path, capsys):
    rec = tmp_path / "rec"
    assert run_cli(["--policy", "expert", "--episodes", 1, "--record", rec], capsys)[0] == 0
    code, out, err = run_cli(["replay", rec, "--video", "/proc/x.mp4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err + out
    assert "--video /proc/x.mp4: cannot write in /proc" in err


def test_cli_os_error_is_one_line_naming_the_path(monkeypatch, capsys):
    """The last resort: an OSError the checks did not foresee is `error: <path>: <reason>`."""
    import agent.evaluation as evaluation

    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/somewhere/out.json")

    monkeypatch.setattr(evaluation, "evaluate_and_save", fail)
    code, _, err = run_cli(["--policy", "expert", "--episodes", 1], capsys)
    assert code == 1 and err == "eval.py: error: /somewhere/out.json: Permission denied\n"


def test_cli_ctrl_c_is_one_line(monkeypatch, capsys):
    """Ctrl-C printed a KeyboardInterrupt traceback; train.py's is one line, so is eval.py's."""
    import agent.evaluation as evaluation

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_and_save", interrupt)
    code, _, err = run_cli(["--policy", "expert", "--episodes", 1], capsys)
    assert code == 130 and err.strip() == "eval.py: interrupted"


def test_cli_config_errors_exit_nonzero(capsys):
    """A config the dataclass rejects is one line on stderr and exit code 2 (not tyro's box)."""
    import eval as eval_cli

    cases = {
        (): "nothing to evaluate",
        ("--policy", "expert", "--checkpoint", "x"): "not both",
        ("--policy", "expert", "--episodes", "0"): "episodes",
    }
    for argv, message in cases.items():
        assert eval_cli.main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("eval.py: error: ") and err.count("\n") == 1, err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("algo", ["PPO", "RecurrentPPO"])
def test_sb3_baseline_matches_its_own_predict(algo):
    """An SB3 model on the flattened env is evaluated by the same loop, same numbers."""
    import sb3_contrib
    import stable_baselines3

    from agent.evaluation import SB3Policy
    from envs.wrappers import FlattenActionWrapper

    cls = getattr(sb3_contrib if algo == "RecurrentPPO" else stable_baselines3, algo)
    policy = "MultiInputLstmPolicy" if algo == "RecurrentPPO" else "MultiInputPolicy"
    train_env = FlattenActionWrapper(gym.make(REACH, **BODY_ONLY), rescale=True)
    model = cls(policy, train_env, n_steps=8, batch_size=8, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]} if algo == "PPO" else {"lstm_hidden_size": 8})  # fmt: skip
    result = evaluate(
        SB3Policy(model, rescale=True), REACH, episodes=2, seed=4, env_kwargs=BODY_ONLY
    )
    for e in result.episodes:  # SB3's own loop on the wrapped env
        obs, _ = train_env.reset(seed=e.seed)
        state, start, done, total = None, np.ones(1, bool), False, 0.0
        while not done:
            action, state = model.predict({k: v[None] for k, v in obs.items()}, state=state,
                                          episode_start=start, deterministic=True)  # fmt: skip
            obs, reward, terminated, truncated, _ = train_env.step(action[0])
            total, start, done = total + reward, np.zeros(1, bool), terminated or truncated
        assert e.episode_return == pytest.approx(total, abs=1e-5)
    train_env.close()


def test_accepts_kwarg_reads_module_colon_id():
    """``module:id`` (Gymnasium's form for an env registered on import) is read like a plain
    id; it raised NamespaceNotFound when a run of such an env reached its final evaluation."""
    import tests.tiny_envs  # noqa: F401  (registers the ids; passed only after other files did)
    from agent.evaluation import accepts_kwarg

    assert accepts_kwarg("tests.tiny_envs:mindloop_test/TinyReach-v0", "max_steps")
    assert not accepts_kwarg("tests.tiny_envs:mindloop_test/TinyReach-v0", "audio_info")


def test_agent_on_another_tasks_env_names_every_difference_before_a_step():
    """A mindloop agent evaluated where its observation keys or shapes are not: one line
    naming all that is missing, before the first step (the encoder named one key)."""
    agent, _ = tiny_agent(REACH, BODY_ONLY, memory=False)  # reads proprio and touch
    with pytest.raises(ValueError) as err:
        evaluate(AgentPolicy(agent, name="reach agent"), "mindloop/CountAnswer-v0", episodes=1)
    message = str(err.value)
    assert "\n" not in message and message.startswith("reach agent cannot act in this env: ")
    assert "'proprio', 'touch' missing" in message
    seeing = {"obs_keys": ["image", "proprio"], "max_steps": 8}
    agent, _ = tiny_agent(REACH, seeing, memory=False)
    with pytest.raises(ValueError) as err:
        evaluate(AgentPolicy(agent), REACH, episodes=1, env_kwargs={**seeing, "image_size": 32})
    assert "'image' is (32, 32, 3) uint8 in this env, (64, 64, 3) uint8 in training" in str(
        err.value
    )


ASYNC_AFTER_RENDER = """
import gymnasium as gym
import envs
from agent.evaluation import evaluate, make_policy

if __name__ == "__main__":
    env = gym.make("mindloop/MuscleReach-v0")
    env.reset(seed=0)  # renders the image observation: this process now holds a GL context
    result = evaluate(make_policy("expert"), env.spec.id, 2, num_envs=2, vectorization="async")
    print("episodes", len(result.episodes))
"""


def test_async_eval_after_the_caller_rendered_finishes(tmp_path):
    """Async workers must not be forked from a process holding a GL context (they hung in
    mjr_readPixels); a subprocess with a timeout, so a hang fails instead of blocking."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "async_after_render.py"
    script.write_text(ASYNC_AFTER_RENDER)
    # its own session: on a hang the workers are killed with it, not left orphaned
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("async evaluation hung after the calling process rendered")
    assert proc.returncode == 0, err[-2000:]
    assert "episodes 2" in out
