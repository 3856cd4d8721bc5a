"""Behaviour cloning of memory calls: an expert that labels set/get teaches the policy when to
call its memory tool, and what it stores carries a cue across a delay longer than BPTT."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agent.agent import MindloopAgent
from agent.bc import BCTrainer, action_agreement, fit_normalization, forced_ops
from agent.config import AgentConfig, BCConfig, EnvConfig
from agent.cores import CoreConfig
from agent.demonstrations import SequenceSampler, collect_episodes, expert_memory_ops
from agent.memory import OP_GET, OP_NONE, OP_SET, MemoryConfig
from agent.think import ThinkConfig
from agent.vector import env_seeds, every_env_has, make_vector_env
from encoders.fusion import FusedEncoderConfig

CUES = 4


class TinyRecallEnv(gym.Env):
    """A cue token (one-hot) for ``cue_steps``, ``delay`` blank steps with noise, a query
    flag, then one answer step: say the cue's token (text 1..CUES). The expert labels its
    memory calls: set while the cue shows, get on the query frame."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, delay: int = 24, cue_steps: int = 2) -> None:
        self.delay, self.cue_steps = delay, cue_steps
        self.query_t = cue_steps + delay
        self.observation_space = spaces.Dict(proprio=spaces.Box(-5.0, 5.0, (CUES + 3,), np.float32))
        self.action_space = spaces.Dict(text=spaces.Discrete(CUES + 1))
        self._cue, self._t = 0, 0

    def _obs(self) -> dict[str, np.ndarray]:
        x = np.zeros(CUES + 3, np.float32)
        if self._t < self.cue_steps:
            x[self._cue] = 1.0
        x[CUES] = float(self._t == self.query_t)  # query flag
        x[CUES + 1] = float(self._t == self.query_t + 1)  # answer now
        x[CUES + 2] = self.np_random.normal(0.0, 0.3)  # a distraction
        return {"proprio": x}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(CUES)), 0
        return self._obs(), {"is_success": False}

    def step(self, action: dict[str, Any]):
        answering = self._t == self.query_t + 1
        correct = answering and int(action["text"]) == self._cue + 1
        self._t += 1
        return self._obs(), float(correct), answering, False, {"is_success": correct}

    def expert_action(self) -> dict[str, np.ndarray]:
        token = self._cue + 1 if self._t == self.query_t + 1 else 0
        return {"text": np.int64(token)}

    def expert_memory_op(self) -> str:
        if self._t < self.cue_steps:
            return "set"
        return "get" if self._t == self.query_t else "none"


if "mindloop_test/TinyRecall-v0" not in gym.registry:
    gym.register("mindloop_test/TinyRecall-v0", entry_point=TinyRecallEnv)


def make_agent(envs, seed: int = 0) -> MindloopAgent:
    torch.manual_seed(seed)
    return MindloopAgent(
        envs.single_observation_space,
        envs.single_action_space,
        AgentConfig(
            encoders=FusedEncoderConfig(embed_dim=16),
            core=CoreConfig(hidden_dim=32),
            think=ThinkConfig(k_max=1),
            memory=MemoryConfig(
                slot_dim=32,
                code_dim=8,
                key_dim=8,
                capacity=8,
                standardized_read=True,
                codec_momentum=0.1,
            ),
            use_memory=True,
        ),
    )


def test_forced_ops_put_labels_at_the_observe_step():
    sampled = torch.tensor([[[2, 1], [0, -1]], [[1, -1], [1, 2]]])  # (T=2, B=2, K+1=2)
    labels = torch.tensor([[OP_SET, -1], [OP_NONE, OP_GET]])
    out = forced_ops(sampled, labels)
    # labelled frames: label at step 0, no call on a think step that ran, -1 where none ran
    assert out[0, 0].tolist() == [OP_SET, OP_NONE]
    assert out[1, 0].tolist() == [OP_NONE, -1]
    assert out[1, 1].tolist() == [OP_GET, OP_NONE]
    assert out[0, 1].tolist() == [0, -1]  # unlabelled: the sampled ops


def test_ponder_path_teacher_forces_labelled_memory_calls():
    """ponder_sequence(mem_ops=...): labelled frames make the label at the observe step and
    no call on the think steps; unlabelled frames (-1) choose their own ops."""
    torch.manual_seed(0)
    envs = make_vector_env(
        EnvConfig(id="mindloop_test/TinyRecall-v0", num_envs=2, vectorization="sync")
    )
    try:
        agent = make_agent(envs)
        obs, _ = envs.reset(seed=0)
    finally:
        envs.close()
    T, B = 4, 2
    seq = {k: torch.as_tensor(v)[None].expand(T, *v.shape) for k, v in obs.items()}
    labels = torch.tensor([[OP_SET, -1], [OP_GET, -1], [OP_NONE, -1], [OP_GET, -1]])
    starts = torch.zeros(T, B, dtype=torch.bool)
    with torch.no_grad():
        out, _ = agent.ponder_sequence(seq, agent.initial_state(B), starts, mem_ops=labels)
    assert out.mem_ops.shape == (T, B, 2)  # observe + k_max=1 think step
    assert torch.equal(out.mem_ops[:, 0, 0], labels[:, 0])
    assert torch.equal(out.mem_ops[:, 0, 1], torch.full((T,), OP_NONE))
    assert bool((out.mem_ops[:, 1] >= 0).all())  # unlabelled lane: sampled ops, all valid
    # the forced get of frame 1 fetched the item the forced set of frame 0 stored
    first_two = {k: v[:2] for k, v in seq.items()}
    with torch.no_grad():
        _, state = agent.ponder_sequence(
            first_two, agent.initial_state(B), starts[:2], mem_ops=labels[:2]
        )
    assert float(state["mem/hit"][0]) == 1.0


def test_expert_memory_ops_are_recorded_and_absent_for_other_tasks():
    from tests import tiny_envs  # noqa: F401  (registers mindloop_test/TinyReach-v0)

    envs = make_vector_env(
        EnvConfig(id="mindloop_test/TinyRecall-v0", num_envs=2, vectorization="sync")
    )
    try:
        episodes, _ = collect_episodes(envs, 2, seeds=[0, 1])
    finally:
        envs.close()
    ops = episodes[0].memory_ops
    assert ops is not None and len(ops) == len(episodes[0])
    assert ops[:2].tolist() == [OP_SET, OP_SET] and ops[26] == OP_GET
    assert (ops[2:26] == OP_NONE).all()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_tasks_without_memory_labels_collect_without_them(vectorization):
    """A task with no ``expert_memory_op`` gives no labels, and asking does not kill the
    workers of an async vector env (calling a missing method there shuts a worker down)."""
    reach = make_vector_env(
        EnvConfig(id="mindloop/MuscleReach-v0", num_envs=2, vectorization=vectorization),
        obs_keys=("proprio",),
    )
    try:
        reach.reset(seed=0)
        assert every_env_has(reach, "expert_action", "get_state")
        assert not every_env_has(reach, "expert_action", "expert_memory_op")
        assert expert_memory_ops(reach) is None
        episodes, _ = collect_episodes(reach, 2, seeds=[0, 1])
        assert all(e.memory_ops is None for e in episodes)
    finally:
        reach.close()


def train_recall(updates: int, think: str = "ponder"):
    """BC on TinyRecall (delay 24 > seq_len 8) from 160 expert episodes."""
    torch.set_num_threads(1)
    cfg = EnvConfig(id="mindloop_test/TinyRecall-v0", num_envs=8, vectorization="sync")
    envs = make_vector_env(cfg)
    try:
        agent = make_agent(envs)
        train_eps, _ = collect_episodes(envs, 160, seeds=env_seeds(0, 8))
        held_out, _ = collect_episodes(envs, 48, seeds=env_seeds(500, 8))
    finally:
        envs.close()
    bc = BCConfig(updates=updates, batch_envs=16, seq_len=8, lr=3e-3, warmup=0, think=think)
    fit_normalization(agent, train_eps)
    trainer = BCTrainer(agent, bc, gamma=0.99, seed=0)
    sampler = SequenceSampler(train_eps, bc.batch_envs, bc.seq_len, 0.99, seed=0)
    metrics = trainer.train(sampler, bc.updates)
    return agent, held_out, metrics


def answer_accuracy(agent: MindloopAgent, episodes) -> float:
    """Right token on the answer frame (the last), deterministic policy; chance 1/CUES."""
    correct = []
    for ep in episodes:
        state = agent.initial_state(1)
        for t in range(len(ep)):
            obs = {k: v[t : t + 1] for k, v in ep.obs.items()}
            act, state, _ = agent.act(obs, state, torch.tensor([t == 0]), deterministic=True)
        correct.append(int(act["text"][0]) == int(ep.actions["text"][-1]))
    return float(np.mean(correct))


@pytest.mark.parametrize("think", ["ponder", "sampled"])
def test_bc_clones_when_to_call_the_memory(think):
    """Set on the cue frames, get on the query frame, no call elsewhere (held-out episodes,
    deterministic policy), whichever think mode BC uses."""
    agent, held_out, metrics = train_recall(150, think)
    assert metrics.memory_ops > 0  # the op cloning loss was on
    agreement = action_agreement(agent, held_out[:16])
    assert agreement["memory_op/call_recall"] >= 0.9, agreement
    assert agreement["memory_op/accuracy"] >= 0.95, agreement


@pytest.mark.slow
def test_bc_memory_recalls_the_cue_across_a_long_delay():
    """The answer, 26 frames after the cue (over 3 BPTT chunks of 8), comes from the store:
    well above chance (1/4) on held-out episodes."""
    agent, held_out, _ = train_recall(800)
    assert answer_accuracy(agent, held_out) >= 0.45
