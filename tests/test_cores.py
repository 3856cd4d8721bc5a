"""Every registered core passes the same checks (timm's test_models.py pattern)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from agent.cores import CORES, CoreConfig, build_core
from agent.interfaces import Core
from agent.state import reset_where

IN, HID, B = 6, 8, 3


def tiny(name: str, **kw) -> CoreConfig:
    return CoreConfig(name=name, hidden_dim=HID, num_layers=2, num_heads=2, max_context=8, **kw)


def make(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_core(tiny(name, **kw), IN)


def run(core, xs: torch.Tensor, state=None):
    """Step ``core`` over xs (T, B, IN); returns hs (T, B, HID) and the last state."""
    state = core.initial_state(xs.shape[1]) if state is None else state
    hs = []
    for x in xs:
        h, state = core.step(x, state)
        hs.append(h)
    return torch.stack(hs), state


@pytest.mark.parametrize("name", CORES.names())
def test_shapes_protocol_and_finite(name):
    core = make(name)
    assert isinstance(core, Core)
    assert (core.input_dim, core.hidden_dim) == (IN, HID)
    state = core.initial_state(B)
    assert all(v.shape[0] == B for v in state.values())
    hs, new_state = run(core, torch.randn(12, B, IN))  # 12 > max_context: the window slides
    assert hs.shape == (12, B, HID)
    assert torch.isfinite(hs).all()
    assert new_state.keys() == state.keys()
    assert all(new_state[k].shape == state[k].shape for k in state)


@pytest.mark.parametrize("name", CORES.names())
def test_deterministic_and_state_not_mutated(name):
    core = make(name)
    xs = torch.randn(5, B, IN)
    state = core.initial_state(B)
    snapshot = {k: v.clone() for k, v in state.items()}
    h1, _ = run(core, xs, state)
    h2, _ = run(core, xs, state)
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    for k in state:  # the caller's state is never edited in place (BPTT keeps it)
        torch.testing.assert_close(state[k], snapshot[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", CORES.names())
def test_safetensors_round_trip(name, tmp_path):
    core = make(name, seed=1)
    save_file(core.state_dict(), tmp_path / "core.safetensors")
    other = make(name, seed=2)
    other.load_state_dict(load_file(tmp_path / "core.safetensors"))
    xs = torch.randn(4, B, IN)
    torch.testing.assert_close(run(core, xs)[0], run(other, xs)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", CORES.names())
def test_episode_start_resets_only_flagged_envs(name):
    core = make(name)
    _, state = run(core, torch.randn(4, B, IN))
    start = torch.tensor([False, True, False])
    reset = reset_where(state, core.initial_state(B), start)
    x = torch.randn(B, IN)
    h_reset, _ = core.step(x, reset)
    h_kept, _ = core.step(x, state)
    h_fresh, _ = core.step(x, core.initial_state(B))
    torch.testing.assert_close(h_reset[1], h_fresh[1])
    torch.testing.assert_close(h_reset[[0, 2]], h_kept[[0, 2]])
    assert not torch.allclose(h_reset[1], h_kept[1])


@pytest.mark.parametrize("name", CORES.names())
def test_gradients_reach_all_parameters_through_time(name):
    core = make(name)
    xs = torch.randn(5, B, IN, requires_grad=True)
    hs, _ = run(core, xs)
    # a random readout: LayerNorm outputs (transformer) sum to a constant over features
    (hs[-1] * torch.randn(HID)).sum().backward()
    assert xs.grad[0].abs().sum() > 0  # the first step still influences the last output
    for pname, p in core.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_transformer_window_is_a_sliding_context():
    """With one block, keys/values depend only on inputs, so after the window slides the
    output equals a fresh core fed just the last ``max_context`` inputs (rotary positions
    make attention depend on relative distance only)."""
    torch.manual_seed(0)
    core = build_core(
        CoreConfig(name="transformer", hidden_dim=HID, num_heads=2, max_context=4), IN
    )
    xs = torch.randn(11, B, IN)
    hs, _ = run(core, xs)
    hs_window, _ = run(core, xs[-4:])
    torch.testing.assert_close(hs[-1], hs_window[-1], rtol=1e-5, atol=1e-5)
    # and inside the window the context matters: dropping one more input changes the output
    hs_short, _ = run(core, xs[-3:])
    assert not torch.allclose(hs[-1], hs_short[-1], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mamba"}, "unknown core 'mamba'; available: gru, lstm, transformer"),
        ({"name": "gru", "hidden_dim": 0}, "hidden_dim must be >= 1"),
        ({"name": "transformer", "hidden_dim": 10, "num_heads": 4}, "must divide hidden_dim"),
        ({"name": "transformer", "max_context": 0}, "max_context must be >= 1"),
        ({"name": "transformer", "num_heads": 0}, "num_heads must be >= 1, got 0"),
        ({"name": "transformer", "hidden_dim": 4, "num_heads": -2}, "num_heads must be >= 1"),
    ],
)
def test_bad_config_fails_with_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        CoreConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_transformer_inplace_kv_matches_functional_cache():
    """The static-cache inference path computes the same outputs (and overwrites the state)."""
    torch.manual_seed(0)
    functional = build_core(tiny("transformer"), IN)
    inplace = build_core(tiny("transformer", inplace_kv=True), IN)
    inplace.load_state_dict(functional.state_dict())
    xs = torch.randn(11, B, IN)
    with torch.no_grad():
        h_f, s_f = run(functional, xs)
        state = inplace.initial_state(B)
        h_i, s_i = run(inplace, xs, state)
    torch.testing.assert_close(h_i, h_f)
    torch.testing.assert_close(s_i["core/k1"], s_f["core/k1"])
    assert s_i["core/k0"] is state["core/k0"]  # written in place
    hs, _ = run(inplace, xs[:2])  # with gradients on it falls back to the functional write
    assert hs.requires_grad


@pytest.mark.parametrize("name, cell_cls", [("gru", torch.nn.GRUCell), ("lstm", torch.nn.LSTMCell)])
def test_recurrent_cores_compute_the_torch_cells(name, cell_cls):
    """The fused ``torch.gru_cell``/``lstm_cell`` step equals stacking the torch cell modules."""
    core = make(name)
    xs = torch.randn(4, B, IN)
    hs, _ = run(core, xs)
    cells = [cell_cls(IN, HID), cell_cls(HID, HID)]
    for i, cell in enumerate(cells):
        cell.load_state_dict(core.cells[i].state_dict())
    h = [torch.zeros(B, HID) for _ in cells]
    c = [torch.zeros(B, HID) for _ in cells]
    for t, x in enumerate(xs):
        inp = x
        for i, cell in enumerate(cells):
            if name == "gru":
                h[i] = cell(inp, h[i])
            else:
                h[i], c[i] = cell(inp, (h[i], c[i]))
            inp = h[i]
        torch.testing.assert_close(hs[t], inp)


@pytest.mark.parametrize("name", CORES.names())
def test_weights_input_major_in_memory_contiguous_in_state_dict(name):
    """2-D weights are stored transposed (the fast GEMM layout) but the state dict has the
    usual shapes as contiguous tensors, and ``.to()`` keeps the layout."""
    core = make(name)
    weights = [p for p in core.parameters() if p.dim() == 2]
    assert weights and all(p.t().is_contiguous() for p in weights)
    assert all(v.is_contiguous() for v in core.state_dict().values())
    keep = core.state_dict(keep_vars=True)
    assert all(isinstance(v, torch.nn.Parameter) for k, v in keep.items() if "weight" in k)
    moved = make(name).to(torch.float64).to(torch.float32)  # dtype/device moves keep strides
    assert all(p.t().is_contiguous() for p in moved.parameters() if p.dim() == 2)
    xs = torch.randn(3, B, IN)
    torch.testing.assert_close(run(moved, xs)[0], run(core, xs)[0], rtol=0, atol=0)


def test_transformer_mixed_depths_match_separate_runs():
    """Envs at different positions (a reset mid-batch) use per-row cache slots and a mask:
    each row equals the same env stepped alone."""
    core = make("transformer")
    xs = torch.randn(6, B, IN)
    _, state = run(core, xs[:3])
    start = torch.tensor([False, True, False])
    state = reset_where(state, core.initial_state(B), start)
    hs, _ = run(core, xs[3:], state)
    for row in range(B):
        alone = xs[:, row : row + 1]
        expect, _ = run(core, alone[3:] if start[row] else alone)
        torch.testing.assert_close(hs[:, row], expect[-3:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CORES.names())
def test_initial_state_follows_the_cores_dtype_and_device(name):
    """``core.double()`` / ``.to(device)`` carry the state along: ``initial_state(batch)``
    without a device is made where the core's weights are, in their dtype ("meta" stands in
    for a GPU here)."""
    core = make(name).double()
    state = core.initial_state(B)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}
    hs, _ = run(core, torch.randn(3, B, IN, dtype=torch.float64), state)
    assert hs.dtype == torch.float64 and torch.isfinite(hs).all()
    on_meta = make(name).to("meta").initial_state(B)
    assert {v.device.type for v in on_meta.values()} == {"meta"}
    assert {v.device.type for v in make(name).initial_state(B, "meta").values()} == {"meta"}
