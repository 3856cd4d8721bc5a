"""Think inputs, halting modes and the PonderNet maths (agent/think.py)."""

from __future__ import annotations

import pytest
import torch

from agent.think import (
    HALTING,
    THINK_INPUTS,
    BudgetHalting,
    Chooser,
    ThinkConfig,
    build_halting,
    build_think_input,
    geometric_prior,
    halting_distribution,
    kl_to_geometric,
)

D, H, B, N, TOK = 6, 8, 5, 7, 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_max": -1}, "k_max must be >= 0"),
        (
            {"think_input": "words"},
            "unknown think_input 'words'; available: adapter, attend, scan, token",
        ),
        ({"halting": "coin"}, "unknown halting 'coin'; available: budget, fixed, sampled"),
        ({"step_encoding": "rope"}, "unknown step_encoding 'rope'"),
        ({"init_halt_prob": 1.0}, "init_halt_prob must be in"),
        ({"attend_heads": 0}, "attend_heads must be >= 1"),
        ({"scan_group": 0}, "scan_group must be >= 1"),
    ],
)
def test_bad_think_config_fails_with_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        ThinkConfig(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", THINK_INPUTS.names())
@pytest.mark.parametrize("step_encoding", ["none", "learned", "sinusoidal"])
def test_think_inputs_shape_and_step_encoding(name, step_encoding):
    torch.manual_seed(0)
    cfg = ThinkConfig(k_max=3, think_input=name, step_encoding=step_encoding)
    think = build_think_input(cfg, D, H, token_dim=TOK)
    h, x_obs = torch.randn(B, H), torch.randn(B, D)
    memo = think.prepare(torch.randn(B, N, TOK))
    assert (memo is not None) == think.needs_tokens
    x1, x2 = think(h, 1, x_obs, memo), think(h, 2, x_obs, memo)
    assert x1.shape == (B, D) and torch.isfinite(x1).all()
    # steps differ by their encoding, and a scan's also by the tokens each step reads
    assert torch.allclose(x1, x2) == (step_encoding == "none" and name != "scan")


def test_adapter_depends_on_h_and_token_does_not():
    torch.manual_seed(0)
    x_obs = torch.randn(B, D)
    token = build_think_input(ThinkConfig(think_input="token"), D, H)
    adapter = build_think_input(ThinkConfig(think_input="adapter"), D, H)
    h1, h2 = torch.randn(B, H), torch.randn(B, H)
    assert torch.equal(token(h1, 1, x_obs), token(h2, 1, x_obs))
    assert not torch.allclose(adapter(h1, 1, x_obs), adapter(h2, 1, x_obs))


def test_reinject_obs_adds_the_observation():
    torch.manual_seed(0)
    plain = build_think_input(ThinkConfig(), D, H)
    refed = build_think_input(ThinkConfig(reinject_obs=True), D, H)
    refed.load_state_dict(plain.state_dict())
    h, x_obs = torch.randn(B, H), torch.randn(B, D)
    torch.testing.assert_close(refed(h, 1, x_obs), plain(h, 1, x_obs) + x_obs)


def test_reinjecting_adapter_sees_the_observation_nonlinearly():
    torch.manual_seed(0)
    adapter = build_think_input(ThinkConfig(think_input="adapter", reinject_obs=True), D, H)
    h, x1, x2 = torch.randn(B, H), torch.randn(B, D), torch.randn(B, D)
    # not just additive: the MLP's output (before the residual x_obs) depends on x_obs
    assert not torch.allclose(adapter(h, 1, x1) - x1, adapter(h, 1, x2) - x2)


def test_halting_distribution_is_pondernet_eq():
    lam = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.3]])
    p = halting_distribution(lam)
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.25, 0.125, 0.125]))
    torch.testing.assert_close(p[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(p.sum(-1), torch.ones(2))


def test_geometric_prior_and_kl():
    prior = geometric_prior(0.2, 6)
    assert prior.shape == (7,) and torch.isclose(prior.sum(), torch.tensor(1.0))
    assert torch.all(prior[1:] < prior[:-1])
    assert kl_to_geometric(prior[None], 0.2).abs().max() < 1e-6
    assert kl_to_geometric(torch.eye(7)[None, 6], 0.2) > 0
    with pytest.raises(ValueError, match="lambda_p must be in"):
        geometric_prior(0.0, 3)


def test_budget_hazard_reproduces_its_distribution():
    torch.manual_seed(0)
    halting = BudgetHalting(H, ThinkConfig(k_max=4, halting="budget"))
    torch.nn.init.normal_(halting.head.weight)
    h0 = torch.randn(B, H)
    ctx, _, _ = halting.begin(h0, Chooser("sample"), None)
    probs = halting.budget_distribution(h0).probs
    torch.testing.assert_close(halting_distribution(ctx["hazard"][:, :-1]), probs)


@pytest.mark.parametrize("name", HALTING.names())
def test_halting_log_prob_matches_sampled_steps(name):
    """The log-prob of the halting decisions over a frame equals log p_{n*} (the halting
    distribution at the step where the env stopped), for both modes."""
    torch.manual_seed(1)
    K = 3
    halting = build_halting(ThinkConfig(k_max=K, halting=name), H)
    if hasattr(halting, "head"):  # fixed: nothing to decide
        torch.nn.init.normal_(halting.head.weight)
    h = torch.randn(B, H)  # the same h at every step keeps p_n computable in closed form
    choose = Chooser("sample")
    ctx, log_prob, _ = halting.begin(h, choose, None)
    active = torch.ones(B, dtype=torch.bool)
    steps = torch.zeros(B, dtype=torch.long)
    lambdas = []
    for k in range(1, K + 1):
        stop, p, lp, _ = halting.decide(k, h, ctx, choose, None)
        lambdas.append(p)
        log_prob = log_prob + torch.where(active, lp, 0.0)
        active = active & ~stop
        steps = steps + active.long()
    p_n = halting.distribution(h, torch.stack(lambdas, -1))
    expected = p_n.gather(1, steps[:, None]).squeeze(1).log()
    torch.testing.assert_close(log_prob, expected, rtol=1e-4, atol=1e-5)


def test_halting_distribution_without_think_steps():
    torch.testing.assert_close(halting_distribution(torch.zeros(2, 0)), torch.ones(2, 1))


def test_attend_reads_the_tokens_of_its_own_row():
    """The glimpse depends on the frame's tokens (row by row) and on h through its query."""
    torch.manual_seed(0)
    think = build_think_input(ThinkConfig(think_input="attend", attend_heads=2), D, H, TOK)
    h, x_obs, tokens = torch.randn(B, H), torch.randn(B, D), torch.randn(B, N, TOK)
    x = think(h, 1, x_obs, think.prepare(tokens))
    changed = tokens.clone()
    changed[0] = torch.randn(N, TOK)
    x_changed = think(h, 1, x_obs, think.prepare(changed))
    assert not torch.allclose(x[0], x_changed[0])
    torch.testing.assert_close(x[1:], x_changed[1:])
    # the query comes from h: another h reads another glimpse of the same tokens
    assert not torch.allclose(think(torch.randn(B, H), 1, x_obs, think.prepare(tokens)), x)


def test_attend_token_order_matters_only_through_the_tokens():
    """Attention is a set operation: permuting the tokens leaves the read unchanged (the
    position of an entry has to be in its token, e.g. a position embedding)."""
    torch.manual_seed(0)
    think = build_think_input(ThinkConfig(think_input="attend"), D, H, TOK)
    h, x_obs, tokens = torch.randn(B, H), torch.randn(B, D), torch.randn(B, N, TOK)
    perm = torch.randperm(N)
    torch.testing.assert_close(
        think(h, 1, x_obs, think.prepare(tokens)),
        think(h, 1, x_obs, think.prepare(tokens[:, perm])),
    )


@pytest.mark.parametrize("mode", ["attend", "scan"])
@pytest.mark.parametrize(
    "tokens, match",
    [
        (None, "think_input='MODE' reads the frame's tokens: pass obs_tokens"),
        (torch.zeros(B, N, TOK + 1), r"obs_tokens must be \(B, N, token_dim=3\)"),
        (torch.zeros(B, TOK), r"obs_tokens must be \(B, N, token_dim=3\)"),
    ],
)
def test_token_reading_inputs_fail_on_bad_tokens_with_one_line(mode, tokens, match):
    match = match.replace("MODE", mode)
    think = build_think_input(ThinkConfig(think_input=mode), D, H, TOK)
    with pytest.raises(ValueError, match=match) as err:
        think.prepare(tokens)
    assert "\n" not in str(err.value)


def test_scan_step_k_reads_the_kth_group_of_tokens():
    """Think step k reads tokens (k-1)*G .. k*G-1 only; past the last token it reads zeros."""
    torch.manual_seed(0)
    think = build_think_input(ThinkConfig(think_input="scan", scan_group=3), D, H, TOK)
    h, x_obs, tokens = torch.randn(B, H), torch.randn(B, D), torch.randn(B, N, TOK)  # N = 7
    changed = tokens.clone()
    changed[:, 4] = torch.randn(B, TOK)  # in the second group (tokens 3..5)
    steps = [think(h, k, x_obs, think.prepare(tokens)) for k in (1, 2, 3, 4)]
    after = [think(h, k, x_obs, think.prepare(changed)) for k in (1, 2, 3, 4)]
    torch.testing.assert_close(steps[0], after[0])
    assert not torch.allclose(steps[1], after[1])
    torch.testing.assert_close(steps[2], after[2])
    # step 4 reads past the 7 tokens: the same as reading a group of zero tokens
    empty = think(h, 1, x_obs, think.prepare(torch.zeros(B, N, TOK)))
    torch.testing.assert_close(steps[3], empty)
