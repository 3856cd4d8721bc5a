"""The mindloop policy: a core that observes, thinks for a sampled number of steps, and acts.

Per frame and env::

    h_0 = core(concat(x_obs, memory.read))             # observe step
    for k in 1..k_max:                                  # think steps
        if halting says stop at h_{k-1}: break          # sampled (or budget chosen at h_0)
        h_k = core(concat(think_input(h_{k-1}, k[, obs_tokens]), memory.read))
    after every core step: op ~ memory.op_distribution(h); memory.apply(h, op)
    action ~ heads(h_final);  value = value_head(h_0)

The value reads h_0, before any think or memory decision is sampled, so it is a baseline for
the whole compound decision (halting + memory ops + action) and stays unbiased for RL.

Envs in a batch halt at different steps: the batch keeps stepping until every env halted (or
``k_max``) and the state of a halted env is frozen by a mask. Three entry points:

- :meth:`MindloopPolicy.act` for rollouts: samples (or, ``deterministic=True``, takes
  threshold/argmax/mean) and records every decision in :class:`Decisions`.
- :meth:`MindloopPolicy.evaluate_sequence` for training: replays recorded decisions
  (teacher-forced) over (T, B) with backprop through time from a stored initial state, and
  returns log-probs, entropies and values that equal act's on the same inputs.
- :meth:`MindloopPolicy.ponder` / :meth:`ponder_sequence` for supervised training
  (PonderNet): every env runs all ``k_max`` think steps, and the output carries the halting
  distribution p_n over steps for an expected loss and a KL to a geometric prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
from gymnasium import spaces
from torch import nn

from agent.cores import CoreConfig, build_core
from agent.heads import Action, ActionDistribution, ActionHeads
from agent.interfaces import MemoryTool
from agent.state import State, reset_where
from agent.think import (
    Chooser,
    ThinkConfig,
    build_halting,
    build_think_input,
    geometric_prior,
    kl_to_geometric,
)


@dataclass
class PolicyConfig:
    """Core, think loop and heads. Sizes of inputs and outputs come from the components
    (observation embedding, memory read, action space), not from here."""

    core: CoreConfig = field(default_factory=CoreConfig)
    """Which recurrent core and how big."""
    think: ThinkConfig = field(default_factory=ThinkConfig)
    """Think steps: k_max, think input, halting mode."""

    def __post_init__(self) -> None:
        # allow building from plain dicts (config.json of a checkpoint)
        if isinstance(self.core, dict):
            self.core = CoreConfig(**self.core)
        if isinstance(self.think, dict):
            self.think = ThinkConfig(**self.think)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decisions:
    """Every sampled decision of a frame except the action, to replay it in training.

    Shapes: (B,) / (B, k_max+1) from :meth:`MindloopPolicy.act`; stacked (T, B, ...) for
    :meth:`MindloopPolicy.evaluate_sequence`.
    """

    think_steps: torch.Tensor
    """(..., ) long in 0..k_max: think steps taken (the halting decisions are implied)."""
    mem_ops: torch.Tensor
    """(..., k_max+1) long: memory op at step n (0 = observe); -1 where no step ran or no memory."""

    @property
    def halt(self) -> torch.Tensor:
        """(..., k_max+1) long: the halting decision per step, 0 = continue, 1 = stop,
        -1 = not reached (the stop at step k_max is forced, not sampled)."""
        n = torch.arange(self.mem_ops.shape[-1], device=self.mem_ops.device)
        steps = self.think_steps.unsqueeze(-1)
        return torch.where(n < steps, 0, torch.where(n == steps, 1, -1))

    @staticmethod
    def stack(items: list[Decisions]) -> Decisions:
        """Stack per-frame decisions (B, ...) into a sequence (T, B, ...)."""
        return Decisions(
            think_steps=torch.stack([d.think_steps for d in items]),
            mem_ops=torch.stack([d.mem_ops for d in items]),
        )


@dataclass
class StepInfo:
    """What a frame produced besides the action. Shapes (B, ...) from ``act``, (T, B, ...)
    from ``evaluate_sequence``. Log-probs/entropies are split by part so that training can
    weight or cost them separately; ``log_prob`` is their sum (the PPO ratio's log-prob)."""

    think_steps: torch.Tensor
    """(...,) long: think steps taken; multiply by a cost to charge thinking in the reward."""
    halt_prob: torch.Tensor
    """(..., k_max+1): p(stop) at each step where it was evaluated, 1 at a forced stop at
    k_max, 0 after the env halted (padding)."""
    decisions: Decisions
    log_prob_action: torch.Tensor
    log_prob_halt: torch.Tensor
    log_prob_memory: torch.Tensor
    entropy_action: torch.Tensor
    entropy_halt: torch.Tensor
    entropy_memory: torch.Tensor
    value: torch.Tensor
    memory_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-step stats returned by ``memory.apply`` (..., k_max+1), 0 where no step ran."""

    @property
    def log_prob(self) -> torch.Tensor:
        return self.log_prob_action + self.log_prob_halt + self.log_prob_memory

    @property
    def entropy(self) -> torch.Tensor:
        return self.entropy_action + self.entropy_halt + self.entropy_memory

    @staticmethod
    def stack(items: list[StepInfo]) -> StepInfo:
        """Stack per-frame infos (B, ...) into (T, B, ...)."""
        out = {}
        for f in fields(StepInfo):
            vals = [getattr(i, f.name) for i in items]
            if f.name == "decisions":
                out[f.name] = Decisions.stack(vals)
            elif f.name == "memory_stats":
                out[f.name] = {k: torch.stack([v[k] for v in vals]) for k in vals[0]}
            else:
                out[f.name] = torch.stack(vals)
        return StepInfo(**out)


@dataclass
class PonderOutput:
    """The supervised (PonderNet) view of frames: every env ran all ``k_max`` think steps.

    Shapes: (B, ...) from :meth:`MindloopPolicy.ponder`, (T, B, ...) from
    :meth:`MindloopPolicy.ponder_sequence`; K = k_max.
    """

    hidden: torch.Tensor
    """(..., K+1, hidden_dim): h_n after step n = 0..K."""
    halting: torch.Tensor
    """(..., K+1): the halting distribution p_n (sums to 1)."""
    think_steps: torch.Tensor
    """(...,) long: the step whose state was carried on (sampled from p_n, or deterministic)."""
    value: torch.Tensor
    """(...,): value from h_0."""
    mem_ops: torch.Tensor
    """(..., K+1) long: memory ops (-1 without memory)."""

    def expected(self, per_step: torch.Tensor) -> torch.Tensor:
        """sum_n p_n * per_step[..., n]: e.g. the expected loss L = sum_n p_n L_n."""
        return (self.halting * per_step).sum(-1)

    def kl_to_geometric(self, lambda_p: float) -> torch.Tensor:
        """KL(p || Geometric(lambda_p)) (...,): PonderNet's regulariser."""
        return kl_to_geometric(self.halting, lambda_p)

    def expected_steps(self) -> torch.Tensor:
        n = torch.arange(self.halting.shape[-1], device=self.halting.device, dtype=torch.float32)
        return (self.halting * n).sum(-1)


class MindloopPolicy(nn.Module):
    """Core + think loop + heads (+ an optional memory tool).

    Args:
        obs_dim: size of the observation embedding fed in (the fused encoders' ``embed_dim``).
        action_space: a ``gymnasium.spaces.Dict`` (``muscles`` Box in [0, 1], ``text``
            Discrete(V), or any bounded Box / Discrete keys).
        config: core and think settings.
        memory: an optional :class:`agent.interfaces.MemoryTool`. Its read is concatenated to
            the core input at every step; its op log-probs join the policy's. The policy hands
            it the memory's own keys of the state (those of ``memory.initial_state``) and
            merges what ``apply`` returns.
        token_dim: size of the frame tokens that the ``attend`` and ``scan`` think inputs
            read (passed as ``obs_tokens`` (B, N, token_dim) to act/ponder/...); default
            ``obs_dim``. Other think inputs read no tokens and ignore ``obs_tokens``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: spaces.Dict,
        config: PolicyConfig | None = None,
        memory: MemoryTool | None = None,
        token_dim: int | None = None,
    ) -> None:
        super().__init__()
        config = config or PolicyConfig()
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        if memory is not None and not isinstance(memory, MemoryTool):
            raise ValueError(
                f"memory must follow agent.interfaces.MemoryTool, got {type(memory).__name__}"
            )
        self.config = config
        self.obs_dim = obs_dim
        self.k_max = config.think.k_max
        self.memory = memory  # registered as a submodule when it is an nn.Module
        read_dim = memory.read_dim if memory is not None else 0
        self.core = build_core(config.core, obs_dim + read_dim)
        hidden = self.core.hidden_dim
        # the think input lives in observation space; the memory read is appended after it
        self.think_input = build_think_input(config.think, obs_dim, hidden, token_dim)
        self.halting = build_halting(config.think, hidden)
        self.heads = ActionHeads(action_space, hidden)
        self.value_head = nn.Linear(hidden, 1)
        self._core_keys = tuple(self.core.initial_state(1))
        self._mem_keys = tuple(memory.initial_state(1)) if memory is not None else ()

    # ------------------------------------------------------------------ state

    def initial_state(self, batch: int, device: torch.device | None = None) -> State:
        """Fresh state for ``batch`` envs: the core's keys and the memory's keys."""
        state = dict(self.core.initial_state(batch, device))
        if self.memory is not None:
            state.update(self.memory.initial_state(batch, device))
        return state

    def reset_state(self, state: State, episode_start: torch.Tensor) -> State:
        """Reset the envs flagged in ``episode_start`` (B,): the core to its initial state,
        the memory through ``memory.reset`` (it decides what persists across episodes)."""
        episode_start = torch.as_tensor(episode_start, device=_device(state)).bool()
        batch = next(iter(state.values())).shape[0]
        if episode_start.numel() != batch:
            raise ValueError(
                f"episode_start must hold one flag per env ({batch} in the state), got shape "
                f"{tuple(episode_start.shape)}"
            )
        episode_start = episode_start.reshape(batch)
        if not episode_start.any():
            return state
        core = {k: state[k] for k in self._core_keys}
        out = dict(state)
        out.update(
            reset_where(core, self.core.initial_state(batch, episode_start.device), episode_start)
        )
        if self.memory is not None:
            out.update(self.memory.reset(self._mem_state(state), episode_start))
        return out

    def _mem_state(self, state: State) -> State:
        return {k: state[k] for k in self._mem_keys}

    # ------------------------------------------------------------------ one core step

    def _core_step(
        self,
        x: torch.Tensor,
        state: State,
        active: torch.Tensor,
        choose: Chooser,
        recorded_op: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One observe or think step for the ``active`` (B,) envs; the others keep their state.

        -> (h (B, H), state, op (B,), op log-prob (B,), op entropy (B,), memory stats).
        """
        core_state = {k: state[k] for k in self._core_keys}
        inp = x  # (B, obs_dim)
        if self.memory is not None:
            mem_state = self._mem_state(state)
            inp = torch.cat([x, self.memory.read(mem_state)], dim=-1)  # (B, obs_dim + read_dim)
        h, core_new = self.core.step(inp, core_state)
        new = dict(state)
        new.update(core_new)
        zero = h.new_zeros(h.shape[0])
        op = torch.full_like(active, -1, dtype=torch.long)
        log_prob, entropy, stats = zero, zero, {}
        if self.memory is not None:
            dist = self.memory.op_distribution(h)
            op = choose.categorical(
                dist, recorded_op.clamp_min(0) if recorded_op is not None else None
            )
            log_prob, entropy = dist.log_prob(op), dist.entropy()
            # Envs that stopped thinking make no call: their state is kept below anyway, and
            # the store work and a traced set (memory.tracing) would be for a step not taken.
            op = torch.where(active, op, -1)
            mem_new, stats = self.memory.apply(h, op.clamp_min(0), mem_state)  # 0: none
            new.update(mem_new)
            log_prob, entropy = log_prob * active, entropy * active
            stats = {k: torch.where(active, v, torch.zeros_like(v)) for k, v in stats.items()}
        new = _where_rows(active, new, state)
        return h, new, op, log_prob, entropy, stats

    # ------------------------------------------------------------------ one frame

    def _frame(
        self,
        x_obs: torch.Tensor,
        state: State,
        choose: Chooser,
        recorded: Decisions | None = None,
        obs_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, StepInfo, tuple[torch.Tensor, torch.Tensor] | None]:
        """Observe step + think steps for one frame.

        -> (h_final (B, H), state, info, deferred) with the action fields of ``info`` left at
        zero (filled by the caller). With a halting mode that ``scores_after_loop`` the loop
        only takes the stops (sampled, by threshold, or recorded) and their log-probs and
        entropies are computed once after it (:meth:`Halting.score_stops`). In a replay
        (``recorded``) even that waits: the value and halting fields are left at zero too and
        ``deferred`` = (h_0 (B, H), h_prev (B, K, H)) for the caller to score all frames in
        one call (:meth:`_score_deferred`); else ``deferred`` is None.
        """
        B, K = x_obs.shape[0], self.k_max
        rec_steps = recorded.think_steps if recorded is not None else None
        after_loop = self.halting.scores_after_loop
        defer = rec_steps is not None and after_loop  # a replay with such a halting mode
        rec_ops = recorded.mem_ops if recorded is not None else None
        active = torch.ones(B, dtype=torch.bool, device=x_obs.device)

        h, state, op, mem_lp, mem_ent, stats = self._core_step(
            x_obs, state, active, choose, None if rec_ops is None else rec_ops[:, 0]
        )
        h0 = h
        ctx, halt_lp, halt_ent = self.halting.begin(h0, choose, rec_steps)
        ops, halt_probs, step_stats, h_prev = [op], [], [stats], []
        steps = torch.zeros(B, dtype=torch.long, device=x_obs.device)
        memo = None
        for k in range(1, K + 1):
            if defer:  # the recorded stop; scored later with every other frame's (one call)
                stop = rec_steps == k - 1
                h_prev.append(h)
            elif after_loop:  # p(stop) and the stop only; log-prob and entropy after the loop
                p_stop = self.halting.stop_prob(h)  # (B,)
                stop = choose.bernoulli(p_stop, None)  # sampled or by threshold (act)
                halt_probs.append(p_stop)
            else:
                stop, p_stop, lp, ent = self.halting.decide(k, h, ctx, choose, rec_steps)
                if not bool(active.all()):  # halted envs add nothing
                    p_stop, lp, ent = (torch.where(active, v, 0.0) for v in (p_stop, lp, ent))
                halt_probs.append(p_stop)
                halt_lp, halt_ent = halt_lp + lp, halt_ent + ent
            active = active & ~stop
            if not bool(active.any()):
                break
            if k == 1:  # per-frame work of the think input (attend: the tokens' keys/values)
                memo = self.think_input.prepare(obs_tokens)
            x = self.think_input(h, k, x_obs, memo)  # (B, obs_dim)
            h_new, state, op, lp_m, ent_m, stats = self._core_step(
                x, state, active, choose, None if rec_ops is None else rec_ops[:, k]
            )
            h = h_new if bool(active.all()) else torch.where(active[:, None], h_new, h)
            steps = steps + active.long()
            mem_lp, mem_ent = mem_lp + lp_m, mem_ent + ent_m
            ops.append(op)
            step_stats.append(stats)

        if after_loop and not defer and K:  # score this frame's stops in one go
            p_all = torch.stack(halt_probs, dim=1)  # (B, n <= K): decisions never made ...
            p_all = torch.nn.functional.pad(p_all, (0, K - p_all.shape[1]), value=0.5)
            p_stop, halt_lp, halt_ent = self.halting.score_stops(p_all, steps)  # ... masked
            halt_probs = list(p_stop.unbind(1))
        halt_prob = torch.zeros(B, K + 1, device=x_obs.device, dtype=h.dtype)
        if halt_probs:
            halt_prob[:, : len(halt_probs)] = torch.stack(halt_probs, dim=1)
        halt_prob = _force_last_stop(halt_prob, steps)
        mem_ops = torch.full((B, K + 1), -1, dtype=torch.long, device=x_obs.device)
        mem_ops[:, : len(ops)] = torch.stack(ops, dim=1)
        memory_stats = {
            key: _pad_steps([s[key] for s in step_stats], K + 1) for key in step_stats[0]
        }
        zero = h.new_zeros(B)
        info = StepInfo(
            think_steps=steps,
            halt_prob=halt_prob,
            decisions=Decisions(think_steps=steps, mem_ops=mem_ops),
            log_prob_action=zero,
            log_prob_halt=halt_lp,
            log_prob_memory=mem_lp,
            entropy_action=zero,
            entropy_halt=halt_ent,
            entropy_memory=mem_ent,
            value=zero if defer else self.value_head(h0).squeeze(-1),
            memory_stats=memory_stats,
        )
        if not defer:
            return h, state, info, None
        # decisions never made (every env halted first) are masked by score_stops
        h_prev += [h] * (K - len(h_prev))
        stacked = torch.stack(h_prev, dim=1) if K else h.new_zeros(B, 0, h.shape[-1])
        return h, state, info, (h0, stacked)

    def _score_deferred(
        self, out: StepInfo, h0: torch.Tensor, h_prev: torch.Tensor, steps: torch.Tensor
    ) -> None:
        """Fill ``out``'s value and halting fields from h_0 (T, B, H) and h_prev (T, B, K, H)
        in one call each: a replay's T frames of small per-step head calls become two
        batched ones (the update's backward is bound by the number of graph nodes)."""
        out.value = self.value_head(h0).squeeze(-1)  # (T, B)
        p_stop = self.halting.stop_prob(h_prev)  # (T, B, K)
        p_stop, out.log_prob_halt, out.entropy_halt = self.halting.score_stops(p_stop, steps)
        out.halt_prob = _force_last_stop(torch.nn.functional.pad(p_stop, (0, 1)), steps)

    # ------------------------------------------------------------------ public API

    def action_distribution(self, h: torch.Tensor) -> ActionDistribution:
        """The action distribution from hidden states (B, H)."""
        return self.heads(h)

    def act(
        self,
        obs_embedding: torch.Tensor,
        state: State | None,
        episode_start: torch.Tensor,
        deterministic: bool = False,
        obs_tokens: torch.Tensor | None = None,
    ) -> tuple[Action, State, StepInfo]:
        """One frame for a batch of envs (rollouts and evaluation).

        Args:
            obs_embedding: (B, obs_dim) fused observation embedding.
            state: the previous state (``None`` = fresh, as at the first reset).
            episode_start: (B,) bool, true where the env just reset; those rows are reset
                before stepping (SB3/CleanRL convention).
            deterministic: halting by threshold (sampled) or argmax (budget), memory op by
                argmax, action at the Beta mode / categorical argmax.
            obs_tokens: (B, N, token_dim) the frame as tokens, for the ``attend`` and ``scan``
                think inputs (their think steps re-read them); ignored by the others.

        Returns: action dict of (B, ...) tensors, the new state, :class:`StepInfo`.
        Wrap in ``torch.no_grad()`` for rollouts.
        """
        obs_embedding, obs_tokens = self._inputs(obs_embedding, obs_tokens, 2)
        if state is None:
            state = self.initial_state(obs_embedding.shape[0], obs_embedding.device)
        self._check_state(state, obs_embedding.shape[0])
        state = self.reset_state(state, episode_start)
        choose = Chooser(
            "deterministic" if deterministic else "sample", self.config.think.halt_threshold
        )
        h, state, info, _ = self._frame(obs_embedding, state, choose, obs_tokens=obs_tokens)
        dist = self.heads(h)
        action = dist.mode() if deterministic else dist.sample()
        info.log_prob_action = dist.log_prob(action)
        info.entropy_action = dist.entropy()
        return action, state, info

    def evaluate_sequence(
        self,
        obs_embedding: torch.Tensor,
        initial_state: State,
        episode_starts: torch.Tensor,
        actions: Action,
        decisions: Decisions,
        obs_tokens: torch.Tensor | None = None,
    ) -> tuple[StepInfo, State]:
        """Replay a recorded sequence with backprop through time (teacher-forced decisions).

        Args:
            obs_embedding: (T, B, obs_dim).
            initial_state: the state ``act`` was called with at t = 0 (before its reset).
            episode_starts: (T, B) the ``episode_start`` flags passed to ``act``.
            actions: dict of (T, B, ...) actions ``act`` returned (tensors or numpy arrays).
            decisions: (T, B, ...) :class:`Decisions` stacked from ``act``'s infos.
            obs_tokens: (T, B, N, token_dim) frame tokens (``attend`` and ``scan`` only).

        Returns: :class:`StepInfo` with (T, B, ...) log-probs, entropies, values and think
        steps (equal to ``act``'s on the same inputs), and the final state.
        """
        obs_embedding, obs_tokens = self._inputs(obs_embedding, obs_tokens, 3)
        if int(decisions.think_steps.max()) > self.k_max:
            raise ValueError(
                f"recorded think_steps up to {int(decisions.think_steps.max())} exceed "
                f"k_max={self.k_max}; replay with the policy that recorded them"
            )
        self._check_state(initial_state, obs_embedding.shape[1])
        choose = Chooser("replay")
        state, infos, hs, deferred = initial_state, [], [], []
        for t in range(obs_embedding.shape[0]):
            state = self.reset_state(state, episode_starts[t])
            rec = Decisions(decisions.think_steps[t], decisions.mem_ops[t])
            tokens = None if obs_tokens is None else obs_tokens[t]
            h, state, info, pending = self._frame(obs_embedding[t], state, choose, rec, tokens)
            hs.append(h)  # (B, H)
            infos.append(info)
            deferred.append(pending)
        # The heads do not recur: one call on all (T * B) final hidden states instead of T
        # small ones (the PPO update's minibatches are only a few sequences wide).
        T, B = obs_embedding.shape[:2]
        dist = self.heads(torch.cat(hs))  # over (T * B, H)
        # the actions as act returned them: tensors, or the numpy arrays of MindloopAgent.act
        device = obs_embedding.device
        flat = {
            k: torch.as_tensor(v, device=device).reshape(T * B, *v.shape[2:])
            for k, v in actions.items()
        }
        out = StepInfo.stack(infos)
        if deferred[0] is not None:  # value and halting heads: one call over all frames too
            h0s, h_prev = (torch.stack(v) for v in zip(*deferred, strict=True))
            self._score_deferred(out, h0s, h_prev, out.think_steps)
        out.log_prob_action = dist.log_prob(flat).reshape(T, B)
        out.entropy_action = dist.entropy().reshape(T, B)
        return out, state

    def ponder(
        self,
        obs_embedding: torch.Tensor,
        state: State | None,
        episode_start: torch.Tensor,
        deterministic: bool = False,
        obs_tokens: torch.Tensor | None = None,
        mem_ops: torch.Tensor | None = None,
    ) -> tuple[PonderOutput, State]:
        """PonderNet view of one frame: all envs run all ``k_max`` think steps.

        Use ``out.halting`` (B, K+1) for an expected loss over the per-step predictions of
        ``self.action_distribution(out.hidden[:, n])`` and ``out.kl_to_geometric(lambda_p)``.
        The state carried on is the one after ``out.think_steps`` steps: sampled from p_n,
        or (``deterministic``) the step ``act(deterministic=True)`` would stop at.
        ``obs_tokens`` (B, N, token_dim): the frame's tokens, as for :meth:`act`.
        ``mem_ops`` (B,) long: memory calls to teacher-force (behaviour cloning of labelled
        calls): where >= 0, the observe step makes that call and the think steps make none;
        where -1 (unlabelled), the ops are chosen as usual.
        """
        obs_embedding, obs_tokens = self._inputs(obs_embedding, obs_tokens, 2)
        if state is None:
            state = self.initial_state(obs_embedding.shape[0], obs_embedding.device)
        self._check_state(state, obs_embedding.shape[0])
        state = self.reset_state(state, episode_start)
        choose = Chooser(
            "deterministic" if deterministic else "sample", self.config.think.halt_threshold
        )
        with _no_inplace_cache(self.core):
            return self._ponder_frame(obs_embedding, state, choose, obs_tokens, mem_ops)

    def ponder_sequence(
        self,
        obs_embedding: torch.Tensor,
        initial_state: State,
        episode_starts: torch.Tensor,
        deterministic: bool = False,
        obs_tokens: torch.Tensor | None = None,
        mem_ops: torch.Tensor | None = None,
    ) -> tuple[PonderOutput, State]:
        """:meth:`ponder` over (T, B, obs_dim) with BPTT (behaviour cloning over episodes);
        ``obs_tokens`` (T, B, N, token_dim) for the ``attend`` and ``scan`` think inputs;
        ``mem_ops`` (T, B) memory calls to teacher-force (-1: not labelled), as for
        :meth:`ponder`."""
        obs_embedding, obs_tokens = self._inputs(obs_embedding, obs_tokens, 3)
        state, outs = initial_state, []
        for t in range(obs_embedding.shape[0]):
            tokens = None if obs_tokens is None else obs_tokens[t]
            ops = None if mem_ops is None else mem_ops[t]
            out, state = self.ponder(
                obs_embedding[t], state, episode_starts[t], deterministic, tokens, ops
            )
            outs.append(out)
        stacked = PonderOutput(
            **{
                f.name: torch.stack([getattr(o, f.name) for o in outs])
                for f in fields(PonderOutput)
            }
        )
        return stacked, state

    def _ponder_frame(
        self,
        x_obs: torch.Tensor,
        state: State,
        choose: Chooser,
        obs_tokens: torch.Tensor | None = None,
        mem_ops: torch.Tensor | None = None,
    ) -> tuple[PonderOutput, State]:
        B, K = x_obs.shape[0], self.k_max
        active = torch.ones(B, dtype=torch.bool, device=x_obs.device)
        think_choose = choose
        if mem_ops is not None:  # labelled frames: the label observing, no call thinking
            think_choose = _ForcedOps(choose, torch.where(mem_ops >= 0, 0, -1))
            choose = _ForcedOps(choose, mem_ops)
        h, state, op, *_ = self._core_step(x_obs, state, active, choose, None)
        h0 = h
        hs, states, ops, lambdas = [h], [state], [op], []
        memo = self.think_input.prepare(obs_tokens) if K > 0 else None
        for k in range(1, K + 1):
            lam = self.halting.stop_prob(h)  # (B,) or None (budget mode decides at h_0)
            if lam is not None:
                lambdas.append(lam)
            h, state, op, *_ = self._core_step(
                self.think_input(h, k, x_obs, memo), state, active, think_choose, None
            )
            hs.append(h)
            states.append(state)
            ops.append(op)
        lam = torch.stack(lambdas, dim=-1) if lambdas else h0.new_zeros(B, K)  # (B, K)
        p = self.halting.distribution(h0, lam)  # (B, K+1)
        if choose.mode == "deterministic":
            steps = self._deterministic_steps(p, lam)
        else:
            steps = torch.multinomial(p.detach(), 1).squeeze(-1)
        carried = {
            key: torch.stack([s[key] for s in states], dim=1)[torch.arange(B), steps]
            for key in state
        }
        out = PonderOutput(
            hidden=torch.stack(hs, dim=1),
            halting=p,
            think_steps=steps,
            value=self.value_head(h0).squeeze(-1),
            mem_ops=torch.stack(ops, dim=1),
        )
        return out, carried

    def _deterministic_steps(self, p: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The step act(deterministic=True) stops at (the halting mode's rule: first
        lambda_n >= threshold for sampled halting, the most likely budget otherwise)."""
        return self.halting.deterministic_steps(p, lam, self.config.think.halt_threshold)

    def _inputs(
        self, obs: torch.Tensor, tokens: torch.Tensor | None, ndim: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The observation embedding (and frame tokens) as tensors in the policy's dtype, on
        its device (numpy arrays and float64 are converted, as SB3's ``predict`` does), the
        embedding's shape checked (``ndim`` 2: (B, obs_dim), 3: (T, B, obs_dim))."""
        like = {"dtype": self.value_head.weight.dtype, "device": self.value_head.weight.device}
        obs = torch.as_tensor(obs, **like)
        self._check_obs(obs, ndim)
        tokens = None if tokens is None else torch.as_tensor(tokens, **like)
        if self.k_max > 0:  # up front: act only reads them once some env thinks
            self.think_input.check_tokens(tokens if tokens is None or ndim == 2 else tokens[0])
        return obs, tokens

    def _check_state(self, state: State, batch: int) -> None:
        """One-line errors for a state that does not belong to this policy or these envs."""
        missing = [k for k in (*self._core_keys, *self._mem_keys) if k not in state]
        if missing:
            raise ValueError(
                f"state lacks {', '.join(missing)}: pass the state this policy returned, or "
                "None (or policy.initial_state(batch)) for fresh envs"
            )
        held = next(iter(state.values())).shape[0]
        if held != batch:
            raise ValueError(
                f"state holds {held} envs but obs_embedding has {batch}: pass the state "
                "returned for these envs, or None for fresh ones"
            )

    def _check_obs(self, obs: torch.Tensor, ndim: int) -> None:
        if obs.dim() != ndim or obs.shape[-1] != self.obs_dim:
            want = "(B, obs_dim)" if ndim == 2 else "(T, B, obs_dim)"
            raise ValueError(
                f"obs_embedding must be {want} with obs_dim={self.obs_dim}, got {tuple(obs.shape)}"
            )

    def geometric_prior(self, lambda_p: float) -> torch.Tensor:
        """PonderNet prior over 0..k_max for this policy (for logging)."""
        return geometric_prior(lambda_p, self.k_max)


class _ForcedOps:
    """A :class:`Chooser` whose memory op is ``ops`` (B,) where >= 0 (teacher forcing of
    labelled calls in the ponder path) and the wrapped chooser's elsewhere."""

    def __init__(self, base: Chooser, ops: torch.Tensor) -> None:
        self.base, self.ops = base, ops.long()
        self.mode, self.threshold = base.mode, base.threshold

    def bernoulli(self, p: torch.Tensor, recorded: torch.Tensor | None) -> torch.Tensor:
        return self.base.bernoulli(p, recorded)

    def categorical(self, dist, recorded: torch.Tensor | None) -> torch.Tensor:
        return torch.where(self.ops >= 0, self.ops, self.base.categorical(dist, recorded))


@contextmanager
def _no_inplace_cache(core: nn.Module) -> Iterator[None]:
    """Turn off a core's in-place KV cache (``CoreConfig.inplace_kv``) for a ponder frame: it
    keeps the state after every think step to carry on the sampled one, and in-place writes
    would leave all of them holding the last step's cache."""
    inplace = getattr(core, "inplace_kv", False)
    if inplace:
        core.inplace_kv = False
    try:
        yield
    finally:
        if inplace:
            core.inplace_kv = True


def _force_last_stop(halt_prob: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """halt_prob (..., K+1) with p = 1 at step K where the env took all K think steps: the stop
    at k_max is forced (probability 1, no log-prob)."""
    K = halt_prob.shape[-1] - 1
    at_k = torch.arange(K + 1, device=halt_prob.device) == K
    return torch.where(at_k & (steps[..., None] == K), 1.0, halt_prob)


def _where_rows(active: torch.Tensor, new: State, old: State) -> State:
    """Rows of ``new`` where ``active`` (B,), rows of ``old`` elsewhere (halted envs freeze)."""
    if bool(active.all()):
        return new
    out = {}
    for key, value in new.items():
        mask = active.view(-1, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, value, old[key])
    return out


def _pad_steps(values: list[torch.Tensor], n: int) -> torch.Tensor:
    """Stack per-step (B,) tensors to (B, n), zero-padded after the last step that ran."""
    out = torch.stack(values, dim=1)
    return torch.nn.functional.pad(out, (0, n - out.shape[1]))


def _device(state: State) -> torch.device:
    return next(iter(state.values())).device


__all__ = ["Decisions", "MindloopPolicy", "PolicyConfig", "PonderOutput", "StepInfo"]
