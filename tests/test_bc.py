"""Behaviour cloning: soft targets, sequence sampling, and agreement with the expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.agent import MindloopAgent
from agent.bc import (
    BCTrainer,
    action_agreement,
    beta_soft_nll,
    categorical_smoothed_ce,
    fit_normalization,
    sample_soft_targets,
)
from agent.config import AgentConfig, BCConfig, EnvConfig
from agent.cores import CoreConfig
from agent.demonstrations import SequenceSampler, collect_episodes, split_episodes
from agent.heads import BetaHead, CategoricalHead
from agent.think import ThinkConfig
from agent.vector import env_seeds, make_vector_env
from encoders.fusion import FusedEncoderConfig
from tests import tiny_envs  # noqa: F401  (registers mindloop_test/*)


def make(env_id: str, k_max: int = 1, seed: int = 0, num_envs: int = 8):
    torch.manual_seed(seed)
    envs = make_vector_env(EnvConfig(id=env_id, num_envs=num_envs, vectorization="sync"))
    agent = MindloopAgent(
        envs.single_observation_space,
        envs.single_action_space,
        AgentConfig(
            encoders=FusedEncoderConfig(embed_dim=32),
            core=CoreConfig(hidden_dim=32),
            think=ThinkConfig(k_max=k_max),
        ),
    )
    return envs, agent


def test_beta_soft_target_is_a_cross_entropy():
    """Closed form == Monte Carlo over target samples; minimized at the target Beta itself."""
    from gymnasium import spaces

    head = BetaHead(spaces.Box(0.0, 1.0, (2,), np.float32), hidden_dim=4)
    cfg = BCConfig(target_concentration=40.0)
    target = torch.tensor([[0.0, 0.7]])
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor([1.0, 20.0, 2.0, 0.5]))  # some alpha/beta
    dist = head(torch.zeros(1, 4))
    closed = beta_soft_nll(dist, target, cfg)
    samples = sample_soft_targets_for(head, target.expand(20000, 2), cfg)
    mc = -dist.base.log_prob(samples).sum(-1).mean()
    torch.testing.assert_close(closed, mc.reshape(1), atol=0.05, rtol=0.02)
    assert torch.isfinite(closed).all()


def sample_soft_targets_for(head, target, cfg):
    from types import SimpleNamespace

    # the minimal surface sample_soft_targets reads: agent.policy.heads.heads[key]
    agent = SimpleNamespace(policy=SimpleNamespace(heads=SimpleNamespace(heads={"muscles": head})))
    generator = torch.Generator().manual_seed(0)
    return sample_soft_targets(agent, {"muscles": target}, cfg, generator)["muscles"]


def test_label_smoothing_spreads_mass():
    from gymnasium import spaces

    head = CategoricalHead(spaces.Discrete(4), hidden_dim=3)
    dist = head(torch.zeros(1, 3))
    with torch.no_grad():
        dist.dist = torch.distributions.Categorical(logits=torch.tensor([[5.0, 0.0, 0.0, 0.0]]))
    hard = categorical_smoothed_ce(dist, torch.tensor([0]), BCConfig(label_smoothing=0.0))
    soft = categorical_smoothed_ce(dist, torch.tensor([0]), BCConfig(label_smoothing=0.2))
    assert soft > hard  # a confident prediction pays for the mass the target spreads


def test_sequence_sampler_lanes_follow_episodes():
    envs, _ = make("mindloop_test/TinyAnswer-v0")
    try:
        episodes, _ = collect_episodes(envs, 10, seeds=env_seeds(0, 8))
    finally:
        envs.close()
    sampler = SequenceSampler(episodes, lanes=3, seq_len=7, gamma=0.9, seed=0)
    batch = sampler.next_batch()
    assert batch.obs["text"].shape == (7, 3, 2) and batch.actions["text"].shape == (7, 3)
    assert batch.episode_starts[0].all()  # every lane starts on an episode's first frame
    # TinyAnswer episodes are 4 frames: a new one starts every 4 frames in every lane
    assert batch.episode_starts[4].all() and not batch.episode_starts[1:4].any()
    # value targets: reward 1 (right answer) at the last frame only, discounted back
    finals = batch.returns[3]
    assert torch.all((finals == 0) | (finals == 1))


@pytest.mark.parametrize("think", ["ponder", "sampled"])
def test_bc_reaches_high_agreement_with_the_expert(think):
    """BC on expert demonstrations of TinyAnswer (remember a token, answer when asked) gets
    the held-out answers right; the recurrent core has to carry the token over the wait."""
    envs, agent = make("mindloop_test/TinyAnswer-v0", k_max=1)
    try:
        episodes, _ = collect_episodes(envs, 120, seeds=env_seeds(0, 8))
    finally:
        envs.close()
    train, held = split_episodes(episodes, 0.2, seed=0)
    cfg = BCConfig(updates=150, batch_envs=16, seq_len=8, lr=3e-3, warmup=0, think=think)
    fit_normalization(agent, train)
    trainer = BCTrainer(agent, cfg, gamma=0.99, seed=0)
    trainer.train(SequenceSampler(train, cfg.batch_envs, cfg.seq_len, 0.99, seed=0), cfg.updates)
    agreement = action_agreement(agent, held)
    assert agreement["text/accuracy"] > 0.95, agreement


def test_latent_onsets_mark_where_the_latent_changes():
    """Onsets: an episode's first frame and every frame whose latent differs from the one
    before; the sampler hands them out aligned with the latents, across episode borders."""
    from agent.demonstrations import Episode

    def episode(latents):
        n = len(latents)
        return Episode(
            obs={"proprio": np.zeros((n, 1), np.float32)},
            actions={"muscles": np.zeros((n, 1), np.float32)},
            rewards=np.zeros(n, np.float32),
            success=False,
            expert_latents=np.asarray(latents, np.float32)[:, None],
        )

    ep = episode([0, 0, 2, 2, 2, 1])
    assert ep.latent_onsets().tolist() == [True, False, True, False, False, True]
    sampler = SequenceSampler([ep], lanes=1, seq_len=9, gamma=0.9, seed=0)
    batch = sampler.next_batch()  # frames 0..5 of one episode, then 0..2 of the next
    assert batch.latent_onsets[:, 0].tolist() == [1, 0, 1, 0, 0, 1, 1, 0, 1]
    assert batch.expert_latents[:, 0, 0].tolist() == [0, 0, 2, 2, 2, 1, 0, 0, 2]


@pytest.mark.parametrize("frames", ["all", "onset"])
@pytest.mark.parametrize("think", ["ponder", "sampled"])
def test_bc_learns_to_read_the_expert_latent_from_the_state(think, frames):
    """The auxiliary target (TinyAnswer's latent: the token to answer) reaches the batches and
    the trainer's readout learns it from the core's state, on every frame or only at the
    latent's onsets (here each episode's first frame): its loss falls well below the start,
    and with the weight at 0 there is no readout and no loss."""
    envs, agent = make("mindloop_test/TinyAnswer-v0", k_max=1)
    try:
        episodes, _ = collect_episodes(envs, 60, seeds=env_seeds(0, 8))
    finally:
        envs.close()
    assert all(e.expert_latents.shape == (len(e), 3) for e in episodes)
    sampler = SequenceSampler(episodes, 16, 8, 0.99, seed=0)
    assert sampler.next_batch().expert_latents.shape == (8, 16, 3)
    cfg = BCConfig(
        updates=120, batch_envs=16, seq_len=8, lr=3e-3, warmup=0, think=think,
        expert_latent_frames=frames,
    )  # fmt: skip
    fit_normalization(agent, episodes)
    trainer = BCTrainer(agent, cfg, gamma=0.99, seed=0)
    losses = []
    trainer.train(sampler, cfg.updates, on_update=lambda u, m: losses.append(m.expert_latent))
    assert trainer.latent_decoder is not None
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:3]), (losses[:3], losses[-10:])

    off = BCTrainer(agent, BCConfig(expert_latent_coef=0.0, think=think), gamma=0.99)
    metrics = off.train(sampler, 2)
    assert off.latent_decoder is None and metrics.expert_latent == 0.0


def test_bc_continuous_agreement():
    """Muscle-style Beta heads: deterministic actions match the expert's closely."""
    envs, agent = make("mindloop_test/TinyReach-v0", k_max=0)
    try:
        episodes, _ = collect_episodes(envs, 150, seeds=env_seeds(0, 8))
    finally:
        envs.close()
    train, held = split_episodes(episodes, 0.2, seed=0)
    cfg = BCConfig(updates=150, batch_envs=16, seq_len=8, lr=3e-3, warmup=0)
    fit_normalization(agent, train)
    BCTrainer(agent, cfg, gamma=0.99).train(
        SequenceSampler(train, cfg.batch_envs, cfg.seq_len, 0.99, seed=0), cfg.updates
    )
    agreement = action_agreement(agent, held)
    assert agreement["muscles/r2"] > 0.9 and agreement["muscles/mae"] < 0.06, agreement


def test_dagger_collects_learner_states_with_expert_labels():
    envs, agent = make("mindloop_test/TinyReach-v0", k_max=0, num_envs=2)
    try:
        episodes, _ = collect_episodes(envs, 4, seeds=[0, 1], agent=agent)
    finally:
        envs.close()
    ep = episodes[0]
    # the label is the expert's action (the target), whatever the learner did
    np.testing.assert_allclose(ep.actions["muscles"], ep.obs["proprio"][:, :2], atol=1e-6)


@pytest.mark.parametrize(
    ("lengths", "episodes", "kept_lengths", "vector_steps"),
    [
        # the fast env runs the 2nd-4th episodes to start while the slow one runs the 1st,
        # which is kept though four short ones finish before it (12 vector steps, not 24)
        ((3, 12), 4, [3, 3, 3, 12], 12),
        # fewer episodes than envs: the first env's episode is the one, the fast env's
        # episodes that finish first are not
        ((12, 3), 1, [12], 12),
    ],
)
def test_dagger_keeps_the_first_episodes_to_start_not_the_first_to_finish(
    lengths: tuple[int, int], episodes: int, kept_lengths: list[int], vector_steps: int
):
    """The episodes returned are the first to start, each run to its end: the sample does not
    favour short episodes (the learner's long failures are what DAgger needs), and no env
    idles while episodes are left to run. The env steps returned are every env's."""
    from gymnasium.vector import SyncVectorEnv

    from agent.vector import AUTORESET_MODE
    from tests.tiny_envs import TinyReachEnv

    # gain 0: the hand never moves, every episode ends at its time limit
    envs = SyncVectorEnv(
        [lambda n=n: TinyReachEnv(max_steps=n, gain=0.0) for n in lengths],
        autoreset_mode=AUTORESET_MODE,
    )
    _, agent = make("mindloop_test/TinyReach-v0", k_max=0, num_envs=1)
    try:
        out, steps = collect_episodes(envs, episodes, seeds=[0, 1], agent=agent)
    finally:
        envs.close()
    assert sorted(len(e) for e in out) == kept_lengths
    assert steps == len(lengths) * vector_steps


def test_dagger_mixture_beta_one_is_the_expert():
    """beta = 1: every executed action is the expert's, whatever the learner would do."""
    envs, agent = make("mindloop_test/TinyReach-v0", k_max=0, num_envs=4)
    try:
        mixed, _ = collect_episodes(envs, 8, seeds=[0, 1, 2, 3], agent=agent, beta=1.0)
        expert, _ = collect_episodes(envs, 8, seeds=[0, 1, 2, 3])
    finally:
        envs.close()
    assert all(e.success for e in mixed)
    for a, b in zip(mixed, expert, strict=True):
        np.testing.assert_array_equal(a.obs["proprio"], b.obs["proprio"])
