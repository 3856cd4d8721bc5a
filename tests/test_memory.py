"""Two-tier memory: recall through the codec, capacity, eviction, empty gets, episode starts,
bytes, bad configs, naps, and use with every registered core. Seeded and tiny."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from agent import memory_store as ms
from agent.codec import Codec, train_codec
from agent.cores import CORES, CoreConfig, build_core
from agent.interfaces import MemoryTool
from agent.memory import (
    MEMORIES,
    OP_GET,
    OP_NONE,
    OP_SET,
    MemoryConfig,
    TwoTierMemory,
    build_memory,
)
from agent.state import detach_state, index_state, state_nbytes

HIDDEN = 24


def small_config(**kw) -> MemoryConfig:
    base = dict(slot_dim=32, num_slots=3, code_dim=8, key_dim=8, capacity=6)
    base.update(kw)
    return MemoryConfig(**base)


def make(seed: int = 0, **kw) -> TwoTierMemory:
    torch.manual_seed(seed)
    return build_memory(small_config(**kw), HIDDEN)


def run_ops(mem: TwoTierMemory, hs: list[torch.Tensor], ops: list[int], state=None):
    """Apply ops[t] (same for every env) with h = hs[t]; returns (state, stats list)."""
    batch = hs[0].shape[0]
    state = mem.initial_state(batch) if state is None else state
    out = []
    for h, op in zip(hs, ops, strict=True):
        state, stats = mem.apply(h, torch.full((batch,), op, dtype=torch.long), state)
        out.append(stats)
    return state, out


def manifold_h(n: int, seed: int, latent: int = 4) -> torch.Tensor:
    """Core-like hidden states: a smooth map of a few latent factors (low intrinsic dim)."""
    gen = torch.Generator().manual_seed(1234)
    lift = torch.randn(latent, HIDDEN, generator=gen)
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    return torch.tanh(z @ lift)


def test_follows_protocol_and_registry():
    mem = make()
    assert isinstance(mem, MemoryTool)
    assert "two_tier" in MEMORIES
    state = mem.initial_state(2)
    assert mem.read(state).shape == (2, mem.read_dim)
    assert all(k.startswith("mem/") for k in state)
    dist = mem.op_distribution(torch.randn(2, HIDDEN))
    assert dist.probs.shape == (2, 3)
    # Exploration starts mostly with "none" (op_init_logits = (2, 0, 0)).
    assert bool((dist.probs[:, OP_NONE] > 0.6).all())


def test_trained_codec_recalls_items_by_key_with_cosine_095():
    mem = make(capacity=64)
    # Train the codec (the stand-alone path) on the workable vectors of core-like states.
    with torch.no_grad():
        samples = mem.workable_vector(manifold_h(4096, seed=1))
    result = train_codec(mem.codec, samples, steps=800, batch_size=256, seed=0)
    assert result["cosine"] > 0.95

    h = manifold_h(20, seed=2)  # 20 new items, one per step, in one env
    state = mem.initial_state(1)
    for t in range(20):
        state, _ = mem.apply(h[t : t + 1], torch.tensor([OP_SET]), state)
    for _ in range(7):  # unrelated steps between set and get
        state, _ = mem.apply(torch.randn(1, HIDDEN), torch.tensor([OP_NONE]), state)
    cosines = []
    for t in torch.randperm(20).tolist():
        state, stats = mem.apply(h[t : t + 1], torch.tensor([OP_GET]), state)
        assert stats["hit"].item() == 1.0
        original = mem.workable_vector(h[t : t + 1])
        cosines.append(F.cosine_similarity(state["mem/got"], original).item())
    assert min(cosines) >= 0.95, cosines


def test_codec_auxiliary_loss_trains_the_codec():
    """The per-env codec_loss stat from apply is an auxiliary loss a trainer can add."""
    mem = make()
    opt = torch.optim.Adam(mem.codec.parameters(), lr=3e-3)
    first = last = None
    for step in range(150):
        h = manifold_h(64, seed=step)
        _, stats = mem.apply(h, torch.zeros(64, dtype=torch.long), mem.initial_state(64))
        loss = stats["codec_loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = stats["codec_cos"].mean().item() if first is None else first
        last = stats["codec_cos"].mean().item()
    assert last > first + 0.2 and last > 0.9


def test_codec_standardizes_so_item_specific_content_survives_a_large_common_part():
    """Workable vectors share a big common part; the code must keep what differs."""
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(32, generator=gen)  # |common| ~ 5.7
    lift = torch.randn(4, 32, generator=gen)
    items = common + 0.05 * torch.tanh(torch.randn(3000, 4, generator=gen) @ lift)
    codec = Codec(32, 8)
    train_codec(codec, items[:2000], steps=300, seed=0)
    test = items[2000:]
    with torch.no_grad():
        back = codec.decode(*codec.encode(test))
    mean = test.mean(0)
    centered = F.cosine_similarity(back - mean, test - mean).mean()
    assert centered > 0.9
    assert torch.allclose(codec.center, items[:2000].mean(0), atol=0.02)


def test_quantization_roundtrip_and_straight_through():
    codec = Codec(16, 4, store_dtype="int8")
    w = torch.randn(5, 16)
    codes, scale = codec.encode(w)
    assert codes.dtype == torch.int8 and scale.shape == (5,)
    decoded = codec.decode(codes, scale)
    with torch.no_grad():
        assert torch.allclose(decoded, codec.roundtrip(w), atol=1e-5)
    w.requires_grad_(True)
    codec.roundtrip(w).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("eviction", ["lru", "fifo"])
def test_store_never_exceeds_capacity(eviction):
    mem = make(eviction=eviction, capacity=5)
    gen = torch.Generator().manual_seed(0)
    state = mem.initial_state(4)
    for _ in range(60):
        op = torch.randint(0, 3, (4,), generator=gen)
        state, stats = mem.apply(torch.randn(4, HIDDEN, generator=gen), op, state)
        assert state["mem/store_codes"].shape[:2] == (4, 5)
        assert bool((stats["occupancy"] <= 5).all())
    assert bool((stats["occupancy"] == 5).all())  # 60 random steps fill 5 slots


@pytest.mark.parametrize(
    ("eviction", "evicted_item"),
    [("lru", 1), ("fifo", 0)],  # after set 0,1,2 and get 0: lru drops 1, fifo drops 0
)
def test_eviction_rule(eviction, evicted_item):
    mem = make(eviction=eviction, capacity=3)
    h = torch.eye(HIDDEN)[:4] * 3.0  # four distinct items with distinct keys
    ops = [OP_SET, OP_SET, OP_SET, OP_GET, OP_SET]
    state, stats = run_ops(mem, [h[0:1], h[1:2], h[2:3], h[0:1], h[3:4]], ops)
    assert stats[-1]["evicted"].item() == 1.0
    assert stats[3]["hit"].item() == 1.0
    stored = ms.decode_keys(state["mem/store_keys"][0])  # (3, K)
    keys = F.normalize(mem.proj(mem.norm(h))[:, 32:40], dim=-1)  # the keys of items 0..3
    present = [bool((stored @ keys[i]).max() > 0.99) for i in range(4)]
    expected = [i != evicted_item for i in range(4)]
    assert present == expected


def test_choose_slot_fills_free_slots_first_then_smallest_stamp():
    store = {
        "mem/store_count": torch.tensor([2, 4, 4], dtype=torch.int32),
        "mem/store_stamp": torch.tensor([[5, 1, 0, 0], [7, 2, 9, 4], [3, 8, 3, 9]]).int(),
    }
    idx, evicts = ms.choose_slot(store, torch.arange(3))
    assert idx.tolist() == [2, 1, 0]  # next free slot; smallest stamp; lowest index on a tie
    assert evicts.tolist() == [False, True, True]


def test_get_on_empty_store_is_zeros_and_miss():
    mem = make(get_topk=3)
    state = mem.initial_state(2)
    h = torch.randn(2, HIDDEN, requires_grad=True)
    state, stats = mem.apply(h, torch.full((2,), OP_GET), state)
    assert stats["hit"].tolist() == [0.0, 0.0]
    assert torch.equal(state["mem/got"], torch.zeros(2, 32))
    assert torch.equal(state["mem/hit"], torch.zeros(2, 1))
    read = mem.read(state)
    assert torch.isfinite(read).all()
    read.sum().backward()  # a miss still gives finite gradients
    assert torch.isfinite(h.grad).all()


def test_get_returns_item_to_next_step_and_keeps_it_until_next_get():
    mem = make()
    h = torch.eye(HIDDEN)[:2] * 3.0
    state, stats = run_ops(mem, [h[0:1], h[1:2], h[0:1]], [OP_SET, OP_NONE, OP_GET])
    got = state["mem/got"].clone()
    assert stats[-1]["hit"].item() == 1.0 and got.abs().sum() > 0
    assert torch.equal(mem.read(state)[:, 32:64], got)  # what the next core step sees
    state, _ = run_ops(mem, [h[1:2]], [OP_NONE], state)
    assert torch.equal(state["mem/got"], got)


def test_store_is_outside_the_gradient_path():
    mem = make()
    h_set = torch.randn(1, HIDDEN, requires_grad=True)
    state, _ = run_ops(mem, [h_set], [OP_SET])
    h_get = torch.randn(1, HIDDEN)
    state, _ = mem.apply(h_get, torch.tensor([OP_GET]), state)
    (grad_h,) = torch.autograd.grad(state["mem/got"].sum(), h_set, allow_unused=True)
    assert grad_h is None
    # ...while the decoder that turns the code back into a workable vector is trained.
    (grad_dec,) = torch.autograd.grad(
        state["mem/got"].sum(), mem.codec.decoder[0].weight, allow_unused=True
    )
    assert grad_dec is not None and grad_dec.abs().sum() > 0


def test_soft_get_lets_gradient_reach_the_key_projection():
    mem = make(get_topk=3)
    h = torch.randn(3, HIDDEN)
    state, _ = run_ops(mem, [h[0:1], h[1:2], h[2:3]], [OP_SET] * 3)
    state, _ = mem.apply(torch.randn(1, HIDDEN), torch.tensor([OP_GET]), state)
    (grad,) = torch.autograd.grad(state["mem/got"].sum(), mem.proj.weight)
    assert grad[32:40].abs().sum() > 0  # the rows producing the key/query


@pytest.mark.parametrize("persist_store", [False, True])
def test_episode_start_clears_workable_and_store_unless_persistent(persist_store):
    mem = make(persist_store=persist_store)
    h = torch.randn(3, HIDDEN)
    state, _ = run_ops(mem, [h, h * 2, h], [OP_SET, OP_SET, OP_GET])
    before = {k: v.clone() for k, v in state.items()}
    start = torch.tensor([True, False, True])
    state = mem.reset(state, start)
    for key in ("mem/slots", "mem/slot_keys", "mem/read", "mem/got", "mem/hit", "mem/score"):
        assert state[key][start].abs().sum() == 0, key
        assert torch.equal(state[key][~start], before[key][~start]), key
    occupancy = state["mem/store_count"]
    assert occupancy[1] == 2  # the env that did not start keeps everything
    assert occupancy[0] == (2 if persist_store else 0)
    assert occupancy[2] == (2 if persist_store else 0)
    # No episode start: the state comes back untouched.
    assert mem.reset(state, torch.zeros(3, dtype=torch.bool)) is state


def test_workable_slots_hold_without_decay_and_fade_with_it():
    h = torch.randn(2, HIDDEN)
    norms = {}
    for decay in (0.0, 0.1):
        mem = make(workable_decay=decay, write_gate_bias=4.0)
        state, _ = run_ops(mem, [h], [OP_NONE])
        with torch.no_grad():
            mem.proj.bias[-1].fill_(-30.0)  # close the write gate: only the decay acts
        start = state["mem/slots"].norm()
        state, _ = run_ops(mem, [h] * 20, [OP_NONE] * 20, state)
        norms[decay] = (state["mem/slots"].norm() / start).item()
    assert norms[0.0] == pytest.approx(1.0, abs=1e-5)
    assert norms[0.1] == pytest.approx(0.9**20, rel=1e-3)


def test_nap_on_reset_consolidates_workable_slots_into_a_persistent_store():
    mem = make(persist_store=True, nap_on_reset=True, write_gate_bias=4.0)
    h = torch.randn(2, HIDDEN)
    state, _ = run_ops(mem, [h, h], [OP_NONE, OP_NONE])  # only the workable tier is written
    assert state["mem/store_count"].sum() == 0
    state = mem.reset(state, torch.tensor([True, False]))
    assert state["mem/store_count"][0] >= 1  # napped before the workable clear
    assert state["mem/store_count"][1] == 0
    assert state["mem/slots"][0].abs().sum() == 0
    # The next episode can fetch what the last one held in its workable slots.
    state, stats = mem.apply(h, torch.full((2,), OP_GET), state)
    assert stats["hit"].tolist() == [1.0, 0.0]


def test_nap_merges_near_duplicates_instead_of_filling_the_store():
    mem = make(write_gate_bias=4.0)
    state, _ = run_ops(mem, [torch.randn(1, HIDDEN)], [OP_NONE])
    state, first = mem.nap(state)
    occupancy = state["mem/store_count"].sum().item()
    # One write filled all 3 slots with the same content: one item, the others merged.
    assert first["napped"].item() == 3
    assert occupancy == 3 - first["merged"].item() >= 1
    state, second = mem.nap(state)  # same slots again: replayed into the same items
    assert state["mem/store_count"].sum().item() == occupancy
    assert second["merged"].item() == second["napped"].item()


@pytest.mark.parametrize("store_dtype", ["int8", "float16", "float32"])
def test_stored_item_is_at_least_4x_smaller_than_a_workable_slot(store_dtype):
    mem = build_memory(MemoryConfig(store_dtype=store_dtype), hidden_dim=128)
    assert mem.workable_slot_nbytes >= 4 * mem.item_nbytes
    # The accounting matches the tensors actually held in the state.
    state = mem.initial_state(2)
    per_slot = {k: v for k, v in state.items() if k.startswith("mem/store_") and v.dim() > 1}
    assert state_nbytes(per_slot) == mem.config.capacity * mem.item_nbytes


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"code_dim": 32, "slot_dim": 32}, "code_dim=32 must be smaller than slot_dim=32"),
        ({"code_dim": 64, "slot_dim": 32}, "must be smaller than slot_dim"),
        ({"capacity": 0}, "capacity must be >= 1"),
        ({"num_slots": 0}, "num_slots must be >= 1"),
        ({"eviction": "random"}, "eviction 'random' is not one of lru, fifo"),
        ({"store_dtype": "int4"}, "store_dtype 'int4'"),
        ({"get_topk": 9}, "get_topk=9 exceeds capacity=6"),
        ({"nap_on_reset": True}, "needs persist_store=True"),
        ({"name": "tape"}, "unknown memory 'tape'"),
        ({"call_cost": -1.0}, "must be >= 0"),
        ({"workable_decay": 1.0}, "workable_decay must be in"),
    ],
)
def test_bad_config_fails_at_build_time_with_one_line(overrides, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        small_config(**overrides)
    assert "\n" not in str(err.value)


def test_weights_and_codec_statistics_round_trip_through_safetensors(tmp_path):
    mem = make()
    train_codec(mem.codec, torch.randn(256, 32) + 3.0, steps=5)  # moves the statistics
    save_file(mem.state_dict(), tmp_path / "memory.safetensors")
    other = make(seed=1)
    other.load_state_dict(load_file(tmp_path / "memory.safetensors"))
    assert torch.equal(other.codec.center, mem.codec.center)
    h = torch.randn(2, HIDDEN)
    ops = [OP_SET, OP_GET]
    a, _ = run_ops(mem, [h, h], ops)
    b, _ = run_ops(other, [h, h], ops)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_is_a_plain_dataclass_for_cli_and_json():
    cfg = small_config(eviction="fifo")
    assert MemoryConfig(**dataclasses.asdict(cfg)) == cfg


def test_stats_have_stable_keys_and_shapes():
    mem = make(call_cost=0.01)
    _, stats = run_ops(mem, [torch.randn(4, HIDDEN)] * 2, [OP_SET, OP_GET])
    expected = "op set get hit evicted occupancy store_bytes cost codec_loss codec_cos".split()
    for s in stats:
        assert set(s) == set(expected)
        assert all(v.shape == (4,) for v in s.values())
    assert torch.allclose(stats[0]["cost"], torch.full((4,), 0.01))
    assert stats[1]["store_bytes"].tolist() == [float(mem.item_nbytes)] * 4


def test_seeded_runs_are_deterministic():
    outs = []
    for _ in range(2):
        mem = make(seed=3)
        gen = torch.Generator().manual_seed(5)
        state = mem.initial_state(3)
        for _ in range(10):
            h = torch.randn(3, HIDDEN, generator=gen)
            op = mem.op_distribution(h).sample()
            state, _ = mem.apply(h, op, state)
        outs.append(mem.read(state))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("core_name", CORES.names())
def test_works_with_every_registered_core(core_name):
    """The policy's loop: core input = concat(x, read); sample op from h; apply; BPTT."""
    torch.manual_seed(0)
    x_dim, batch, steps = 5, 3, 6
    mem = build_memory(small_config(get_topk=2), hidden_dim=16)
    core = build_core(
        CoreConfig(name=core_name, hidden_dim=16, num_heads=2, max_context=8),
        input_dim=x_dim + mem.read_dim,
    )
    core_state, mem_state = core.initial_state(batch), mem.initial_state(batch)
    logp, codec_loss = torch.zeros(batch), torch.zeros(())
    for t in range(steps):
        x = torch.randn(batch, x_dim)
        h, core_state = core.step(torch.cat([x, mem.read(mem_state)], dim=-1), core_state)
        dist = mem.op_distribution(h)
        op = torch.tensor([OP_SET, OP_GET, t % 3])  # fixed ops: set-only, get-only, mixed
        logp = logp + dist.log_prob(op)
        mem_state, stats = mem.apply(h, op, mem_state)
        codec_loss = codec_loss + stats["codec_loss"].mean()
        if t == 3:  # a truncation point mid-sequence, then a reset of env 0
            core_state, mem_state = detach_state(core_state), detach_state(mem_state)
            mem_state = mem.reset(mem_state, torch.tensor([True, False, False]))
    assert h.shape == (batch, 16) and torch.isfinite(h).all()
    loss = h.pow(2).mean() + mem.read(mem_state).pow(2).mean() - logp.mean() + codec_loss
    loss.backward()
    for name, module in [("core", core), ("proj", mem.proj), ("op", mem.op_head)]:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert index_state(mem_state, slice(0, 1))["mem/store_codes"].shape[:2] == (1, 6)


def test_lru_refreshes_every_item_a_topk_get_blends():
    mem = make(eviction="lru", capacity=3, get_topk=2)
    h = torch.eye(HIDDEN)[:3] * 3.0
    state, _ = run_ops(mem, [h[0:1], h[1:2], h[2:3], h[0:1]], [OP_SET, OP_SET, OP_SET, OP_GET])
    query = F.normalize(mem.proj(mem.norm(h[0:1]))[:, 32:40], dim=-1)  # the get's key
    idx, _, valid = ms.lookup(state, torch.tensor([0]), query, 2)
    assert bool(valid.all())
    refreshed = (state["mem/store_stamp"][0] == 3).nonzero().squeeze(1)  # the get ran at clock 3
    assert sorted(refreshed.tolist()) == sorted(idx[0].tolist())


@pytest.mark.parametrize("eviction", ["lru", "fifo"])
def test_nap_stamps_each_item_in_write_order_before_the_next_set(eviction):
    mem = make(eviction=eviction, capacity=5, write_gate_bias=4.0)
    h = torch.eye(HIDDEN)[:2] * 3.0
    state, _ = run_ops(mem, [h[0:1], h[1:2]], [OP_SET, OP_NONE])  # clock 2, one item (stamp 0)
    # three workable slots with distinct contents and keys: three new items
    state["mem/slots"] = torch.eye(32)[None, :3] * 0.5
    state["mem/slot_keys"] = torch.eye(8)[None, :3]
    state, stats = mem.nap(state)
    assert stats["napped"].item() == 3 and stats["merged"].item() == 0
    state, _ = run_ops(mem, [h[1:2]], [OP_SET], state)
    stamps = state["mem/store_stamp"][0, :5].tolist()
    assert stamps == [0, 2, 3, 4, 5]  # the napped items 2, 3, 4 in order, then the set's 5


def test_state_follows_the_memorys_dtype_and_device():
    """``memory.double()`` / ``.to(device)``: the workable tier is made in the memory's dtype
    where its weights are, and a set then a get decode in that dtype ("meta" stands in for a
    GPU here); the store keeps its own dtype."""
    mem = make(store_dtype="int8").double()
    state = mem.initial_state(2)
    assert state["mem/slots"].dtype == torch.float64
    assert state["mem/store_codes"].dtype == torch.int8
    h = torch.randn(2, HIDDEN, dtype=torch.float64)
    state, stats = run_ops(mem, [h, h], [OP_SET, OP_GET], state)
    assert state["mem/got"].dtype == torch.float64 and bool((stats[-1]["hit"] == 1).all())
    assert mem.read(state).dtype == torch.float64
    on_meta = make().to("meta").initial_state(2)
    assert {v.device.type for v in on_meta.values()} == {"meta"}


@pytest.mark.parametrize("as_flags", [np.array, list, torch.tensor])
def test_reset_and_nap_take_numpy_or_list_flags_as_the_policy_does(as_flags):
    """``episode_start`` as a vector env hands it (numpy) or a list works as a tensor does."""
    mem = make(persist_store=True, nap_on_reset=True)
    h = torch.randn(2, HIDDEN)
    state, _ = run_ops(mem, [h], [OP_NONE])
    expected, _ = mem.nap(state, torch.tensor([True, False]))
    napped, stats = mem.nap(state, as_flags([True, False]))
    assert stats["napped"].tolist() == [float(mem.config.num_slots), 0.0]
    assert torch.equal(napped["mem/store_count"], expected["mem/store_count"])
    reset = mem.reset(state, as_flags([True, False]))
    assert torch.equal(reset["mem/store_count"], expected["mem/store_count"])
    assert reset["mem/slots"][0].abs().sum() == 0 and torch.equal(
        reset["mem/slots"][1], state["mem/slots"][1]
    )


def test_codec_keeps_its_dtype_when_fitted_on_float64_samples():
    """Samples from numpy are float64: fitting a float32 codec on them (train_codec or
    update_statistics) keeps its statistics float32, so the memory still encodes and decodes."""
    mem = make()
    samples = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 32)))  # float64
    train_codec(mem.codec, samples, steps=3)
    mem.codec.update_statistics(samples)
    assert mem.codec.center.dtype == mem.codec.spread.dtype == torch.float32
    h = torch.randn(2, HIDDEN)
    state, stats = run_ops(mem, [h, h], [OP_SET, OP_GET])
    assert state["mem/got"].dtype == torch.float32 and bool((stats[-1]["hit"] == 1).all())
