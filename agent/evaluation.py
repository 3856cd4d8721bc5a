"""Evaluate any policy over N episodes: success, return, length, think steps, memory use.

>>> from agent.evaluation import evaluate, make_policy                     # doctest: +SKIP
>>> result = evaluate(make_policy("expert"), "mindloop/MuscleReach-v0", episodes=20)
>>> print(result.table()); result.save_json("eval.json")

A policy is anything with the small :class:`EvalPolicy` protocol (``reset`` + ``act`` on a
batch), so the same loop measures the scripted expert (``"expert"``), a random policy
(``"random"``), a trained :class:`agent.agent.MindloopAgent` (:class:`AgentPolicy`, or
:func:`load_checkpoint_policy`) and other libraries' models. Episode ``k`` always runs on
seed ``seed + k``, whatever the number of envs, so a deterministic policy plays the same
episodes however they were spread over a vector env (a network's outputs, and so returns,
can differ in the last digits between batch sizes). A sampling policy (the random one, an
agent with ``deterministic=False``) draws from one RNG in batch order, so its exact returns
depend on ``num_envs``; the same call still reproduces them exactly.

Episodes run in a Gymnasium vector env with autoreset *disabled* (the one place the loop
decides when an env resets, and with which seed). ``record=True`` keeps an
:class:`agent.recording.EpisodeRecord` of every episode (observations, actions, the env's
physics state per step, sound, think steps, memory calls, text), which
:mod:`agent.video` turns into an MP4 and :mod:`agent.recording` writes as a Minari dataset.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

import envs  # registers the mindloop/ ids (and picks the GL backend first)
from agent.recording import EpisodeRecord, EpisodeRecorder
from agent.vector import check_env_id, every_env_has, expert_latents, worker_interrupt_wrapper
from encoders.registry import Registry
from envs import vocab

if TYPE_CHECKING:
    from agent.policy import StepInfo

VECTORIZATIONS = ("sync", "async")
MEMORY_COUNTS = ("set", "get", "hit", "evicted")
"""Memory stats counted per frame (calls summed over the frame's core steps)."""
MEMORY_LEVELS = ("occupancy", "store_bytes")
"""Memory stats that are levels (the store after the frame's last core step)."""


# --------------------------------------------------------------------------- policies


@dataclass
class PolicyStep:
    """What a policy returns for one frame of ``B`` envs."""

    actions: dict[str, np.ndarray]
    """Per action key ``(B, ...)``, ready for ``vector_env.step``."""
    think_steps: np.ndarray | None = None
    """``(B,)`` think steps taken this frame (``None``: the policy does not think)."""
    memory: dict[str, np.ndarray] = field(default_factory=dict)
    """``(B,)`` per stat of :data:`MEMORY_COUNTS` + :data:`MEMORY_LEVELS` (empty: no memory)."""
    state_bytes: int | None = None
    """Bytes of recurrent state per env (core + memory), if the policy has one."""
    expert_latent: np.ndarray | None = None
    """``(B, d)`` the scripted expert's latent (``expert_latent()``), recorded with
    demonstrations as behaviour cloning's auxiliary target; None for other policies."""


@runtime_checkable
class EvalPolicy(Protocol):
    """The small interface :func:`evaluate` needs. ``env`` is the vector env being stepped
    (the scripted expert reads its envs' state through ``env.call``)."""

    name: str

    def reset(self, env: VectorEnv, seed: int | None) -> None:
        """Start an evaluation on ``env`` (fresh recurrent state, seeded sampling)."""

    def act(
        self, obs: dict[str, np.ndarray], episode_start: np.ndarray, env: VectorEnv
    ) -> PolicyStep:
        """Actions for a batch: ``obs`` per key ``(B, ...)``, ``episode_start`` ``(B,)``
        bool (true on an episode's first frame)."""


POLICIES: Registry[Callable[..., EvalPolicy]] = Registry(
    "policy", entry_point_group="mindloop.policies"
)
"""Policies selectable by name (``eval.py --policy NAME``); plug-ins register through the
``mindloop.policies`` entry-point group."""


def make_policy(name: str, **kwargs: Any) -> EvalPolicy:
    """The policy registered as ``name`` (one-line error listing the names otherwise)."""
    if name not in POLICIES and ("/" in name or Path(name).exists()):
        raise ValueError(
            f"unknown policy {name!r}; available: {', '.join(POLICIES.names())} "
            f"(a trained agent's run or checkpoint directory goes to --checkpoint)"
        )
    return POLICIES.get(name)(**kwargs)


@POLICIES.register("expert")
class ExpertPolicy:
    """The task's scripted expert (``env.unwrapped.expert_action()`` in every env)."""

    name = "expert"

    def reset(self, env: VectorEnv, seed: int | None) -> None:
        if not every_env_has(env, "expert_action"):
            raise ValueError(
                "the expert policy needs an env with expert_action() (every mindloop/ task "
                "has one); use --policy random or a checkpoint for this env"
            )
        # optional outputs, probed once per run (a probe is a round trip to every worker)
        self._with_latents = every_env_has(env, "expert_latent")
        self._with_ops = every_env_has(env, "expert_memory_op")

    def act(
        self, obs: dict[str, np.ndarray], episode_start: np.ndarray, env: VectorEnv
    ) -> PolicyStep:
        per_env = env.call("expert_action")  # tuple of B action dicts
        step = PolicyStep(actions=_stack_actions(per_env))
        if self._with_latents:  # BC's auxiliary target, where the task has one
            step.expert_latent = expert_latents(env, probe=False)
        if self._with_ops:  # the expert's memory calls, where the task labels them
            ops = np.asarray(env.call("expert_memory_op"), dtype=object)  # (B,) op names
            get = (ops == "get").astype(np.float64)
            step.memory = {"set": (ops == "set").astype(np.float64), "get": get, "hit": get}
        return step


@POLICIES.register("random")
class RandomPolicy:
    """Uniform samples of each env's action space, from one seeded generator."""

    name = "random"

    def __init__(self) -> None:
        self._space: gym.Space | None = None

    def reset(self, env: VectorEnv, seed: int | None) -> None:
        # A copy of the single-env space, sampled once per env and frame, so env i's actions
        # do not depend on how the batched space would draw (and match a hand-written loop).
        self._space = _copy_space(env.single_action_space)
        self._space.seed(seed)

    def act(
        self, obs: dict[str, np.ndarray], episode_start: np.ndarray, env: VectorEnv
    ) -> PolicyStep:
        assert self._space is not None, "call reset() first"
        return PolicyStep(actions=_stack_actions([self._space.sample() for _ in episode_start]))


class AgentPolicy:
    """Adapts an agent with mindloop's contract (``act(obs, state, episode_start,
    deterministic) -> (actions, state, StepInfo)`` and ``initial_state(batch)``, e.g.
    :class:`agent.agent.MindloopAgent`) to :class:`EvalPolicy`, and reads think steps and
    memory calls from its :class:`agent.policy.StepInfo`."""

    def __init__(self, agent: Any, deterministic: bool = True, name: str = "agent") -> None:
        self.agent = agent
        self.deterministic = deterministic
        self.name = name
        self._state: Any = None

    def reset(self, env: VectorEnv, seed: int | None) -> None:
        # Checked before any step: an env of another task would fail in the encoder at the
        # first frame, naming one key; here every difference is named at once.
        for what, have, need in (
            ("observation", env.single_observation_space, _read_spaces(self.agent)),
            ("action", env.single_action_space, getattr(self.agent, "action_space", None)),
        ):
            problem = need is not None and dict_space_mismatch(have, need, "this env", "training")
            if problem:
                raise ValueError(
                    f"{self.name} cannot act in this env: {what} {problem}; evaluate it on the "
                    "task and env kwargs it was trained on (leave out --env and --env-kwargs)"
                )
        self._state = self.agent.initial_state(env.num_envs)

    def act(
        self, obs: dict[str, np.ndarray], episode_start: np.ndarray, env: VectorEnv
    ) -> PolicyStep:
        import torch

        from agent.state import state_nbytes

        with torch.no_grad():
            actions, self._state, info = self.agent.act(
                obs, self._state, torch.as_tensor(episode_start), deterministic=self.deterministic
            )
        think, memory = summarize_step_info(info)
        return PolicyStep(
            actions={k: _to_numpy(v) for k, v in actions.items()},
            think_steps=think,
            memory=memory,
            state_bytes=state_nbytes(self._state),
        )


class SB3Policy:
    """Adapts a Stable-Baselines3 / sb3-contrib model (``PPO``, ``RecurrentPPO``, ...) trained
    on the flat action space of :class:`envs.wrappers.FlattenActionWrapper` to
    :class:`EvalPolicy`, so baselines are measured by the same loop as mindloop agents.

    Args:
        model: anything with SB3's ``predict(obs, state, episode_start, deterministic)``.
        action_key: the ``Dict`` action key the flat action belongs to (default: the env's
            only key).
        rescale: the model acts in ``[-1, 1]`` (``FlattenActionWrapper(rescale=True)``); map
            its actions back to the env's bounds.
    """

    def __init__(
        self,
        model: Any,
        action_key: str | None = None,
        rescale: bool = False,
        deterministic: bool = True,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.action_key = action_key
        self.rescale = rescale
        self.deterministic = deterministic
        self.name = name or type(model).__name__
        self._state: Any = None
        self._space: gym.Space | None = None

    def reset(self, env: VectorEnv, seed: int | None) -> None:
        space = env.single_action_space
        if not isinstance(space, gym.spaces.Dict):
            raise ValueError(
                "SB3Policy maps flat actions onto a Dict action space; the env has none"
            )
        if self.action_key is None:
            if len(space.spaces) != 1:
                raise ValueError(
                    f"the env has several action keys {list(space.spaces)}; give action_key"
                )
            self.action_key = next(iter(space.spaces))
        if self.action_key not in space.spaces:
            raise ValueError(
                f"unknown action key {self.action_key!r}; the env has {list(space.spaces)}"
            )
        self._space = space.spaces[self.action_key]
        # Checked here, before any step: SB3 looks every observation key up in the space it
        # was trained on (a KeyError deep in obs_to_tensor) and a wrong shape fails in torch.
        why = sb3_space_mismatch(
            getattr(self.model, "observation_space", None),
            env.single_observation_space,
            getattr(self.model, "action_space", None),
            self._space,
        )
        if why is not None:
            raise ValueError(
                f"{self.name} was trained on {why}; evaluate it on the task and env kwargs "
                "it was trained on (leave out --env and --env-kwargs)"
            )
        self._state = None

    def act(
        self, obs: dict[str, np.ndarray], episode_start: np.ndarray, env: VectorEnv
    ) -> PolicyStep:
        actions, self._state = self.model.predict(
            obs, state=self._state, episode_start=episode_start, deterministic=self.deterministic
        )
        actions = np.asarray(actions)
        if self.rescale and isinstance(self._space, gym.spaces.Box):
            low, high = self._space.low, self._space.high
            actions = low + (np.clip(actions, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        if self._space is not None and self._space.dtype is not None:
            actions = actions.astype(self._space.dtype)
        return PolicyStep(actions={self.action_key: actions})


def _read_spaces(agent: Any) -> gym.spaces.Dict | None:
    """The observation keys ``agent`` reads (its encoder's, when it says), with their spaces."""
    space = getattr(agent, "observation_space", None)
    keys = getattr(getattr(agent, "encoder", None), "keys", None)
    if not isinstance(space, gym.spaces.Dict) or keys is None:
        return space
    return gym.spaces.Dict({k: space.spaces[k] for k in keys})


def dict_space_mismatch(
    have: gym.Space, need: gym.Space, have_name: str, need_name: str
) -> str | None:
    """What of ``need`` (a ``Dict`` space) ``have`` lacks or holds with another shape or dtype,
    as a phrase for a one-line error (every missing key at once), or None if it fits. Keys
    ``have`` has beyond ``need``'s are fine."""
    if not isinstance(have, gym.spaces.Dict) or not isinstance(need, gym.spaces.Dict):
        return None if have == need else f"space {have} in {have_name}, {need} in {need_name}"
    missing = [k for k in need.spaces if k not in have.spaces]
    if missing:
        return (
            f"{', '.join(map(repr, missing))} missing ({have_name} has "
            f"{', '.join(have.spaces) or 'none'})"
        )
    for key, space in need.spaces.items():
        got = have.spaces[key]
        if got.shape != space.shape or got.dtype != space.dtype:
            return (
                f"{key!r} is {got.shape} {got.dtype} in {have_name}, {space.shape} "
                f"{space.dtype} in {need_name}"
            )
    return None


def sb3_space_mismatch(
    trained_obs: gym.Space | None,
    env_obs: gym.Space,
    trained_action: gym.Space | None = None,
    env_action: gym.Space | None = None,
) -> str | None:
    """What an SB3 policy trained on ``trained_obs`` / ``trained_action`` (its own view:
    images channels-first, the flat action) cannot take from an env with ``env_obs`` /
    ``env_action`` (the flat action's space), as a phrase for an error; None if nothing.
    Unknown trained spaces (a model without them) are not checked."""
    if trained_obs is not None:
        trained = _keyed_spaces(trained_obs)
        given = _keyed_spaces(env_obs)
        if trained.keys() != given.keys():
            return f"observation keys {_names(trained)}; this env's are {_names(given)}"
        for key, space in trained.items():
            shapes = _sb3_accepted_shapes(space)
            if given[key].shape not in shapes:
                name = f"observation {key!r}" if key else "observations"
                return f"{name} of shape {shapes[-1]}; this env's is {given[key].shape}"
    if (
        trained_action is not None
        and env_action is not None
        and trained_action.shape != env_action.shape
    ):
        return f"actions of shape {trained_action.shape}; this env's are {env_action.shape}"
    return None


def _keyed_spaces(space: gym.Space) -> dict[str, gym.Space]:
    """A ``Dict`` space's subspaces by key; any other space under key ""."""
    return dict(space.spaces) if isinstance(space, gym.spaces.Dict) else {"": space}


def _names(spaces: Mapping[str, gym.Space]) -> str:
    return ", ".join(spaces) if any(spaces) else "none (a single array)"


def _sb3_accepted_shapes(space: gym.Space) -> list[tuple[int, ...] | None]:
    """Observation shapes SB3's ``predict`` takes for ``space``, the env's usual one last:
    an image space it transposed to channels-first also takes the channels-last original
    (``maybe_transpose`` turns it back)."""
    from stable_baselines3.common.preprocessing import (
        is_image_space,
        is_image_space_channels_first,
    )

    shape = space.shape
    if shape is not None and is_image_space(space) and is_image_space_channels_first(space):
        return [shape, (shape[1], shape[2], shape[0])]
    return [shape]


def summarize_step_info(info: StepInfo) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Think steps ``(B,)`` and per-frame memory stats ``(B,)`` from a ``StepInfo``.

    ``info.memory_stats`` holds ``(B, k_max+1)`` values per core step (0 where no step ran):
    calls are summed over the frame's steps, levels (occupancy, bytes) take the last step's,
    which is the largest since a frame only adds to the store.
    """
    think = _to_numpy(info.think_steps).astype(np.int64)
    memory: dict[str, np.ndarray] = {}
    stats = info.memory_stats or {}
    for key in MEMORY_COUNTS:
        if key in stats:
            memory[key] = _to_numpy(stats[key]).sum(axis=-1).astype(np.float64)
    for key in MEMORY_LEVELS:
        if key in stats:
            memory[key] = _to_numpy(stats[key]).max(axis=-1).astype(np.float64)
    return think, memory


def load_checkpoint_policy(
    checkpoint: str | os.PathLike, deterministic: bool = True, device: str = "cpu"
) -> tuple[AgentPolicy, str, dict[str, Any]]:
    """A trained agent from a checkpoint (run dir, ``checkpoints/latest`` or a step dir),
    with the env id and kwargs it was trained on: ``(policy, env_id, env_kwargs)``."""
    from agent.checkpoint import load_agent, read_checkpoint_meta

    if "sb3" in read_checkpoint_meta(checkpoint):  # an SB3 baseline (agent/baselines.py)
        from agent.baselines import load_sb3_eval_policy

        return load_sb3_eval_policy(checkpoint, deterministic, device)  # type: ignore[return-value]
    agent, config = load_agent(checkpoint, device=device)
    name = f"agent:{Path(checkpoint).name}"
    return AgentPolicy(agent, deterministic, name=name), config.env.id, config.env.make_kwargs()


# --------------------------------------------------------------------------- env


def make_eval_env(
    env_id: str,
    num_envs: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    vectorization: str = "sync",
    start_method: str = "forkserver",
) -> VectorEnv:
    """A vector env of ``num_envs`` copies with autoreset disabled (``evaluate`` resets each
    env itself, with episode ``k`` on seed ``seed + k``). Async workers start with
    ``start_method`` (forkserver, as training's :func:`agent.vector.make_vector_env`)."""
    check_env_id(env_id)
    if vectorization not in VECTORIZATIONS:
        raise ValueError(
            f"unknown vectorization {vectorization!r}; allowed: {', '.join(VECTORIZATIONS)}"
        )
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    envs.check_env_kwargs(env_id, dict(env_kwargs or {}))  # before any async worker starts
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs=_vector_kwargs(vectorization, start_method),
        # async workers leave Ctrl-C to this process
        wrappers=[worker_interrupt_wrapper()] if vectorization == "async" else None,
        **dict(env_kwargs or {}),
    )


def _vector_kwargs(vectorization: str, start_method: str) -> dict[str, Any]:
    """The vector env's own arguments: autoreset disabled, and for async a start method.
    Linux's default ``fork`` would copy a GL context the caller made by rendering (an image
    observation is a render) into each worker, which then hangs in ``mjr_readPixels``."""
    kwargs: dict[str, Any] = {"autoreset_mode": AutoresetMode.DISABLED}
    if vectorization == "async":
        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            raise ValueError(
                f"unknown start_method {start_method!r}; allowed here: {', '.join(methods)}"
            )
        kwargs["context"] = start_method
    return kwargs


def accepts_kwarg(env_id: str, name: str) -> bool:
    """Whether the env registered as ``env_id`` (``"module:id"`` too, once imported) takes
    the constructor argument ``name``."""
    entry = envs.registration.env_creator(env_id)
    if entry is None:
        return False
    try:
        params = inspect.signature(entry).parameters
    except (TypeError, ValueError):
        return False
    return name in params  # not **kwargs: MuJoCo envs pass those on to a base that refuses them


# --------------------------------------------------------------------------- results


@dataclass
class EpisodeStats:
    """One evaluated episode."""

    episode: int
    seed: int
    success: bool
    episode_return: float
    length: int
    think_steps: list[int] = field(default_factory=list)
    """Think steps per frame (empty for policies that do not think)."""
    memory: dict[str, float] = field(default_factory=dict)
    """Memory calls in the episode (set, get, hit, evicted) and the store's peak
    (max_occupancy items, max_store_bytes)."""
    said: str = ""
    """Every word the agent said, in order (silence left out)."""
    answer: str | None = None
    """The env's reading of the agent's answer (``info["answer"]``), for question tasks."""
    reports_success: bool = True
    """Whether the env gave ``info["is_success"]`` at the episode's end (Gymnasium's own
    MuJoCo envs do not; ``success`` is then False and means nothing)."""

    @property
    def mean_think_steps(self) -> float | None:
        return float(np.mean(self.think_steps)) if self.think_steps else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["return"] = out.pop("episode_return")
        out["mean_think_steps"] = self.mean_think_steps
        return out


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; ``records`` only with ``record=True``."""

    env_id: str
    env_kwargs: dict[str, Any]
    policy: str
    seed: int
    num_envs: int
    episodes: list[EpisodeStats]
    wall_time_s: float
    state_bytes: int | None = None
    records: list[EpisodeRecord] = field(default_factory=list, repr=False)
    observation_space: gym.Space | None = field(default=None, repr=False)
    """The single env's observation space (what records of this evaluation hold)."""
    action_space: gym.Space | None = field(default=None, repr=False)
    env_steps_simulated: int = 0
    """Every env step the evaluation took (vector steps x ``num_envs``): the episodes' own
    plus those of envs idling after the last episode was handed out, which a vector env
    steps too. What recording these episodes cost in env steps."""

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes (0.0 where the env reports no success: see
        :attr:`reports_success`)."""
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def reports_success(self) -> bool:
        """Whether the env says what success is (``info["is_success"]``, SB3's convention)."""
        return any(e.reports_success for e in self.episodes)

    def summary(self) -> dict[str, Any]:
        """Aggregates over episodes (JSON-able). Think steps are averaged per frame."""
        eps = self.episodes
        returns = np.array([e.episode_return for e in eps])
        lengths = np.array([e.length for e in eps])
        steps = int(lengths.sum())
        out: dict[str, Any] = {
            "episodes": len(eps),
            "success_rate": self.success_rate if self.reports_success else None,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "length_mean": float(lengths.mean()),
            "env_steps": steps,
            "steps_per_s": steps / self.wall_time_s if self.wall_time_s > 0 else None,
        }
        think = [k for e in eps for k in e.think_steps]
        if think:
            out["think_steps_mean"] = float(np.mean(think))
            out["think_steps_max"] = int(np.max(think))
            out["think_steps_hist"] = np.bincount(think).tolist()  # frames with 0, 1, ... steps
        if any(e.memory for e in eps):
            mem = {k: np.array([e.memory.get(k, 0.0) for e in eps]) for k in eps[0].memory}
            for key in MEMORY_COUNTS:
                if key in mem:
                    out[f"memory_{key}_per_episode"] = float(mem[key].mean())
            gets = mem.get("get", np.zeros(1)).sum()
            out["memory_hit_rate"] = float(mem["hit"].sum() / gets) if gets > 0 else None
            for key in ("max_occupancy", "max_store_bytes"):
                if key in mem:
                    out[f"memory_{key}"] = float(mem[key].max())
        if self.state_bytes is not None:
            out["state_bytes_per_env"] = self.state_bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "policy": self.policy,
            "seed": self.seed,
            "num_envs": self.num_envs,
            "wall_time_s": self.wall_time_s,
            "summary": self.summary(),
            "episodes": [e.to_dict() for e in self.episodes],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically (temp file + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def table(self, max_rows: int = 20) -> str:
        """A plain-text table: one row per episode (up to ``max_rows``), then the summary."""
        think = any(e.think_steps for e in self.episodes)
        mem = any(e.memory for e in self.episodes)
        said = any(e.said or e.answer for e in self.episodes)
        head = ["ep", "seed", "success", "return", "length"]
        head += ["think/frame"] * think + ["mem set/get/hit"] * mem + ["said"] * said
        lines = [
            f"{self.policy} on {self.env_id}"
            + (f" {self.env_kwargs}" if self.env_kwargs else "")
            + f": {len(self.episodes)} episodes, seeds {self.seed}..{self.seed + len(self.episodes) - 1}"
        ]
        body = [head] + [_row(e, think, mem, said) for e in self.episodes[:max_rows]]
        widths = [max(len(r[i]) for r in body) for i in range(len(head))]
        for r in body:
            lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if len(self.episodes) > max_rows:
            lines.append(f"... {len(self.episodes) - max_rows} more episodes in the JSON")
        s = self.summary()
        success = s["success_rate"]
        parts = [
            "success n/a (no info['is_success'])"
            if success is None
            else f"success {100 * success:.1f}%",
            f"return {s['return_mean']:.3f} ± {s['return_std']:.3f}",
            f"length {s['length_mean']:.1f}",
        ]
        if "think_steps_mean" in s:
            parts.append(f"think {s['think_steps_mean']:.2f}/frame (max {s['think_steps_max']})")
        if "memory_set_per_episode" in s:
            hit = s.get("memory_hit_rate")
            memory = (
                f"memory set {s['memory_set_per_episode']:.1f} get "
                f"{s.get('memory_get_per_episode', 0):.1f} per episode, hit rate "
                + ("-" if hit is None else f"{100 * hit:.0f}%")
            )
            # Only a policy with a store reports its levels; the expert's calls are labels
            # with no store behind them, where "peak 0 items / 0 B" would read as a bug.
            if "memory_max_occupancy" in s or "memory_max_store_bytes" in s:
                memory += (
                    f", peak {s.get('memory_max_occupancy', 0):.0f} items"
                    f" / {s.get('memory_max_store_bytes', 0):.0f} B"
                )
            parts.append(memory)
        if self.state_bytes is not None:
            parts.append(f"state {self.state_bytes} B/env")
        if s["steps_per_s"]:
            parts.append(f"{s['steps_per_s']:.0f} steps/s")
        lines.append(" | ".join(parts))
        return "\n".join(lines)


def _row(e: EpisodeStats, think: bool, mem: bool, said: bool) -> list[str]:
    row = [
        str(e.episode),
        str(e.seed),
        ("yes" if e.success else "no") if e.reports_success else "-",
    ]
    row += [f"{e.episode_return:.3f}", str(e.length)]
    if think:
        row.append(f"{e.mean_think_steps:.2f}" if e.think_steps else "-")
    if mem:
        m = e.memory
        row.append(f"{m.get('set', 0):.0f}/{m.get('get', 0):.0f}/{m.get('hit', 0):.0f}")
    if said:
        words = e.said.split()
        text = " ".join(words[-6:]) if len(words) <= 6 else "... " + " ".join(words[-6:])
        if e.answer is not None:
            text = f"{text} (answer: {e.answer or '-'})"
        row.append(text.strip())
    return row


# --------------------------------------------------------------------------- the loop


class _Episode:
    """Bookkeeping of the episode an env is running."""

    def __init__(self, index: int, seed: int, recorder: EpisodeRecorder | None) -> None:
        self.index, self.seed, self.recorder = index, seed, recorder
        self.ret, self.length = 0.0, 0
        self.think: list[int] = []
        self.memory: dict[str, float] = {}
        self.said: list[str] = []
        self.success = False
        self.reports_success = False
        self.answer: str | None = None

    def stats(self) -> EpisodeStats:
        return EpisodeStats(
            episode=self.index,
            seed=self.seed,
            success=self.success,
            episode_return=self.ret,
            length=self.length,
            think_steps=self.think,
            memory=self.memory,
            said=" ".join(self.said),
            answer=self.answer,
            reports_success=self.reports_success,
        )


def evaluate(
    policy: EvalPolicy,
    env: str | gym.Env | VectorEnv,
    episodes: int = 10,
    *,
    seed: int = 0,
    num_envs: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    vectorization: str = "sync",
    record: bool | int = False,
    progress: Callable[[EpisodeStats], None] | None = None,
) -> EvalResult:
    """Run ``policy`` for ``episodes`` episodes; episode ``k`` is reset with seed ``seed + k``.

    Args:
        policy: an :class:`EvalPolicy` (:func:`make_policy`, :class:`AgentPolicy`, ...).
        env: an env id (made here with ``env_kwargs``, ``num_envs`` copies), a single env, or
            a vector env made with ``autoreset_mode=AutoresetMode.DISABLED``.
        record: ``True`` keeps an :class:`EpisodeRecord` of every episode in
            ``result.records``, an int ``n`` of the first ``n`` (e.g. only those for a video).
            Records need a mindloop env (``get_state`` for replay).
        progress: called with each finished episode's stats (e.g. to print a line).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n_record = episodes if record is True else int(record)
    vec, env_id, kwargs, owned = _resolve_env(env, num_envs, env_kwargs, vectorization, n_record)
    try:
        return _run(policy, vec, env_id, kwargs, episodes, seed, n_record, progress)
    finally:
        if owned:
            vec.close()


def evaluate_and_save(
    policy: EvalPolicy,
    env: str | gym.Env | VectorEnv,
    episodes: int = 10,
    *,
    seed: int = 0,
    num_envs: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    vectorization: str = "sync",
    video: str | os.PathLike | None = None,
    video_episodes: int = 3,
    video_size: int = 384,
    record_dir: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """:func:`evaluate`, then print the table and write what was asked for: an MP4 of the
    first ``video_episodes`` episodes (with sound and overlays), a Minari record of every
    episode (replayable with ``eval.py replay``), and the JSON of the results.

    This is what ``eval.py`` runs and what ``train.py`` calls at the end of training.
    Output paths are checked before the episodes run, so a mistake costs no time.
    """
    from agent.recording import check_output_path, check_overwritable, write_records
    from agent.video import write_episodes_video

    if record_dir is not None and Path(record_dir).exists():
        if not overwrite:
            raise ValueError(
                f"record {record_dir} already exists; choose another path or overwrite it (--overwrite)"
            )
        check_overwritable(record_dir)  # before the episodes, not after
    if video is not None and Path(video).suffix.lower() != ".mp4":
        raise ValueError(f"video path must end in .mp4, got {str(video)!r}")
    if video is not None and video_episodes < 1:
        raise ValueError(f"video_episodes must be >= 1, got {video_episodes}")
    for option, path in (("--json", json_path), ("--video", video), ("--record", record_dir)):
        if path is not None:
            check_output_path(option, path, directory=option == "--record")
    n_record = episodes if record_dir is not None else (video_episodes if video else 0)
    bar = _ProgressBar(episodes) if progress else None
    try:
        result = evaluate(
            policy,
            env,
            episodes,
            seed=seed,
            num_envs=num_envs,
            env_kwargs=env_kwargs,
            vectorization=vectorization,
            record=min(n_record, episodes),
            progress=bar.update_episode if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    log(result.table())
    if json_path is not None:
        log(f"results: {result.save_json(json_path)}")
    if video is not None:
        info = write_episodes_video(
            video, result.records[:video_episodes], size=video_size, policy=result.policy
        )
        log(
            f"video: {info.path} ({info.episodes} episodes, {info.frames} frames, {info.seconds:.1f} s, with sound)"
        )
    if record_dir is not None:
        assert result.observation_space is not None and result.action_space is not None
        path = write_records(
            record_dir,
            result.records,
            result.observation_space,
            result.action_space,
            policy=result.policy,
            # what recording took: a run training on the record counts it (as for demos)
            extra_metadata={"env_steps_simulated": result.env_steps_simulated},
            overwrite=overwrite,
        )
        log(
            f"record: {path} ({len(result.records)} episodes, Minari/HDF5); "
            f"replay with: python eval.py replay {path} --video replay.mp4"
        )
    return result


class _ProgressBar:
    """A tqdm bar over episodes showing the running success rate (on stderr)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI)
        self._bar = tqdm(total=total, unit="ep", desc="eval", leave=False, disable=None)
        self._wins = self._done = 0

    def update_episode(self, stats: EpisodeStats) -> None:
        self._wins += stats.success
        self._done += 1
        self._bar.update(1)
        if stats.reports_success:
            self._bar.set_postfix(success=f"{self._wins / self._done:.0%}")

    def close(self) -> None:
        self._bar.close()


def _resolve_env(
    env: str | gym.Env | VectorEnv,
    num_envs: int,
    env_kwargs: Mapping[str, Any] | None,
    vectorization: str,
    n_record: int,
) -> tuple[VectorEnv, str, dict[str, Any], bool]:
    """-> (vector env, env id, the user's env kwargs, whether we must close it)."""
    kwargs = dict(env_kwargs or {})
    if isinstance(env, str):
        check_env_id(env)
        make_kwargs = dict(kwargs)
        if n_record and accepts_kwarg(env, "audio_info"):
            make_kwargs["audio_info"] = True  # sound for videos even when not observed
        return make_eval_env(env, num_envs, make_kwargs, vectorization), env, kwargs, True
    if isinstance(env, VectorEnv):
        if env.metadata.get("autoreset_mode") != AutoresetMode.DISABLED:
            raise ValueError(
                "evaluate() needs a vector env made with autoreset_mode=AutoresetMode.DISABLED "
                "(it resets each env itself); or pass the env id"
            )
        spec = env.spec
        return env, spec.id if spec else "unknown", kwargs or _spec_kwargs(spec), False
    if isinstance(env, gym.Env):
        spec = env.spec
        vec = gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.DISABLED)
        return vec, spec.id if spec else "unknown", kwargs or _spec_kwargs(spec), False
    raise ValueError(
        f"env must be an env id, a gymnasium Env or VectorEnv, got {type(env).__name__}"
    )


def _spec_kwargs(spec: Any) -> dict[str, Any]:
    if spec is None:
        return {}
    drop = {"render_mode", "audio_info"}
    return {k: v for k, v in (spec.kwargs or {}).items() if k not in drop}


def _run(
    policy: EvalPolicy,
    vec: VectorEnv,
    env_id: str,
    env_kwargs: dict[str, Any],
    episodes: int,
    seed: int,
    n_record: int,
    progress: Callable[[EpisodeStats], None] | None,
) -> EvalResult:
    B = vec.num_envs
    speaks = isinstance(vec.single_action_space, gym.spaces.Dict) and "text" in (
        vec.single_action_space.spaces
    )
    if n_record and not every_env_has(vec, "get_state"):
        raise ValueError(
            f"recording episodes (for --record or --video) needs an env with get_state() "
            f"and set_state() for replay, like the mindloop/ tasks; {env_id} has none"
        )
    audio_rate, dt = _audio_rate(vec) if n_record else (None, None)
    policy.reset(vec, seed)
    start = time.perf_counter()

    def begin(index: int) -> _Episode:
        rec = None
        if index < n_record:
            rec = EpisodeRecorder(
                env_id, env_kwargs, seed + index, audio_sample_rate=audio_rate, dt=dt
            )
        return _Episode(index, seed + index, rec)

    # Envs beyond the episode count idle from the start (their results are ignored).
    running: list[_Episode | None] = [begin(i) if i < episodes else None for i in range(B)]
    next_index = min(B, episodes)
    obs, info = vec.reset(seed=[seed + i if i < episodes else None for i in range(B)])
    _record_frames(vec, running, range(B), obs, info)
    episode_start = np.ones(B, dtype=bool)
    finished: list[EpisodeStats] = []
    records: list[EpisodeRecord] = []
    state_bytes = None
    vector_steps = 0

    while any(ep is not None for ep in running):
        step = policy.act(obs, episode_start, vec)
        state_bytes = step.state_bytes if step.state_bytes is not None else state_bytes
        obs, reward, terminated, truncated, info = vec.step(_env_actions(step.actions))
        vector_steps += 1
        done = np.logical_or(terminated, truncated)
        for i, ep in enumerate(running):
            if ep is not None:
                _account(ep, i, step, reward, terminated, truncated, info, speaks)
        _record_frames(vec, running, range(B), obs, info)

        # Every finished env must be reset before the next step (autoreset is disabled);
        # it takes the next episode, or idles if none are left.
        if done.any():
            seeds: list[int | None] = [None] * B
            for i in np.flatnonzero(done):
                ep = running[i]
                if ep is not None:
                    stats = ep.stats()
                    finished.append(stats)
                    if ep.recorder is not None:
                        records.append(ep.recorder.finish())
                    if progress is not None:
                        progress(stats)
                if next_index < episodes:
                    running[i] = begin(next_index)
                    seeds[i] = seed + next_index
                    next_index += 1
                else:
                    running[i] = None
            obs, info = vec.reset(seed=seeds, options={"reset_mask": done})
            _record_frames(vec, running, np.flatnonzero(done), obs, info)
        episode_start = done

    records.sort(key=lambda r: r.seed)
    finished.sort(key=lambda e: e.episode)
    return EvalResult(
        env_id=env_id,
        env_kwargs=env_kwargs,
        policy=policy.name,
        seed=seed,
        num_envs=B,
        episodes=finished,
        wall_time_s=time.perf_counter() - start,
        state_bytes=state_bytes,
        records=records,
        observation_space=vec.single_observation_space,
        action_space=vec.single_action_space,
        env_steps_simulated=vector_steps * B,
    )


def _account(
    ep: _Episode,
    i: int,
    step: PolicyStep,
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: dict[str, Any],
    speaks: bool,
) -> None:
    """Add env ``i``'s step to its episode (stats, and the record's decision + outcome)."""
    ep.ret += float(reward[i])
    ep.length += 1
    success = _info(info, "is_success", i, None)
    ep.success, ep.reports_success = bool(success), success is not None
    answer = _info(info, "answer", i, None)
    ep.answer = None if answer is None else str(answer)
    think = None if step.think_steps is None else int(step.think_steps[i])
    if think is not None:
        ep.think.append(think)
    mem = {k: float(v[i]) for k, v in step.memory.items()}
    for key, value in mem.items():
        if key in MEMORY_LEVELS:
            name = f"max_{key}"
            ep.memory[name] = max(ep.memory.get(name, 0.0), value)
        else:
            ep.memory[key] = ep.memory.get(key, 0.0) + value
    word = None
    if speaks:
        word = _word(int(np.asarray(step.actions["text"])[i]))
        if word:
            ep.said.append(word)
    if ep.recorder is not None:
        ep.recorder.step(
            {k: np.asarray(v)[i] for k, v in step.actions.items()},
            float(reward[i]),
            bool(terminated[i]),
            bool(truncated[i]),
            think_steps=think,
            text_emitted=word,
            memory=mem or None,
            expert_latent=None if step.expert_latent is None else step.expert_latent[i],
        )


def _record_frames(
    vec: VectorEnv,
    running: Sequence[_Episode | None],
    rows: Sequence[int] | np.ndarray,
    obs: dict[str, np.ndarray],
    info: dict[str, Any],
) -> None:
    """Give the recorders of envs ``rows`` their new frame (obs, state, sound, text)."""
    rows = [int(i) for i in rows if running[int(i)] is not None and running[int(i)].recorder]
    if not rows:
        return
    states = vec.call("get_state")  # one snapshot per env (cheap: a few hundred numbers)
    for i in rows:
        rec = running[i].recorder
        assert rec is not None
        frame = {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else {"": obs[i]}
        audio = _info(info, "audio", i, None)
        rec.frame(
            frame,
            is_success=bool(_info(info, "is_success", i, False)),
            text_shown=str(_info(info, "text_shown", i, "") or ""),
            phase=str(_info(info, "phase", i, "") or ""),
            state=states[i],
            audio=None if audio is None or "audio" in frame else audio,
        )


def _audio_rate(vec: VectorEnv) -> tuple[int | None, float | None]:
    if not every_env_has(vec, "audio_config", "dt"):
        return None, None
    config = vec.get_attr("audio_config")[0]
    return int(config.sample_rate), float(vec.get_attr("dt")[0])


def _info(info: dict[str, Any], key: str, i: int, default: Any) -> Any:
    """Env ``i``'s ``info[key]`` from a vector env's batched infos (masked by ``_key``)."""
    if key not in info:
        return default
    mask = info.get(f"_{key}")
    if mask is not None and not mask[i]:
        return default
    value = info[key][i]
    return value.item() if isinstance(value, np.generic) else value


def _word(token: int) -> str:
    """The word for a text action ("" for silence)."""
    if token == vocab.SILENCE or not 0 <= token < vocab.VOCAB_SIZE:
        return ""
    return vocab.VOCAB[token]


def _stack_actions(per_env: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per-env actions -> per key ``(B, ...)``; a non-``Dict`` action goes under key ""."""
    if not isinstance(per_env[0], Mapping):
        return {"": np.stack([np.asarray(a) for a in per_env])}
    return {k: np.stack([np.asarray(a[k]) for a in per_env]) for k in per_env[0]}


def _env_actions(actions: dict[str, np.ndarray]) -> Any:
    """What ``vector_env.step`` takes: the dict, or the bare array of a non-``Dict`` space."""
    return actions[""] if set(actions) == {""} else actions


def _copy_space(space: gym.Space) -> gym.Space:
    import copy

    return copy.deepcopy(space)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


__all__ = [
    "POLICIES",
    "AgentPolicy",
    "EpisodeStats",
    "EvalPolicy",
    "EvalResult",
    "ExpertPolicy",
    "PolicyStep",
    "RandomPolicy",
    "SB3Policy",
    "dict_space_mismatch",
    "evaluate",
    "evaluate_and_save",
    "load_checkpoint_policy",
    "make_eval_env",
    "make_policy",
    "sb3_space_mismatch",
    "summarize_step_info",
]
