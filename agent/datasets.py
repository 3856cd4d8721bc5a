"""Expert demonstrations for behaviour cloning: collect them as Minari datasets, load them
as arrays.

>>> from agent.datasets import collect_expert_dataset, load_demonstrations  # doctest: +SKIP
>>> path = collect_expert_dataset("mindloop/MuscleReach-v0", 200, seed=0, path="data/reach")
>>> demos = load_demonstrations(path)
>>> demos.observations["image"].shape, demos.actions["muscles"].shape    # (N, ...) steps
>>> obs, actions, mask = demos.padded()                               # (T, E, ...) for BPTT

A dataset is a mindloop record (:mod:`agent.recording`) of the scripted expert's episodes,
so it also replays to video (``eval.py replay``) and opens in plain Minari
(``minari.MinariDataset(path / "data")``). Observations are stored losslessly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agent.evaluation import dict_space_mismatch, evaluate, make_policy
from agent.recording import (
    EpisodeRecord,
    default_dataset_id,
    open_dataset,
    read_records,
    record_metadata,
    write_records,
)


def collect_expert_dataset(
    env_id: str,
    episodes: int,
    seed: int,
    path: str | os.PathLike,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    num_envs: int = 1,
    vectorization: str = "sync",
    overwrite: bool = False,
    policy: str = "expert",
) -> Path:
    """Run the scripted expert (or another registered ``policy``) for ``episodes`` episodes
    (episode ``k`` on seed ``seed + k``) and write them as a Minari dataset at ``path``.

    Every episode is kept, failed ones too (the expert's actions are still the targets; a
    loader can drop them with ``only_success=True``). Returns ``path``. The write is atomic:
    a crash leaves no partial dataset.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"dataset {path} already exists; choose another path or overwrite=True")
    result = evaluate(
        make_policy(policy),
        env_id,
        episodes,
        seed=seed,
        num_envs=num_envs,
        env_kwargs=env_kwargs,
        vectorization=vectorization,
        record=True,
    )
    assert result.observation_space is not None and result.action_space is not None
    return write_records(
        path,
        result.records,
        result.observation_space,
        result.action_space,
        dataset_id=default_dataset_id(env_id, policy),
        policy=policy,
        description=(
            f"{episodes} episodes of the scripted {policy} on {env_id} "
            f"(success {100 * result.success_rate:.0f}%), seeds {seed}..{seed + episodes - 1}"
        ),
        extra_metadata={
            "seed": seed,
            "success_rate": result.success_rate,
            "env_steps_simulated": result.env_steps_simulated,
        },
        overwrite=overwrite,
    )


@dataclass
class Demonstrations:
    """Demonstration steps, flat over episodes (``N`` steps in ``E`` episodes).

    ``observations[key][i]`` is what the agent saw when it took ``actions[key][i]``; the
    observation after an episode's last action is not included (nothing was done on it).
    """

    observations: dict[str, np.ndarray]
    """Per key ``(N, ...)`` in the observation space's dtype (uint8 images, int64 text)."""
    actions: dict[str, np.ndarray]
    """Per key ``(N, ...)`` (float32 muscles, int64 text tokens)."""
    rewards: np.ndarray
    """``(N,)``."""
    episode_starts: np.ndarray
    """``(N,)`` bool: true at each episode's first step (the ``episode_start`` of ``act``)."""
    episode_bounds: np.ndarray
    """``(E, 2)`` int: ``[start, stop)`` of each episode in the flat arrays."""
    success: np.ndarray
    """``(E,)`` bool: whether each episode succeeded."""
    seeds: np.ndarray
    """``(E,)`` int: the reset seed of each episode (-1 if unknown)."""
    env_id: str
    env_kwargs: dict[str, Any]
    observation_space: gym.Space
    action_space: gym.Space

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_bounds)

    def episode(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Observations and actions of episode ``i``: per key ``(T_i, ...)``."""
        start, stop = self.episode_bounds[i]
        return (
            {k: v[start:stop] for k, v in self.observations.items()},
            {k: v[start:stop] for k, v in self.actions.items()},
        )

    def padded(
        self, episodes: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Episodes as time-major padded batches for backprop through time:
        ``(obs (T, E, ...), actions (T, E, ...), mask (T, E) bool)`` with ``T`` the longest
        episode; padding repeats each episode's last step and is ``False`` in ``mask``."""
        idx = range(self.num_episodes) if episodes is None else list(episodes)
        bounds = self.episode_bounds[list(idx)]
        lengths = bounds[:, 1] - bounds[:, 0]
        T = int(lengths.max())
        # (T, E) row index into the flat arrays, clamped to each episode's last step.
        rows = bounds[None, :, 0] + np.minimum(np.arange(T)[:, None], lengths[None, :] - 1)
        mask = np.arange(T)[:, None] < lengths[None, :]
        obs = {k: v[rows] for k, v in self.observations.items()}
        actions = {k: v[rows] for k, v in self.actions.items()}
        return obs, actions, mask


def check_dataset_spaces(
    path: str | os.PathLike,
    env_id: str,
    observation_space: gym.spaces.Dict,
    action_space: gym.spaces.Dict,
) -> None:
    """A one-line ``ValueError`` when the dataset at ``path`` was recorded on another task
    than ``env_id``, or lacks an observation or action key of its spaces or stores it with
    another shape or dtype (behaviour cloning from another task's demonstrations). Keys the
    task does not have are fine."""
    record = (
        f"record demonstrations of this task with `python eval.py --policy expert --env "
        f"{env_id} --episodes N --record DIR`"
    )
    if not Path(path).exists():
        raise ValueError(f"dataset {str(path)!r} does not exist; {record}")
    recorded_on = record_metadata(path)["env_id"]
    if _task_name(recorded_on) != _task_name(env_id):  # e.g. MuscleReach data for SoundReach
        raise ValueError(
            f"dataset {str(path)!r} was recorded on {recorded_on}, not on {env_id}; {record}"
        )
    policy = record_metadata(path).get("policy") or ""
    if policy and policy != "expert":  # distilling a trained agent is fine; say it is not
        warnings.warn(  # the scripted expert, in case that was not meant
            f"dataset {str(path)!r} was recorded with policy {policy!r}, not the scripted "
            "expert: behaviour cloning imitates its actions",
            RuntimeWarning,
            stacklevel=3,
        )
    dataset = open_dataset(path)
    for what, stored, needed in (
        ("observation", dataset.observation_space, observation_space),
        ("action", dataset.action_space, action_space),
    ):
        problem = dict_space_mismatch(stored, needed, "the dataset", "the task")
        if problem is not None:
            raise ValueError(
                f"dataset {str(path)!r} (recorded on {recorded_on}) does not fit {env_id}: "
                f"{what} {problem}; {record}"
            )


def _task_name(env_id: str) -> str:
    """``env_id`` without Gymnasium's ``module:`` prefix (the same task either way)."""
    return env_id.rsplit(":", 1)[-1]


def load_demonstrations(path: str | os.PathLike, *, only_success: bool = False) -> Demonstrations:
    """Read a dataset written by :func:`collect_expert_dataset` (or ``eval.py --record``)
    into flat arrays ready for behaviour cloning."""
    meta = record_metadata(path)
    records = read_records(path)
    if only_success:
        records = [r for r in records if r.success]
        if not records:
            raise ValueError(f"{path} has no successful episode (only_success=True)")
    from agent.recording import open_dataset

    dataset = open_dataset(path)
    return _flatten_records(records, meta, dataset.observation_space, dataset.action_space)


def recording_env_steps(path: str | os.PathLike) -> int | None:
    """Env steps it took to record the dataset at ``path`` (None if it does not say: written
    by an earlier version). A vector env steps every env until the last episode ends, so
    this is more than the episodes' frames; a run that trains on the dataset counts it
    against its env-step budget."""
    steps = record_metadata(path).get("env_steps_simulated")
    return None if steps is None else int(steps)


def _flatten_records(
    records: Sequence[EpisodeRecord],
    meta: Mapping[str, Any],
    observation_space: gym.Space,
    action_space: gym.Space,
) -> Demonstrations:
    lengths = np.array([r.length for r in records], dtype=np.int64)
    stops = np.cumsum(lengths)
    bounds = np.stack([stops - lengths, stops], axis=1)
    starts = np.zeros(int(stops[-1]) if len(stops) else 0, dtype=bool)
    starts[bounds[:, 0][lengths > 0]] = True
    obs = {
        k: np.concatenate([r.observations[k][:-1] for r in records])
        for k in records[0].observations
    }
    actions = {k: np.concatenate([r.actions[k] for r in records]) for k in records[0].actions}
    return Demonstrations(
        observations=obs,
        actions=actions,
        rewards=np.concatenate([r.rewards for r in records]),
        episode_starts=starts,
        episode_bounds=bounds,
        success=np.array([r.success for r in records], dtype=bool),
        seeds=np.array([-1 if r.seed is None else r.seed for r in records], dtype=np.int64),
        env_id=str(meta["env_id"]),
        env_kwargs=dict(meta.get("env_kwargs") or {}),
        observation_space=observation_space,
        action_space=action_space,
    )


__all__ = [
    "Demonstrations",
    "collect_expert_dataset",
    "load_demonstrations",
    "recording_env_steps",
]
