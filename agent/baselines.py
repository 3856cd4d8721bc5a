"""Stable-Baselines3 baselines: SB3 ``PPO`` and sb3-contrib ``RecurrentPPO`` on mindloop tasks.

``python train.py --algo sb3-ppo`` / ``--algo sb3-recurrentppo`` train the two reference
algorithms a Stable-Baselines3 user would reach for, on the same envs and with the same
mindloop encoders (:mod:`encoders.sb3`) as a mindloop agent, sized to match it:

* ``sb3-ppo``: fused encoder -> one ``Tanh`` layer of ``core.hidden_dim`` units (separate for
  actor and critic) -> linear heads. No memory: the baseline that shows what memory buys.
* ``sb3-recurrentppo``: fused encoder -> one ``LSTM`` of ``core.hidden_dim`` units shared by
  actor and critic -> linear heads, the same shape as mindloop's encoder -> core -> heads
  (mindloop's think steps and memory tool have no SB3 counterpart; ``agent.think`` is ignored).

The PPO hyperparameters come from the same :class:`agent.config.PPOConfig` (``num_envs`` x
``rollout_steps`` per update, ``epochs``, ``minibatches``, ``lr`` and its schedule, ``gamma``,
``gae_lambda``, ``clip``, coefficients). RecurrentPPO backpropagates through whole rollout
sequences (split at episode starts), so ``ppo.bptt_steps`` does not apply to it.

A baseline run has the layout of a mindloop run::

    <run>/config.json                 the TrainConfig
    <run>/tb/                         TensorBoard: charts/, losses/, eval/ (+ SB3's rollout/,
                                      train/, time/ names)
    <run>/checkpoints/step_.../       config.json + model.safetensors (+ trainer state)
    <run>/eval.json, <run>/video.mp4  the final evaluation

Checkpoints never use SB3's ``model.save`` (a zip that unpickles code with cloudpickle):
the policy's ``state_dict`` goes to ``model.safetensors`` and ``config.json`` holds the
TrainConfig plus an ``sb3`` entry (algorithm, policy class, SB3's observation and action
spaces), enough to rebuild the SB3 policy. ``eval.py --checkpoint <run>`` evaluates it
through :class:`agent.evaluation.SB3Policy`, in the same loop as mindloop agents.

Envs: each sub-env is ``gymnasium.make(id)`` -> :class:`envs.wrappers.FlattenActionWrapper`
(muscles rescaled to [-1, 1], SB3's Gaussian convention) -> SB3 ``Monitor``. They are
stepped either by SB3's own ``SubprocVecEnv``/``DummyVecEnv`` (``backend="sb3"``) or by
Gymnasium's ``AsyncVectorEnv``/``SyncVectorEnv`` (shared-memory observations) behind
:class:`GymnasiumVecEnv` (``backend="gymnasium"``); ``env.vectorization`` picks async/sync.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

import envs as mindloop_envs
from agent.checkpoint import (
    BEST,
    beats_best,
    checkpoint_root,
    checkpoint_to_resume,
    evaluation_record,
    load_tensors,
    load_trainer_state,
    optimizer_from_state,
    optimizer_to_state,
    read_checkpoint_meta,
    resolve_checkpoint,
    resume_run_dir,
    save_checkpoint,
    saved_config,
    space_from_dict,
    space_to_dict,
)
from agent.config import (
    RESUME_FREE_FIELDS,
    AgentConfig,
    EnvConfig,
    TrainConfig,
    config_diff,
    config_to_dict,
)
from agent.distributed import resolve_device
from agent.evaluation import EvalResult, SB3Policy, evaluate
from agent.training import EVAL_SEED_OFFSET, check_budget_fits_an_update, evaluate_trained
from agent.vector import SEED_ENVS, check_env_id, derived_seed, worker_env_fns
from encoders.registry import Registry
from encoders.sb3 import sb3_policy_kwargs
from envs.wrappers import FlattenActionWrapper

VEC_BACKENDS = ("gymnasium", "sb3")
DEFAULT_VEC_BACKEND = "gymnasium"
"""Gymnasium's vector env, as mindloop's own trainer steps. SB3's ``SubprocVecEnv`` was no
faster here: SB3 PPO trains at 1.03x / 0.99x / 0.93x the speed on Gymnasium's (three runs of
benchmarks/train_throughput.py, 8 async envs; see benchmarks/RESULTS.md)."""
SB3_FORMAT = 1
"""Version of the ``sb3`` entry in a baseline checkpoint's config.json."""


# --------------------------------------------------------------------------- the algorithms


@dataclass(frozen=True)
class Baseline:
    """One SB3 algorithm as mindloop runs it."""

    name: str
    """The ``--algo`` name."""
    algo_class: type[BaseAlgorithm]
    policy: str
    """SB3's policy alias (Dict observations need the MultiInput policies)."""
    recurrent: bool
    description: str

    def policy_kwargs(self, agent: AgentConfig) -> dict[str, Any]:
        """SB3 ``policy_kwargs``: mindloop's fused encoder as the features extractor, sized
        to match a mindloop agent of config ``agent`` (hidden width ``core.hidden_dim``)."""
        hidden = agent.core.hidden_dim
        if self.recurrent:
            # encoder -> LSTM(hidden) shared by actor and critic -> linear heads, the shape
            # of mindloop's encoder -> core -> heads (and the cheaper RecurrentPPO setup).
            extra = dict(
                lstm_hidden_size=hidden,
                n_lstm_layers=agent.core.num_layers,
                shared_lstm=True,
                enable_critic_lstm=False,
                net_arch=[],
            )
        else:
            # No recurrence: a feedforward layer of the core's width in its place.
            extra = dict(net_arch=dict(pi=[hidden], vf=[hidden]))
        return sb3_policy_kwargs(agent.encoders, **extra)

    def policy_class(self) -> type[BasePolicy]:
        return self.algo_class.policy_aliases[self.policy]


BASELINES: Registry[Baseline] = Registry("baseline")
"""The SB3 baselines by ``--algo`` name."""

BASELINES.register("sb3-ppo")(
    Baseline(
        "sb3-ppo", PPO, "MultiInputPolicy", recurrent=False,
        description="Stable-Baselines3 PPO (no memory) with mindloop encoders",
    )
)  # fmt: skip
BASELINES.register("sb3-recurrentppo")(
    Baseline(
        "sb3-recurrentppo", RecurrentPPO, "MultiInputLstmPolicy", recurrent=True,
        description="sb3-contrib RecurrentPPO (LSTM) with mindloop encoders",
    )
)  # fmt: skip


def get_baseline(name: str) -> Baseline:
    """The baseline registered as ``name`` (one-line error listing the names otherwise)."""
    return BASELINES.get(name)


def check_config(config: TrainConfig) -> Baseline:
    """The config's baseline, or a one-line error for what SB3 cannot do."""
    baseline = get_baseline(config.algo)
    check_env_id(config.env.id)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"--algo {config.algo} trains in one process (SB3 has no DistributedDataParallel); "
            "run it without torchrun and scale with --env.num-envs"
        )
    resolve_device(config.run.device)  # SB3 would fall back to CPU without a word
    if config.agent.use_memory:
        raise ValueError(
            f"--algo {config.algo} has no memory tool; drop --agent.use-memory (or train "
            "mindloop with --algo ppo)"
        )
    # SB3 builds its own MLP / LSTM of core.hidden_dim units: the other core and think
    # settings would be ignored, so a run that sets them is a mistake, not a comparison
    defaults = config_to_dict(AgentConfig())
    ignored = [
        f"agent.{name}"
        for name in config_diff(defaults, config_to_dict(config.agent))
        if name.startswith(("core.", "think.")) and name != "core.hidden_dim"
    ]
    if ignored:
        raise ValueError(
            f"--algo {config.algo} uses SB3's own networks and ignores {', '.join(ignored)}; "
            "drop them (only agent.encoders and agent.core.hidden_dim apply to the baselines)"
        )
    sb3_algo_kwargs(config)  # its one-line errors too, before anything is written
    check_budget_fits_an_update(config)
    return baseline


def sb3_algo_kwargs(config: TrainConfig) -> dict[str, Any]:
    """SB3 constructor arguments equivalent to ``config.ppo`` / ``config.run``."""
    ppo, n_envs = config.ppo, config.env.num_envs
    samples = ppo.rollout_steps * n_envs
    if samples % ppo.minibatches:
        raise ValueError(
            f"ppo.minibatches={ppo.minibatches} must divide num_envs x rollout_steps = {samples} "
            "for the SB3 baselines"
        )
    # SB3 calls the schedule with progress_remaining going 1 -> 0 over total_timesteps.
    linear = ppo.lr_schedule == "linear"
    schedule = _LinearSchedule(ppo.lr) if linear else _ConstantSchedule(ppo.lr)
    return dict(
        n_steps=ppo.rollout_steps,
        batch_size=samples // ppo.minibatches,
        n_epochs=ppo.epochs,
        learning_rate=schedule,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip,
        clip_range_vf=ppo.clip if ppo.clip_value else None,
        normalize_advantage=ppo.norm_adv,
        ent_coef=ppo.entropy_coef,
        vf_coef=ppo.value_coef,
        max_grad_norm=ppo.max_grad_norm,
        target_kl=ppo.target_kl,
        # SB3 reseeds the VecEnv with this (seed + i per env): the run's env block
        seed=derived_seed(config.run.seed, SEED_ENVS),
        device=config.run.device,  # auto, cpu, cuda, cuda:N: the same names in SB3
        verbose=0,
    )


@dataclass(frozen=True)
class _LinearSchedule:
    """``lr * progress_remaining`` (a class, not a lambda, so it has a readable repr)."""

    lr: float

    def __call__(self, progress_remaining: float) -> float:
        return self.lr * progress_remaining


@dataclass(frozen=True)
class _ConstantSchedule:
    lr: float

    def __call__(self, progress_remaining: float) -> float:
        return self.lr


# --------------------------------------------------------------------------- envs


def make_sb3_env(env_id: str, kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """One env as the SB3 baselines see it: flat actions (a ``Box`` rescaled to [-1, 1]) and
    SB3's ``Monitor`` for episode returns/lengths. Runs inside vector-env workers."""
    mindloop_envs.register_envs()  # a forkserver/spawn worker starts with an empty registry
    env = gym.make(env_id, **dict(kwargs or {}))
    return Monitor(FlattenActionWrapper(env, rescale=True))


def _env_fns(config: EnvConfig) -> list[Callable[[], gym.Env]]:
    return [
        functools.partial(make_sb3_env, config.id, config.make_kwargs())
        for _ in range(config.num_envs)
    ]


def make_sb3_vec_env(
    config: EnvConfig, seed: int | None = None, backend: str = DEFAULT_VEC_BACKEND
) -> VecEnv:
    """``config.num_envs`` copies of the task as an SB3 ``VecEnv``.

    Args:
        config: task id and kwargs, number of envs, ``vectorization`` (async: a worker
            process per env; sync: all in this process) and the workers' ``start_method``.
        seed: env ``i`` is reset with ``seed + i`` at the first reset (None: unseeded).
        backend: ``gymnasium`` (Gymnasium's vector env behind :class:`GymnasiumVecEnv`) or
            ``sb3`` (SB3's ``SubprocVecEnv`` / ``DummyVecEnv``).
    """
    check_env_id(config.id)
    mindloop_envs.check_env_kwargs(config.id, config.make_kwargs())  # before workers start
    if backend not in VEC_BACKENDS:
        raise ValueError(
            f"unknown vec env backend {backend!r}; choose from: {', '.join(VEC_BACKENDS)}"
        )
    fns = _env_fns(config)
    parallel = config.vectorization == "async" and config.num_envs > 1
    if backend == "sb3":
        venv: VecEnv = (
            SubprocVecEnv(worker_env_fns(fns), start_method=config.start_method)
            if parallel
            else DummyVecEnv(fns)
        )
    else:
        inner = (
            AsyncVectorEnv(
                worker_env_fns(fns),
                context=config.start_method,
                autoreset_mode=AutoresetMode.SAME_STEP,
                shared_memory=True,
            )
            if parallel
            else SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        )
        venv = GymnasiumVecEnv(inner, wrappers=(Monitor, FlattenActionWrapper))
    if seed is not None:
        venv.seed(seed)
    return venv


class GymnasiumVecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a Gymnasium vector env with ``SAME_STEP`` autoreset.

    ``SAME_STEP`` is SB3's own convention: the step that ends an episode returns the next
    episode's first observation; the finished episode's last observation and info arrive in
    ``info["final_obs"]`` / ``info["final_info"]``. This class only moves them to where SB3
    reads them (``infos[i]["terminal_observation"]``, ``"TimeLimit.truncated"``, a list of
    per-env info dicts) and keeps the new episode's reset info in ``reset_infos``.

    Args:
        venv: a ``SyncVectorEnv`` or ``AsyncVectorEnv`` made with
            ``autoreset_mode=AutoresetMode.SAME_STEP``.
        wrappers: the wrapper classes every sub-env has (answers ``env_is_wrapped``).
    """

    def __init__(self, venv: VectorEnv, wrappers: Sequence[type[gym.Wrapper]] = ()) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"GymnasiumVecEnv needs autoreset_mode=AutoresetMode.SAME_STEP, got {mode}"
            )
        self.venv = venv
        self.wrappers = tuple(wrappers)
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> Any:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        options = self._options[0] if all(o == self._options[0] for o in self._options) else None
        obs, info = self.venv.reset(seed=seeds, options=options or None)
        self.reset_infos = unbatch_info(info, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        dones = terminated | truncated
        infos = unbatch_info(info, self.num_envs)
        if dones.any():
            finals = unbatch_info(info.get("final_info", {}), self.num_envs)
            final_obs = info.get("final_obs")
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = infos[i]  # what the new episode's reset returned
                infos[i] = finals[i]
                if final_obs is not None:
                    infos[i]["terminal_observation"] = final_obs[i]
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, np.asarray(reward, np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        target = list(self._get_indices(indices))
        values = list(self.venv.get_attr(attr_name))
        for i in target:
            values[i] = value
        self.venv.set_attr(attr_name, values)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        # Gymnasium calls a method on every sub-env; the other results are dropped.
        values = self.venv.call(method_name, *method_args, **method_kwargs)
        return [values[i] for i in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        wrapped = any(issubclass(w, wrapper_class) for w in self.wrappers)
        return [wrapped for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return list(self.venv.call("render"))


def unbatch_info(info: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """A Gymnasium vector env's info (per key an array ``(n,)`` plus a ``_key`` mask, nested
    for dict values) -> SB3's list of ``n`` per-env dicts holding only the set entries."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") or key in ("final_info", "final_obs"):
            continue
        mask = info.get(f"_{key}")
        per_env = unbatch_info(value, n) if isinstance(value, Mapping) else value
        for i in range(n):
            if mask is None or mask[i]:
                item = per_env[i]
                out[i][key] = item.item() if isinstance(item, np.generic) else item
    return out


def env_spaces(config: EnvConfig) -> tuple[spaces.Space, spaces.Space]:
    """The task's own (``Dict``) observation and action spaces."""
    mindloop_envs.register_envs()
    env = gym.make(config.id, **config.make_kwargs())
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


# --------------------------------------------------------------------------- model


def build_sb3_model(config: TrainConfig, venv: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm ``config.algo`` on ``venv``, sized like a mindloop agent."""
    baseline = check_config(config)
    return baseline.algo_class(
        baseline.policy,
        venv,
        policy_kwargs=baseline.policy_kwargs(config.agent),
        **sb3_algo_kwargs(config),
    )


@dataclass
class _PolicyWeights:
    """What :func:`agent.checkpoint.save_checkpoint` reads from an agent: the weights and the
    env's spaces. Lets SB3 policies reuse its atomic write, ``latest`` link and pruning."""

    policy: torch.nn.Module
    observation_space: spaces.Space
    action_space: spaces.Space

    def state_dict(self) -> dict[str, torch.Tensor]:
        return policy_state_dict(self.policy)


def _alias_keys(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """``module.state_dict()`` without second names of shared tensors, and those names.

    SB3 policies share one features extractor under three names (``features_extractor``,
    ``pi_features_extractor``, ``vf_features_extractor``); safetensors refuses shared
    memory, and one copy is all a rebuild needs (the module is shared again on construction).
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: set[str] = set()
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, tensor in module.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            aliases.add(key)
        else:
            seen.add(ident)
            unique[key] = tensor
    return unique, aliases


def policy_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An SB3 policy's weights with each shared tensor once (safetensors-ready)."""
    return _alias_keys(policy)[0]


def load_policy_state_dict(policy: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`policy_state_dict`: strict, except for the shared tensors' second
    names (filled through the shared module)."""
    expected, _ = _alias_keys(policy)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"SB3 policy weights do not match the config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    policy.load_state_dict(dict(state), strict=False)


def sb3_meta(model: BaseAlgorithm, baseline: Baseline) -> dict[str, Any]:
    """The ``sb3`` entry of a checkpoint's config.json: what rebuilds the policy."""
    import sb3_contrib
    import stable_baselines3

    return {
        "format": SB3_FORMAT,
        "algo": baseline.name,
        "class": f"{baseline.algo_class.__module__}.{baseline.algo_class.__name__}",
        "policy": baseline.policy,
        # SB3's view of the spaces (images channels-first, actions flat and in [-1, 1]).
        "observation_space": space_to_dict(model.observation_space),
        "action_space": space_to_dict(model.action_space),
        "rescale_actions": isinstance(model.action_space, spaces.Box),
        "num_timesteps": int(model.num_timesteps),
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
    }


def save_sb3_checkpoint(
    run_dir: str | os.PathLike,
    model: BaseAlgorithm,
    config: TrainConfig,
    env_observation_space: spaces.Space,
    env_action_space: spaces.Space,
    *,
    keep: int | None = 3,
    extra_meta: Mapping[str, Any] | None = None,
    trainer_meta: Mapping[str, Any] | None = None,
    name: str | None = None,
    point_latest: bool = True,
) -> Path:
    """Save ``model``'s policy as ``<run>/checkpoints/step_<num_timesteps>`` (safetensors +
    JSON, atomic, ``latest`` updated) with its optimizer state for ``--resume``; ``name`` and
    ``point_latest=False`` write a side copy such as ``best`` instead."""
    baseline = get_baseline(config.algo)
    trainer = optimizer_to_state(model.policy.optimizer)
    trainer.meta.update(
        {
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(getattr(model, "_n_updates", 0)),
            **dict(trainer_meta or {}),
        }
    )
    return save_checkpoint(
        checkpoint_root(run_dir),
        _PolicyWeights(model.policy, env_observation_space, env_action_space),  # type: ignore[arg-type]
        config,
        step=int(model.num_timesteps),
        trainer=trainer,
        keep=keep,
        extra_meta={"sb3": sb3_meta(model, baseline), **dict(extra_meta or {})},
        name=name,
        point_latest=point_latest,
    )


def is_sb3_checkpoint(path: str | os.PathLike) -> bool:
    """Whether the checkpoint at ``path`` (run dir, checkpoint dir ...) is an SB3 baseline."""
    return "sb3" in read_checkpoint_meta(path)


def load_sb3_policy(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[BasePolicy, TrainConfig, dict[str, Any]]:
    """Rebuild the SB3 policy saved at ``path`` from config.json + model.safetensors alone.

    Returns ``(policy, train_config, sb3_meta)``; the policy is in eval mode and has SB3's
    ``predict(obs, state, episode_start, deterministic)``.
    """
    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    sb3 = meta.get("sb3")
    if sb3 is None:
        raise ValueError(f"{str(ckpt)!r} is a mindloop agent checkpoint, not an SB3 baseline")
    if sb3.get("format", 0) > SB3_FORMAT:
        raise ValueError(
            f"SB3 checkpoint format {sb3['format']} is newer than this mindloop reads "
            f"({SB3_FORMAT}); upgrade mindloop"
        )
    config = saved_config(ckpt / "config.json", meta["config"])
    baseline = get_baseline(sb3["algo"])
    policy = baseline.policy_class()(
        space_from_dict(sb3["observation_space"]),
        space_from_dict(sb3["action_space"]),
        _ConstantSchedule(0.0),  # the optimizer is built but unused for evaluation
        **baseline.policy_kwargs(config.agent),
    )
    load_policy_state_dict(policy, load_tensors(ckpt / "model.safetensors"))
    policy.set_training_mode(False)
    return policy.to(device), config, sb3


def load_sb3_eval_policy(
    checkpoint: str | os.PathLike, deterministic: bool = True, device: str = "cpu"
) -> tuple[SB3Policy, str, dict[str, Any]]:
    """Like :func:`agent.evaluation.load_checkpoint_policy` for a baseline checkpoint:
    ``(SB3Policy, env_id, env_kwargs)`` ready for :func:`agent.evaluation.evaluate`."""
    policy, config, sb3 = load_sb3_policy(checkpoint, device)
    name = f"{sb3['algo']}:{Path(checkpoint).name}"
    adapter = SB3Policy(
        policy, rescale=bool(sb3["rescale_actions"]), deterministic=deterministic, name=name
    )
    return adapter, config.env.id, config.env.make_kwargs()


# --------------------------------------------------------------------------- logging

METRIC_ALIASES = {
    "train/learning_rate": "charts/learning_rate",
    "train/policy_gradient_loss": "losses/policy_loss",
    "train/value_loss": "losses/value_loss",
    "train/approx_kl": "losses/approx_kl",
    "train/clip_fraction": "losses/clipfrac",
    "train/explained_variance": "losses/explained_variance",
    "train/loss": "losses/loss",
}
"""SB3's metric names -> mindloop's (agent.training); both are written, so SB3 users find
theirs too. SB3's ``train/entropy_loss`` is minus the entropy: ``losses/entropy`` is the
entropy itself, as mindloop logs it."""


class AliasingTensorBoardFormat(TensorBoardOutputFormat):
    """SB3's TensorBoard writer that also writes each metric of :data:`METRIC_ALIASES`
    under its mindloop name (``charts/``, ``losses/``)."""

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        values, excluded = dict(key_values), dict(key_excluded)
        for key, alias in METRIC_ALIASES.items():
            if key in values and alias not in values:
                values[alias], excluded[alias] = values[key], excluded.get(key, ())
        if "train/entropy_loss" in values:
            values["losses/entropy"] = -values["train/entropy_loss"]
            excluded["losses/entropy"] = excluded.get("train/entropy_loss", ())
        super().write(values, excluded, step)


def make_logger(run_dir: Path, tensorboard: bool) -> Logger:
    """SB3 logger writing TensorBoard events to ``<run>/tb`` (nothing when disabled)."""
    if not tensorboard:
        return Logger(folder=None, output_formats=[])
    folder = run_dir / "tb"
    folder.mkdir(parents=True, exist_ok=True)
    return Logger(folder=str(folder), output_formats=[AliasingTensorBoardFormat(str(folder))])


# --------------------------------------------------------------------------- training loop


@dataclass
class _Episodes:
    """Training episodes: those finished since the last update (logged as ``charts/``, like
    mindloop's trainer) and the last ``window`` (for the progress bar)."""

    window: int = 100
    recent: deque = field(default_factory=deque)
    """(return, success or None) of the last ``window`` episodes."""
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)

    def add(self, ret: float, length: int, success: bool | None) -> None:
        self.returns.append(ret)
        self.lengths.append(length)
        if success is not None:
            self.successes.append(bool(success))
        self.recent.append((ret, success))
        while len(self.recent) > self.window:
            self.recent.popleft()

    def drain(self) -> dict[str, float]:
        """Means over the episodes since the last call (mindloop's ``charts/`` names)."""
        out: dict[str, float] = {}
        if self.returns:
            out = {
                "episodes": float(len(self.returns)),
                "episode_return": float(np.mean(self.returns)),
                "episode_length": float(np.mean(self.lengths)),
            }
            if self.successes:
                out["success_rate"] = float(np.mean(self.successes))
        self.returns, self.lengths, self.successes = [], [], []
        return out

    def postfix(self) -> dict[str, str]:
        out = {}
        if self.recent:
            out["return"] = f"{np.mean([r for r, _ in self.recent]):.2f}"
            flags = [s for _, s in self.recent if s is not None]
            if flags:
                out["success"] = f"{np.mean(flags):.0%}"
        return out


class MindloopCallback(BaseCallback):
    """What mindloop's trainer does around each update, for an SB3 model: a progress bar
    (fps, success), ``charts/`` per update (episodes finished since the last update, fps of
    the update), periodic evaluation through :mod:`agent.evaluation` (``eval/``) and
    periodic safetensors checkpoints, counted in updates (``run.eval_every``,
    ``run.checkpoint_every``), and with periodic evaluation ``checkpoints/best``, the
    best-evaluated weights (SB3's ``EvalCallback(best_model_save_path=...)``, in safetensors)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        env_spaces: tuple[spaces.Space, spaces.Space],
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(verbose=0)
        self.config = config
        self.run_dir = run_dir
        self.env_spaces = env_spaces
        self.log = log
        self.updates = 0
        self.episodes = _Episodes()
        self.last_eval: EvalResult | None = None
        self._bar: Any = None
        self._first_rollout = True
        self._t_update = 0.0
        self._steps_update = 0

    # SB3 hooks ----------------------------------------------------------------------------

    def _on_training_start(self) -> None:
        self._t_update = time.perf_counter()
        self._steps_update = self.model.num_timesteps
        if self.config.run.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=baseline_steps(self.config),
                initial=self.model.num_timesteps,
                unit="step",
                desc=self.config.algo,
                dynamic_ncols=True,
                disable=None,  # no bar when stderr is not a terminal
            )

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        for i in np.flatnonzero(dones):
            episode = infos[i].get("episode")  # SB3's Monitor
            if episode is not None:
                self.episodes.add(
                    float(episode["r"]), int(episode["l"]), infos[i].get("is_success")
                )
        if self._bar is not None:
            self._bar.update(len(dones))
        return True

    def _on_rollout_start(self) -> None:
        if self._first_rollout:  # before the first rollout no update has happened
            self._first_rollout = False
            return
        self._after_update(final=False)

    def _on_training_end(self) -> None:
        # SB3's loop ends on an update with no rollout after it: log it here (the caller
        # evaluates and checkpoints the final policy).
        if not self._first_rollout:
            self._after_update(final=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # mindloop's work around an update -----------------------------------------------------

    def _after_update(self, final: bool) -> None:
        self.updates += 1
        now, steps = time.perf_counter(), self.model.num_timesteps
        fps = (steps - self._steps_update) / max(now - self._t_update, 1e-9)
        charts = {"fps": fps, **self.episodes.drain()}
        for name, value in charts.items():
            self.logger.record(f"charts/{name}", value)
        if self._bar is not None:
            self._bar.set_postfix({"fps": f"{fps:.0f}", **self.episodes.postfix()})
        run = self.config.run
        if not final:
            if run.eval_every and self.updates % run.eval_every == 0:
                self.evaluate()
            if self.updates % run.checkpoint_every == 0:
                self.checkpoint()
        # this update's train/ losses, charts/ and eval/, at the step they belong to
        self.logger.dump(steps)
        self._t_update, self._steps_update = time.perf_counter(), steps

    def evaluate(self) -> EvalResult:
        """Evaluate the current policy on ``run.eval_episodes`` seeded episodes."""
        result = evaluate(
            sb3_eval_policy(self.model, self.config.algo),
            self.config.env.id,
            max(1, self.config.run.eval_episodes),
            seed=EVAL_SEED_OFFSET + self.config.run.seed,
            num_envs=min(self.config.env.num_envs, max(1, self.config.run.eval_episodes)),
            env_kwargs=self.config.env.make_kwargs(),
            vectorization=self.config.env.vectorization,
        )
        log_eval(self.logger, result)
        self.last_eval = result
        best = self.keep_best(result)
        summary = result.summary()
        success = summary["success_rate"]  # None: the env reports no info["is_success"]
        # mindloop PPO's progress line (agent.training._periodic_eval); SB3 policies do not think
        self._say(
            f"eval @ {self.model.num_timesteps} steps: success "
            + ("n/a" if success is None else f"{success:.0%}")
            + f", return {summary['return_mean']:.2f}"
            + (" (best so far: checkpoints/best)" if best else "")
        )
        return result

    def _say(self, message: str) -> None:
        """A console line through ``log`` that does not break the progress bar."""
        if self._bar is None:
            self.log(message)
            return
        with self._bar.external_write_mode():  # clears the bar, prints, redraws it
            self.log(message)

    def keep_best(self, result: EvalResult) -> bool:
        """Save the policy to ``checkpoints/best`` if ``result`` beats the best evaluation so
        far (success rate, then return; the record is read from disk, so it survives a
        resume). Only with periodic evaluation on, as in mindloop's trainer."""
        summary = result.summary()
        success, ret = result.success_rate, summary["return_mean"]
        if not self.config.run.eval_every or not beats_best(
            checkpoint_root(self.run_dir), success, ret
        ):
            return False
        save_sb3_checkpoint(
            self.run_dir, self.model, self.config, *self.env_spaces, keep=None,
            extra_meta={"eval": evaluation_record(success, ret, summary["episodes"])},
            trainer_meta={"updates": self.updates}, name=BEST, point_latest=False,
        )  # fmt: skip
        return True

    def checkpoint(self) -> Path:
        extra = {"eval": self.last_eval.summary()} if self.last_eval is not None else None
        return save_sb3_checkpoint(
            self.run_dir,
            self.model,
            self.config,
            *self.env_spaces,
            keep=self.config.run.keep_checkpoints,
            extra_meta=extra,
            trainer_meta={"updates": self.updates},
        )


def sb3_eval_policy(model: BaseAlgorithm, name: str) -> SB3Policy:
    """``model``'s policy behind :class:`agent.evaluation.SB3Policy` (actions mapped back
    from [-1, 1] to the env's box)."""
    return SB3Policy(model.policy, rescale=isinstance(model.action_space, spaces.Box), name=name)


def log_eval(logger: Logger, result: EvalResult) -> None:
    """Record an evaluation's summary under mindloop's ``eval/`` names."""
    s = result.summary()
    if s["success_rate"] is not None:  # None: the env reports no info["is_success"]
        logger.record("eval/success_rate", s["success_rate"])
    logger.record("eval/episode_return", s["return_mean"])
    logger.record("eval/episode_length", s["length_mean"])


@dataclass
class BaselineRun:
    """What :func:`train_sb3` returns."""

    run_dir: Path
    model: BaseAlgorithm
    checkpoint: Path
    final_eval: EvalResult | None
    steps: int
    wall_time_s: float

    @property
    def fps(self) -> float:
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else 0.0


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<task>__<algo>__<seed>__<time>`` (mindloop's run naming)."""
    task = config.env.id.split("/")[-1]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{task}__{config.algo}__{config.run.seed}__{stamp}"


def baseline_steps(config: TrainConfig) -> int:
    """Env steps an SB3 baseline trains for, in whole rollouts of ``num_envs x
    rollout_steps`` as mindloop's PPO counts its updates: ``ppo.total_steps`` worth (at least
    one), or the whole rollouts within ``run.max_env_steps`` if fewer (SB3 would finish the
    rollout that crosses ``total_timesteps``, past the budget)."""
    per_rollout = config.ppo.rollout_steps * config.env.num_envs
    steps = max(1, config.ppo.total_steps // per_rollout) * per_rollout
    budget = config.run.max_env_steps
    return steps if budget is None else min(steps, budget // per_rollout * per_rollout)


def train_sb3(
    config: TrainConfig,
    *,
    backend: str = DEFAULT_VEC_BACKEND,
    final_eval: bool = True,
    log: Callable[[str], None] = print,
) -> BaselineRun:
    """Train the SB3 baseline ``config.algo`` end to end: envs, model, TensorBoard, periodic
    evaluation and checkpoints, the final checkpoint, evaluation (table, JSON, video).

    ``config.resume`` (a run directory) continues from its latest checkpoint: weights,
    optimizer state and step counter are restored; envs restart with fresh episodes (SB3
    keeps no env or RNG snapshot, so a baseline resume is not bit-exact, unlike mindloop's).
    """
    baseline = check_config(config)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    start_step = 0
    resume_from: Path | None = None
    if config.resume is not None:
        resume_from = checkpoint_to_resume(config.resume)
    if resume_from is not None:
        run_dir = resume_run_dir(config.resume, resume_from)
        check_resume_config(resume_from, config)
    else:  # a new run, or one stopped before its first checkpoint (it starts again)
        if config.resume is not None:
            run_dir = Path(config.resume)
            log(f"resume: {run_dir} has no checkpoint yet; its run starts again")
        else:
            run_dir = Path(config.run.dir) if config.run.dir else default_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", config_to_dict(config))

    spaces_ = env_spaces(config.env)
    venv = make_sb3_vec_env(
        config.env, seed=derived_seed(config.run.seed, SEED_ENVS), backend=backend
    )
    try:
        model = build_sb3_model(config, venv)
        callback = MindloopCallback(config, run_dir, spaces_, log=log)
        if resume_from is not None:
            start_step = restore_sb3_checkpoint(model, resume_from, callback)
            log(f"resumed {config.algo} from {resume_from} at step {start_step}")
        model.set_logger(make_logger(run_dir, config.run.tensorboard))
        callback.init_callback(model)  # learn() does it too, but may have nothing to run
        _log_config(model.logger, config)
        log(
            f"{config.algo}: {baseline.description}; {config.env.num_envs} envs of "
            f"{config.env.id}, {baseline_steps(config)} steps -> {run_dir}"
        )
        t0 = time.perf_counter()
        remaining = max(0, baseline_steps(config) - start_step)
        if remaining:
            model.learn(
                total_timesteps=remaining,
                callback=callback,
                reset_num_timesteps=resume_from is None,
            )
        wall = time.perf_counter() - t0
        result = None
        if final_eval and config.run.eval_episodes:
            result = final_evaluation(model, config, run_dir, log)
            log_eval(model.logger, result)
            model.logger.dump(model.num_timesteps)
            callback.last_eval = result
            callback.keep_best(result)  # the final evaluation competes too
        ckpt = callback.checkpoint()  # train.py prints it, as for mindloop's runs
        return BaselineRun(run_dir, model, ckpt, result, model.num_timesteps - start_step, wall)
    finally:
        venv.close()


def final_evaluation(
    model: BaseAlgorithm, config: TrainConfig, run_dir: Path, log: Callable[[str], None] = print
) -> EvalResult:
    """Evaluate the trained policy as ``eval.py`` would: table, ``eval.json``, ``video.mp4``."""
    return evaluate_trained(sb3_eval_policy(model, config.algo), config, run_dir, log)


def restore_sb3_checkpoint(
    model: BaseAlgorithm, checkpoint: Path, callback: MindloopCallback | None = None
) -> int:
    """Load weights, optimizer state and counters from ``checkpoint`` into ``model``;
    returns the env step it was saved at."""
    load_policy_state_dict(model.policy, load_tensors(checkpoint / "model.safetensors"))
    trainer = load_trainer_state(checkpoint)
    optimizer_from_state(model.policy.optimizer, trainer)
    model.num_timesteps = int(trainer.meta["num_timesteps"])
    model._n_updates = int(trainer.meta.get("n_updates", 0))
    if callback is not None:
        callback.updates = int(trainer.meta.get("updates", 0))
    return model.num_timesteps


def check_resume_config(checkpoint: Path, config: TrainConfig) -> None:
    """A one-line error when ``config`` differs from the checkpoint's beyond the fields a
    resume may change (``agent.config.RESUME_FREE_FIELDS``)."""
    saved = read_checkpoint_meta(checkpoint)["config"]
    diff = [
        name
        for name in config_diff(saved, config_to_dict(config))
        if not any(name == f or name.startswith(f + ".") for f in RESUME_FREE_FIELDS)
    ]
    if diff:
        raise ValueError(
            f"--resume config differs from the run's in: {', '.join(diff)}; resume with the "
            "same settings (or start a new run)"
        )


def _log_config(logger: Logger, config: TrainConfig) -> None:
    """The config once, as TensorBoard text (SB3 writes str values with add_text)."""
    text = json.dumps(config_to_dict(config), indent=2)
    logger.record("config", f"```\n{text}\n```", exclude=("stdout", "log", "json", "csv"))
    logger.dump(0)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


__all__ = [
    "BASELINES",
    "DEFAULT_VEC_BACKEND",
    "METRIC_ALIASES",
    "VEC_BACKENDS",
    "AliasingTensorBoardFormat",
    "Baseline",
    "BaselineRun",
    "GymnasiumVecEnv",
    "MindloopCallback",
    "build_sb3_model",
    "check_config",
    "get_baseline",
    "is_sb3_checkpoint",
    "load_sb3_eval_policy",
    "load_sb3_policy",
    "make_sb3_env",
    "make_sb3_vec_env",
    "save_sb3_checkpoint",
    "sb3_algo_kwargs",
    "train_sb3",
    "unbatch_info",
]
