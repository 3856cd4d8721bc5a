"""Recurrent PPO for mindloop agents: think steps and memory calls inside the action.

One update (CleanRL's ``ppo_atari_lstm.py`` structure, with mindloop's decisions):

1. **Rollout**: ``rollout_steps`` (T) steps of ``num_envs`` (N) envs. Every ``bptt_steps``
   (L) steps the recurrent state is stored: it is the initial state of that sequence chunk
   for truncated BPTT. Each step records the observation, the action, the think/memory
   :class:`~agent.policy.Decisions`, the joint log-probability (action + halting + memory
   ops, :attr:`StepInfo.log_prob`) and the value.
2. **Rewards**: env reward ``- think_cost * think_steps - memory_cost * memory_calls``
   (the seed's "reward fewer think tokens"). A *truncated* episode is bootstrapped: its last
   reward gets ``+ gamma * V(final_obs)``, the value of the observation the time limit cut
   off (SB3's rule), while a *terminated* one is not; then both count as episode ends.
3. **GAE** (Schulman et al. 2016) over the T steps, bootstrapped from V(next obs).
4. **Epochs** over the N*T/L chunks in minibatches: :meth:`MindloopAgent.evaluate_sequence`
   replays each chunk from its stored initial state with the recorded decisions (teacher
   forcing), giving new log-probs/values/entropies for the clipped surrogate, the value loss
   and the entropy bonuses; global grad-norm clip; linear LR schedule. The critic predicts
   returns in the normalized units of ``agent.value_norm`` (MAPPO's ValueNorm); rollout
   values and GAE are in reward units.

With ``anchor_coef`` > 0 the loss adds a KL penalty to a frozen copy of the policy the
trainer started from (in bc+ppo: the behaviour-cloned one; ``agent.training.ppo_anchor_coef``
resolves the config's None default, which counts as 0 here), the k3 estimator of
KL(pi || pi_ref) that GRPO uses, over each frame's joint log-probability. The reference
replays the same chunks once per update (no gradient) from the chunks' stored initial
states: those are the trained policy's states, a small approximation while the two stay
close (which is what the penalty is for); every episode that starts inside a chunk is exact.

Running normalization statistics are frozen during the rollout and the update (the replay
must see the same features the rollout saw) and updated from the rollout's inputs after it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from agent.agent import MindloopAgent, NormRecorder
from agent.config import PPOConfig
from agent.distributed import touch_all_parameters
from agent.policy import Decisions, StepInfo
from agent.rollout import EnvRunner, memory_calls
from agent.state import State, cat_states, index_state
from agent.vector import VectorStep, expert_actions

RewardFn = Callable[
    [VectorStep, dict[str, np.ndarray], StepInfo, dict[str, np.ndarray] | None], np.ndarray
]
"""Optional reward override: (env step, actions taken, step info, the expert's actions for the
same states when ``needs_expert``) -> (N,) rewards."""


@dataclass
class Rollout:
    """T steps of N envs, ready for the update. Shapes (T, N, ...) unless noted."""

    obs: dict[str, np.ndarray]
    actions: dict[str, torch.Tensor]
    decisions: Decisions
    episode_starts: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    """Env reward minus think and memory costs (plus the truncation bootstrap)."""
    dones: torch.Tensor
    chunk_states: State
    """(C*N, ...) initial state of each chunk (c, n) at index c*N + n, C = T / L."""
    advantages: torch.Tensor
    returns: torch.Tensor
    think_steps: torch.Tensor
    memory_calls: torch.Tensor
    env_rewards: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.rewards.numel())


@dataclass
class _Buffer:
    """Per-step records of a rollout, stacked into a :class:`Rollout` by :meth:`finish`."""

    obs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    starts: list[torch.Tensor] = field(default_factory=list)
    actions: list[dict[str, torch.Tensor]] = field(default_factory=list)
    decisions: list[Decisions] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    rewards: list[torch.Tensor] = field(default_factory=list)
    env_rewards: list[torch.Tensor] = field(default_factory=list)
    dones: list[torch.Tensor] = field(default_factory=list)
    think: list[torch.Tensor] = field(default_factory=list)
    calls: list[torch.Tensor] = field(default_factory=list)
    chunk_states: list[State] = field(default_factory=list)

    def finish(self, next_value: torch.Tensor, gamma: float, lam: float) -> Rollout:
        values, rewards, dones = (torch.stack(x) for x in (self.values, self.rewards, self.dones))
        advantages, returns = gae(rewards, values, dones, next_value, gamma, lam)
        return Rollout(
            obs={k: np.stack(v) for k, v in self.obs.items()},
            actions={k: torch.stack([a[k] for a in self.actions]) for k in self.actions[0]},
            decisions=Decisions(
                torch.stack([d.think_steps for d in self.decisions]).cpu(),
                torch.stack([d.mem_ops for d in self.decisions]).cpu(),
            ),
            episode_starts=torch.stack(self.starts),
            log_probs=torch.stack(self.log_probs),
            values=values,
            rewards=rewards,
            dones=dones,
            chunk_states=cat_states(self.chunk_states),
            advantages=advantages,
            returns=returns,
            think_steps=torch.stack(self.think),
            memory_calls=torch.stack(self.calls),
            env_rewards=torch.stack(self.env_rewards),
        )


def _chunks(x: Any, T: int, L: int) -> Any:
    """(T, N, ...) -> (L, C*N, ...) with chunk (c, n) at column c*N + n."""
    C = T // L
    if isinstance(x, np.ndarray):
        y = x.reshape(C, L, *x.shape[1:]).swapaxes(0, 1)
        return y.reshape(L, C * x.shape[1], *x.shape[2:])
    y = x.reshape(C, L, *x.shape[1:]).transpose(0, 1)
    return y.reshape(L, C * x.shape[1], *x.shape[2:])


class PPOTrainer:
    """Collects rollouts with an :class:`EnvRunner` and updates the agent.

    Args:
        agent: the agent (weights updated in place).
        runner: envs + carried state; its agent must be ``agent``.
        config: PPO settings.
        total_updates: number of updates the LR schedule anneals over.
        model: what the training forward runs through (``agent`` or its DDP wrapper).
        memory_cost: reward cost per memory call (None: ``config.memory_cost`` or the
            agent's memory ``call_cost``).
        reward_fn: replaces the env reward (e.g. SFT-as-RL's answer-token reward).
        reduce: averages a float across ranks (DDP); identity on one process.
        gather: concatenates a tensor across ranks (DDP) for running-norm updates.
        seed: seeds the minibatch shuffling.
        needs_expert: ask every env for its expert action each step (for ``reward_fn``).
    """

    def __init__(
        self,
        agent: MindloopAgent,
        runner: EnvRunner,
        config: PPOConfig,
        total_updates: int,
        model: nn.Module | None = None,
        memory_cost: float | None = None,
        reward_fn: RewardFn | None = None,
        reduce: Callable[[float], float] | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        needs_expert: bool = False,
    ) -> None:
        self.agent = agent
        self.runner = runner
        self.cfg = config
        self.total_updates = max(total_updates, 1)
        self.model = model if model is not None else agent
        if memory_cost is None:
            memory_cost = config.memory_cost
        if memory_cost is None:
            memory = agent.policy.memory
            memory_cost = float(getattr(memory, "call_cost", 0.0)) if memory is not None else 0.0
        self.memory_cost = memory_cost
        self.reward_fn = reward_fn
        self.needs_expert = needs_expert
        self.reduce = reduce or (lambda x: x)
        self.gather = gather
        # fused: one kernel per step (CPU too): 2.6x faster than foreach on ~1M parameters here
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=1e-5, fused=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.norms = NormRecorder(agent)
        self.updates_done = 0
        # the policy the penalty anchors to, frozen (its own running norms included)
        self.reference: MindloopAgent | None = None
        if config.anchor_coef:  # None or 0: off
            self.reference = copy.deepcopy(agent).eval().requires_grad_(False)

    # ------------------------------------------------------------------ schedule

    def lr_at(self, update: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        return self.cfg.lr * max(1.0 - update / self.total_updates, 0.0)

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def collect(self) -> Rollout:
        """One rollout of T steps from where the runner stands."""
        cfg, runner = self.cfg, self.runner
        self.agent.eval()
        buf = _Buffer()
        for t in range(cfg.rollout_steps):
            if t % cfg.bptt_steps == 0:  # a chunk starts: keep its initial state for BPTT
                buf.chunk_states.append({k: v.cpu().clone() for k, v in runner.state.items()})
            for k, v in runner.obs.items():
                buf.obs.setdefault(k, []).append(np.array(v, copy=True))
            buf.starts.append(runner.episode_start.clone())
            self._step(buf)
        next_value = self._value(runner.obs, runner.state, runner.episode_start)
        return buf.finish(next_value, cfg.gamma, cfg.gae_lambda)

    def _step(self, buf: _Buffer) -> None:
        """Act, step the envs, and record the step with its cost-adjusted reward."""
        runner, agent = self.runner, self.agent
        with self.norms.recording():
            actions, new_state, info = runner.act()
        np_actions = agent.actions_to_numpy(actions)
        labels = expert_actions(runner.envs) if self.needs_expert else None
        step = runner.step(np_actions, new_state, info)
        env_r = torch.as_tensor(step.reward, dtype=torch.float32)
        if self.reward_fn is not None:
            env_r = torch.as_tensor(
                self.reward_fn(step, np_actions, info, labels), dtype=torch.float32
            )
        calls = memory_calls(info).float().cpu()
        think = info.think_steps.float().cpu()
        reward = env_r - self.costs(think, calls)
        buf.rewards.append(reward + self._truncation_bootstrap(step, new_state))
        buf.env_rewards.append(env_r)
        buf.actions.append({k: v.cpu() for k, v in actions.items()})
        buf.decisions.append(info.decisions)
        buf.log_probs.append(info.log_prob.cpu())
        buf.values.append(agent.value_norm.denormalize(info.value).cpu())
        buf.dones.append(torch.as_tensor(step.done, dtype=torch.float32))
        buf.think.append(think)
        buf.calls.append(calls)

    def _value(self, obs: dict[str, np.ndarray], state: State, start: torch.Tensor) -> torch.Tensor:
        """V(obs) in reward units (N,), from ``state``; deterministic, so no RNG is used."""
        raw = self.agent.act_tensors(obs, state, start, deterministic=True)[2].value
        return self.agent.value_norm.denormalize(raw).cpu()

    def _truncation_bootstrap(self, step: VectorStep, state_after: State) -> torch.Tensor:
        """(N,) ``gamma * V(final_obs)`` for envs whose episode was truncated, else 0."""
        out = torch.zeros(len(step.reward))
        rows = [i for i in np.flatnonzero(step.truncated) if i in step.final_obs]
        if not rows:
            return out
        final = {k: np.stack([step.final_obs[i][k] for i in rows]) for k in step.final_obs[rows[0]]}
        index = torch.as_tensor(rows)
        sub = index_state(state_after, index.to(self.agent.device))
        no_start = torch.zeros(len(rows), dtype=torch.bool)
        out[index] = self.cfg.gamma * self._value(final, sub, no_start)
        return out

    # ------------------------------------------------------------------ update

    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over the rollout's chunks; returns loss metrics."""
        cfg, agent = self.cfg, self.agent
        dev = agent.device
        lr = self.lr_at(self.updates_done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        T, N = rollout.rewards.shape
        L = cfg.bptt_steps
        # the critic learns returns in normalized units (agent.value_norm, MAPPO's ValueNorm);
        # statistics from this rollout's returns (all ranks' under DDP, so they agree)
        returns = rollout.returns.reshape(-1)
        agent.value_norm.update(self.gather(returns) if self.gather is not None else returns)
        norm_returns = agent.value_norm.normalize(rollout.returns)
        norm_values = agent.value_norm.normalize(rollout.values)
        S = (T // L) * N
        seq = {
            "obs": {k: _chunks(v, T, L) for k, v in rollout.obs.items()},
            "actions": {k: _chunks(v, T, L) for k, v in rollout.actions.items()},
            "think": _chunks(rollout.decisions.think_steps, T, L),
            "ops": _chunks(rollout.decisions.mem_ops, T, L),
            "starts": _chunks(rollout.episode_starts, T, L),
            "logp": _chunks(rollout.log_probs, T, L),
            "values": _chunks(norm_values, T, L),
            "adv": _chunks(rollout.advantages, T, L),
            "ret": _chunks(norm_returns, T, L),
        }
        n_mb = min(cfg.minibatches, S)  # exactly this many per epoch, sizes differing by <= 1
        mb_size = -(-S // n_mb)
        if self.reference is not None:
            seq["ref_logp"] = self._reference_log_probs(seq, rollout.chunk_states, mb_size, dev)
        agent.train()
        stats: dict[str, list[float]] = {}
        stop = False
        for _epoch in range(cfg.epochs):
            order = torch.randperm(S, generator=self.generator)
            for idx in torch.tensor_split(order, n_mb):
                m = self._minibatch_step(seq, idx, rollout.chunk_states, dev)
                for k, v in m.items():
                    stats.setdefault(k, []).append(v)
            if cfg.target_kl is not None:
                kl = self.reduce(float(np.mean(stats["approx_kl"][-n_mb:])))
                if kl > cfg.target_kl:
                    stop = True
            if stop:
                break
        agent.eval()
        self.norms.apply(self.gather)
        self.updates_done += 1
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["explained_variance"] = explained_variance(rollout.values, rollout.returns)
        out["lr"] = lr
        return out

    @torch.no_grad()
    def _reference_log_probs(
        self, seq: dict[str, Any], chunk_states: State, mb_size: int, dev: torch.device
    ) -> torch.Tensor:
        """The frozen reference's joint log-probabilities of the recorded frames, (L, S)."""
        assert self.reference is not None
        S = seq["starts"].shape[1]
        parts = []
        for first in range(0, S, mb_size):  # minibatch-sized pieces bound the memory
            idx = torch.arange(first, min(first + mb_size, S))
            obs, init, starts, actions, decisions = self._replay_inputs(seq, idx, chunk_states, dev)
            info, _ = self.reference(obs, init, starts, actions=actions, decisions=decisions)
            parts.append(info.log_prob)
        return torch.cat(parts, dim=1)

    @staticmethod
    def _replay_inputs(
        seq: dict[str, Any], idx: torch.Tensor, chunk_states: State, dev: torch.device
    ) -> tuple[
        dict[str, np.ndarray],
        dict[str, torch.Tensor],
        torch.Tensor,
        dict[str, torch.Tensor],
        Decisions,
    ]:
        """Chunks ``idx`` of the rollout: obs, initial states, episode starts, actions and
        decisions, each (L, B, ...) except the states."""
        np_idx = idx.numpy()
        obs = {k: v[:, np_idx] for k, v in seq["obs"].items()}
        actions = {k: v[:, idx].to(dev) for k, v in seq["actions"].items()}
        decisions = Decisions(seq["think"][:, idx].to(dev), seq["ops"][:, idx].to(dev))
        init = {k: v.to(dev) for k, v in index_state(chunk_states, idx).items()}
        starts = seq["starts"][:, idx].to(dev)
        return obs, init, starts, actions, decisions

    def _minibatch_step(
        self, seq: dict[str, Any], idx: torch.Tensor, chunk_states: State, dev: torch.device
    ) -> dict[str, float]:
        cfg = self.cfg
        obs, init, starts, actions, decisions = self._replay_inputs(seq, idx, chunk_states, dev)
        old_logp = seq["logp"][:, idx].to(dev)
        old_v = seq["values"][:, idx].to(dev)
        adv = seq["adv"][:, idx].to(dev)
        ret = seq["ret"][:, idx].to(dev)

        info, _ = self.model(obs, init, starts, actions=actions, decisions=decisions)
        logratio = info.log_prob - old_logp
        ratio = logratio.exp()
        if cfg.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
        value = info.value
        if cfg.clip_value:
            v_clipped = old_v + (value - old_v).clamp(-cfg.clip, cfg.clip)
            v_loss = 0.5 * torch.max((value - ret) ** 2, (v_clipped - ret) ** 2).mean()
        else:
            v_loss = 0.5 * ((value - ret) ** 2).mean()
        ent_action = info.entropy_action.mean()
        ent_decision = (info.entropy_halt + info.entropy_memory).mean()
        loss = (
            pg_loss
            + cfg.value_coef * v_loss
            - cfg.entropy_coef * ent_action
            - cfg.decision_entropy_coef * ent_decision
        )
        anchor_kl = None
        if self.reference is not None:
            # k3 estimator of KL(pi || pi_ref): (r - 1) - log r with r = pi_ref / pi, >= 0 per
            # sample, low variance (Schulman 2020; GRPO); clamped so a far-off frame cannot
            # overflow exp
            d = (seq["ref_logp"][:, idx].to(dev) - info.log_prob).clamp(-20.0, 20.0)
            anchor_kl = (d.exp() - d - 1).mean()
            loss = loss + cfg.anchor_coef * anchor_kl
        codec = info.memory_stats.get("codec_loss")
        memory = self.agent.policy.memory
        if codec is not None and memory is not None:
            coef = float(getattr(memory.config, "codec_loss_coef", 0.0))
            ran = info.memory_stats.get("op")
            loss = loss + coef * codec.sum() / max(
                int(codec.numel() if ran is None else (codec != 0).sum()), 1
            )
        if self.model is not self.agent:  # DDP: every parameter must get a gradient
            loss = loss + touch_all_parameters(self.agent)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1).abs() > cfg.clip).float().mean()
        out = {
            "policy_loss": float(pg_loss.detach()),
            "value_loss": float(v_loss.detach()),
            "entropy": float(ent_action.detach()),
            "decision_entropy": float(ent_decision.detach()),
            "approx_kl": float(approx_kl),
            "clipfrac": float(clipfrac),
            "grad_norm": float(grad_norm),
        }
        if anchor_kl is not None:
            out["anchor_kl"] = float(anchor_kl.detach())
        return out

    # ------------------------------------------------------------------ one iteration

    def costs(self, think_steps: torch.Tensor, memory_calls: torch.Tensor) -> torch.Tensor:
        """What thinking and memory calls cost, subtracted from the env reward (same shape)."""
        return self.cfg.think_cost * think_steps + self.memory_cost * memory_calls

    def iterate(self) -> dict[str, float]:
        """Collect one rollout and update; returns rollout + loss metrics."""
        t0 = time.perf_counter()
        rollout = self.collect()
        t1 = time.perf_counter()
        metrics = self.update(rollout)
        t2 = time.perf_counter()
        metrics.update(
            think_steps=float(rollout.think_steps.mean()),
            memory_calls=float(rollout.memory_calls.mean()),
            reward=float(rollout.env_rewards.mean()),
            # what PPO maximizes, without the truncation bootstrap that ``rewards`` also
            # holds (a critic value, not a reward)
            reward_shaped=float(
                (rollout.env_rewards - self.costs(rollout.think_steps, rollout.memory_calls)).mean()
            ),
            rollout_seconds=t1 - t0,
            update_seconds=t2 - t1,
            fps=rollout.num_steps / max(t2 - t0, 1e-9),
            steps=float(rollout.num_steps),
        )
        return metrics

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        data = {
            "updates_done": self.updates_done,
            "generator": self.generator.get_state(),
            "runner": self.runner.state_dict(),
        }
        if self.reference is not None:  # the anchor is part of the run: a resume needs it
            data["reference"] = {k: v.clone() for k, v in self.reference.state_dict().items()}
        return data

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if self.reference is not None and "reference" not in data:  # checked before any change
            raise ValueError(
                "this PPO state has no KL-anchor reference (it trained with "
                "ppo.anchor_coef 0); resume it with ppo.anchor_coef=0"
            )
        self.updates_done = int(data["updates_done"])
        self.generator.set_state(torch.as_tensor(data["generator"], dtype=torch.uint8))
        self.runner.load_state_dict(data["runner"])
        if self.reference is not None:
            self.reference.load_state_dict(
                {k: torch.as_tensor(v) for k, v in data["reference"].items()}
            )


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation. rewards/values/dones (T, N), next_value (N,).

    ``dones[t]`` = the episode ended at step t (its successor is a reset observation), so no
    value flows back across it. Returns (advantages, returns), each (T, N).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in range(T - 1, -1, -1):
        nv = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * nv * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - pred) / Var(target) (1: perfect, 0: no better than the mean)."""
    var = float(target.var())
    return float("nan") if var == 0 else 1.0 - float((target - pred).var()) / var


__all__ = ["PPOTrainer", "Rollout", "explained_variance", "gae"]
