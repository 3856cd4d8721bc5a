"""The policy: act / evaluate_sequence / ponder over every core, halting mode and think input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file, save_file
from torch import distributions as D
from torch import nn

from agent.cores import CORES, CoreConfig
from agent.interfaces import MemoryTool
from agent.policy import Decisions, MindloopPolicy, PolicyConfig, StepInfo
from agent.state import State
from agent.think import HALTING, THINK_INPUTS, ThinkConfig

OBS, B, K, V, MUSCLES = 6, 5, 3, 7, 4
N_TOK, TOK = 4, 5  # frame tokens for the attend think input
ACTION_SPACE = spaces.Dict(
    muscles=spaces.Box(0.0, 1.0, (MUSCLES,), dtype="float32"), text=spaces.Discrete(V)
)


class FakeMemory(nn.Module):
    """A one-slot scratchpad following the MemoryTool protocol: set stores a projection of h,
    get copies the slot into the read buffer the core sees. Counts apply calls per env."""

    read_dim = 3

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.ops = nn.Linear(hidden_dim, 3)
        self.write = nn.Linear(hidden_dim, self.read_dim)

    def initial_state(self, batch: int, device=None) -> State:
        zeros = torch.zeros(batch, self.read_dim, device=device)
        return {"mem/slot": zeros, "mem/read": zeros.clone(), "mem/calls": zeros[:, 0].clone()}

    def reset(self, state: State, episode_start: torch.Tensor) -> State:
        keep = ~episode_start.bool()
        return {k: v * keep.view(-1, *[1] * (v.dim() - 1)) for k, v in state.items()}

    def read(self, state: State) -> torch.Tensor:
        return state["mem/read"]

    def op_distribution(self, h: torch.Tensor) -> D.Distribution:
        return D.Categorical(logits=self.ops(h))

    def apply(self, h, op, state):
        is_set, is_get = (op == 1)[:, None], (op == 2)[:, None]
        slot = torch.where(is_set, torch.tanh(self.write(h)), state["mem/slot"])
        read = torch.where(is_get, state["mem/slot"], state["mem/read"])
        new = {"mem/slot": slot, "mem/read": read, "mem/calls": state["mem/calls"] + 1}
        return new, {"hit": (op == 2).float(), "calls": new["mem/calls"]}


def make_policy(core="gru", halting="sampled", think_input="token", k_max=K, memory=False, seed=0):
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        core=CoreConfig(name=core, hidden_dim=12, num_heads=2, max_context=32),
        think=ThinkConfig(k_max=k_max, halting=halting, think_input=think_input),
    )
    mem = FakeMemory(12) if memory else None
    policy = MindloopPolicy(OBS, ACTION_SPACE, cfg, memory=mem, token_dim=TOK)
    # spread the halting head so p(stop) varies with h (it starts at a constant 0.5)
    if hasattr(policy.halting, "head"):  # not fixed halting: it has nothing to decide
        nn.init.normal_(policy.halting.head.weight, std=0.5)
    return policy


def frame_tokens(T=None, seed=0):
    """Frame tokens (B, N_TOK, TOK) or (T, B, N_TOK, TOK); only ``attend`` reads them."""
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(*([T] if T else []), B, N_TOK, TOK, generator=g)


def rollout(policy, T=4, seed=0, deterministic=False, starts=None):
    """act() over T frames; returns obs, initial state, starts, actions, stacked infos."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, B, OBS, generator=g)
    tokens = frame_tokens(T, seed)
    if starts is None:
        starts = torch.rand(T, B, generator=g) < 0.3
        starts[0] = True
    state0 = policy.initial_state(B)
    state, actions, infos = state0, [], []
    with torch.no_grad():
        for t in range(T):
            action, state, info = policy.act(
                obs[t], state, starts[t], deterministic, obs_tokens=tokens[t]
            )
            actions.append(action)
            infos.append(info)
    acts = {k: torch.stack([a[k] for a in actions]) for k in actions[0]}
    return obs, state0, starts, acts, StepInfo.stack(infos), state


VARIANTS = list(itertools.product(CORES.names(), HALTING.names()))


@pytest.mark.parametrize("core, halting", VARIANTS)
def test_act_shapes_bounds_and_finite(core, halting):
    policy = make_policy(core, halting)
    _, _, _, acts, info, state = rollout(policy)
    assert acts["muscles"].shape == (4, B, MUSCLES) and acts["text"].shape == (4, B)
    assert (acts["muscles"] > 0).all() and (acts["muscles"] < 1).all()
    assert ((acts["text"] >= 0) & (acts["text"] < V)).all()
    for t in (info.log_prob, info.entropy, info.value, info.halt_prob):
        assert torch.isfinite(t).all()
    assert info.halt_prob.shape == info.decisions.mem_ops.shape == (4, B, K + 1)
    assert state.keys() == policy.initial_state(1).keys()


@pytest.mark.parametrize("core, halting", VARIANTS)
def test_think_steps_bounded_vary_when_sampled_fixed_when_deterministic(core, halting):
    policy = make_policy(core, halting)
    obs = torch.randn(B, OBS)
    start = torch.ones(B, dtype=torch.bool)
    with torch.no_grad():
        sampled = torch.stack([policy.act(obs, None, start)[2].think_steps for _ in range(30)])
        fixed = torch.stack(
            [policy.act(obs, None, start, deterministic=True)[2].think_steps for _ in range(5)]
        )
    assert sampled.min() >= 0 and sampled.max() <= K
    if halting == "fixed":  # nothing is sampled: always k_max
        assert (sampled == K).all()
    else:
        assert len(sampled.unique()) > 1  # the stop is sampled: the count varies between runs
    assert (fixed == fixed[0]).all()


def test_k_max_zero_disables_thinking():
    policy = make_policy(k_max=0)
    *_, info, _ = rollout(policy)
    assert (info.think_steps == 0).all() and info.halt_prob.shape[-1] == 1
    assert (info.log_prob_halt == 0).all()


def test_halting_record_and_probabilities_are_consistent():
    policy = make_policy()
    *_, info, _ = rollout(policy, T=6)
    halt, steps = info.decisions.halt, info.think_steps
    assert ((halt == 1).sum(-1) == 1).all()  # exactly one stop per frame
    assert torch.equal((halt == 1).float().argmax(-1), steps)
    assert (info.halt_prob[halt == -1] == 0).all()  # padding after the stop
    assert (info.halt_prob[halt >= 0] > 0).all()  # p(stop) wherever a decision was made
    reached_k = steps == K
    assert (info.halt_prob[..., K][reached_k] == 1).all()  # the stop at k_max is forced


@pytest.mark.parametrize("core", CORES.names())
def test_episode_start_resets_only_flagged_envs(core):
    policy = make_policy(core)
    *_, state = rollout(policy, T=3)
    obs = torch.randn(B, OBS)
    flags = torch.tensor([True, False, True, False, False])
    with torch.no_grad():
        _, _, reset = policy.act(obs, state, flags, deterministic=True)
        _, _, kept = policy.act(obs, state, torch.zeros(B, dtype=torch.bool), deterministic=True)
        _, _, fresh = policy.act(obs, None, torch.ones(B, dtype=torch.bool), deterministic=True)
    torch.testing.assert_close(reset.value[flags], fresh.value[flags])
    torch.testing.assert_close(reset.value[~flags], kept.value[~flags])
    assert not torch.allclose(reset.value[flags], kept.value[flags])


@pytest.mark.parametrize(
    "core, halting, think_input, memory",
    [(c, h, "token", False) for c, h in VARIANTS]
    + [(c, "sampled", "adapter", True) for c in CORES.names()]
    + [("gru", "budget", "adapter", True)]
    + [(c, "sampled", "attend", c == "gru") for c in CORES.names()]
    + [("gru", "sampled", "scan", False)],
)
def test_act_and_evaluate_sequence_agree(core, halting, think_input, memory):
    policy = make_policy(core, halting, think_input, memory=memory)
    obs, state0, starts, acts, info, final = rollout(policy, T=5)
    if halting != "fixed":  # a real test: envs halt at different steps
        assert info.think_steps.float().std() > 0
    out, replay_final = policy.evaluate_sequence(
        obs, state0, starts, acts, info.decisions, obs_tokens=frame_tokens(5)
    )
    for name in (
        "log_prob_action",
        "log_prob_halt",
        "log_prob_memory",
        "entropy_action",
        "entropy_halt",
        "entropy_memory",
        "value",
        "halt_prob",
    ):
        torch.testing.assert_close(getattr(out, name), getattr(info, name), msg=name)
    assert torch.equal(out.think_steps, info.think_steps)
    assert torch.equal(out.decisions.mem_ops, info.decisions.mem_ops)
    for key in final:
        torch.testing.assert_close(replay_final[key], final[key], msg=key)


@pytest.mark.parametrize("core", CORES.names())
@pytest.mark.parametrize("think_input", THINK_INPUTS.names())
def test_gradients_reach_the_core_through_think_steps(core, think_input):
    """Replaying K think steps, the action loss reaches the core, the think input (used only
    on think steps) and, through BPTT, the first frame's observation."""
    policy = make_policy(core, think_input=think_input)
    T = 2
    obs = torch.randn(T, B, OBS, requires_grad=True)
    tokens = frame_tokens(T).requires_grad_()
    starts = torch.zeros(T, B, dtype=torch.bool)
    decisions = Decisions(think_steps=torch.full((T, B), K), mem_ops=torch.full((T, B, K + 1), -1))
    actions = {"muscles": torch.full((T, B, MUSCLES), 0.3), "text": torch.zeros(T, B).long()}
    out, _ = policy.evaluate_sequence(
        obs, policy.initial_state(B), starts, actions, decisions, obs_tokens=tokens
    )
    (-out.log_prob_action[-1].sum()).backward()
    for name, p in itertools.chain(
        policy.core.named_parameters(), policy.think_input.named_parameters()
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert obs.grad[0].abs().sum() > 0
    # attend and scan re-read the frame: its tokens get gradients, the other inputs ignore them
    assert (tokens.grad is not None) == (think_input in ("attend", "scan"))


def test_halting_log_prob_trains_the_halting_head():
    policy = make_policy()
    obs, state0, starts, acts, info, _ = rollout(policy)
    out, _ = policy.evaluate_sequence(obs, state0, starts, acts, info.decisions)
    out.log_prob_halt.sum().backward()
    assert policy.halting.head.weight.grad.abs().sum() > 0


def test_memory_path_reads_records_and_scores_ops():
    policy = make_policy(memory=True)
    assert policy.core.input_dim == OBS + FakeMemory.read_dim
    assert isinstance(policy.memory, MemoryTool)
    _, _, starts, _, info, state = rollout(policy, T=6)
    ops, steps = info.decisions.mem_ops, info.think_steps
    ran = torch.arange(K + 1) <= steps[..., None]  # (T, B, K+1) steps that ran
    assert ((ops >= 0) == ran).all()  # one op per core step, -1 padding after the halt
    assert set(ops[ran].unique().tolist()) <= {0, 1, 2}
    assert (info.log_prob_memory < 0).all() and (info.entropy_memory > 0).all()
    # apply ran once per core step (masked for halted envs); memory.reset cleared the count
    last_start = torch.stack([torch.nonzero(starts[:, b]).max() for b in range(B)])
    expected_calls = torch.stack([(steps[last_start[b] :, b] + 1).sum() for b in range(B)]).float()
    torch.testing.assert_close(state["mem/calls"], expected_calls)


@pytest.mark.parametrize("halting", HALTING.names())
def test_ponder_halting_distribution_and_expected_loss(halting):
    policy = make_policy("gru", halting, memory=True)
    obs = torch.randn(B, OBS)
    start = torch.ones(B, dtype=torch.bool)
    out, state = policy.ponder(obs, None, start)
    assert out.hidden.shape == (B, K + 1, 12) and out.halting.shape == (B, K + 1)
    torch.testing.assert_close(out.halting.sum(-1), torch.ones(B))
    assert ((out.think_steps >= 0) & (out.think_steps <= K)).all()
    # per-step NLL of a target answer, expected under p_n, plus the geometric prior KL
    target = torch.zeros(B, dtype=torch.long)
    nll = torch.stack(
        [
            -policy.action_distribution(out.hidden[:, n]).parts["text"].log_prob(target)
            for n in range(K + 1)
        ],
        dim=1,
    )
    loss = (out.expected(nll) + 0.01 * out.kl_to_geometric(0.3)).mean()
    loss.backward()
    if halting == "fixed":  # every frame thinks k_max steps; the loss is the last step's
        assert (out.think_steps == K).all()
        torch.testing.assert_close(out.expected(nll), nll[:, K])
    else:
        assert policy.halting.head.weight.grad.abs().sum() > 0
    assert state.keys() == policy.initial_state(1).keys()


def test_ponder_deterministic_steps_match_act():
    policy = make_policy()
    obs = torch.randn(B, OBS)
    start = torch.ones(B, dtype=torch.bool)
    with torch.no_grad():
        out, pstate = policy.ponder(obs, None, start, deterministic=True)
        _, astate, info = policy.act(obs, None, start, deterministic=True)
    assert torch.equal(out.think_steps, info.think_steps)
    torch.testing.assert_close(pstate["core/h"], astate["core/h"])


@pytest.mark.parametrize("core, halting", VARIANTS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_ponder_with_k_max_zero_answers_at_the_observe_step(core, halting, deterministic):
    policy = make_policy(core, halting, k_max=0)
    obs, start = torch.randn(B, OBS), torch.ones(B, dtype=torch.bool)
    with torch.no_grad():
        out, pstate = policy.ponder(obs, None, start, deterministic=deterministic)
        _, astate, info = policy.act(obs, None, start, deterministic=deterministic)
    assert (out.think_steps == 0).all() and (info.think_steps == 0).all()
    assert out.halting.shape == (B, 1)
    torch.testing.assert_close(out.halting, torch.ones(B, 1))
    for key in astate:
        torch.testing.assert_close(pstate[key], astate[key], msg=key)


@pytest.mark.parametrize("halting", HALTING.names())
def test_ponder_with_an_inplace_kv_cache_matches_the_functional_one(halting):
    """ponder keeps the state after every think step: a transformer's in-place KV cache
    (inference only, CoreConfig.inplace_kv) must not make them all hold the last step's."""
    outs = []
    for inplace in (False, True):
        torch.manual_seed(0)
        cfg = PolicyConfig(
            core=CoreConfig(
                name="transformer", hidden_dim=12, num_heads=2, max_context=5, inplace_kv=inplace
            ),
            think=ThinkConfig(k_max=K, halting=halting),
        )
        policy = MindloopPolicy(OBS, ACTION_SPACE, cfg)
        if hasattr(policy.halting, "head"):
            nn.init.normal_(policy.halting.head.weight, std=1.0)
        g, state, hidden = torch.Generator().manual_seed(0), None, []
        with torch.no_grad():
            for t in range(6):  # the 5-step window wraps
                obs = torch.randn(B, OBS, generator=g)
                out, state = policy.ponder(obs, state, torch.full((B,), t == 0), True)
                hidden.append(out.hidden)
        outs.append(torch.stack(hidden))
        assert policy.core.inplace_kv == inplace
    torch.testing.assert_close(outs[1], outs[0])


def test_ponder_sequence_shapes():
    policy = make_policy()
    obs = torch.randn(3, B, OBS)
    out, _ = policy.ponder_sequence(obs, policy.initial_state(B), torch.zeros(3, B))
    assert out.halting.shape == (3, B, K + 1) and out.hidden.shape == (3, B, K + 1, 12)


@pytest.mark.parametrize("core", CORES.names())
def test_policy_safetensors_round_trip(core, tmp_path):
    policy = make_policy(core, memory=True, seed=1)
    save_file(policy.state_dict(), tmp_path / "model.safetensors")
    other = make_policy(core, memory=True, seed=2)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    obs = torch.randn(B, OBS)
    start = torch.ones(B, dtype=torch.bool)
    with torch.no_grad():
        a1, _, i1 = policy.act(obs, None, start, deterministic=True)
        a2, _, i2 = other.act(obs, None, start, deterministic=True)
    torch.testing.assert_close(a1["muscles"], a2["muscles"])
    torch.testing.assert_close(i1.value, i2.value)


@pytest.mark.parametrize("core", CORES.names())
def test_policy_follows_its_dtype_and_device_and_converts_inputs(core):
    """``policy.double()`` acts, replays and ponders in float64 with a state made by
    ``initial_state(batch)``, whatever the core and with the real memory; float32, float64 and
    numpy embeddings are converted to the policy's dtype (as SB3's predict does)."""
    memory_mod = pytest.importorskip("agent.memory")

    def build():
        torch.manual_seed(0)
        mem_cfg = memory_mod.MemoryConfig(slot_dim=12, num_slots=2, code_dim=4, key_dim=4)
        cfg = PolicyConfig(
            core=CoreConfig(name=core, hidden_dim=12, num_heads=2, max_context=32),
            think=ThinkConfig(k_max=K, think_input="adapter"),
        )
        return MindloopPolicy(OBS, ACTION_SPACE, cfg, memory_mod.build_memory(mem_cfg, 12))

    policy = build().double()
    obs, state0, starts, acts, info, _ = rollout(policy, T=3)  # float32 embeddings in
    assert info.log_prob.dtype == torch.float64 and acts["muscles"].dtype == torch.float64
    assert state0["core/k0" if core == "transformer" else "core/h"].dtype == torch.float64
    out, _ = policy.evaluate_sequence(obs.double(), state0, starts, acts, info.decisions)
    torch.testing.assert_close(out.log_prob, info.log_prob)
    pout, _ = policy.ponder(obs[0].numpy(), None, starts[0])
    assert pout.halting.dtype == torch.float64
    with torch.no_grad():
        a64, _, _ = policy.act(obs[0].double(), None, starts[0], deterministic=True)
        a_np, _, _ = policy.act(obs[0].numpy(), None, starts[0], deterministic=True)
    torch.testing.assert_close(a64["muscles"], a_np["muscles"])
    meta_state = build().to("meta").initial_state(B)  # "meta" stands in for a GPU
    assert {v.device.type for v in meta_state.values()} == {"meta"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("core", CORES.names())
def test_half_precision_policy_samples_and_replays(core, dtype):
    """A policy cast to bfloat16/float16 acts and replays: the Beta head's distribution runs
    in float32 (torch samples Beta only in float32/64), so actions stay inside the bounds and
    the replayed log-probs are those of the rollout."""
    policy = make_policy(core).to(dtype)
    obs, state0, starts, acts, info, _ = rollout(policy, T=3)
    assert acts["muscles"].dtype == torch.float32 and info.log_prob.dtype == torch.float32
    assert (acts["muscles"] > 0).all() and (acts["muscles"] < 1).all()
    assert torch.isfinite(info.log_prob).all()
    with torch.no_grad():
        out, _ = policy.evaluate_sequence(
            obs, state0, starts, acts, info.decisions, obs_tokens=frame_tokens(3, 0)
        )
    torch.testing.assert_close(out.log_prob, info.log_prob)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_beta_head_bounds_keep_their_precision_in_any_dtype(dtype):
    """The bounds stay at least float32 when the head is cast: in bfloat16 [-0.3, 0.7] had
    become [-0.30078, 0.69922] and samples near a bound fell outside the Box."""
    from agent.heads import BetaHead

    space = spaces.Box(-0.3, 0.7, (4,), np.float32)
    torch.manual_seed(0)
    head = BetaHead(space, 8).to(dtype)
    assert head.low.dtype == torch.promote_types(dtype, torch.float32)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor([-8.0] * 4 + [8.0] * 4))  # alpha ~1, beta ~9e3
        dist = head(torch.zeros(20_000, 8, dtype=dtype))
        actions = dist.sample()
    assert space.contains(actions[0].numpy().astype(np.float32))
    assert (actions >= -0.3).all() and (actions <= 0.7).all()
    assert actions.min() < -0.2999  # hugging the lower bound, so a shifted bound shows


def test_beta_head_deterministic_action_is_the_density_peak():
    """The deterministic action is the Beta's mode: a resting muscle (alpha -> 1) gets ~0, where
    the mean kept a tone of 1 / (1 + beta); a skewed Beta's action is its density peak; a
    nearly flat one stays near the centre of the bounds instead of jumping to one of them."""
    from agent.heads import BetaHead

    space = spaces.Box(-1.0, 3.0, (4,), np.float32)  # range 4
    head = BetaHead(space, 4)

    def raw(x: float) -> float:  # softplus^-1: the param giving alpha or beta = 1 + x
        return float(np.log(np.expm1(x)))

    # per dimension (alpha, beta): resting (~1, 31), skewed (4, 2), nearly flat both ways
    alpha = torch.tensor([-12.0, raw(3.0), raw(1e-3), raw(1e-6)])
    beta = torch.tensor([30.0, raw(1.0), raw(1e-6), raw(1e-3)])
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.cat([alpha, beta]))
        dist = head(torch.zeros(1, 4))
    action = dist.mode[0]
    assert float(action[0]) - (-1.0) < 4 * 1e-3  # at the lower bound: rest
    assert float(dist.base.mean[0, 0]) > 0.03  # what the mean gave: a 3% tone
    # skewed Beta(4, 2): its density peaks 3/4 of the way (checked on a grid)
    grid = torch.linspace(0.01, 0.99, 99)
    peak = float(grid[D.Beta(torch.tensor(4.0), torch.tensor(2.0)).log_prob(grid).argmax()])
    assert abs(peak - 0.75) < 0.011
    assert abs(float(action[1]) - (-1.0 + 4.0 * 0.75)) < 4 * 2e-3
    # nearly flat: the plain mode would be 0.999 / 0.001 of the way; these stay central
    assert abs(float(action[2]) - 1.0) < 4 * 0.05 and abs(float(action[3]) - 1.0) < 4 * 0.05


def test_sampling_is_reproducible_with_a_seed():
    policy = make_policy()
    obs, start = torch.randn(B, OBS), torch.ones(B, dtype=torch.bool)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        with torch.no_grad():
            a, _, info = policy.act(obs, None, start)
        runs.append((a["text"], info.think_steps))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_config_round_trips_through_a_dict():
    cfg = PolicyConfig(core=CoreConfig(name="lstm"), think=ThinkConfig(k_max=2, halting="budget"))
    assert PolicyConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: PolicyConfig(core=CoreConfig(name="rwkv")), "unknown core 'rwkv'; available:"),
        (lambda: PolicyConfig(think=ThinkConfig(k_max=-2)), "k_max must be >= 0"),
        (lambda: MindloopPolicy(OBS, spaces.Discrete(3)), "must be a gymnasium.spaces.Dict"),
        (
            lambda: MindloopPolicy(OBS, spaces.Dict(m=spaces.Box(-float("inf"), 1.0, (2,)))),
            "needs finite bounds",
        ),
        (
            lambda: MindloopPolicy(
                OBS, spaces.Dict(m=spaces.Box(0.0, np.array([1.0, 0.0], np.float32)))
            ),
            r"needs high > low in every dimension for the Beta head, got low=0.0 high=0.0 at flat",
        ),
        (
            lambda: MindloopPolicy(OBS, spaces.Dict(m=spaces.MultiBinary(2))),
            "no action head for 'm': MultiBinary",
        ),
        (lambda: make_policy().act(torch.zeros(B, OBS + 1), None, torch.ones(B)), "obs_dim=6"),
        (
            lambda: make_policy().act(torch.zeros(B, OBS), None, torch.ones(B + 1)),
            rf"episode_start must hold one flag per env \({B} in the state\), got shape \({B + 1},\)",
        ),
        (
            lambda: make_policy().act(torch.zeros(B, OBS), make_policy().initial_state(2), [0] * B),
            f"state holds 2 envs but obs_embedding has {B}",
        ),
        (
            lambda: make_policy(memory=True).ponder(
                torch.zeros(B, OBS), make_policy().initial_state(B), torch.zeros(B)
            ),
            "state lacks mem/slot, mem/read, mem/calls: pass the state this policy returned",
        ),
        (
            lambda: make_policy().evaluate_sequence(
                torch.zeros(2, B, OBS),
                make_policy().initial_state(B - 1),
                torch.zeros(2, B),
                {},
                Decisions(torch.zeros(2, B, dtype=torch.long), torch.zeros(2, B, K + 1)),
            ),
            f"state holds {B - 1} envs but obs_embedding has {B}",
        ),
    ],
)
def test_bad_input_fails_with_one_line(build, match):
    with pytest.raises(ValueError, match=match) as err:
        build()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("core", ["gru", "transformer"])
def test_real_two_tier_memory_plugs_in(core):
    """Integration with agent/memory.py (issue 5): act and the replay agree with it too."""
    memory_mod = pytest.importorskip("agent.memory")
    torch.manual_seed(0)
    memory = memory_mod.build_memory(
        memory_mod.MemoryConfig(slot_dim=12, num_slots=2, code_dim=4, key_dim=4, capacity=8), 12
    )
    cfg = PolicyConfig(
        core=CoreConfig(name=core, hidden_dim=12, num_heads=2, max_context=32),
        think=ThinkConfig(k_max=K),
    )
    policy = MindloopPolicy(OBS, ACTION_SPACE, cfg, memory=memory)
    assert policy.core.input_dim == OBS + memory.read_dim
    obs, state0, starts, acts, info, final = rollout(policy, T=5)
    assert (info.decisions.mem_ops[..., 0] >= 0).all()
    out, replay_final = policy.evaluate_sequence(obs, state0, starts, acts, info.decisions)
    torch.testing.assert_close(out.log_prob, info.log_prob)
    torch.testing.assert_close(out.value, info.value)
    for key in final:
        torch.testing.assert_close(replay_final[key], final[key], msg=key)


def test_attend_needs_the_frame_tokens_only_when_it_thinks():
    policy = make_policy(think_input="attend")
    obs, start = torch.randn(B, OBS), torch.ones(B, dtype=torch.bool)
    with pytest.raises(ValueError, match="pass obs_tokens") as err:
        policy.act(obs, None, start)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pass obs_tokens"):
        policy.ponder(obs, None, start)
    no_think = make_policy(think_input="attend", k_max=0)
    no_think.act(obs, None, start)  # no think step reads the tokens: none needed


@pytest.mark.parametrize("think_input", ["attend", "scan"])
@pytest.mark.parametrize(
    "tokens, match",
    [(None, "pass obs_tokens"), (torch.zeros(B, N_TOK, TOK + 1), "obs_tokens must be")],
)
def test_missing_or_wrong_tokens_fail_even_when_no_env_thinks(think_input, tokens, match):
    """The error must not depend on whether some env happened to go on thinking: here every
    env stops at its observe step (p(stop) >= the threshold), in act and in the replay."""
    torch.manual_seed(0)
    cfg = PolicyConfig(
        core=CoreConfig(hidden_dim=12),
        think=ThinkConfig(k_max=K, think_input=think_input, init_halt_prob=0.99),
    )
    policy = MindloopPolicy(OBS, ACTION_SPACE, cfg, token_dim=TOK)
    obs, start = torch.randn(B, OBS), torch.ones(B, dtype=torch.bool)
    with torch.no_grad():
        _, _, info = policy.act(obs, None, start, deterministic=True, obs_tokens=frame_tokens())
    assert (info.think_steps == 0).all()
    with pytest.raises(ValueError, match=match) as err:
        policy.act(obs, None, start, deterministic=True, obs_tokens=tokens)
    assert "\n" not in str(err.value)
    seq_tokens = None if tokens is None else tokens[None]
    with pytest.raises(ValueError, match=match):
        policy.evaluate_sequence(
            obs[None], policy.initial_state(B), start[None], {}, info.decisions, seq_tokens
        )


def test_attend_ponder_matches_act_and_reads_the_tokens():
    policy = make_policy(think_input="attend")
    obs, start, tokens = torch.randn(B, OBS), torch.ones(B, dtype=torch.bool), frame_tokens()
    with torch.no_grad():
        out, pstate = policy.ponder(obs, None, start, deterministic=True, obs_tokens=tokens)
        _, astate, info = policy.act(obs, None, start, deterministic=True, obs_tokens=tokens)
        other, _ = policy.ponder(obs, None, start, deterministic=True, obs_tokens=-tokens)
    assert torch.equal(out.think_steps, info.think_steps)
    torch.testing.assert_close(pstate["core/h"], astate["core/h"])
    torch.testing.assert_close(out.hidden[:, 0], other.hidden[:, 0])  # the observe step
    assert not torch.allclose(out.hidden[:, 1:], other.hidden[:, 1:])  # think steps re-read
    seq, _ = policy.ponder_sequence(
        obs[None], policy.initial_state(B), start[None], True, obs_tokens=tokens[None]
    )
    torch.testing.assert_close(seq.hidden[0], out.hidden)
