"""train.py end to end: every --algo on a tiny budget, exact resume, bad input, run layout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import agent.ppo as ppo_mod
from agent.checkpoint import load_agent, read_checkpoint_meta, resolve_checkpoint
from agent.config import TrainConfig
from agent.training import ALGORITHMS, ANCHOR_AFTER_BC, keep_best, ppo_anchor_coef, train
from tests import tiny_envs  # noqa: F401  (registers mindloop_test/*)

ROOT = Path(__file__).resolve().parents[1]
TINY_REACH = "mindloop_test/TinyReach-v0"
TINY_ANSWER = "mindloop_test/TinyAnswer-v0"


def tiny_config(run_dir: Path, algo: str = "bc+ppo", env_id: str = TINY_REACH) -> TrainConfig:
    cfg = TrainConfig(algo=algo)
    cfg.env.id = env_id
    cfg.env.num_envs = 4
    cfg.env.vectorization = "sync"
    cfg.agent.encoders.embed_dim = 16
    cfg.agent.core.hidden_dim = 16
    cfg.agent.think.k_max = 2
    cfg.ppo.total_steps = 4 * 16 * 6  # 6 updates
    cfg.ppo.rollout_steps = 16
    cfg.ppo.bptt_steps = 4
    cfg.ppo.epochs = 2
    cfg.ppo.minibatches = 2
    cfg.bc.episodes = 16
    cfg.bc.updates = 6
    cfg.bc.batch_envs = 4
    cfg.bc.seq_len = 8
    cfg.bc.dagger_rounds = 1  # one tiny DAgger round: the learner drives, the expert labels
    cfg.bc.dagger_episodes = 4
    cfg.bc.dagger_updates = 2
    cfg.run.dir = str(run_dir)
    cfg.run.eval_episodes = 4
    cfg.run.checkpoint_every = 1
    cfg.run.video = False
    cfg.run.progress = False
    cfg.run.tensorboard = False
    return cfg


MINDLOOP_ALGOS = [name for name in ALGORITHMS.names() if ALGORITHMS.get(name).external is None]
BASELINE_ALGOS = [name for name in ALGORITHMS.names() if ALGORITHMS.get(name).external]


@pytest.mark.parametrize("algo", MINDLOOP_ALGOS)
def test_every_algo_runs_end_to_end(algo, tmp_path, capsys):
    env = TINY_ANSWER if algo == "sft-rl" else TINY_REACH
    cfg = tiny_config(tmp_path / "run", algo, env)
    result = train(cfg)
    # the default KL anchor is on exactly where PPO fine-tunes a cloned policy
    assert ("KL anchor 1 " in capsys.readouterr().out) == (algo == "bc+ppo")
    assert result.success_rate is not None and 0.0 <= result.success_rate <= 1.0
    ckpt = resolve_checkpoint(result.run_dir)
    meta = read_checkpoint_meta(ckpt)
    assert meta["phases_done"] == list(ALGORITHMS.get(algo).phases)
    assert meta["results"]["eval"]["episodes"] == 4
    _, saved = load_agent(result.run_dir)
    assert saved.algo == algo
    assert json.loads((result.run_dir / "config.json").read_text())["algo"] == algo
    assert (result.run_dir / "eval.json").exists()


def test_ppo_anchor_defaults_to_the_cloned_policy():
    """Left None, ``ppo.anchor_coef`` is on after behaviour cloning and off from scratch; a
    value the user gives always wins."""
    cfg = TrainConfig()
    assert cfg.ppo.anchor_coef is None
    assert ppo_anchor_coef(cfg, ["bc"]) == ANCHOR_AFTER_BC > 0
    assert ppo_anchor_coef(cfg, []) == 0.0
    for given in (0.0, 0.3):
        cfg.ppo.anchor_coef = given
        assert ppo_anchor_coef(cfg, ["bc"]) == ppo_anchor_coef(cfg, []) == given
    with pytest.raises(ValueError, match=r"ppo\.anchor_coef must be >= 0"):
        TrainConfig(ppo=type(cfg.ppo)(anchor_coef=-1.0))


def test_max_env_steps_budgets_the_whole_run(tmp_path):
    """``run.max_env_steps`` counts demonstrations, DAgger rollouts and PPO together: PPO
    gets the whole updates the BC phase left, and none when nothing is left."""
    per_update = 4 * 16
    first = train(tiny_config(tmp_path / "free"))
    bc_steps = first.env_steps - 6 * per_update  # demos + DAgger (no budget: 6 PPO updates)
    assert bc_steps > 0
    cfg = tiny_config(tmp_path / "budget")
    cfg.run.max_env_steps = bc_steps + 2 * per_update + per_update // 2
    budgeted = train(cfg)
    assert budgeted.env_steps == bc_steps + 2 * per_update  # whole updates within the budget
    cfg = tiny_config(tmp_path / "spent")
    cfg.run.max_env_steps = bc_steps
    spent = train(cfg)
    assert spent.env_steps == bc_steps and spent.success_rate is not None


def test_demonstrations_count_alike_recorded_here_or_given_as_bc_dataset(tmp_path):
    """The BC data's env steps count towards the run whether the run recorded it or was
    handed it (``bc.dataset``), and they are what recording took: every env of the vector env
    steps until the last episode is done, so more than the episodes' frames."""
    from agent.datasets import recording_env_steps
    from agent.demonstrations import load_episodes

    recorded_here = train(tiny_config(tmp_path / "here"))
    demos = recorded_here.run_dir / "demos"
    steps = recording_env_steps(demos)
    frames = sum(len(e) for e in load_episodes(demos))
    assert steps is not None and steps >= frames and steps % 4 == 0  # 4 envs step together
    cfg = tiny_config(tmp_path / "given")
    cfg.bc.dataset = str(demos)
    given = train(cfg)
    assert given.env_steps == recorded_here.env_steps  # same seeds: same DAgger and PPO


@pytest.mark.parametrize("algo", BASELINE_ALGOS)
def test_baseline_algos_run_end_to_end(algo, tmp_path):
    cfg = tiny_config(tmp_path / "run", algo)
    result = train(cfg)
    assert result.checkpoint is not None and result.success_rate is not None


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    agent, _ = load_agent(run_dir)
    return agent.state_dict()


@pytest.mark.parametrize("anchor", [0.0, 1.0], ids=["free", "anchored"])
def test_resume_continues_exactly(anchor, tmp_path, monkeypatch):
    """Stop after 3 of 6 PPO updates (after BC), resume: the same weights as a run that was
    never stopped (CPU, seeded). Covers optimizer, RNGs, env states, recurrent state, and the
    frozen BC policy that ``ppo.anchor_coef`` pulls towards."""

    def config(run_dir: Path) -> TrainConfig:
        cfg = tiny_config(run_dir)
        cfg.ppo.anchor_coef = anchor
        return cfg

    full = train(config(tmp_path / "full"))
    expected = final_weights(full.run_dir)

    stopped = config(tmp_path / "stopped")
    real_iterate = ppo_mod.PPOTrainer.iterate

    def stop_at_3(self):
        if self.updates_done == 3:
            raise KeyboardInterrupt("killed")
        return real_iterate(self)

    monkeypatch.setattr(ppo_mod.PPOTrainer, "iterate", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(stopped)
    monkeypatch.setattr(ppo_mod.PPOTrainer, "iterate", real_iterate)
    assert read_checkpoint_meta(tmp_path / "stopped")["phases_done"] == ["bc"]

    resumed_cfg = config(tmp_path / "stopped")
    resumed_cfg.resume = str(tmp_path / "stopped")
    resumed = train(resumed_cfg)
    got = final_weights(resumed.run_dir)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert resumed.success_rate == full.success_rate
    # what the phases before the stop reported (BC's held-out agreement) is kept too
    assert resumed.results == full.results and "bc" in resumed.results
    assert read_checkpoint_meta(resumed.run_dir)["results"] == full.results


def test_numpy_global_rng_state_survives_json():
    """numpy's legacy RNG round-trips through a checkpoint's JSON whole, including the cached
    second normal of a Box-Muller pair (an odd number of randn draws leaves one)."""
    import numpy as np

    from agent.training import _jsonable_numpy_state, _set_numpy_state

    np.random.seed(0)
    np.random.randn()  # one normal drawn: the pair's second is cached
    saved = json.loads(json.dumps(_jsonable_numpy_state()))
    expected = np.random.randn(3)
    np.random.seed(1)
    _set_numpy_state(saved)
    np.testing.assert_array_equal(np.random.randn(3), expected)


def test_periodic_evaluation_keeps_the_best_weights(tmp_path, capsys):
    """With ``run.eval_every``, ``checkpoints/best`` holds the weights of the best evaluation
    (periodic and final; success rate, then return) and ``latest`` stays the newest step."""
    cfg = tiny_config(tmp_path / "run")
    cfg.run.eval_every = 1
    result = train(cfg)
    printed = capsys.readouterr().out
    evals = [float(x) / 100 for x in re.findall(r"eval @ \d+ steps: success (\d+)%", printed)]
    assert len(evals) == 5  # after PPO updates 1..5 of 6 (the 6th is the final evaluation)
    best_dir = resolve_checkpoint(result.run_dir / "checkpoints" / "best")
    best = read_checkpoint_meta(best_dir)["eval"]
    assert best["success_rate"] == pytest.approx(max([*evals, result.success_rate]))
    assert resolve_checkpoint(result.run_dir).name.startswith("step_")
    agent, saved = load_agent(best_dir)  # eval.py --checkpoint <run>/checkpoints/best
    assert saved.algo == "bc+ppo" and agent.observation_space == result.agent.observation_space
    # a worse evaluation leaves it (read back from disk, so a --resume keeps the record too)
    run = SimpleNamespace(config=cfg, dist=SimpleNamespace(is_main=True),
                          run_dir=result.run_dir, agent=result.agent, env_step=10**6)  # fmt: skip
    assert not keep_best(run, best["success_rate"], best["episode_return"] - 1.0)
    assert read_checkpoint_meta(best_dir)["eval"] == best
    assert keep_best(run, best["success_rate"], best["episode_return"] + 1.0)
    assert read_checkpoint_meta(best_dir)["step"] == 10**6


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=1200
    )


BAD_INPUT = [
    (["--env.id", "mindloop/Nope-v0"], ["mindloop/Nope-v0", "mindloop/MuscleReach-v0"]),
    (["--algo", "dqn"], ["dqn", "bc+ppo", "sb3-ppo"]),
    (["--agent.core.name", "mamba"], ["mamba", "gru"]),
    (["--agent.encoders.encoders", "image", "vit9000"], ["vit9000", "cnn"]),
    (["--ppo.bptt-steps", "7"], ["bptt_steps=7"]),
    (["--bc.expert-latent-frames", "last"], ["last", "all", "onset"]),
    (["--ppo.clip", "-0.1"], ["ppo.clip", "-0.1"]),
    (["--run.seed", "-1"], ["run.seed", "-1"]),
    (["--algo", "ppo", "--run.max-env-steps", "10"], ["run.max_env_steps=10", "one PPO update"]),
    (["--algo", "sb3-ppo", "--run.max-env-steps", "10"], ["run.max_env_steps=10", "8 envs"]),
    (
        ["--run.eval-every", "2", "--run.eval-episodes", "0"],
        ["run.eval_episodes=0", "eval-every 0"],
    ),
    (["--algo", "sb3-ppo", "--agent.core.name", "transformer"], ["sb3-ppo", "agent.core.name"]),
    (["--algo", "sb3-ppo", "--ppo.minibatches", "3"], ["ppo.minibatches=3", "must divide"]),
    (["--algo", "sft-rl"], ["sft-rl", "text", "muscles"]),  # MuscleReach answers with muscles
    (["--bc.dataset", "/nonexistent/demos"], ["/nonexistent/demos", "does not exist"]),
    # a dataset given to an algorithm without behaviour cloning was silently ignored
    (["--algo", "ppo", "--bc.dataset", "demos"], ["--bc.dataset", "--algo ppo", "bc+ppo"]),
    (["--env.kwargs", "render_mode", "human"], ["render_mode 'human'", "leave it out"]),
    # tyro's own parse errors name the option they are about
    (["--env.num-envs", "abc"], ["--env.num-envs: ", "'abc'"]),
    (["--env.kwargs", "max_steps"], ["--env.kwargs: ", "KEY VALUE pairs"]),
    (["--env.kwargs", "bogus", "1"], ["'bogus'", "arm", "max_steps"]),
    (
        ["--env.id", "mindloop/CueRecall-v0", "--env.kwargs", "delay_steps", "abc"],
        ["delay_steps", "'abc'", "int"],
    ),
    # mindloop agents read Dict spaces; a plain Gymnasium env crashed in encoders_for
    (["--algo", "ppo", "--env.id", "Hopper-v5"], ["Hopper-v5", "Box(", "mindloop/", "Dict"]),
    (["--algo", "bc", "--env.id", "Hopper-v5"], ["Hopper-v5", "MujocoSensesWrapper"]),
    # Dict spaces but no scripted expert: bc failed after making the run directory, with a
    # message about recording for --record or --video
    (
        ["--algo", "bc", "--env.id", "mindloop_test/ReacherNoExpert-v0"],
        ["--algo bc", "ReacherNoExpert-v0", "scripted expert", "--algo ppo"],
    ),
    (
        ["--algo", "bc+ppo", "--env.id", "mindloop_test/ReacherNoExpert-v0"],
        ["--algo bc+ppo", "scripted expert"],
    ),
    (
        ["--algo", "sb3-ppo", "--env.id", "CartPole-v1"],
        ["CartPole-v1", "observation space Box(", "action space Discrete(2)"],
    ),
]


@pytest.mark.parametrize(("args", "names"), BAD_INPUT)
def test_bad_input_is_one_line_error(args, names, tmp_path):
    """train.py's main: a one-line ``error: ...`` naming the value and the choices, a
    non-zero exit, no traceback, and no run directory left behind."""
    import train as train_script

    run_dir = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main([*args, "--run.dir", str(run_dir), "--run.no-video"])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    assert not run_dir.exists()


def test_non_dict_spaces_are_one_line_even_with_array_bounds():
    """numpy prints long array bounds over several lines; the error stays one line."""
    import numpy as np
    from gymnasium import spaces

    from agent.training import check_dict_spaces

    high = np.arange(1, 41, dtype=np.float32)  # 4 lines in str()
    box = spaces.Box(-high, high)
    with pytest.raises(ValueError) as err:
        check_dict_spaces("my/Env-v0", box, spaces.Dict(muscles=box))
    message = str(err.value)
    assert "\n" not in message and "my/Env-v0 has observation space Box([" in message
    assert "action space" not in message  # the Dict one is fine
    check_dict_spaces("my/Env-v0", spaces.Dict(proprio=box), spaces.Dict(muscles=box))


def test_bad_input_from_the_command_line():
    """The same through a real process: stderr is the one line, the exit status non-zero."""
    proc = run_cli("--env.id", "mindloop/Nope-v0")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown task"), proc.stderr


@pytest.mark.parametrize("algo", ["bc+ppo", "sb3-ppo"])
def test_cuda_without_cuda_is_one_line_error_for_every_algo(algo, tmp_path, monkeypatch):
    """mindloop's trainer and the SB3 baselines alike (SB3 fell back to CPU silently)."""
    import train as train_script

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--algo", algo, "--run.device", "cuda", "--run.dir", str(run_dir)])
    assert exit_info.value.code == (
        "error: run.device is cuda but no CUDA device is available; use cpu or auto"
    )
    assert not run_dir.exists()


def test_a_run_directory_holding_a_run_is_not_reused(tmp_path):
    """Training into a directory that holds another run (without --resume) would mix the two
    (its demonstrations, best checkpoint and video): refused, the old run left as it was."""
    import train as train_script

    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--run.dir", str(run_dir), "--run.no-video"])
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message
    assert "already holds a run" in message and f"--resume {run_dir}" in message
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.json"]
    assert (run_dir / "config.json").read_text() == "{}"


def test_bc_dataset_of_another_task_is_one_line_error(tmp_path):
    """BC from another task's demonstrations: one line naming both tasks, before anything is
    written (MuscleReach data fits SoundReach's spaces, so the spaces alone cannot tell)."""
    from agent.datasets import collect_expert_dataset

    demos = collect_expert_dataset(TINY_ANSWER, 2, seed=0, path=tmp_path / "answer_demos")
    cfg = tiny_config(tmp_path / "run", "bc", TINY_REACH)
    cfg.bc.dataset = str(demos)
    with pytest.raises(ValueError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert f"recorded on {TINY_ANSWER}, not on {TINY_REACH}" in message
    assert not (tmp_path / "run").exists()


def test_bc_dataset_of_other_observations_is_one_line_error(tmp_path):
    """The same task recorded with other observations (here state only): one line naming the
    missing key."""
    from agent.datasets import collect_expert_dataset

    task = "mindloop/MuscleReach-v0"
    demos = collect_expert_dataset(
        task, 1, seed=0, path=tmp_path / "demos", env_kwargs={"obs_keys": ("proprio",)}
    )
    cfg = tiny_config(tmp_path / "run", "bc", task)
    cfg.bc.dataset = str(demos)
    with pytest.raises(ValueError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message and "'image'" in message and "missing" in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("under", ["", "/run"])
def test_run_dir_that_is_or_is_under_a_file_is_one_line(under, tmp_path):
    """--run.dir naming a file (or a path under one) raised FileExistsError /
    NotADirectoryError with a traceback, after the config was checked."""
    import train as train_script

    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--algo", "ppo", "--run.dir", f"{afile}{under}"])
    message = exit_info.value.code
    assert message == (
        f"error: run.dir '{afile}{under}' cannot be a directory: '{afile}' is a file; "
        "choose another --run.dir"
    )
    assert afile.read_text() == "mine"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("think_cost", float("nan"), "ppo.think_cost must be a finite number, got nan"),
        ("lr", "fast", "config ppo.lr must be a float, got 'fast'"),
        ("max_grad_norm", 0.0, "ppo.max_grad_norm must be > 0"),
    ],
)
def test_fields_set_after_the_config_was_built_are_checked(field, value, message, tmp_path):
    """The config checks ran in __post_init__ only: from Python, ``cfg.ppo.think_cost = nan;
    train(cfg)`` started training and died in torch."""
    cfg = tiny_config(tmp_path / "run", "ppo")
    setattr(cfg.ppo, field, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_path_error_without_a_path_is_still_one_line(monkeypatch):
    """Minari and timm raise FileNotFoundError with a message only: it printed 'None: None'."""
    import agent.training
    import train as train_script

    def missing(config):
        raise FileNotFoundError("Dataset x not found locally at /y")

    monkeypatch.setattr(agent.training, "train", missing)
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--algo", "ppo"])
    assert exit_info.value.code == "error: Dataset x not found locally at /y"


def test_bc_dataset_of_another_policy_warns(tmp_path):
    """Demonstrations recorded with another policy than the scripted expert (eval.py
    --policy random --record) are cloned as they are: a warning says so."""
    from agent.datasets import collect_expert_dataset

    demos = collect_expert_dataset(TINY_REACH, 2, seed=0, path=tmp_path / "rnd", policy="random")
    cfg = tiny_config(tmp_path / "run", "bc", TINY_REACH)
    cfg.bc.dataset = str(demos)
    cfg.bc.dagger_rounds = 0
    with pytest.warns(RuntimeWarning, match="recorded with policy 'random', not the scripted"):
        train(cfg)


def test_help_lists_every_algorithm():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ALGORITHMS.names():
        assert name in proc.stdout, name
    # docstrings read as plain text (agent.cli.plain_help): no reST markup
    assert "``" not in proc.stdout and ":func:" not in proc.stdout


def test_plain_help_joins_paragraph_lines_and_keeps_list_items():
    from agent.cli import plain_help

    doc = """Lines of one paragraph
    (this one starts with a bracket) and ``literal`` and :func:`build_core`.

    - a list item
    - another
    """
    assert plain_help(doc) == (
        "Lines of one paragraph (this one starts with a bracket) and literal and build_core."
        "\n\n- a list item\n- another"
    )


def test_help_under_torchrun_is_printed_by_rank_0_only():
    """torchrun starts the script once per rank; each used to print the whole help."""
    import os

    env = dict(os.environ, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    proc = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout[-500:] + proc.stderr[-2000:]


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import agent.training
    import train as train_script

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(agent.training, "train", interrupted)
    run_dir = tmp_path / "r"
    assert train_script.main(["--run.dir", str(run_dir)]) == 130
    assert f"python train.py --resume {run_dir}" in capsys.readouterr().out


def test_ctrl_c_inside_a_ctypes_call_is_an_interrupt_too(tmp_path, monkeypatch, capsys):
    """Ctrl-C while a ctypes call runs (an EGL render) surfaces as that call's error, with the
    KeyboardInterrupt as its context: the same clean stop, not a traceback."""
    import ctypes

    import agent.training
    import train as train_script

    def interrupted_in_ctypes(config):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ctypes.ArgumentError("argument 1: KeyboardInterrupt:") from None

    monkeypatch.setattr(agent.training, "train", interrupted_in_ctypes)
    run_dir = tmp_path / "r"
    assert train_script.main(["--run.dir", str(run_dir)]) == 130
    assert f"python train.py --resume {run_dir}" in capsys.readouterr().out


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_start(tmp_path, monkeypatch):
    """Ctrl-C during behaviour cloning leaves config.json and the recorded demonstrations but
    no checkpoint: ``--resume DIR`` (what the interrupt message says) starts that run again
    in its directory, reusing the demonstrations, and ends with the weights of a run never
    stopped. The directory is not a dead end (``--run.dir`` refuses it, it holds a run)."""
    import agent.training
    import train as train_script

    whole = train(tiny_config(tmp_path / "whole", "bc"))
    real = agent.training.collect_episodes

    def ctrl_c_in_dagger(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(agent.training, "collect_episodes", ctrl_c_in_dagger)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "stopped", "bc"))
    stopped = tmp_path / "stopped"
    assert (stopped / "config.json").is_file() and (stopped / "demos").is_dir()
    assert not (stopped / "checkpoints").exists()
    monkeypatch.setattr(agent.training, "collect_episodes", real)
    config = train_script.parse_config(["--resume", str(stopped)])
    again = train(config)
    assert again.run_dir == stopped
    assert again.env_steps == whole.env_steps
    expected = whole.agent.state_dict()
    for name, value in again.agent.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def test_encoder_options_from_the_command_line_add_to_the_light_defaults():
    """``--agent.encoders.options KEY.FIELD VALUE ...`` takes any encoder field (not only the
    keys the defaults name), and the light defaults stay beneath what is given."""
    import train as train_script
    from agent.config import LIGHT_ENCODERS, config_to_dict

    assert config_to_dict(train_script.parse_config([])) == config_to_dict(TrainConfig())
    parsed = train_script.parse_config(
        ["--agent.encoders.options", "image.pool", "mean", "audio.channels", "(4, 8)"]
    )
    assert parsed.agent.encoders.options == {
        **LIGHT_ENCODERS,
        "image.pool": "mean",
        "audio.channels": "(4, 8)",
    }


def test_resume_alone_restores_the_runs_config(tmp_path):
    """``train.py --resume DIR`` needs no other option: the run's config is the default."""
    import train as train_script

    cfg = tiny_config(tmp_path / "run", "bc")
    train(cfg)
    parsed = train_script.parse_config(["--resume", str(tmp_path / "run"), "--run.threads", "2"])
    assert parsed.resume == str(tmp_path / "run")
    assert parsed.algo == "bc" and parsed.env.id == TINY_REACH and parsed.run.threads == 2
    assert parsed.agent == load_agent(tmp_path / "run")[1].agent


def test_resume_of_a_run_from_before_the_anchor_keeps_it_off(tmp_path):
    """A checkpoint whose config predates ``ppo.anchor_coef`` trained without the anchor, so
    ``--resume`` continues without it (not with today's default, which needs a reference the
    checkpoint does not have); a trainer asked to anchor such a state says what to do."""
    import train as train_script

    cfg = tiny_config(tmp_path / "run", "bc")
    cfg.ppo.anchor_coef = 0.0
    train(cfg)
    meta_path = resolve_checkpoint(tmp_path / "run") / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["ppo"]["anchor_coef"]
    meta_path.write_text(json.dumps(meta))
    parsed = train_script.parse_config(["--resume", str(tmp_path / "run")])
    assert parsed.ppo.anchor_coef == 0.0
    assert load_agent(tmp_path / "run")[1].ppo.anchor_coef == 0.0

    trainer = SimpleNamespace(reference=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"resume it with ppo\.anchor_coef=0"):
        ppo_mod.PPOTrainer.load_state_dict(trainer, {"updates_done": 3})


def test_resume_with_a_different_config_names_the_field(tmp_path):
    cfg = tiny_config(tmp_path / "run", "bc")
    train(cfg)
    proc = run_cli("--resume", str(tmp_path / "run"), "--ppo.lr", "0.5")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ppo.lr" in lines[0], proc.stderr


def test_resume_with_weights_that_do_not_fit_is_one_line(tmp_path):
    """An edited config.json (here a wider core) builds an agent the saved weights do not
    fit: one line naming the weights file, not load_state_dict's line per tensor."""
    import train as train_script

    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, "bc"))
    for path in (run_dir / "config.json", resolve_checkpoint(run_dir) / "config.json"):
        data = json.loads(path.read_text())
        config = data.get("config", data)  # a checkpoint's config.json nests the run's
        config["agent"]["core"]["hidden_dim"] = 32
        path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit") as failure:
        train(train_script.parse_config(["--resume", str(run_dir)]))
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize("algo", ["bc", "sb3-ppo"])
def test_resume_of_a_checkpoint_copied_out_of_its_run_writes_nothing(algo, tmp_path):
    """A resume writes to the checkpoint's grandparent (<run>/checkpoints/step_x -> <run>):
    for a checkpoint copied elsewhere that folder is not a run, and its files were
    overwritten (eval.json replaced, checkpoints/ and tb/ made)."""
    import shutil

    import train as train_script

    cfg = tiny_config(tmp_path / "run", algo)
    cfg.ppo.total_steps = 64
    train(cfg)
    mine = tmp_path / "mine"
    shutil.copytree(resolve_checkpoint(tmp_path / "run"), mine / "saved" / "best")
    (mine / "eval.json").write_text('{"my": "results"}')
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    with pytest.raises(ValueError, match="not in a run's checkpoints/ folder") as failure:
        train(train_script.parse_config(["--resume", str(mine / "saved" / "best")]))
    assert "\n" not in str(failure.value)
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert (mine / "eval.json").read_text() == '{"my": "results"}'


def test_resume_of_a_run_whose_checkpoints_folder_is_a_symlink(tmp_path):
    """<run>/checkpoints -> scratch storage is a run's own folder: the resume continues that
    run (it was refused, and before that wrote next to the symlink's target)."""
    import train as train_script

    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, "bc")
    train(cfg)
    (run_dir / "checkpoints").rename(tmp_path / "scratch")
    (run_dir / "checkpoints").symlink_to(tmp_path / "scratch")
    result = train(train_script.parse_config(["--resume", str(run_dir)]))
    assert result.run_dir == run_dir and (run_dir / "eval.json").exists()
    assert not (tmp_path / "eval.json").exists()  # nothing beside the symlink's target


def test_resume_of_a_newer_checkpoint_format_is_one_line(tmp_path):
    """eval.py refused a checkpoint of a newer format; --resume read it and wrote format-1
    checkpoints into that run."""
    import train as train_script

    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, "bc"))
    meta_path = resolve_checkpoint(run_dir) / "config.json"
    meta = json.loads(meta_path.read_text())
    for version, message in ((99, "has format 99; this mindloop reads up to"), ("2", "not an int")):
        meta["format_version"] = version
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=message):
            train(train_script.parse_config(["--resume", str(run_dir)]))


def muscle_reach_config(run_dir: Path) -> TrainConfig:
    """The real default task (image, audio, proprio, touch) on a small budget."""
    cfg = TrainConfig()
    cfg.env.num_envs = 2
    cfg.env.vectorization = "async"  # worker processes, as in the default run
    cfg.ppo.total_steps = 2 * 16 * 4  # 4 updates
    cfg.ppo.rollout_steps = 16
    cfg.ppo.bptt_steps = 8
    cfg.ppo.epochs = 2
    cfg.ppo.minibatches = 2
    cfg.bc.episodes = 8
    cfg.bc.updates = 4
    cfg.bc.batch_envs = 2
    cfg.bc.dagger_rounds = 1
    cfg.bc.dagger_episodes = 2
    cfg.bc.dagger_updates = 2
    cfg.run.dir = str(run_dir)
    cfg.run.eval_episodes = 2
    cfg.run.checkpoint_every = 1
    cfg.run.video = False
    cfg.run.progress = False
    cfg.run.tensorboard = False
    return cfg


@pytest.mark.slow
def test_resume_continues_exactly_on_muscle_reach(tmp_path, monkeypatch):
    """Exact resume with async env workers, rendered images and synthesized audio."""
    full = train(muscle_reach_config(tmp_path / "full"))
    expected = final_weights(full.run_dir)
    real_iterate = ppo_mod.PPOTrainer.iterate

    def stop_at_2(self):
        if self.updates_done == 2:
            raise KeyboardInterrupt("killed")
        return real_iterate(self)

    monkeypatch.setattr(ppo_mod.PPOTrainer, "iterate", stop_at_2)
    with pytest.raises(KeyboardInterrupt):
        train(muscle_reach_config(tmp_path / "stopped"))
    monkeypatch.setattr(ppo_mod.PPOTrainer, "iterate", real_iterate)
    cfg = muscle_reach_config(tmp_path / "stopped")
    cfg.resume = str(tmp_path / "stopped")
    got = final_weights(train(cfg).run_dir)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.slow
def test_default_train_reaches_80_percent(tmp_path):
    """``python train.py`` as the README runs it (minutes on 2 cores)."""
    proc = run_cli("--run.dir", str(tmp_path / "run"), "--run.no-progress", "--run.no-video")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("success rate:"))
    rate = float(line.split(":")[1].split("%")[0]) / 100
    assert rate >= 0.8, line


@pytest.mark.slow
def test_sft_as_rl_learns_to_answer(tmp_path):
    """SFT as RL on TinyAnswer: rewarded only for emitting the expert's answer token, PPO
    learns to remember the shown token and say it when asked."""
    cfg = tiny_config(tmp_path / "run", "sft-rl", TINY_ANSWER)
    cfg.env.num_envs = 8
    cfg.agent.encoders.embed_dim = 32
    cfg.agent.core.hidden_dim = 32
    cfg.ppo.total_steps = 8 * 32 * 20
    cfg.ppo.rollout_steps, cfg.ppo.bptt_steps, cfg.ppo.lr = 32, 8, 3e-3
    cfg.ppo.epochs, cfg.ppo.minibatches = 4, 4
    cfg.run.eval_episodes = 64
    assert train(cfg).success_rate >= 0.9


def test_run_seeds_draw_disjoint_data():
    """Neighbouring run seeds share no env stream, demonstration or DAgger episode (with
    ``seed + k`` runs 1 and 2 shared nearly all of them), and the derivation is stable."""
    from agent.vector import SEED_DAGGER, SEED_DEMOS, SEED_ENVS, derived_seed, env_seeds

    def data_seeds(run_seed: int) -> set[int]:
        envs = env_seeds(derived_seed(run_seed, SEED_ENVS), 8, rank=1)  # ranks 0 and 1
        envs += env_seeds(derived_seed(run_seed, SEED_ENVS), 8)
        demos = [derived_seed(run_seed, SEED_DEMOS, 0) + k for k in range(5000)]
        dagger = [s for r in (1, 2) for s in env_seeds(derived_seed(run_seed, SEED_DAGGER, r), 8)]
        assert len(set(envs)) == 16 and max(envs + demos + dagger) < 2**32
        return set(envs) | set(demos) | set(dagger)

    seen = [data_seeds(s) for s in (0, 1, 2, 3)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not seen[i] & seen[j], (i, j)
    assert derived_seed(1, SEED_ENVS) == derived_seed(1, SEED_ENVS)


def test_progress_bar_total_is_corrected_once_known(tmp_path):
    """The bar's total starts as a guess (demonstration lengths are not known before they are
    recorded); set_total corrects it, never below the steps already done."""
    from agent.logger import RunLogger

    logger = RunLogger(tmp_path, 100, tensorboard=False)
    try:
        logger.progress(40, {"phase": "bc"})
        logger.set_total(70)
        assert logger.bar.total == 70
        logger.set_total(10)
        assert logger.bar.total == 40
    finally:
        logger.close()


def test_without_a_bar_the_last_progress_line_is_printed(tmp_path, capsys):
    """``--run.no-progress`` prints a progress line at most every ``line_every`` seconds; the
    newest one is printed when the bar would close, so a run ends with its final numbers."""
    from agent.logger import RunLogger

    logger = RunLogger(tmp_path, 100, tensorboard=False, progress=False)
    logger.line_every = 3600.0
    try:
        logger.progress(10, {"phase": "bc"})
        logger.progress(50, {"phase": "ppo"})
        logger.progress(100, {"phase": "ppo", "success": 0.9})
        assert capsys.readouterr().out.count("step") == 1  # the first line only
        logger.close_bar()
        out = capsys.readouterr().out
        assert "step 100: phase=ppo success=0.9" in out
        logger.progress(120, {"success": float("nan")}, force=True)  # no episode ended yet
        assert "step 120: success=-" in capsys.readouterr().out
        logger.close()
        assert capsys.readouterr().out == ""  # printed once
    finally:
        logger.close()


def test_light_defaults_skip_a_key_whose_encoder_has_not_their_fields():
    """The light defaults (``image.channels``, ``audio.channels``...) are options of cnn and
    logmel: with another encoder chosen for a key on the command line, the fields it lacks
    must not reach it (every timm backbone failed with "unknown option(s) 'channels'")."""
    import train as train_script
    from agent.agent import MindloopAgent

    space = gym.spaces.Dict(
        image=gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
        audio=gym.spaces.Box(-1, 1, (2, 640), np.float32),
        sound_level=gym.spaces.Box(-1, 1, (4,), np.float32),
    )
    action_space = gym.spaces.Dict(muscles=gym.spaces.Box(0, 1, (2,), np.float32))

    def built(*argv: str):
        parsed = train_script.parse_config(["--agent.encoders.encoders", *argv])
        return MindloopAgent(space, action_space, parsed.agent).encoder.config

    timm = built("image", "timm/mobilenetv3_small_050")
    assert timm.encoders["image"] == "timm/mobilenetv3_small_050"
    assert timm.configs["audio"].channels == (8, 16)  # the other key keeps its light default
    assert timm.configs["audio"].embed_dim == 64
    # mlp for a key that a light default names: channels dropped, embed_dim (mlp has it) kept
    space["audio"] = gym.spaces.Box(-1, 1, (8,), np.float32)
    mlp = built("audio", "mlp")
    assert mlp.encoders["audio"] == "mlp" and mlp.configs["audio"].embed_dim == 64
    assert mlp.configs["image"].channels == (8, 16, 32)
    # an option given for a field the chosen encoder lacks is still a one-line error
    space["audio"] = gym.spaces.Box(-1, 1, (2, 640), np.float32)
    bad = train_script.parse_config(
        [
            "--agent.encoders.encoders",
            "image",
            "timm",
            "--agent.encoders.options",
            "image.nope",
            "1",
        ]
    )
    with pytest.raises(ValueError, match="nope"):
        MindloopAgent(space, action_space, bad.agent)


def test_progress_bar_falls_back_to_lines_outside_a_terminal(tmp_path, capsys):
    """A tqdm bar's carriage returns garble a log file or pipe (stderr is not a terminal
    under pytest, as in CI or ``train.py > log``): progress comes as plain lines there."""
    cfg = tiny_config(tmp_path / "run", "ppo")
    cfg.run.progress = True
    train(cfg)
    out, err = capsys.readouterr()
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
    assert re.search(r"\] step \d+: phase=ppo", out), out[-2000:]
