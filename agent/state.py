"""Recurrent state as a flat ``dict[str, Tensor]``, every tensor batch-first.

One convention for every core, memory and policy makes the operations a rollout and BPTT
need (reset per env on episode start, pick envs, stack sequences, save) one helper each,
instead of one per state type. Keys are namespaced by owner, e.g. ``"core/h"``,
``"mem/store"``.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def reset_where(state: State, initial: State, episode_start: torch.Tensor) -> State:
    """Replace the rows of ``state`` where ``episode_start`` (B,) is true by ``initial``'s rows.

    Only the envs that start a new episode are reset; the others keep their memory.
    """
    done = episode_start.to(torch.bool)
    out: State = {}
    for key, value in state.items():
        mask = done.view(-1, *([1] * (value.dim() - 1)))  # (B, 1, ..., 1) broadcast over features
        out[key] = torch.where(mask, initial[key].to(value.dtype), value)
    return out


def index_state(state: State, index: torch.Tensor | slice) -> State:
    """The state of a subset of envs (batch rows)."""
    return {key: value[index] for key, value in state.items()}


def cat_states(states: list[State]) -> State:
    """Concatenate states along the batch dimension."""
    return {key: torch.cat([s[key] for s in states], dim=0) for key in states[0]}


def detach_state(state: State) -> State:
    """Cut the gradient path at a truncation point of BPTT."""
    return {key: value.detach() for key, value in state.items()}


def state_nbytes(state: State, per_env: bool = True) -> int:
    """Bytes held by ``state`` (per env by default): the memory cost a benchmark reports."""
    total = sum(v.numel() * v.element_size() for v in state.values())
    if per_env and state:
        batch = next(iter(state.values())).shape[0]
        return total // max(batch, 1)
    return total
