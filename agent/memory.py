"""Two-tier memory as a tool: workable slots, an encoded store, get/set calls, and naps.

Seed notes: a human holds ~7 *workable* things yet remembers a whole film, because workable
vectors are *encoded* for storage and *decoded* when they must be used again; and memory can
be a tool the agent calls (get/set) instead of a longer context. This module is both tiers
behind the :class:`agent.interfaces.MemoryTool` protocol:

- **Workable memory**: ``num_slots`` full-width slots (``slot_dim``) in the recurrent state,
  written every step by a gated, soft-addressed write from ``h`` and read every step by
  attention; fully differentiable, trained by BPTT like the core.
- **Encoded store**: ``capacity`` items per env, each a compact code (the :class:`Codec`
  maps a workable vector of ``slot_dim`` floats to ``code_dim`` numbers, int8 by default)
  under a unit-norm content key. The store is outside the gradient path (items enter
  detached), so it costs O(1) autograd per step and survives any delay; when full, the
  ``eviction`` rule (``lru`` or ``fifo``) picks the item to replace.
- **Tool calls**: every core step the policy samples an op from :meth:`op_distribution`
  (0 none, 1 set, 2 get) and calls :meth:`apply`. ``set`` encodes this step's workable
  vector under this step's key; ``get`` looks up the nearest stored key(s) by cosine to this
  step's key and decodes the item into the ``got`` register, which :meth:`read` feeds to the
  core from the next step on (until the next get). Set keys and get queries come from the
  same projection of ``h`` (tied), so a trained get query also shapes future set keys.
- **Naps**: :meth:`nap` consolidates the workable slots into the store (merging into an
  item whose key is nearly the same, which replays and refreshes it); between episodes with
  ``nap_on_reset`` or in idle frames when the caller decides.

Training: the per-call cost and the codec's auxiliary loss are returned per env in
``apply``'s stats (``cost``; ``codec_loss``, computed only when autograd is on); the trainer
subtracts the former from the reward and adds ``config.codec_loss_coef * codec_loss.mean()``
to its loss. The codec standardizes its input with running statistics that change only in
``memory.codec.update_statistics(w)`` (e.g. once per update on
``memory.workable_vector(h).detach()``) or :func:`agent.codec.train_codec`, so a rollout and
its BPTT replay agree. No task gradient crosses the store, so nothing but the codec loss
shapes *what* a set writes; benchmarks/memory_recall.py measured that an auxiliary
reconstruction of the observation from ``workable_vector(h)`` is needed when the set
decision is trained into the core (else the stored item stops telling cues apart).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from agent import memory_store as ms
from agent.codec import STORE_DTYPES, Codec
from agent.state import State, reset_where
from encoders.registry import Registry

MEMORIES: Registry[type[nn.Module]] = Registry(
    "memory", entry_point_group="mindloop.memories", plugin_base=lambda: nn.Module
)

OP_NONE, OP_SET, OP_GET = 0, 1, 2
OP_NAMES = ("none", "set", "get")

_WORKABLE_KEYS = ("mem/slots", "mem/slot_keys", "mem/read", "mem/got", "mem/hit", "mem/score")
_STORE_KEYS = (
    "mem/store_codes",
    "mem/store_scale",
    "mem/store_keys",
    "mem/store_count",
    "mem/store_stamp",
    "mem/clock",
)


@dataclass
class MemoryConfig:
    """Two-tier memory: sizes, store format, eviction, persistence, naps and costs."""

    name: str = "two_tier"
    """Registered memory (``MEMORIES.names()``)."""
    slot_dim: int = 128
    """Width of a workable slot ("full width": usually the core's hidden_dim)."""
    num_slots: int = 4
    """Workable slots carried in the state (a person holds ~7)."""
    code_dim: int = 16
    """Width of a stored code; must be smaller than slot_dim (the store compresses)."""
    key_dim: int = 16
    """Width of the unit-norm content keys used by set/get and the workable read."""
    capacity: int = 1024
    """Items the encoded store holds per env."""
    store_dtype: str = "int8"
    """Stored codes and keys: int8 (with a float32 scale per code), float16 or float32."""
    codec_hidden: int = 0
    """Hidden width of the codec MLPs; 0 = max(slot_dim, 2 * code_dim)."""
    eviction: str = "lru"
    """When the store is full: lru (least recently set or fetched goes) or fifo (oldest goes)."""
    get_topk: int = 1
    """Items a get blends (softmax over cosine); 1 = the nearest item only. >1 lets the task
    gradient reach the key projection."""
    get_temperature: float = 10.0
    """Softmax inverse temperature over key cosines when get_topk > 1."""
    persist_store: bool = False
    """Keep the encoded store across episode starts (workable slots are always cleared)."""
    nap_on_reset: bool = False
    """At an episode start, consolidate the ending episode's workable slots into the store
    first (needs persist_store, else the store is cleared right after)."""
    nap_merge_threshold: float = 0.95
    """A napped slot whose key has at least this cosine to a stored key overwrites that item
    (consolidation) instead of taking a new slot."""
    workable_decay: float = 0.0
    """Fraction of every workable slot (and its key) that fades per step. 0: slots hold until
    overwritten; > 0 models a short-lived working memory, so what must outlive it has to be
    set into the store (or napped)."""
    write_gate_bias: float = -3.0
    """Initial bias of the workable write gate: negative keeps slots by default."""
    op_init_logits: tuple[float, float, float] = (2.0, 0.0, 0.0)
    """Initial logits of (none, set, get): exploration starts mostly with no call."""
    call_cost: float = 0.0
    """Cost per set or get, reported as stats['cost'] for the trainer to subtract from reward."""
    codec_loss_coef: float = 1.0
    """Weight a trainer gives stats['codec_loss'] (0 skips computing it)."""
    standardized_read: bool = False
    """Feed the core the fetched item in the codec's standardized units (what differs
    between stored items, e.g. which cue, at unit scale) instead of raw workable units
    (where that difference can be a few % of a large common part)."""
    codec_momentum: float = 0.01
    """How fast the codec's running center/spread follow the items it is fitted on."""

    def __post_init__(self) -> None:
        if self.name not in MEMORIES:
            raise ValueError(
                f"unknown memory {self.name!r}; available: {', '.join(MEMORIES.names())}"
            )
        for field in ("slot_dim", "num_slots", "code_dim", "key_dim", "get_topk"):
            if getattr(self, field) < 1:
                raise ValueError(f"memory {field} must be >= 1, got {getattr(self, field)}")
        if self.capacity < 1:
            raise ValueError(f"memory capacity must be >= 1 item, got {self.capacity}")
        if self.code_dim >= self.slot_dim:
            raise ValueError(
                f"memory code_dim={self.code_dim} must be smaller than slot_dim={self.slot_dim} "
                "(the encoded store compresses workable vectors)"
            )
        if self.get_topk > self.capacity:
            raise ValueError(f"memory get_topk={self.get_topk} exceeds capacity={self.capacity}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(
                f"memory store_dtype {self.store_dtype!r} is not one of {', '.join(STORE_DTYPES)}"
            )
        if self.eviction not in ms.EVICTION_RULES:
            raise ValueError(
                f"memory eviction {self.eviction!r} is not one of {', '.join(ms.EVICTION_RULES)}"
            )
        if self.codec_hidden < 0:
            raise ValueError(
                f"memory codec_hidden must be >= 0 (0 = auto), got {self.codec_hidden}"
            )
        if self.get_temperature <= 0:
            raise ValueError(f"memory get_temperature must be > 0, got {self.get_temperature}")
        if not -1.0 <= self.nap_merge_threshold <= 1.0:
            raise ValueError(
                f"memory nap_merge_threshold must be a cosine in [-1, 1], got {self.nap_merge_threshold}"
            )
        if self.nap_on_reset and not self.persist_store:
            raise ValueError(
                "memory nap_on_reset=True needs persist_store=True (a nap at an episode start "
                "would write into a store that is cleared right after)"
            )
        if len(self.op_init_logits) != 3:
            raise ValueError(
                f"memory op_init_logits needs 3 values (none, set, get), got {self.op_init_logits}"
            )
        if not 0.0 < self.codec_momentum <= 1.0:
            raise ValueError(f"memory codec_momentum must be in (0, 1], got {self.codec_momentum}")
        if not 0.0 <= self.workable_decay < 1.0:
            raise ValueError(f"memory workable_decay must be in [0, 1), got {self.workable_decay}")
        if self.call_cost < 0 or self.codec_loss_coef < 0:
            raise ValueError(
                f"memory call_cost and codec_loss_coef must be >= 0, got {self.call_cost}, "
                f"{self.codec_loss_coef}"
            )


def build_memory(config: MemoryConfig, hidden_dim: int) -> nn.Module:
    """Build the memory named by ``config`` for a core whose h has ``hidden_dim`` features."""
    if hidden_dim < 1:
        raise ValueError(f"memory hidden_dim must be >= 1, got {hidden_dim}")
    return MEMORIES.get(config.name)(config, hidden_dim)


@MEMORIES.register("two_tier")
class TwoTierMemory(nn.Module):
    """Workable slots + encoded store, called as a tool (see the module docstring).

    State keys (all batch-first): ``mem/slots`` (B, N, slot_dim), ``mem/slot_keys``
    (B, N, key_dim), ``mem/read`` (B, slot_dim) workable read, ``mem/got`` (B, slot_dim) last
    fetched item, ``mem/hit`` and ``mem/score`` (B, 1) whether the last get found an item and
    its key cosine, ``mem/clock`` (B,) steps taken (eviction stamps), and the store tensors of
    :mod:`agent.memory_store`.
    """

    def __init__(self, config: MemoryConfig, hidden_dim: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = hidden_dim
        S, K, N = config.slot_dim, config.key_dim, config.num_slots
        self._split = (S, K, K, N, 1)  # workable vector, key, read query, write address, gate
        # One fused projection of h per step (one matmul instead of five).
        # h is layer-normalized first: what a set stores, the keys and the op logits then do
        # not depend on the scale of the core's h (tiny for a freshly initialized core).
        self.norm = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, sum(self._split))
        with torch.no_grad():
            self.proj.bias[-1].fill_(config.write_gate_bias)
            # No bias on the workable vector at start: what a set stores is then all h's
            # content, not a constant the store's codes would have to carry in every item.
            self.proj.bias[:S].zero_()
        self.op_head = nn.Linear(hidden_dim, 3)
        with torch.no_grad():
            self.op_head.weight.mul_(0.1)  # start near op_init_logits whatever h is
            self.op_head.bias.copy_(torch.tensor(config.op_init_logits))
        self.codec = Codec(S, config.code_dim, config.codec_hidden, config.store_dtype)
        self.codec.momentum = config.codec_momentum
        self.read_dim = 2 * S + 2  # workable read, got, hit, score
        self._trace: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @contextmanager
    def tracing(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Collect ``(w (B, slot_dim), op (B,))`` of every :meth:`apply` call, in call order,
        with w's graph: what a trainer needs for auxiliary losses on what a set stores (the
        codec's reconstruction of set items, an observation reconstruction from w)."""
        self._trace = []
        try:
            yield self._trace
        finally:
            self._trace = None

    # ----------------------------------------------------------------- sizes, for reports
    @property
    def call_cost(self) -> float:
        return self.config.call_cost

    @property
    def workable_slot_nbytes(self) -> int:
        """Bytes of one workable slot in the state (float32 vector and its key)."""
        return 4 * (self.config.slot_dim + self.config.key_dim)

    @property
    def item_nbytes(self) -> int:
        """Bytes of one stored item: code (+ int8 scale), key, eviction stamp."""
        dtype = STORE_DTYPES[self.config.store_dtype]
        return ms.item_nbytes(
            ms.empty_store(1, 1, self.config.code_dim, self.config.key_dim, dtype, None)
        )

    # ----------------------------------------------------------------- protocol
    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        return {**self._initial_workable(batch, device), **self._initial_store(batch, device)}

    def _initial_workable(self, batch: int, device: torch.device | None) -> State:
        c = self.config
        # the module's dtype and (by default) device: the state follows .to() / .double()
        like = {"dtype": self.proj.weight.dtype, "device": device or self.proj.weight.device}
        return {
            "mem/slots": torch.zeros(batch, c.num_slots, c.slot_dim, **like),
            "mem/slot_keys": torch.zeros(batch, c.num_slots, c.key_dim, **like),
            "mem/read": torch.zeros(batch, c.slot_dim, **like),
            "mem/got": torch.zeros(batch, c.slot_dim, **like),
            "mem/hit": torch.zeros(batch, 1, **like),
            "mem/score": torch.zeros(batch, 1, **like),
        }

    def _initial_store(self, batch: int, device: torch.device | None) -> State:
        c = self.config
        device = device or self.proj.weight.device
        dtype = STORE_DTYPES[c.store_dtype]
        store = ms.empty_store(batch, c.capacity, c.code_dim, c.key_dim, dtype, device)
        store["mem/clock"] = torch.zeros(batch, dtype=torch.int32, device=device)
        return store

    def reset(self, state: State, episode_start: torch.Tensor) -> State:
        """Clear the workable tier (and the store unless ``persist_store``) where
        ``episode_start`` (B,) is true; with ``nap_on_reset`` nap those envs first."""
        start = torch.as_tensor(episode_start, device=state["mem/clock"].device).bool()
        if not bool(start.any()):
            return state
        if self.config.nap_on_reset:
            state, _ = self.nap(state, start)
        batch, device = start.shape[0], start.device
        initial = self._initial_workable(batch, device)
        if not self.config.persist_store:
            initial.update(self._initial_store(batch, device))
        part = reset_where({k: state[k] for k in initial}, initial, start)
        return {**state, **part}

    def read(self, state: State) -> torch.Tensor:
        """(B, read_dim) = [workable read, last fetched item, hit flag, key cosine]; the item
        in the codec's standardized units (zeros before a hit) with ``standardized_read``."""
        got = state["mem/got"]
        if self.config.standardized_read:
            got = self.codec.standardize(got) * state["mem/hit"]
        return torch.cat([state["mem/read"], got, state["mem/hit"], state["mem/score"]], dim=-1)

    def op_distribution(self, h: torch.Tensor) -> D.Categorical:
        """Categorical over (none, set, get) from h (B, hidden_dim)."""
        return D.Categorical(logits=self.op_head(self.norm(h)))

    def workable_vector(self, h: torch.Tensor) -> torch.Tensor:
        """The workable vector (B, slot_dim) a step writes to the slots and a set stores.

        Also the samples :func:`agent.codec.train_codec` fits the codec on."""
        return torch.tanh(self.proj(self.norm(h))[..., : self.config.slot_dim])

    def apply(
        self, h: torch.Tensor, op: torch.Tensor, state: State
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """One memory step for each env: workable write + read, then the op (B,) long.

        Returns the new state and per-env stats (B,) float: op, set, get, hit, evicted,
        occupancy (items), store_bytes, cost, codec_loss, codec_cos.
        """
        c = self.config
        w, key, read_q, addr, gate = torch.split(self.proj(self.norm(h)), self._split, dim=-1)
        w = torch.tanh(w)  # (B, S)
        key = F.normalize(key, dim=-1, eps=1e-8)  # (B, K)
        if self._trace is not None:
            self._trace.append((w, op))
        new = dict(state)

        # Workable tier: fade (workable_decay), then move the addressed slot(s) toward this
        # step's workable vector.
        slots, slot_keys = state["mem/slots"], state["mem/slot_keys"]  # (B, N, S), (B, N, K)
        if c.workable_decay > 0:
            slots, slot_keys = slots * (1 - c.workable_decay), slot_keys * (1 - c.workable_decay)
        mix = (torch.sigmoid(gate) * torch.softmax(addr, dim=-1))[..., None]  # (B, N, 1)
        slots = slots + mix * (w[:, None, :] - slots)
        slot_keys = slot_keys + mix * (key[:, None, :] - slot_keys)
        attn = torch.softmax(torch.einsum("bk,bnk->bn", read_q, slot_keys), dim=-1)  # (B, N)
        new["mem/slots"], new["mem/slot_keys"] = slots, slot_keys
        new["mem/read"] = torch.einsum("bn,bns->bs", attn, slots)  # (B, S)

        is_set, is_get = op == OP_SET, op == OP_GET
        clock = state["mem/clock"]
        zeros = torch.zeros(h.shape[0], device=h.device)
        evicted, hit = zeros, zeros
        # Only the envs that call touch the store (most steps of a trained policy: none).
        set_rows = is_set.nonzero().squeeze(1)
        if set_rows.numel():
            new, ev = self._store_item(new, set_rows, w[set_rows], key[set_rows], clock)
            evicted = zeros.index_put((set_rows,), ev.to(zeros.dtype))
        get_rows = is_get.nonzero().squeeze(1)
        if get_rows.numel():
            new, found = self._fetch(new, get_rows, key[get_rows], clock)
            hit = zeros.index_put((get_rows,), found.to(zeros.dtype))
        new["mem/clock"] = clock + 1

        # The codec's auxiliary loss is a training signal: computed when autograd is on (a
        # BPTT replay), zeros in no-grad rollouts where it would only cost time.
        if c.codec_loss_coef > 0 and torch.is_grad_enabled():
            codec_loss, codec_cos = self.codec.reconstruction_loss(w)
        else:
            codec_loss, codec_cos = zeros, zeros
        occupancy = new["mem/store_count"].to(torch.float32)
        stats = {
            "op": op.to(torch.float32),
            "set": is_set.to(torch.float32),
            "get": is_get.to(torch.float32),
            "hit": hit,
            "evicted": evicted,
            "occupancy": occupancy,
            "store_bytes": occupancy * self.item_nbytes,
            "cost": (op != OP_NONE).to(torch.float32) * c.call_cost,
            "codec_loss": codec_loss,
            "codec_cos": codec_cos,
        }
        return new, stats

    # ----------------------------------------------------------------- store operations
    @staticmethod
    def _store_of(state: State) -> State:
        return {k: state[k] for k in _STORE_KEYS if k in state and k != "mem/clock"}

    def _store_item(
        self,
        state: State,
        rows: torch.Tensor,
        w: torch.Tensor,
        key: torch.Tensor,
        clock: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> tuple[State, torch.Tensor]:
        """Encode w (R, S) under key (R, K) into the stores of envs ``rows`` (R,).

        Returns the state and evicted (R,) bool."""
        codes, scale = self.codec.encode(w.detach())
        keys = ms.encode_keys(key.detach(), STORE_DTYPES[self.config.store_dtype])
        store, _, evicted = ms.write_items(
            self._store_of(state), rows, codes, scale, keys, clock[rows], index
        )
        return {**state, **store}, evicted

    def _fetch(
        self, state: State, rows: torch.Tensor, query: torch.Tensor, clock: torch.Tensor
    ) -> tuple[State, torch.Tensor]:
        """Decode the nearest item(s) to query (R, K) into ``mem/got`` of envs ``rows`` (R,).

        Returns the state and found (R,) bool (false: the store was empty, got = zeros)."""
        c = self.config
        store = self._store_of(state)
        idx, score, valid = ms.lookup(store, rows, query, c.get_topk)  # (R, k) each
        codes, scale = ms.gather_items(store, rows, idx)
        items = self.codec.decode(codes, scale)  # (R, k, S)
        logits = (c.get_temperature * score).masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-invalid rows -> 0
        found = valid[:, 0]  # (R,) the store had at least one item
        got = torch.einsum("rk,rks->rs", weights, items) * found[:, None]  # zeros on a miss
        new = dict(state)
        new["mem/got"] = state["mem/got"].index_copy(0, rows, got)
        new["mem/hit"] = state["mem/hit"].index_copy(0, rows, found[:, None].to(got.dtype))
        new["mem/score"] = state["mem/score"].index_copy(0, rows, score[:, :1])
        if c.eviction == "lru" and bool(found.any()):
            # every item the read blended was used, not only the nearest (get_topk > 1)
            r, j = valid.nonzero(as_tuple=True)  # (n,) each: env row, rank among its k
            new.update(ms.touch(store, rows[r], idx[r, j], clock[rows[r]]))
        return new, found

    # ----------------------------------------------------------------- naps
    @torch.no_grad()
    def nap(
        self, state: State, mask: torch.Tensor | None = None, min_norm: float = 1e-3
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Consolidate the workable slots of envs in ``mask`` (B,) into the encoded store.

        Each slot with norm above ``min_norm`` is encoded under its slot key. If a stored key
        has cosine >= ``nap_merge_threshold`` to it, that item is overwritten (a replay that
        refreshes the memory with the newer content and, for lru, its recency); otherwise it
        takes a new slot by the eviction rule. The workable slots are left as they are.
        Returns the state and per-env stats: napped (items written), merged, evicted.
        """
        slots, slot_keys = state["mem/slots"], state["mem/slot_keys"]
        batch = slots.shape[0]
        if mask is None:
            mask = torch.ones(batch, dtype=torch.bool, device=slots.device)
        mask = torch.as_tensor(mask, device=slots.device).bool()
        clock = state["mem/clock"]
        napped = torch.zeros(batch, device=slots.device)
        merged, evicted = torch.zeros_like(napped), torch.zeros_like(napped)
        for i in range(slots.shape[1]):
            rows = (mask & (slots[:, i].norm(dim=-1) > min_norm)).nonzero().squeeze(1)
            if not rows.numel():
                continue
            key = F.normalize(slot_keys[rows, i], dim=-1, eps=1e-8)  # (R, K)
            idx, score, found = ms.lookup(self._store_of(state), rows, key, 1)
            merge = found[:, 0] & (score[:, 0] >= self.config.nap_merge_threshold)
            index = torch.where(merge, idx[:, 0], torch.full_like(idx[:, 0], -1))
            state, ev = self._store_item(state, rows, slots[rows, i], key, clock, index)
            # each napped item its own tick, after the last step's and before the next set's:
            # FIFO then evicts napped items in the order they were written, never on a tie
            clock = clock.index_add(0, rows, torch.ones_like(rows, dtype=clock.dtype))
            napped[rows] += 1.0
            merged[rows] += merge.float()
            evicted[rows] += ev.float()
        stats = {"napped": napped, "merged": merged, "evicted": evicted}
        return {**state, "mem/clock": clock}, stats


__all__ = [
    "MEMORIES",
    "OP_GET",
    "OP_NAMES",
    "OP_NONE",
    "OP_SET",
    "MemoryConfig",
    "TwoTierMemory",
    "build_memory",
]
