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

CORES: Registry[type[nn.Module]] = Registry(
    "core", entry_point_group="mindloop.cores", plugin_base=lambda: nn.Module
)


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
        if self.name == "transformer" and self.num_heads < 1:
            raise ValueError(f"core num_heads must be >= 1, got {self.num_heads}")
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


def _batch_zeros(
    module: nn.Module, batch: int, *shape: int, device: torch.device | None
) -> torch.Tensor:
    """Zeros (batch, *shape) in ``module``'s floating dtype, on ``device`` (default: the
    module's), so a state follows ``.to(device)`` / ``.double()`` of its core."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    param = next(module.parameters())
    return torch.zeros(batch, *shape, dtype=param.dtype, device=device or param.device)


def _store_input_major(module: nn.Module) -> None:
    """Keep every 2-D weight W (out, in) of ``module`` in memory as W^T, row-major.

    Same shape, values and state dict; only the strides change (``W.t()`` is contiguous). A
    linear layer computes ``x @ W.t()``: with W stored this way that is a plain row-major GEMM,
    which MKL runs ~1.4x faster than the transposed one for the few-row inputs of a rollout
    step (the GRU step at batch 1: 27 -> 23 us). Applied to every core alike, so the latency
    benchmark compares equally laid-out cores. ``.to()`` keeps the strides (preserve_format);
    the state dict hands out contiguous copies (safetensors stores contiguous tensors only).
    """
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 2:
                param.data = param.data.t().contiguous().t()
    module.register_state_dict_post_hook(_contiguous_state_dict)


def _contiguous_state_dict(module: nn.Module, state_dict: dict, prefix: str, _meta) -> None:
    for key, value in state_dict.items():
        # Parameters (state_dict(keep_vars=True)) are handed out as they are
        if key.startswith(prefix) and not isinstance(value, nn.Parameter):
            state_dict[key] = value.contiguous()


def _cell_params(cells: nn.ModuleList) -> list[dict[str, nn.Parameter]]:
    """The ``_parameters`` dicts of torch RNN cells, read by the cores' ``step``.

    ``Module.__getattr__`` costs ~0.7 us per parameter: at batch 1 fetching a cell's four
    weights that way costs a tenth of the step. A module's ``_parameters`` dict is the one
    place torch keeps its parameters (``.to()``, ``load_state_dict``, ``functional_call`` and
    ``deepcopy`` all go through it), so reading it directly always sees the current ones.
    """
    return [cell._parameters for cell in cells]


@CORES.register("gru")
class GRUCore(nn.Module):
    """Stacked GRU cells. State: ``core/h`` (B, num_layers, hidden_dim).

    The parameters are those of ``nn.GRUCell`` (``cells.{i}.weight_ih`` ...), but a step calls
    the fused ATen kernel ``torch.gru_cell`` on them directly: at batch 1 the module wrapper
    (input checks, ``__call__`` hooks) and stacking the layers cost as much as the cell's
    maths (39 -> 25 us per step at width 128, one thread; ``benchmarks/core_latency.py``).
    """

    def __init__(self, config: CoreConfig, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = config.hidden_dim
        dims = [input_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(nn.GRUCell(d, config.hidden_dim) for d in dims)
        self._params = _cell_params(self.cells)
        _store_input_major(self)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        h = _batch_zeros(self, batch, len(self.cells), self.hidden_dim, device=device)
        return {"core/h": h}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_prev = state["core/h"]  # (B, L, H)
        inp, hs = x, []  # x: (B, input_dim)
        for i, p in enumerate(self._params):
            inp = torch.gru_cell(
                inp, h_prev.select(1, i), p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
            )  # (B, H)
            hs.append(inp)
        # one layer: a view, no copy (the state is never written in place)
        h_all = hs[0].unsqueeze(1) if len(hs) == 1 else torch.stack(hs, dim=1)
        return inp, {"core/h": h_all}


@CORES.register("lstm")
class LSTMCore(nn.Module):
    """Stacked LSTM cells. State: ``core/h`` and ``core/c``, (B, num_layers, hidden_dim).

    ``nn.LSTMCell`` parameters, stepped with the fused ``torch.lstm_cell`` (as :class:`GRUCore`).
    """

    def __init__(self, config: CoreConfig, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = config.hidden_dim
        dims = [input_dim] + [config.hidden_dim] * (config.num_layers - 1)
        self.cells = nn.ModuleList(nn.LSTMCell(d, config.hidden_dim) for d in dims)
        self._params = _cell_params(self.cells)
        _store_input_major(self)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        zeros = _batch_zeros(self, batch, len(self.cells), self.hidden_dim, device=device)
        return {"core/h": zeros, "core/c": zeros.clone()}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_prev, c_prev = state["core/h"], state["core/c"]  # (B, L, H) each
        inp, hs, cs = x, [], []  # x: (B, input_dim)
        for i, p in enumerate(self._params):
            h, c = torch.lstm_cell(
                inp,
                (h_prev.select(1, i), c_prev.select(1, i)),
                p["weight_ih"],
                p["weight_hh"],
                p["bias_ih"],
                p["bias_hh"],
            )  # (B, H) each
            hs.append(h)
            cs.append(c)
            inp = h
        if len(hs) == 1:
            return inp, {"core/h": hs[0].unsqueeze(1), "core/c": cs[0].unsqueeze(1)}
        return inp, {"core/h": torch.stack(hs, dim=1), "core/c": torch.stack(cs, dim=1)}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x (B, ..., dh) by angles (B, 1.., dh//2)
    broadcast over the middle dims (q and k of all heads are rotated in one call)."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    if 2 * half == x.shape[-1]:
        return rotated
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)  # odd dh keeps its last channel


class _Block(nn.Module):
    """Pre-LN transformer block operating on one new token against a KV cache.

    ``forward`` calls the functional ops on the submodules' parameters (one dict lookup each,
    see :func:`_cell_params`) rather than the submodules: at batch 1 the module calls cost as
    much as the maths, and the latency benchmark gives both cores their fastest path.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._p = {
            name: module._parameters
            for name, module in (
                ("ln1", self.ln1),
                ("qkv", self.qkv),
                ("proj", self.proj),
                ("ln2", self.ln2),
                ("fc1", self.mlp[0]),
                ("fc2", self.mlp[2]),
            )
        }
        self._eps = (self.ln1.eps, self.ln2.eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, D) the new token
        k_cache: torch.Tensor,  # (B, W, D) rotated keys of past steps
        v_cache: torch.Tensor,  # (B, W, D)
        write: tuple[torch.Tensor, torch.Tensor] | int,  # (rows, slots) (B,) each, or one slot
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin (B, 1, 1, dh//2) at the new position
        n_used: int,  # attend over slots [0, n_used): the filled prefix of the ring
        mask: torch.Tensor | None,  # (B, n_used) bool valid slots, None when all are valid
        inplace: bool,  # write the new key/value into the given caches
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, D = x.shape
        H, dh = self.heads, D // self.heads
        p = self._p
        ln1, ln2, qkv_p = p["ln1"], p["ln2"], p["qkv"]
        z = F.layer_norm(x, (D,), ln1["weight"], ln1["bias"], self._eps[0])
        qkv = F.linear(z, qkv_p["weight"], qkv_p["bias"]).view(B, 3, H, dh)
        q, k = _rotate(qkv[:, :2], *rope).unbind(1)  # (B, H, dh) each
        v = qkv[:, 2]
        if not inplace:
            # Functional write: the caller's state is not edited (a rollout keeps it as a
            # sequence's initial state for BPTT). Costs one copy of the cache per step.
            k_cache, v_cache = k_cache.clone(), v_cache.clone()
        if isinstance(write, int):  # every env at the same position: a slice copy
            k_cache[:, write] = k.reshape(B, D)
            v_cache[:, write] = v.reshape(B, D)
        else:
            k_cache[write] = k.reshape(B, D)
            v_cache[write] = v.reshape(B, D)
        keys = k_cache[:, :n_used].view(B, n_used, H, dh).transpose(1, 2)  # (B, H, N, dh)
        values = v_cache[:, :n_used].view(B, n_used, H, dh).transpose(1, 2)
        attn = F.scaled_dot_product_attention(
            q[:, :, None], keys, values, attn_mask=None if mask is None else mask[:, None, None]
        )  # (B, H, 1, dh)
        x = x + F.linear(attn.reshape(B, D), p["proj"]["weight"], p["proj"]["bias"])
        z = F.layer_norm(x, (D,), ln2["weight"], ln2["bias"], self._eps[1])
        z = F.gelu(F.linear(z, p["fc1"]["weight"], p["fc1"]["bias"]))
        x = x + F.linear(z, p["fc2"]["weight"], p["fc2"]["bias"])
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
        _store_input_major(self)

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        state = {}
        for i in range(self.num_layers):
            state[f"core/k{i}"] = _batch_zeros(
                self, batch, self.max_context, self.hidden_dim, device=device
            )
            state[f"core/v{i}"] = torch.zeros_like(state[f"core/k{i}"])
        device = state["core/k0"].device
        state["core/pos"] = torch.zeros(batch, dtype=torch.long, device=device)
        return state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = state["core/pos"]  # (B,)
        W = self.max_context
        lo, hi = (int(v) for v in torch.aminmax(pos))
        n_used = min(hi + 1, W)  # only the filled prefix of the ring is attended
        mask = None
        if lo == hi:  # every env at the same depth (batch 1, envs started together)
            write = hi % W  # slot p % W holds step p
        else:  # envs at different depths (e.g. after a reset): per-row slots and a mask
            write = (torch.arange(x.shape[0], device=x.device), pos % W)
            filled = (pos + 1).clamp(max=W)  # (B,) valid slots after this write
            if min(lo + 1, W) < n_used:
                mask = torch.arange(n_used, device=x.device)[None, :] < filled[:, None]
        angle = pos.to(x.dtype)[:, None, None, None] * self.inv_freq  # (B, 1, 1, dh//2)
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
