"""The encoded store as pure functions on batch-first tensors (no autograd, no module state).

The store of each env is ``C`` slots (capacity) held in the recurrent state:

- ``mem/store_codes`` (B, C, code_dim): codes in the store dtype (int8, float16, float32)
- ``mem/store_scale`` (B, C) float32: per-item int8 scale (only when codes are int8)
- ``mem/store_keys`` (B, C, key_dim): unit-norm content keys, int8 (x127) or float
- ``mem/store_used`` (B, C) bool: slot holds an item
- ``mem/store_stamp`` (B, C) int32: the clock value the eviction rule compares

Eviction when full (a ``set`` with no free slot): the item with the smallest stamp goes.
With ``lru`` the stamp is refreshed on every ``get`` that returns the item (least recently
used goes), with ``fifo`` it is the insertion time (oldest goes). Free slots are always
filled first, lowest index first, so the store never exceeds capacity.
"""

from __future__ import annotations

import torch

from agent.state import State

EVICTION_RULES = ("lru", "fifo")
"""``lru``: evict the least recently set-or-fetched item; ``fifo``: evict the oldest insert."""

_KEY_SCALE = 127.0  # unit-norm keys have components in [-1, 1]: int8 keys are round(127 k)


def empty_store(
    batch: int,
    capacity: int,
    code_dim: int,
    key_dim: int,
    dtype: torch.dtype,
    device: torch.device | None,
) -> State:
    """An empty store for ``batch`` envs."""
    store = {
        "mem/store_codes": torch.zeros(batch, capacity, code_dim, dtype=dtype, device=device),
        "mem/store_keys": torch.zeros(batch, capacity, key_dim, dtype=dtype, device=device),
        "mem/store_used": torch.zeros(batch, capacity, dtype=torch.bool, device=device),
        "mem/store_stamp": torch.zeros(batch, capacity, dtype=torch.int32, device=device),
    }
    if dtype == torch.int8:
        store["mem/store_scale"] = torch.zeros(batch, capacity, device=device)
    return store


def encode_keys(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unit-norm keys (..., key_dim) float -> the store dtype."""
    if dtype == torch.int8:
        return torch.round(keys * _KEY_SCALE).clamp(-_KEY_SCALE, _KEY_SCALE).to(torch.int8)
    return keys.to(dtype)


def decode_keys(keys: torch.Tensor) -> torch.Tensor:
    """Stored keys -> unit-norm float32 (renormalized after int8 rounding)."""
    k = keys.to(torch.float32)
    return torch.nn.functional.normalize(k, dim=-1, eps=1e-8)


def choose_slot(used: torch.Tensor, stamp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the next item of each env goes: idx (B,) long, evicts (B,) bool.

    Free slots rank below every used one (priority -1 < any stamp >= 0) and argmin returns
    the first minimum, so the lowest free index is used; when all are used the smallest
    stamp (least recently used / oldest) is evicted.
    """
    priority = torch.where(
        used, stamp.to(torch.int64), torch.full_like(stamp, -1, dtype=torch.int64)
    )
    return priority.argmin(dim=1), used.all(dim=1)


def write_items(
    store: State,
    mask: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor | None,
    keys: torch.Tensor,
    clock: torch.Tensor,
    index: torch.Tensor | None = None,
) -> tuple[State, torch.Tensor, torch.Tensor]:
    """Write one item per env where ``mask`` (B,) is true; returns (store, idx, evicted).

    codes (B, code_dim) and keys (B, key_dim) are already in the store dtype. ``index`` (B,)
    overrides the slot (e.g. a nap merging into an existing item); -1 means "choose by the
    eviction rule". Functional: returns new tensors, never edits ``store`` in place (a rollout
    keeps sequence-initial states for BPTT).
    """
    used, stamp = store["mem/store_used"], store["mem/store_stamp"]
    idx, full = choose_slot(used, stamp)
    if index is not None:
        override = index >= 0
        idx = torch.where(override, index, idx)
        full = full & ~override
    capacity = used.shape[1]
    onehot = (torch.arange(capacity, device=idx.device)[None, :] == idx[:, None]) & mask[:, None]
    out = dict(store)
    out["mem/store_codes"] = torch.where(
        onehot[..., None], codes[:, None, :], store["mem/store_codes"]
    )
    out["mem/store_keys"] = torch.where(
        onehot[..., None], keys[:, None, :], store["mem/store_keys"]
    )
    if scale is not None:
        out["mem/store_scale"] = torch.where(onehot, scale[:, None], store["mem/store_scale"])
    out["mem/store_used"] = used | onehot
    out["mem/store_stamp"] = torch.where(onehot, clock.to(torch.int32)[:, None], stamp)
    return out, idx, full & mask


def lookup(
    store: State, query: torch.Tensor, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest stored keys by cosine to ``query`` (B, key_dim), unit norm.

    Returns idx (B, k) long, score (B, k) cosine (differentiable in ``query``), valid (B, k)
    bool (false where the store has fewer than k items; all false on an empty store).
    """
    keys = decode_keys(store["mem/store_keys"])  # (B, C, key_dim)
    sim = torch.einsum("bck,bk->bc", keys, query)  # (B, C)
    used = store["mem/store_used"]
    sim = sim.masked_fill(~used, float("-inf"))
    k = min(topk, used.shape[1])
    score, idx = sim.topk(k, dim=1)  # (B, k)
    valid = torch.isfinite(score)
    return idx, torch.where(valid, score, torch.zeros_like(score)), valid


def gather_items(store: State, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes (B, k, code_dim) and scales (B, k) (or None) of the items at idx (B, k)."""
    codes = store["mem/store_codes"]
    picked = torch.gather(codes, 1, idx[..., None].expand(-1, -1, codes.shape[-1]))
    scale = store.get("mem/store_scale")
    return picked, (None if scale is None else torch.gather(scale, 1, idx))


def touch(store: State, idx: torch.Tensor, mask: torch.Tensor, clock: torch.Tensor) -> State:
    """Refresh the stamp of item idx (B,) where mask (B,): the LRU rule's "recently used"."""
    capacity = store["mem/store_used"].shape[1]
    onehot = (torch.arange(capacity, device=idx.device)[None, :] == idx[:, None]) & mask[:, None]
    out = dict(store)
    out["mem/store_stamp"] = torch.where(
        onehot, clock.to(torch.int32)[:, None], store["mem/store_stamp"]
    )
    return out


def item_nbytes(store: State) -> int:
    """Bytes one stored item takes in ``store``: code, scale, key, used flag and stamp."""
    batch, capacity = store["mem/store_used"].shape
    total = sum(v.numel() * v.element_size() for v in store.values())
    return total // (batch * capacity)
