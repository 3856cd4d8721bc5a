"""The two-tier memory inside the real policy: every core, act vs. BPTT replay, info stats."""

from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from agent.cores import CORES, CoreConfig
from agent.memory import MemoryConfig, build_memory
from agent.policy import MindloopPolicy, PolicyConfig, StepInfo
from agent.think import ThinkConfig

OBS, B, K, HIDDEN = 6, 4, 2, 16
ACTION_SPACE = spaces.Dict(text=spaces.Discrete(5))


def make_policy(core: str, seed: int = 0, **mem_kw) -> MindloopPolicy:
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        core=CoreConfig(name=core, hidden_dim=HIDDEN, num_heads=2, max_context=16),
        think=ThinkConfig(k_max=K),
    )
    # uniform op logits (unless given) so that set and get are both sampled in a short rollout
    mem_cfg = dict(
        slot_dim=HIDDEN,
        num_slots=2,
        code_dim=4,
        key_dim=4,
        capacity=5,
        get_topk=2,
        op_init_logits=(0.0, 0.0, 0.0),
    )
    mem_cfg.update(mem_kw)
    memory = build_memory(MemoryConfig(**mem_cfg), HIDDEN)
    return MindloopPolicy(OBS, ACTION_SPACE, cfg, memory=memory)


def rollout(policy: MindloopPolicy, T: int = 6):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(T, B, OBS, generator=g)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = True  # env 1 starts a new episode mid-rollout
    state0 = policy.initial_state(B)
    state, actions, infos = state0, [], []
    with torch.no_grad():
        for t in range(T):
            action, state, info = policy.act(obs[t], state, starts[t])
            actions.append(action)
            infos.append(info)
    acts = {k: torch.stack([a[k] for a in actions]) for k in actions[0]}
    return obs, state0, starts, acts, StepInfo.stack(infos), state


@pytest.mark.parametrize("core", CORES.names())
def test_policy_with_two_tier_memory_replays_exactly_and_trains_ops(core):
    policy = make_policy(core)
    obs, state0, starts, acts, info, final = rollout(policy)
    ops = info.decisions.mem_ops
    assert (ops == 1).any() and (ops == 2).any()  # both tool calls happened
    stats = info.memory_stats
    assert {"hit", "occupancy", "store_bytes", "cost", "codec_loss"} <= stats.keys()
    assert bool((stats["occupancy"] <= 5).all())

    out, replay_final = policy.evaluate_sequence(obs, state0, starts, acts, info.decisions)
    torch.testing.assert_close(out.log_prob_memory, info.log_prob_memory)
    torch.testing.assert_close(out.log_prob_action, info.log_prob_action)
    for key in final:  # the store (int8 codes, keys, stamps) replays bit for bit
        torch.testing.assert_close(replay_final[key], final[key], msg=key)

    codec_loss = out.memory_stats["codec_loss"].sum()
    (-(out.log_prob_memory.sum() + out.log_prob_action.sum()) + codec_loss).backward()
    memory = policy.memory
    assert memory.op_head.weight.grad.abs().sum() > 0  # RL signal reaches "when to call"
    assert memory.codec.encoder[0].weight.grad.abs().sum() > 0  # the auxiliary codec loss
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_persistent_store_survives_the_policy_reset():
    policy = make_policy("gru", persist_store=True)
    *_, final = rollout(policy)
    before = final["mem/store_count"]
    assert (before > 0).any()
    state = policy.reset_state(final, torch.ones(B, dtype=torch.bool))
    assert torch.equal(state["mem/store_count"], before)
    assert state["mem/slots"].abs().sum() == 0


def test_envs_that_stopped_thinking_make_no_memory_call():
    # a policy that sets at nearly every step: a stopped env's call would show as a set
    policy = make_policy("gru", op_init_logits=(-8.0, 8.0, -8.0))
    g = torch.Generator().manual_seed(1)
    state = policy.initial_state(B)
    stopped_calls = 0
    with torch.no_grad(), policy.memory.tracing() as trace:
        for t in range(8):
            before = len(trace)
            _, state, info = policy.act(
                torch.randn(B, OBS, generator=g), state, torch.full((B,), t == 0)
            )
            ops = info.decisions.mem_ops  # (B, K+1), -1 where the env took no step
            ran = int((ops >= 0).any(0).sum())  # steps some env took: one apply call each
            traced = torch.stack([op for _, op in trace[before:]], dim=1)  # (B, ran)
            assert traced.shape == (B, ran)
            assert torch.equal(traced, ops[:, :ran].clamp_min(0))  # stopped envs: none (0)
            stopped_calls += int((ops[:, :ran] < 0).sum())
    assert stopped_calls > 0  # some env stopped while another thought on
    assert int(state["mem/store_count"].max()) <= 5
