"""``MindloopAgent``: fused encoders + the thinking policy (+ an optional memory tool).

Built from an :class:`agent.config.AgentConfig` and an env's spaces; everything a rollout,
an evaluation or a training step needs goes through it:

>>> agent = MindloopAgent(env.single_observation_space, env.single_action_space)  # doctest: +SKIP
>>> state = agent.initial_state(env.num_envs)
>>> obs, _ = env.reset(seed=0)
>>> start = torch.ones(env.num_envs, dtype=torch.bool)
>>> actions, state, info = agent.act(obs, state, start)      # numpy actions for the vector env
>>> obs, reward, terminated, truncated, _ = env.step(actions)

Running normalization (the proprio/touch encoders' ``RunningNorm``) never updates inside a
forward pass here: a forward must give the same numbers in a rollout and in its replay for
PPO's ratio to start at 1. Trainers record the normalized inputs with :class:`NormRecorder`
during rollouts and fold them into the statistics after the update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agent.config import LIGHT_ENCODERS, AgentConfig
from agent.heads import Action
from agent.memory import build_memory
from agent.policy import Decisions, MindloopPolicy, PolicyConfig, PonderOutput, StepInfo
from agent.state import State
from agent.think import THINK_INPUTS
from encoders.base import ENCODERS
from encoders.fusion import (
    FusedEncoder,
    FusedEncoderConfig,
    build_fused_encoder,
    default_encoder_name,
)
from encoders.normalization import RunningNorm

ObsBatch = Mapping[str, np.ndarray | torch.Tensor]


class MindloopAgent(nn.Module):
    """The whole agent: observation dict -> fused vector -> core + think steps -> actions.

    Args:
        observation_space: the env's (single, unbatched) ``Dict`` observation space.
        action_space: the env's (single) ``Dict`` action space (``muscles`` and/or ``text``).
        config: encoders, core, think and memory settings (defaults: the package defaults).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Dict,
        config: AgentConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or AgentConfig()
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.encoder: FusedEncoder = build_fused_encoder(
            observation_space, encoders_for(config.encoders, observation_space)
        )
        memory = build_memory(config.memory, config.core.hidden_dim) if config.use_memory else None
        # The attend/scan think inputs re-read one observation as tokens (image cells, words).
        reads_tokens = THINK_INPUTS.get(config.think.think_input).needs_tokens
        self.token_key = config.think_tokens_from if reads_tokens else None
        self.policy = MindloopPolicy(
            self.encoder.embed_dim,
            action_space,
            PolicyConfig(core=config.core, think=config.think),
            memory=memory,
            token_dim=self.encoder.token_dim(self.token_key) if self.token_key else None,
        )
        self.value_norm = ValueNormalizer()
        self._action_dtypes = {
            k: np.dtype(space.dtype) if space.dtype is not None else np.dtype(np.int64)
            for k, space in action_space.spaces.items()
        }
        self.eval()

    # ------------------------------------------------------------------ modes, device

    def train(self, mode: bool = True) -> MindloopAgent:
        """As ``nn.Module.train``, except that running normalization stays frozen (its
        statistics change only through :class:`NormRecorder`, between updates)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, RunningNorm):
                module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def k_max(self) -> int:
        return self.policy.k_max

    # ------------------------------------------------------------------ rollouts

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        """Fresh recurrent state for ``batch`` envs (core + memory keys)."""
        return self.policy.initial_state(batch, device or self.device)

    def encode(self, obs: ObsBatch) -> torch.Tensor:
        """Observation dict with any lead shape (B,) or (T, B) -> (*lead, embed_dim)."""
        return self.encoder(obs)

    def encode_frames(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the policy reads of a frame: the embedding ``(*lead, embed_dim)`` and, for the
        ``attend``/``scan`` think inputs, the ``think_tokens_from`` observation as tokens
        ``(*lead, n_tokens, token_dim)`` from the same encoder pass (else None)."""
        if self.token_key is None or self.k_max == 0:
            return self.encoder(obs), None
        return self.encoder(obs, token_key=self.token_key)

    @torch.no_grad()
    def act(
        self,
        obs: ObsBatch,
        state: State | None,
        episode_start: torch.Tensor | np.ndarray,
        deterministic: bool = False,
    ) -> tuple[dict[str, np.ndarray], State, StepInfo]:
        """One frame for a batch of envs.

        Args:
            obs: dict of (B, ...) numpy arrays or tensors, as a Gymnasium vector env returns.
            state: the state returned by the previous call (``None``: fresh).
            episode_start: (B,) bool, true where an episode starts at this frame (those envs'
                state is reset first).
            deterministic: halting by threshold, memory op by argmax, action at its mode (Beta peak / argmax).

        Returns: actions as a dict of (B, ...) numpy arrays in the action space's dtypes
        (ready for ``vector_env.step``), the new state, and :class:`agent.policy.StepInfo`
        (its ``value`` is in the normalized units of :attr:`value_norm`).
        """
        actions, state, info = self.act_tensors(obs, state, episode_start, deterministic)
        return self.actions_to_numpy(actions), state, info

    @torch.no_grad()
    def act_tensors(
        self,
        obs: ObsBatch,
        state: State | None,
        episode_start: torch.Tensor | np.ndarray,
        deterministic: bool = False,
    ) -> tuple[Action, State, StepInfo]:
        """:meth:`act` with the actions kept as tensors (what training stores)."""
        x, tokens = self.encode_frames(obs)  # (B, embed_dim), (B, N, token_dim) or None
        if x.dim() != 2:  # the encoders take any lead shape; act takes one frame of B envs
            raise ValueError(
                f"act takes one frame of a batch of envs, observations of shape (B, ...) as a "
                f"vector env returns; these have lead shape {tuple(x.shape[:-1])}: for a single "
                "env's observation add a batch axis, {k: v[None] for k, v in obs.items()}"
            )
        # no numpy round trip: a tensor on a GPU cannot be viewed as a numpy array
        start = torch.as_tensor(episode_start, device=x.device).bool()
        return self.policy.act(x, state, start, deterministic, obs_tokens=tokens)

    def actions_to_numpy(self, actions: Action) -> dict[str, np.ndarray]:
        return {
            k: v.detach().cpu().numpy().astype(self._action_dtypes[k], copy=False)
            for k, v in actions.items()
        }

    # ------------------------------------------------------------------ training

    def forward(
        self,
        obs: ObsBatch,
        initial_state: State,
        episode_starts: torch.Tensor,
        actions: Action | None = None,
        decisions: Decisions | None = None,
        ponder: bool = False,
        mem_ops: torch.Tensor | None = None,
    ) -> tuple[StepInfo | PonderOutput, State]:
        """The training forward over (T, B, ...) frames, one entry point so that
        ``DistributedDataParallel(agent)`` sees every loss: :meth:`ponder_sequence` when
        ``ponder``, else :meth:`evaluate_sequence` replaying ``actions`` and ``decisions``."""
        if ponder:
            return self.ponder_sequence(obs, initial_state, episode_starts, mem_ops=mem_ops)
        if actions is None or decisions is None:
            raise ValueError("forward needs actions and decisions to replay (or ponder=True)")
        return self.evaluate_sequence(obs, initial_state, episode_starts, actions, decisions)

    def evaluate_sequence(
        self,
        obs: ObsBatch,
        initial_state: State,
        episode_starts: torch.Tensor,
        actions: Action,
        decisions: Decisions,
    ) -> tuple[StepInfo, State]:
        """Replay recorded frames (T, B, ...) with BPTT from ``initial_state`` (the state
        ``act`` got at t = 0): log-probs, entropies and values as ``act`` gave them."""
        x, tokens = self.encode_frames(obs)  # (T, B, embed_dim), (T, B, N, token_dim) or None
        return self.policy.evaluate_sequence(
            x, initial_state, episode_starts, actions, decisions, obs_tokens=tokens
        )

    def ponder_sequence(
        self,
        obs: ObsBatch,
        initial_state: State,
        episode_starts: torch.Tensor,
        deterministic: bool = False,
        mem_ops: torch.Tensor | None = None,
    ) -> tuple[PonderOutput, State]:
        """PonderNet view of (T, B, ...) frames: every think step run, the halting
        distribution returned (for supervised training, see ``agent/bc.py``); ``mem_ops``
        (T, B) teacher-forces labelled memory calls (-1: unlabelled)."""
        x, tokens = self.encode_frames(obs)  # (T, B, embed_dim), (T, B, N, token_dim) or None
        return self.policy.ponder_sequence(
            x, initial_state, episode_starts, deterministic, obs_tokens=tokens, mem_ops=mem_ops
        )


def encoders_for(config: FusedEncoderConfig, space: spaces.Dict) -> FusedEncoderConfig:
    """The default light encoder options (``agent.config.LIGHT_ENCODERS``) apply where they
    fit: to a key the task has, read by an encoder that has the field (the default cnn and
    logmel; not a timm backbone or an mlp chosen for that key). Other options are passed on
    as given (an option for a missing key or field is an error)."""
    keep = {
        name: value
        for name, value in config.options.items()
        if LIGHT_ENCODERS.get(name) != value or _light_option_fits(name, config, space)
    }
    return config if keep == config.options else dataclasses.replace(config, options=keep)


def _light_option_fits(dotted: str, config: FusedEncoderConfig, space: spaces.Dict) -> bool:
    key, _, field = dotted.partition(".")
    if key not in space.spaces:
        return False
    try:
        name = config.encoders.get(key) or default_encoder_name(key, space[key])
        config_class = ENCODERS.get(name.partition("/")[0]).config_class
    except (KeyError, ValueError):
        return True  # an unknown encoder or space: the encoder's build says so in one line
    return field in {f.name for f in dataclasses.fields(config_class)}


class ValueNormalizer(nn.Module):
    """Running mean and std of value targets: the value head predicts returns in these
    normalized units (MAPPO's ValueNorm, Yu et al. 2022).

    Returns of a task can sit far from 0 (-15 for a reach that times out): an unnormalized
    head would spend thousands of Adam steps only moving its bias there, while advantages come
    from a critic that knows nothing. Statistics are debiased exponential moving averages
    updated once per batch of targets; they are buffers, saved with the weights, so a behaviour
    cloned critic carries over to PPO and a checkpoint resumes exactly.
    """

    def __init__(self, decay: float = 0.9, eps: float = 1e-4) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_sq", torch.zeros(()))
        self.register_buffer("debias", torch.zeros(()))

    @property
    def std(self) -> torch.Tensor:
        mean, mean_sq = self._moments()
        return (mean_sq - mean.square()).clamp_min(self.eps).sqrt()

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debias.clamp_min(1e-8)
        if float(self.debias) == 0:  # never updated: the identity map
            return torch.zeros_like(self.mean), torch.ones_like(self.mean_sq)
        return self.mean / d, self.mean_sq / d

    @torch.no_grad()
    def update(self, targets: torch.Tensor) -> None:
        x = targets.detach().reshape(-1).to(self.mean.dtype)
        w = self.decay
        self.mean.mul_(w).add_((1 - w) * x.mean())
        self.mean_sq.mul_(w).add_((1 - w) * x.square().mean())
        self.debias.mul_(w).add_(1 - w)

    def normalize(self, returns: torch.Tensor) -> torch.Tensor:
        mean, _ = self._moments()
        return (returns - mean) / self.std

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        mean, _ = self._moments()
        return values * self.std + mean


class NormRecorder:
    """Collects what every ``RunningNorm`` of a module sees, to update the statistics later.

    >>> rec = NormRecorder(agent)                              # doctest: +SKIP
    >>> with rec.recording():
    ...     agent.act(obs, state, start)                       # inputs recorded, stats frozen
    >>> rec.apply()                                            # stats updated, records cleared

    ``gather`` (e.g. an all-gather across DDP ranks) is applied to each recorded batch in
    :meth:`apply` so every rank folds in the same data and keeps identical statistics.
    """

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, RunningNorm)]
        self._records: list[list[torch.Tensor]] = [[] for _ in self.norms]

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = [
            norm.register_forward_pre_hook(self._hook(i)) for i, norm in enumerate(self.norms)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, i: int):
        def hook(module: RunningNorm, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            self._records[i].append(x.reshape(-1, *module.mean.shape).to(module.mean.dtype))

        return hook

    def apply(self, gather=None) -> int:
        """Fold the recorded inputs into each norm's statistics; returns rows folded in."""
        rows = 0
        for norm, records in zip(self.norms, self._records, strict=True):
            if not records:
                continue
            x = torch.cat(records)
            if gather is not None:
                x = gather(x)
            norm.update(x)
            rows = max(rows, x.shape[0])
        self._records = [[] for _ in self.norms]
        return rows

    def state(self) -> dict[str, torch.Tensor]:
        """Pending records (for an exact resume between a rollout and its update)."""
        return {f"norm{i}": torch.cat(r) for i, r in enumerate(self._records) if r}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._records = [
            [tensors[f"norm{i}"]] if f"norm{i}" in tensors else [] for i in range(len(self.norms))
        ]


__all__ = ["MindloopAgent", "NormRecorder", "ValueNormalizer", "encoders_for"]
