"""The encoded store as pure functions on batch-first tensors (no autograd, no module state).

The store of each env is ``C`` slots (capacity) held in the recurrent state:

- ``mem/store_codes`` (B, C, code_dim): codes in the store dtype (int8, float16, float32)
- ``mem/store_scale`` (B, C) float32: per-item int8 scale (only when codes are int8)
- ``mem/store_keys`` (B, C, key_dim): unit-norm content keys, int8 (x127) or float
- ``mem/store_stamp`` (B, C) int32: the clock value the eviction rule compares
- ``mem/store_count`` (B,) int32: items held

Items fill slots ``0, 1, 2, ...`` and are only ever replaced, never removed one by one (an
episode start clears a whole store), so the held items are always the prefix
``[0, count)``: no per-slot "used" flag is needed and a get scores only that prefix.

Eviction when full (a ``set`` with no free slot): the item with the smallest stamp goes.
With ``lru`` the stamp is refreshed on every ``get`` that returns the item (with
``get_topk`` > 1, every item the read blends; least recently used goes), with ``fifo`` it is
the insertion time (oldest goes). Each write (a ``set``, each item of a nap) has its own
clock tick, so insertion stamps never tie. The store never exceeds its capacity.
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
        "mem/store_stamp": torch.zeros(batch, capacity, dtype=torch.int32, device=device),
        "mem/store_count": torch.zeros(batch, dtype=torch.int32, device=device),
    }
    if dtype == torch.int8:
        store["mem/store_scale"] = torch.zeros(batch, capacity, device=device)
    return store


def capacity_of(store: State) -> int:
    return store["mem/store_stamp"].shape[1]


def used_mask(store: State) -> torch.Tensor:
    """(B, C) bool: which slots hold an item (the prefix [0, count))."""
    slots = torch.arange(capacity_of(store), device=store["mem/store_count"].device)
    return slots[None, :] < store["mem/store_count"][:, None]


def encode_keys(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unit-norm keys (..., key_dim) float -> the store dtype."""
    if dtype == torch.int8:
        return torch.round(keys * _KEY_SCALE).clamp(-_KEY_SCALE, _KEY_SCALE).to(torch.int8)
    return keys.to(dtype)


def decode_keys(keys: torch.Tensor) -> torch.Tensor:
    """Stored keys -> float32 (unit norm up to int8 rounding)."""
    k = keys.to(torch.float32)
    return k / _KEY_SCALE if keys.dtype == torch.int8 else k


def key_similarity(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine of stored keys (R, n, key_dim) to unit-norm queries (R, key_dim) -> (R, n).

    Stored keys were unit-norm before storage; int8 rounding changes a norm by well under 1%,
    so dividing by 127 instead of renormalizing every key keeps a get at one batched matmul.
    """
    scale = 1.0 / _KEY_SCALE if keys.dtype == torch.int8 else 1.0
    return torch.bmm(keys.to(query.dtype), query[:, :, None]).squeeze(-1) * scale


def choose_slot(store: State, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the next item of each env in ``rows`` (R,) goes: idx (R,) long, evicts (R,) bool.

    A store with room takes the next free slot (``count``); a full one evicts the smallest
    stamp (least recently used / oldest; the lowest index on a tie).
    """
    count = store["mem/store_count"][rows]
    full = count >= capacity_of(store)
    idx = count.to(torch.int64)
    if bool(full.any()):  # reading every stamp costs O(capacity): only when some store is full
        idx = torch.where(full, store["mem/store_stamp"][rows].argmin(dim=1), idx)
    return idx, full


def write_items(
    store: State,
    rows: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor | None,
    keys: torch.Tensor,
    clock: torch.Tensor,
    index: torch.Tensor | None = None,
) -> tuple[State, torch.Tensor, torch.Tensor]:
    """Write one item into each env of ``rows`` (R,) long; returns (store, idx (R,), evicted (R,)).

    codes (R, code_dim), keys (R, key_dim) are in the store dtype, scale (R,) or None, clock
    (R,). ``index`` (R,) overrides the slot with an item already held (a nap merging into
    it); -1 means "choose by the eviction rule". Functional: the store tensors are cloned,
    never edited in place (a rollout keeps sequence-initial states for BPTT); the store
    holds no autograd.
    """
    idx, full = choose_slot(store, rows)
    grows = ~full
    if index is not None:
        override = index >= 0
        idx = torch.where(override, index, idx)
        full, grows = full & ~override, grows & ~override
    out = {k: v.clone() for k, v in store.items()}
    out["mem/store_codes"][rows, idx] = codes
    out["mem/store_keys"][rows, idx] = keys
    if scale is not None:
        out["mem/store_scale"][rows, idx] = scale
    out["mem/store_stamp"][rows, idx] = clock.to(torch.int32)
    out["mem/store_count"][rows] += grows.to(torch.int32)
    return out, idx, full


def lookup(
    store: State, rows: torch.Tensor, query: torch.Tensor, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest stored keys by cosine to ``query`` (R, key_dim), unit norm, for envs ``rows``.

    Returns idx (R, k) long, score (R, k) cosine (differentiable in ``query``), valid (R, k)
    bool (false where the store has fewer than k items; all false on an empty store). Only
    the held prefix is scored: a get costs O(items held), not O(capacity).
    """
    count = store["mem/store_count"][rows]  # (R,)
    k = min(topk, capacity_of(store))
    n = max(int(count.max()), k)
    sim = key_similarity(store["mem/store_keys"][rows, :n], query)  # (R, n)
    held = torch.arange(n, device=count.device)[None, :] < count[:, None]
    sim = sim.masked_fill(~held, float("-inf"))
    score, idx = sim.topk(k, dim=1)  # (R, k)
    valid = torch.isfinite(score)
    return idx, torch.where(valid, score, torch.zeros_like(score)), valid


def gather_items(
    store: State, rows: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes (R, k, code_dim) and scales (R, k) (or None) of items idx (R, k) of envs rows."""
    codes = store["mem/store_codes"][rows[:, None], idx]
    scale = store.get("mem/store_scale")
    return codes, (None if scale is None else scale[rows[:, None], idx])


def touch(store: State, rows: torch.Tensor, idx: torch.Tensor, clock: torch.Tensor) -> State:
    """Refresh the stamps of items idx (R,) of envs rows (R,): the LRU rule's "recently used"."""
    out = dict(store)
    out["mem/store_stamp"] = store["mem/store_stamp"].clone()
    out["mem/store_stamp"][rows, idx] = clock.to(torch.int32)
    return out


def item_nbytes(store: State) -> int:
    """Bytes one stored item takes: code (+ int8 scale), key and eviction stamp."""
    batch, capacity = store["mem/store_stamp"].shape
    per_slot = [v for k, v in store.items() if k != "mem/store_count"]
    return sum(v.numel() * v.element_size() for v in per_slot) // (batch * capacity)
