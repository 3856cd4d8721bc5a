"""The contracts that let cores and memory tools be swapped.

Cores and tools are ``nn.Module`` subclasses that follow these protocols; the policy
(``agent/policy.py``) composes them and never looks inside.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import distributions as D

from agent.state import State


@runtime_checkable
class Core(Protocol):
    """A recurrent vector-to-vector cell: one call per observe or think step.

    ``input_dim``/``hidden_dim`` are attributes. Recurrent cores cost O(1) per step; the
    transformer baseline keeps a KV cache in its state and costs O(history).
    """

    input_dim: int
    hidden_dim: int

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        """Fresh state for ``batch`` envs (what an episode starts from)."""
        ...

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x: (B, input_dim) -> h: (B, hidden_dim), next state."""
        ...


@runtime_checkable
class MemoryTool(Protocol):
    """A memory the policy calls as a tool: op 0 = none, 1 = set, 2 = get.

    Each core step (observe or think) the policy: reads ``read(state)`` into the core input,
    steps the core to get ``h``, samples an op from ``op_distribution(h)`` (its log-prob joins
    the action's, so RL learns when to store and fetch), then calls ``apply``. During BPTT the
    same op is replayed through ``apply`` with the recorded value.
    """

    read_dim: int

    def initial_state(self, batch: int, device: torch.device | None = None) -> State: ...

    def reset(self, state: State, episode_start: torch.Tensor) -> State:
        """Clear what must be cleared at an episode start (B,), keep what persists."""
        ...

    def read(self, state: State) -> torch.Tensor:
        """(B, read_dim): what the core sees from memory at its next step."""
        ...

    def op_distribution(self, h: torch.Tensor) -> D.Distribution:
        """Categorical over {none, set, get} from h (B, hidden_dim)."""
        ...

    def apply(
        self, h: torch.Tensor, op: torch.Tensor, state: State
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Perform op (B,) long for each env given h (B, hidden_dim); returns the new state
        and per-env stats (e.g. ``hit``, ``occupancy``) as (B,) tensors."""
        ...
