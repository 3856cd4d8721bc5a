"""Expert-labelled episodes for behaviour cloning, and replaying them as BPTT batches.

Two sources give the same :class:`Episode` list:

- :func:`load_episodes`: a Minari dataset of expert demonstrations written by
  :func:`agent.datasets.collect_expert_dataset` (also ``eval.py --record``), the format a
  user keeps, shares and replays to video;
- :func:`collect_episodes`: a vector env run in-process, either with the expert acting or
  with a *learner* acting while the expert labels every visited state (DAgger, Ross et al.
  2011). The expert is ``env.unwrapped.expert_action()``, called in each worker for its
  current state.

:class:`SequenceSampler` replays episodes as ``B`` parallel lanes, each a stream of random
episodes back to back, cut into chunks of ``seq_len`` frames: what a vector env's rollout
looks like, so BC trains the recurrent core with the same truncated BPTT as PPO (the state is
carried from chunk to chunk of a lane and reset at episode starts).

**Memory-op labels.** A task whose expert also says when a get/set memory tool should be
called (``env.unwrapped.expert_memory_op()`` -> ``"none"``/``"set"``/``"get"``, e.g.
CueRecall: set on the cue, get when the balls show) gets those labels recorded with every
frame (:attr:`Episode.memory_ops`; in a Minari dataset as the expert's ``agent/memory/set``
and ``get`` infos), and BC clones them (``agent/bc.py``). Tasks without it simply have none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agent.agent import MindloopAgent
from agent.memory import OP_GET, OP_NAMES, OP_NONE, OP_SET
from agent.vector import (
    call_if_every_env_has,
    every_env_has,
    expert_actions,
    expert_latents,
    step_vector_env,
)


@dataclass
class Episode:
    """One episode, frames t = 0..L-1."""

    obs: dict[str, np.ndarray]
    """(L, ...) per key: what the agent saw before acting at t."""
    actions: dict[str, np.ndarray]
    """(L, ...) per key: the expert's action for the state at t (the BC label)."""
    rewards: np.ndarray
    """(L,) env rewards of the action actually taken (the expert's, for demonstrations)."""
    success: bool
    memory_ops: np.ndarray | None = None
    """(L,) int64: the expert's memory call at t (``agent.memory`` OP_NONE/OP_SET/OP_GET), or
    None when the task labels none."""
    expert_latents: np.ndarray | None = None
    """(L, d) float32: the expert's latent at t (``env.unwrapped.expert_latent()``: e.g. the
    posture it heads for), BC's auxiliary target; None when the task has none."""

    def __len__(self) -> int:
        return len(self.rewards)

    def latent_onsets(self) -> np.ndarray | None:
        """(L,) bool: frames where the expert's latent takes a new value (frame 0 included),
        or None without latents."""
        if self.expert_latents is None:
            return None
        changed = np.any(self.expert_latents[1:] != self.expert_latents[:-1], axis=-1)
        return np.concatenate([[True], changed])

    def returns(self, gamma: float) -> np.ndarray:
        """(L,) discounted returns-to-go (no bootstrap after the last frame)."""
        out = np.zeros(len(self.rewards), dtype=np.float32)
        running = 0.0
        for t in range(len(self.rewards) - 1, -1, -1):
            running = float(self.rewards[t]) + gamma * running
            out[t] = running
        return out


def load_episodes(path: str | os.PathLike) -> list[Episode]:
    """The episodes of a demonstration dataset (Minari, :mod:`agent.datasets`)."""
    from agent.recording import read_records

    out = []
    for r in read_records(path):
        out.append(
            Episode(
                obs={k: v[:-1] for k, v in r.observations.items()},  # no frame after the last
                actions=dict(r.actions),
                rewards=np.asarray(r.rewards, dtype=np.float32),
                success=bool(r.success),
                memory_ops=_ops_from_counts(r.memory, r.length),
                expert_latents=r.expert_latent,
            )
        )
    if not out:
        raise ValueError(f"the dataset {path} has no episodes")
    return out


def _ops_from_counts(memory: dict[str, np.ndarray], length: int) -> np.ndarray | None:
    """(L,) op labels from a record's per-frame ``set``/``get`` counts (None without them)."""
    if "set" not in memory or "get" not in memory:
        return None
    ops = np.full(length, OP_NONE, dtype=np.int64)
    ops[np.asarray(memory["set"]) > 0] = OP_SET
    ops[np.asarray(memory["get"]) > 0] = OP_GET
    return ops


def expert_memory_ops(envs: VectorEnv, probe: bool = True) -> np.ndarray | None:
    """(N,) int64 memory-op labels of the sub-envs' experts for their current state
    (``expert_memory_op()``), or None when the task has no such labels. ``probe=False``: the
    caller knows every sub-env has it (as :func:`agent.vector.expert_latents`)."""
    names = (
        envs.call("expert_memory_op")
        if not probe
        else call_if_every_env_has(envs, "expert_memory_op")
    )
    if names is None:
        return None
    unknown = sorted({str(n) for n in names} - set(OP_NAMES))
    if unknown:
        raise ValueError(
            f"expert_memory_op() returned {', '.join(unknown)}; allowed: {', '.join(OP_NAMES)}"
        )
    return np.array([OP_NAMES.index(n) for n in names], dtype=np.int64)


def collect_episodes(
    envs: VectorEnv,
    episodes: int,
    seeds: list[int] | None = None,
    agent: MindloopAgent | None = None,
    deterministic: bool = False,
    beta: float = 0.0,
    seed: int = 0,
) -> tuple[list[Episode], int]:
    """Run ``envs`` until ``episodes`` complete episodes, every frame labelled by the expert.

    Episodes are handed out in the order they start: the first ``episodes`` episodes to
    start are the ones returned, each run to its end, whichever env runs it. Which episodes
    are kept is decided before anything about them is known, so with i.i.d. episodes the
    sample is unbiased; taking whichever *finish* first instead would favour short episodes,
    and the long ones, often failures, are what DAgger needs. Unlike a fixed quota per env
    (SB3's ``evaluate_policy`` rule, which :func:`agent.rollout.run_episodes` keeps for
    evaluation), an env never waits for the others while it has episodes left to run: only
    the last episodes' tail is stepped for nothing.

    Returns the episodes and the env steps taken: vector steps x ``N``, a little more than
    the episodes' frames, because the envs whose last episode is done keep stepping until
    every kept episode is (what a budget must count).

    Args:
        envs: a ``SAME_STEP`` vector env of a task with ``expert_action()``.
        episodes: complete episodes to return.
        seeds: per-env seeds for the first reset (None: continue from the envs' RNGs).
        agent: None: the expert acts (demonstrations). An agent: it acts and the expert
            only labels (DAgger), so the data covers the states the learner really visits.
        deterministic: the learner acts at its mode (most likely action).
        beta: DAgger's mixture: at each step and env, the expert's action is executed instead
            of the learner's with this probability (the label is the expert's either way).
            Keeps a weak learner's rollouts near the states that matter.
        seed: seeds the mixture draws.
    """
    n = envs.num_envs
    # (N,) whether the episode env i is in is one of those returned; the first ``episodes``
    # to start are, so with fewer episodes than envs the last envs run none
    kept = np.arange(n) < episodes
    started = int(kept.sum())
    obs, _ = envs.reset(seed=seeds)
    buffers: list[list[tuple[dict, dict, float, int, np.ndarray | None]]] = [[] for _ in range(n)]
    out: list[Episode] = []
    state = agent.initial_state(n) if agent is not None else None
    start = torch.ones(n, dtype=torch.bool)
    rng = np.random.default_rng(seed)
    # optional expert outputs: probed once (each probe is a round trip to every worker)
    with_ops = every_env_has(envs, "expert_memory_op")
    with_latents = every_env_has(envs, "expert_latent")
    vector_steps = 0
    while len(out) < episodes:  # envs with no kept episode keep stepping (one vector step)
        labels = expert_actions(envs)  # (N, ...) per key
        op_labels = expert_memory_ops(envs, probe=False) if with_ops else None  # (N,)
        latents = expert_latents(envs, probe=False) if with_latents else None  # (N, d)
        if agent is None:
            actions = labels
        else:
            actions, state, _ = agent.act(obs, state, start, deterministic)
            if beta > 0:
                take = rng.random(n) < beta  # (N,) envs that execute the expert's action
                actions = {
                    k: np.where(take.reshape(-1, *[1] * (v.ndim - 1)), labels[k], v).astype(v.dtype)
                    for k, v in actions.items()
                }
        step = step_vector_env(envs, actions)
        vector_steps += 1
        for i in np.flatnonzero(kept):
            frame_obs = {k: np.array(v[i], copy=True) for k, v in obs.items()}
            frame_act = {k: np.array(v[i], copy=True) for k, v in labels.items()}
            op = -1 if op_labels is None else int(op_labels[i])
            latent = None if latents is None else latents[i]
            buffers[i].append((frame_obs, frame_act, float(step.reward[i]), op, latent))
        for i in np.flatnonzero(step.done):
            frames, buffers[i] = buffers[i], []
            was_kept = kept[i]
            # env i's next episode (autoreset: it starts now) is kept if any are left to hand out
            kept[i] = started < episodes
            started += int(kept[i])
            if not was_kept:
                continue
            out.append(
                Episode(
                    obs={k: np.stack([f[0][k] for f in frames]) for k in frames[0][0]},
                    actions={k: np.stack([f[1][k] for f in frames]) for k in frames[0][1]},
                    rewards=np.array([f[2] for f in frames], dtype=np.float32),
                    success=bool(step.success[i]),
                    memory_ops=None
                    if op_labels is None
                    else np.array([f[3] for f in frames], dtype=np.int64),
                    expert_latents=None
                    if latents is None
                    else np.stack([f[4] for f in frames]).astype(np.float32),
                )
            )
        obs = step.obs
        start = torch.as_tensor(step.done)
    return out, vector_steps * n


@dataclass
class SequenceBatch:
    """(T, B, ...) frames of B lanes for one BPTT chunk."""

    obs: dict[str, np.ndarray]
    actions: dict[str, torch.Tensor]
    episode_starts: torch.Tensor
    """(T, B) bool: a new episode starts at this frame (reset the state first)."""
    returns: torch.Tensor
    """(T, B) discounted returns-to-go (value targets)."""
    memory_ops: torch.Tensor | None = None
    """(T, B) long expert memory-op labels, -1 on frames of unlabelled episodes; None when no
    episode of the sampler has labels."""
    expert_latents: torch.Tensor | None = None
    """(T, B, d) the expert's latents (auxiliary targets); None unless every episode of the
    sampler has them."""
    latent_onsets: torch.Tensor | None = None
    """(T, B) bool: frames where the expert's latent takes a new value (with
    ``expert_latents``)."""


class SequenceSampler:
    """Episodes replayed as ``lanes`` parallel streams, ``seq_len`` frames at a time.

    Each lane plays a random episode to its end, then the next random one; a batch is the next
    ``seq_len`` frames of every lane. The caller carries the recurrent state from one batch to
    the next (detached) and resets it where ``episode_starts`` is true.
    """

    def __init__(
        self, episodes: list[Episode], lanes: int, seq_len: int, gamma: float, seed: int = 0
    ) -> None:
        if not episodes:
            raise ValueError("no demonstration episodes to sample from")
        self.episodes: list[Episode] = []
        self._returns: list[np.ndarray] = []
        self._onsets: list[np.ndarray | None] = []
        self.gamma = gamma
        self.lanes, self.seq_len = lanes, seq_len
        self.rng = np.random.default_rng(seed)
        self.add(episodes)
        self._episode = self.rng.integers(len(self.episodes), size=lanes)
        self._pos = np.zeros(lanes, dtype=np.int64)

    @property
    def frames(self) -> int:
        return sum(len(e) for e in self.episodes)

    def all_returns(self) -> np.ndarray:
        """Every frame's discounted return-to-go (value targets), concatenated."""
        return np.concatenate(self._returns)

    def add(self, episodes: list[Episode]) -> None:
        """More episodes (DAgger rounds); lanes draw from all of them from their next
        episode on."""
        self.episodes = self.episodes + list(episodes)
        self._returns += [ep.returns(self.gamma) for ep in episodes]
        self._onsets += [ep.latent_onsets() for ep in episodes]

    def next_batch(self) -> SequenceBatch:
        T, B = self.seq_len, self.lanes
        first = self.episodes[0]
        obs = {k: np.empty((T, B, *v.shape[1:]), v.dtype) for k, v in first.obs.items()}
        act = {k: np.empty((T, B, *v.shape[1:]), v.dtype) for k, v in first.actions.items()}
        starts = np.zeros((T, B), dtype=bool)
        returns = np.zeros((T, B), dtype=np.float32)
        labelled = any(e.memory_ops is not None for e in self.episodes)
        ops = np.full((T, B), -1, dtype=np.int64)
        # latents only when every episode has them (one source of data, one target size)
        with_latents = all(e.expert_latents is not None for e in self.episodes)
        latents = (
            np.zeros((T, B, first.expert_latents.shape[1]), np.float32) if with_latents else None
        )
        onsets = np.zeros((T, B), dtype=bool)
        for b in range(B):
            t = 0
            while t < T:
                ep_i, pos = int(self._episode[b]), int(self._pos[b])
                ep = self.episodes[ep_i]
                n = min(T - t, len(ep) - pos)  # frames taken from this episode
                for k in obs:
                    obs[k][t : t + n, b] = ep.obs[k][pos : pos + n]
                for k in act:
                    act[k][t : t + n, b] = ep.actions[k][pos : pos + n]
                returns[t : t + n, b] = self._returns[ep_i][pos : pos + n]
                if ep.memory_ops is not None:
                    ops[t : t + n, b] = ep.memory_ops[pos : pos + n]
                if latents is not None:
                    latents[t : t + n, b] = ep.expert_latents[pos : pos + n]
                    onsets[t : t + n, b] = self._onsets[ep_i][pos : pos + n]
                starts[t, b] = pos == 0
                t += n
                if pos + n >= len(ep):  # the lane moves on to a random episode
                    self._episode[b] = self.rng.integers(len(self.episodes))
                    self._pos[b] = 0
                else:
                    self._pos[b] = pos + n
        return SequenceBatch(
            obs=obs,
            actions={k: torch.as_tensor(v) for k, v in act.items()},
            episode_starts=torch.as_tensor(starts),
            returns=torch.as_tensor(returns),
            memory_ops=torch.as_tensor(ops) if labelled else None,
            expert_latents=None if latents is None else torch.as_tensor(latents),
            latent_onsets=None if latents is None else torch.as_tensor(onsets),
        )


def split_episodes(
    episodes: list[Episode], holdout: float, seed: int = 0
) -> tuple[list[Episode], list[Episode]]:
    """Random (train, held-out) split of episodes."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_hold = round(holdout * len(episodes))
    return [episodes[i] for i in order[n_hold:]], [episodes[i] for i in order[:n_hold]]


__all__ = [
    "Episode",
    "SequenceBatch",
    "SequenceSampler",
    "collect_episodes",
    "expert_memory_ops",
    "load_episodes",
    "split_episodes",
]
