"""Config input checks: a saved config.json with values of the wrong type, and NaN/inf in
float options, are one-line ``ValueError``s naming the field (not tracebacks from torch)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from agent.config import PPOConfig, TrainConfig, config_from_dict, config_to_dict

NAN, INF = math.nan, math.inf


def saved_config(config: TrainConfig | None = None) -> dict[str, Any]:
    """``config`` (default: the default one) as it comes back from a config.json."""
    return json.loads(json.dumps(config_to_dict(config or TrainConfig())))


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


def replace_dotted(config: Any, path: str, value: Any) -> Any:
    """``config`` with the field at dotted ``path`` replaced (each level rebuilt, so every
    ``__post_init__`` on the way runs, the top one last)."""
    head, _, rest = path.partition(".")
    inner = replace_dotted(getattr(config, head), rest, value) if rest else value
    return dataclasses.replace(config, **{head: inner})


# --------------------------------------------------------------------------- wrong types


WRONG_TYPES = [
    ("ppo.lr", "fast", "must be a float"),
    ("ppo.lr", None, "must be a float"),
    ("ppo.think_cost", True, "must be a float"),
    ("env.num_envs", 2.5, "must be an int"),
    ("agent.core.hidden_dim", "128", "must be an int"),
    ("run.seed", True, "must be an int"),
    ("ppo.norm_adv", 1, "must be a bool"),
    ("algo", 3, "must be a string"),
    ("ppo", None, "must be a mapping of PPOConfig fields"),
    ("agent.memory", [], "must be a mapping of MemoryConfig fields"),
    ("agent.memory.op_init_logits", [1.0, "a", 0.0], "must be a list of 3 floats"),
    ("agent.memory.op_init_logits", [1.0, 0.0], "must be a list of 3 floats"),
    ("agent.memory.op_init_logits", 2.0, "must be a list of 3 floats"),
    ("env.obs_keys", [1], "must be a list of strings or None"),
    ("env.obs_keys", "image", "must be a list of strings or None"),
    ("env.kwargs", [1], "must be a mapping"),
    ("agent.encoders.embed_dim", 1.5, "must be an int or None"),
    ("ppo.target_kl", "x", "must be a float or None"),
    ("run.max_env_steps", "1000", "must be an int or None"),
    ("resume", 5, "must be a string or None"),
]


@pytest.mark.parametrize(("path", "value", "rule"), WRONG_TYPES)
def test_saved_config_of_wrong_type_is_one_line_error(path, value, rule):
    data = saved_config()
    set_dotted(data, path, value)
    with pytest.raises(ValueError) as err:
        config_from_dict(TrainConfig, data)
    message = str(err.value)
    assert message == f"config {path} {rule}, got {value!r}"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("path", "value", "restored"),
    [
        ("env.num_envs", 2.0, 2),  # JSON writers may turn 2 into 2.0
        ("ppo.lr", 1, 1),  # an int is a float
        ("ppo.target_kl", None, None),
        ("ppo.target_kl", 0.02, 0.02),
        ("env.obs_keys", ["image", "proprio"], ("image", "proprio")),
        ("agent.memory.op_init_logits", [1, 0, 0], (1, 0, 0)),
        ("env.kwargs", {"delay_steps": 200, "mode": "x"}, {"delay_steps": 200, "mode": "x"}),
        (
            "agent.encoders.configs",
            {"image": {"channels": [4, 8]}},
            {"image": {"channels": [4, 8]}},
        ),
    ],
)
def test_saved_config_of_right_type_loads(path, value, restored):
    data = saved_config()
    set_dotted(data, path, value)
    config = config_from_dict(TrainConfig, data)
    got = config
    for key in path.split("."):
        got = getattr(got, key)
    assert got == restored
    assert type(got) is type(restored)


def variants() -> list[TrainConfig]:
    configs = []
    for algo in ("bc+ppo", "ppo", "bc", "sft-rl", "sb3-ppo", "sb3-recurrentppo"):
        configs.append(TrainConfig(algo=algo))
    config = TrainConfig(algo="ppo")
    config.agent.use_memory = True
    config.agent.memory.persist_store = True
    config.agent.memory.nap_on_reset = True
    config.agent.core.name = "transformer"
    config.agent.think.think_input = "attend"
    config.agent.encoders.options = {"image.channels": "(4, 8)", "image.pool": "mean"}
    config.agent.encoders.configs = {"audio": {"embed_dim": 32}}
    config.agent.encoders.encoders = {"image": "cnn"}
    config.agent.encoders.keys = ("image", "proprio")
    config.agent.encoders.embed_dim = None
    config.env.kwargs = {"delay_steps": 200, "scale": 0.5, "flag": True, "name": "x"}
    config.env.obs_keys = ("image", "proprio")
    config.ppo.target_kl = 0.02
    config.ppo.memory_cost = 0.01
    config.ppo.anchor_coef = 1.0
    config.ppo.max_grad_norm = INF  # no clipping: allowed (json writes Infinity)
    config.bc.dataset = "/data/demos"
    config.run.dir = "/tmp/run"
    config.run.max_env_steps = 10_000
    config.resume = "/tmp/run"
    configs.append(config)
    return configs


@pytest.mark.parametrize(
    "config", variants(), ids=lambda c: c.algo + ("+options" if c.resume else "")
)
def test_saved_configs_round_trip(config):
    assert config_from_dict(TrainConfig, saved_config(config)) == config


# --------------------------------------------------------------------------- NaN and inf


NONFINITE = [
    ("ppo.think_cost", NAN, "must be a finite number, got nan"),
    ("ppo.memory_cost", NAN, "must be a finite number, got nan"),
    ("ppo.entropy_coef", INF, "must be a finite number, got inf"),
    ("ppo.target_kl", NAN, "must be > 0 or None, got nan"),  # its own check comes first
    ("bc.kl_coef", INF, "must be a finite number, got inf"),
    ("agent.core.mlp_ratio", INF, "must be a finite number, got inf"),
    ("agent.memory.get_temperature", NAN, "must be a finite number, got nan"),
    ("agent.memory.write_gate_bias", -INF, "must be a finite number, got -inf"),
    (
        "agent.memory.op_init_logits",
        (NAN, 0.0, 0.0),
        "must hold only finite numbers, got (nan, 0.0, 0.0)",
    ),
    ("agent.memory.op_init_logits", (INF, 0.0, 0.0), "must hold only finite numbers"),
    ("env.kwargs", {"scale": NAN}, "must hold only finite numbers"),
]


@pytest.mark.parametrize(("path", "value", "rule"), NONFINITE)
def test_nonfinite_option_is_one_line_error(path, value, rule):
    with pytest.raises(ValueError) as err:
        replace_dotted(TrainConfig(), path, value)
    message = str(err.value)
    assert message.startswith(f"{path} {rule}"), message
    assert "\n" not in message


@pytest.mark.parametrize(("path", "value", "rule"), NONFINITE[:4])
def test_nonfinite_in_saved_config_is_one_line_error(path, value, rule):
    data = saved_config()
    set_dotted(data, path, value)
    with pytest.raises(ValueError, match=rf"^{path} {rule}$"):
        config_from_dict(TrainConfig, json.loads(json.dumps(data)))


def test_infinite_max_grad_norm_means_no_clipping():
    config = replace_dotted(TrainConfig(), "ppo.max_grad_norm", INF)
    assert config.ppo.max_grad_norm == INF
    # target_kl inf (never stop early, as None) was accepted before: older configs hold it
    assert replace_dotted(TrainConfig(), "ppo.target_kl", INF).ppo.target_kl == INF
    with pytest.raises(ValueError, match="max_grad_norm"):
        replace_dotted(TrainConfig(), "ppo.max_grad_norm", NAN)
    with pytest.raises(ValueError, match="max_grad_norm"):
        PPOConfig(max_grad_norm=-INF)
    # 0 scaled every gradient to zero: a run that could not learn, without a word
    with pytest.raises(ValueError, match=r"ppo.max_grad_norm must be > 0 \(inf: no clipping\)"):
        PPOConfig(max_grad_norm=0.0)


@pytest.mark.parametrize(
    "args",
    [
        ["--ppo.think-cost", "nan"],
        ["--ppo.memory-cost", "nan"],
        ["--ppo.entropy-coef", "inf"],
        ["--agent.memory.get-temperature", "nan"],
        ["--agent.memory.op-init-logits", "nan", "0", "0"],
    ],
)
def test_train_py_prints_one_error_line_for_nonfinite_options(args, tmp_path, monkeypatch):
    """train.py's main exits with ``error: ...`` (one line, non-zero) before training."""
    import agent.training
    import train as train_script

    def train(config):
        raise AssertionError(f"trained with {args}")

    monkeypatch.setattr(agent.training, "train", train)
    run_dir = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main([*args, "--run.dir", str(run_dir)])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message and "finite" in message
    assert not run_dir.exists()
