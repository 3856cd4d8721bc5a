"""Recurrent cores: one call per observe or think step, state passed in and returned.

Every core follows :class:`agent.interfaces.Core`: ``initial_state(batch, device)`` and
``step(x, state) -> (h, state)`` with ``x`` of shape ``(B, input_dim)`` and ``h`` of shape
``(B, hidden_dim)``. State is a flat dict of batch-first tensors (``agent/state.py``), so a
policy resets envs with ``reset_where`` and stores sequence starts for BPTT without knowing
which core it holds.

- ``gru`` / ``lstm``: stacked torch cells, O(1) time and memory per step however long the
  episode (the point of seed 000).
- ``transformer``: a causal pre-LN transformer that sees one token per step and keeps a KV
  cache in its state, the baseline the seed notes argue against. Its context is a sliding
  window of the last ``max_context`` steps (observe and think steps alike): the cache is a
  ring buffer of ``max_context`` slots, the step at absolute position ``p`` is written to slot
  ``p % max_context`` and evicts what was there. Keys carry rotary position embeddings of
  their absolute position, so attention sees relative distances and stays valid after the
  window starts sliding. A step costs O(min(steps so far, max_context)).

A new core is one decorated class: ``@CORES.register("name")`` with the constructor
``(config: CoreConfig, input_dim: int)``; outside the repo, the entry-point group
``mindloop.cores`` adds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agent.state import State
from encoders.registry import Registry

CORES: Registry[type[nn.Module]] = Registry("core", entry_point_group="mindloop.cores")


@dataclass
class CoreConfig:
    """Which core and how big. The input size is not here: it comes from the components that
    feed the core (observation embedding + memory read), see :func:`build_core`."""

    name: str = "gru"
    """Registered core: gru, lstm, transformer (``CORES.names()`` lists them all)."""
    hidden_dim: int = 128
    """Width of h (and of the transformer's residual stream)."""
    num_layers: int = 1
    """Stacked cells (gru/lstm) or transformer blocks."""
    num_heads: int = 4
    """Attention heads (transformer only); must divide hidden_dim."""
    max_context: int = 1024
    """Transformer only: steps kept in the KV cache (a sliding window; older steps are evicted)."""
    mlp_ratio: float = 4.0
    """Transformer only: MLP width as a multiple of hidden_dim."""
    inplace_kv: bool = False
    """Transformer only, inference only: write the KV cache into the caller's state in place
    (as a static KV cache does) when gradients are off. Faster, but the state passed in is
    overwritten: never use it where old states are kept (rollouts for BPTT)."""

    def __post_init__(self) -> None:
        if self.name not in CORES:
            raise ValueError(f"unknown core {self.name!r}; available: {', '.join(CORES.names())}")
        for field in ("hidden_dim", "num_layers", "max_context"):
            if getattr(self, field) < 1:
                raise ValueError(f"core {field} must be >= 1, got {getattr(self, field)}")
        if self.name == "transformer" and self.hidden_dim % self.num_heads != 0:
            raise ValueError(
                f"core num_heads={self.num_heads} must divide hidden_dim={self.hidden_dim}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"core mlp_ratio must be > 0, got {self.mlp_ratio}")


def build_core(config: CoreConfig, input_dim: int) -> nn.Module:
    """Build the core named by ``config`` for inputs of size ``input_dim``."""
    if input_dim < 1:
        raise ValueError(f"core input_dim must be >= 1, got {input_dim}")
    return CORES.get(config.name)(config, input_dim)


def _batch_zeros(batch: int, *shape: int, device: torch.device | None) -> torch.Tensor:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return torch.zeros(batch, *shape, device=device)


@CORES.register("gru")
class GRUCore(nn.Module):
    """Stacked ``nn.GRUCell``s. State: ``core/h`` (B, num_layers, hidden_dim)."""

    def __init__(self, config: CoreConfig, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = config.hidden_dim
        dims = [input_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(nn.GRUCell(d, config.hidden_dim) for d in dims)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        return {"core/h": _batch_zeros(batch, len(self.cells), self.hidden_dim, device=device)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hs = []
        inp = x  # (B, input_dim)
        for i, cell in enumerate(self.cells):
            inp = cell(inp, state["core/h"][:, i])  # (B, H)
            hs.append(inp)
        return inp, {"core/h": torch.stack(hs, dim=1)}


@CORES.register("lstm")
class LSTMCore(nn.Module):
    """Stacked ``nn.LSTMCell``s. State: ``core/h`` and ``core/c``, (B, num_layers, hidden_dim)."""

    def __init__(self, config: CoreConfig, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = config.hidden_dim
        dims = [input_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(nn.LSTMCell(d, config.hidden_dim) for d in dims)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        zeros = _batch_zeros(batch, len(self.cells), self.hidden_dim, device=device)
        return {"core/h": zeros, "core/c": zeros.clone()}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hs, cs = [], []
        inp = x  # (B, input_dim)
        for i, cell in enumerate(self.cells):
            h, c = cell(inp, (state["core/h"][:, i], state["core/c"][:, i]))  # (B, H) each
            hs.append(h)
            cs.append(c)
            inp = h
        return inp, {"core/h": torch.stack(hs, dim=1), "core/c": torch.stack(cs, dim=1)}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x (B, heads, dh) by angles (B, 1, dh//2)."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)  # odd dh keeps its last channel


class _Block(nn.Module):
    """Pre-LN transformer block operating on one new token against a KV cache."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self,
        x: torch.Tensor,  # (B, D) the new token
        k_cache: torch.Tensor,  # (B, W, D) rotated keys of past steps
        v_cache: torch.Tensor,  # (B, W, D)
        write: tuple[torch.Tensor, torch.Tensor],  # (rows, slots) (B,) each: where to write
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin (B, 1, dh//2) at the new position
        n_used: int,  # attend over slots [0, n_used): the filled prefix of the ring
        mask: torch.Tensor | None,  # (B, n_used) bool valid slots, None when all are valid
        inplace: bool,  # write the new key/value into the given caches
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, D = x.shape
        H, dh = self.heads, D // self.heads
        q, k, v = self.qkv(self.ln1(x)).view(B, 3, H, dh).unbind(1)  # (B, H, dh) each
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        if not inplace:
            # Functional write: the caller's state is not edited (a rollout keeps it as a
            # sequence's initial state for BPTT). Costs one copy of the cache per step.
            k_cache, v_cache = k_cache.clone(), v_cache.clone()
        k_cache[write] = k.reshape(B, D)
        v_cache[write] = v.reshape(B, D)
        keys = k_cache[:, :n_used].view(B, n_used, H, dh).transpose(1, 2)  # (B, H, N, dh)
        values = v_cache[:, :n_used].view(B, n_used, H, dh).transpose(1, 2)
        attn = F.scaled_dot_product_attention(
            q[:, :, None], keys, values, attn_mask=None if mask is None else mask[:, None, None]
        )  # (B, H, 1, dh)
        x = x + self.proj(attn.reshape(B, D))
        x = x + self.mlp(self.ln2(x))
        return x, k_cache, v_cache


@CORES.register("transformer")
class TransformerCore(nn.Module):
    """Causal transformer, one token per step, KV cache in the state (the baseline).

    State: ``core/k{i}``, ``core/v{i}`` (B, max_context, hidden_dim) for block i: ring
    buffers of rotated keys and values; ``core/pos`` (B,) steps taken this episode.
    """

    def __init__(self, config: CoreConfig, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = config.hidden_dim
        self.max_context = config.max_context
        self.num_layers = config.num_layers
        self.inplace_kv = config.inplace_kv
        # No projection when the input already has the model width (keeps parameter counts
        # comparable to a GRU of the same width in benchmarks/core_latency.py).
        self.embed = (
            nn.Identity()
            if input_dim == config.hidden_dim
            else nn.Linear(input_dim, config.hidden_dim)
        )
        self.blocks = nn.ModuleList(
            _Block(config.hidden_dim, config.num_heads, config.mlp_ratio)
            for _ in range(config.num_layers)
        )
        self.ln_out = nn.LayerNorm(config.hidden_dim)
        half = (config.hidden_dim // config.num_heads) // 2
        inv_freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / max(half, 1))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        state = {}
        for i in range(self.num_layers):
            state[f"core/k{i}"] = _batch_zeros(
                batch, self.max_context, self.hidden_dim, device=device
            )
            state[f"core/v{i}"] = torch.zeros_like(state[f"core/k{i}"])
        state["core/pos"] = torch.zeros(batch, dtype=torch.long, device=device)
        return state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = state["core/pos"]  # (B,)
        W = self.max_context
        write = (torch.arange(x.shape[0], device=x.device), pos % W)  # slot p % W holds step p
        # Only the filled prefix of the ring is attended: cost grows with history up to W.
        filled = (pos + 1).clamp(max=W)  # (B,) valid slots after this write
        n_used = int(filled.max())
        mask = None
        if int(filled.min()) < n_used:  # envs at different depths (e.g. after a reset)
            mask = torch.arange(n_used, device=x.device)[None, :] < filled[:, None]
        angle = pos.to(x.dtype)[:, None, None] * self.inv_freq  # (B, 1, dh//2)
        rope = (angle.cos(), angle.sin())
        inplace = self.inplace_kv and not torch.is_grad_enabled()
        h = self.embed(x)  # (B, D)
        new_state = {"core/pos": pos + 1}
        for i, block in enumerate(self.blocks):
            h, k, v = block(
                h, state[f"core/k{i}"], state[f"core/v{i}"], write, rope, n_used, mask, inplace
            )
            new_state[f"core/k{i}"], new_state[f"core/v{i}"] = k, v
        return self.ln_out(h), new_state


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module`` (used by the latency benchmark to match sizes)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "CORES",
    "CoreConfig",
    "GRUCore",
    "LSTMCore",
    "TransformerCore",
    "build_core",
    "count_parameters",
]
