"""Behaviour cloning from the scripted experts, with soft targets and free think steps.

Loss per frame (soft targets for the irreducible uncertainty of an expert label):

- **Bounded (muscle) heads**: the cross-entropy from a target *distribution* around the
  expert's action, Beta(1 + k u*, 1 + k (1 - u*)) with its mode at the expert's u* and
  concentration k = ``target_concentration``, to the policy's Beta, in closed form. The
  policy cannot collapse to a spike narrower than the target: it keeps the spread PPO needs
  to explore when it fine-tunes the clone, and the loss stays bounded where the expert sits
  at a bound (excitations are often exactly 0).
- **Categorical (text) heads**: cross-entropy with label smoothing (mass ``label_smoothing``
  spread uniformly over the vocabulary); with ``balance_speech`` the frames where the expert
  speaks and the silent ones weigh half each (:func:`frame_weights`).
- **Value head**: regressed on the demonstrations' discounted returns-to-go, so PPO starts
  from a critic that roughly knows the task instead of one that scrambles the clone.

**Think steps get no targets.** With ``think="ponder"`` (default) every frame runs all
``k_max`` think steps and the loss is PonderNet's expected loss ``sum_n p_n L_n`` over the
halting distribution p_n, plus ``kl_coef * KL(p || Geometric(lambda_p))`` (Banino et al.
2021): the halting head learns when more thinking lowers the imitation loss, with an exact,
low-variance gradient. ``think="sampled"`` trains the path the policy actually samples
(teacher-forced replay of sampled think steps) and the halting head by REINFORCE on the
negative imitation loss; noisier, but each frame costs only the steps it took.

**Memory calls are cloned where the expert labels them** (``Episode.memory_ops``, e.g.
CueRecall: set on the cue, get when the balls show; the recipe benchmarks/memory_recall.py
measured at 1.000 recall over 5,000 steps, where RL alone learned to avoid the tool). On
such batches the labelled ops are teacher-forced in whichever path ``think`` trains
(``ponder``: ``MindloopPolicy.ponder_sequence(mem_ops=...)``, keeping the closed-form
imitation loss; ``sampled``: the replay), so the store really holds the cue when the
reach is cloned, across BPTT chunks, since the lanes carry their state; plus
``memory_op_coef`` x the ops' cross-entropy (each op class present weighs the same: a get
may label one frame in hundreds), the codec's reconstruction loss on the items set, and
``observation_recon_coef`` x an auxiliary reconstruction of the observation embedding from
the workable vector (no task gradient crosses the store: this is what keeps *which* cue in
what a set writes). Think steps there make no calls (their op label is ``none``). Unlabelled
frames keep the ops the policy chooses (in the sampled path, with the REINFORCE signal).
On CueRecall the ponder path fits the muscles better than the replay path (held-out R^2
0.33 vs -0.28, benchmarks/RESULTS.md, Learning).

DAgger (``dagger_rounds``) collects episodes where the learner acts and the expert labels the
states it visits, and keeps training on the union, against the compounding errors of plain BC
(Ross et al. 2011; with their mixture: a step executes the expert's action with probability
``dagger_beta``, halved each round, so a weak learner's rollouts stay near useful states).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.agent import MindloopAgent
from agent.config import BCConfig
from agent.demonstrations import Episode, SequenceBatch, SequenceSampler
from agent.distributed import touch_all_parameters
from agent.heads import ActionDistribution, BetaHead, CategoricalHead
from agent.memory import OP_NAMES, OP_NONE, OP_SET
from agent.policy import Decisions
from agent.state import State, detach_state
from encoders.registry import Registry

SoftTargetLoss = Callable[[object, torch.Tensor, BCConfig, torch.Generator | None], torch.Tensor]
SOFT_TARGET_LOSSES: Registry[SoftTargetLoss] = Registry("soft-target loss")
"""Per action-head type (``agent.heads.ACTION_HEADS`` names): the BC loss of one part."""


def beta_target(head_low, head_scale, target: torch.Tensor, kappa: float):
    """The soft target of a bounded action: per dimension Beta(1 + kappa u*, 1 + kappa (1 - u*))
    on the unit interval, whose mode is the expert's u* = (a* - low) / scale."""
    u = ((target - head_low) / head_scale).clamp(0.0, 1.0)
    return 1.0 + kappa * u, 1.0 + kappa * (1.0 - u)


@SOFT_TARGET_LOSSES.register("Box")
def beta_soft_nll(dist, target, cfg: BCConfig, generator=None) -> torch.Tensor:
    """Cross-entropy from the soft target Beta (mode = expert action, concentration
    ``target_concentration``) to the policy's Beta, in closed form:
    ``-E_target[log p(u)] = -(alpha-1) E[log u] - (beta-1) E[log(1-u)] + log B(alpha, beta)``
    with ``E[log u] = psi(a) - psi(a + b)`` under the target Beta(a, b).

    A proper target *density* keeps the loss bounded where the expert sits at a bound (muscle
    excitations are often exactly 0): a blurred-then-clipped target would put point masses
    there, which a Beta can only chase by growing without limit.
    """
    target = target.reshape(target.shape[0], -1).float()  # (N, n)
    a_t, b_t = beta_target(dist.low, dist.scale, target, cfg.target_concentration)
    alpha, beta = dist.base.concentration1, dist.base.concentration0  # (N, n)
    digamma_sum = torch.digamma(a_t + b_t)
    e_log_u = torch.digamma(a_t) - digamma_sum
    e_log_1mu = torch.digamma(b_t) - digamma_sum
    log_beta_fn = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    ce = -(alpha - 1) * e_log_u - (beta - 1) * e_log_1mu + log_beta_fn  # (N, n)
    return ce.sum(-1) + torch.log(dist.scale).sum()  # density of the scaled action


@SOFT_TARGET_LOSSES.register("Discrete")
def categorical_smoothed_ce(dist, target, cfg: BCConfig, generator=None) -> torch.Tensor:
    """Cross-entropy with label smoothing."""
    logits = dist.dist.logits  # (N, V)
    index = target.long().reshape(-1) - dist.start
    return F.cross_entropy(logits, index, reduction="none", label_smoothing=cfg.label_smoothing)


_HEAD_KIND = {BetaHead: "Box", CategoricalHead: "Discrete"}


def soft_target_loss(
    agent: MindloopAgent,
    dist: ActionDistribution,
    target: dict[str, torch.Tensor],
    cfg: BCConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N,) BC loss summed over the action keys, each by its head type's soft-target loss."""
    total = 0.0
    for key, part in dist.parts.items():
        kind = _HEAD_KIND.get(type(agent.policy.heads.heads[key]))
        if kind is None:
            raise ValueError(
                f"no soft-target loss for the {type(agent.policy.heads.heads[key]).__name__} "
                f"head of action {key!r}; known: {', '.join(SOFT_TARGET_LOSSES.names())}"
            )
        total = total + SOFT_TARGET_LOSSES.get(kind)(part, target[key], cfg, generator)
    return total


@dataclass
class BCMetrics:
    loss: float
    imitation: float
    value: float
    halting: float
    """The halting loss: KL of the stop distribution to the geometric prior (``think``
    "ponder"), or the REINFORCE loss of the sampled stops (``think`` "sampled")."""
    think_steps: float
    memory_ops: float = 0.0
    """Cross-entropy of the cloned memory calls (0 without labels)."""
    observation_recon: float = 0.0
    """Auxiliary reconstruction loss of the observation from the workable vector."""
    expert_latent: float = 0.0
    """Auxiliary regression loss of the expert's latent (0 without latents)."""


class BCTrainer:
    """Gradient steps of behaviour cloning on :class:`SequenceSampler` batches.

    Args:
        agent: the agent to train (its RunningNorm statistics are fitted on the data first).
        config: BC settings.
        gamma: discount of the value targets (PPO's, so the critic carries over).
        model: what the forward runs through: the agent, or its DDP wrapper.
        seed: seeds the soft-target samples (sampled think mode).
        gather: concatenates a tensor across DDP ranks (value-target statistics).
    """

    def __init__(
        self,
        agent: MindloopAgent,
        config: BCConfig,
        gamma: float,
        model: nn.Module | None = None,
        seed: int = 0,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.agent = agent
        self.gather = gather
        self.model = model if model is not None else agent
        self.cfg = config
        self.gamma = gamma
        memory = agent.policy.memory
        # Training-only decoder of the observation embedding from the memory's workable vector
        # (labelled memory training); not part of the agent, never saved.
        self.observation_decoder: nn.Module | None = None
        params = list(agent.parameters())
        if memory is not None and hasattr(memory, "tracing"):
            self.observation_decoder = nn.Linear(
                memory.config.slot_dim, agent.encoder.embed_dim
            ).to(agent.device)
            params += list(self.observation_decoder.parameters())
        # fused, as PPO's: one kernel per step instead of ~7 ms of foreach ops a BC step
        self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5, fused=True)
        # Training-only readout of the expert's latent from the core's state (made on the
        # first batch that has latents: their size is the task's); never saved either.
        self.latent_decoder: nn.Module | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.updates_done = 0
        self._fitted_frames = -1
        self._lane_state: State | None = None

    def lr_at(self, update: int, total: int) -> float:
        """Linear warmup over ``warmup`` updates, then cosine from lr to 10% of it."""
        if update < self.cfg.warmup:
            return self.cfg.lr * (update + 1) / self.cfg.warmup
        frac = min((update - self.cfg.warmup) / max(total - self.cfg.warmup, 1), 1.0)
        return self.cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def train(
        self,
        sampler: SequenceSampler,
        updates: int,
        total_updates: int | None = None,
        on_update: Callable[[int, BCMetrics], None] | None = None,
    ) -> BCMetrics:
        """``updates`` gradient steps; returns the mean metrics of the last 10%."""
        total = total_updates or updates
        if self._fitted_frames != sampler.frames:  # value targets' scale, when data changed
            self._fitted_frames = sampler.frames
            returns = torch.as_tensor(sampler.all_returns())
            self.agent.value_norm.update(self.gather(returns) if self.gather else returns)
        self.agent.train()
        recent: list[BCMetrics] = []
        for _ in range(updates):
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.updates_done, total)
            metrics = self.step(sampler.next_batch())
            self.updates_done += 1
            recent.append(metrics)
            if on_update is not None:
                on_update(self.updates_done, metrics)
        self.agent.eval()
        tail = recent[-max(1, len(recent) // 10) :]
        return BCMetrics(
            *(float(np.mean([getattr(m, f) for m in tail])) for f in BCMetrics.__dataclass_fields__)
        )

    def step(self, batch: SequenceBatch) -> BCMetrics:
        """One gradient step on a (T, B) batch; the lanes' state carries to the next batch."""
        _T, B = batch.episode_starts.shape
        device = self.agent.device
        if self._lane_state is None or _batch_of(self._lane_state) != B:
            self._lane_state = self.agent.initial_state(B, device)
        starts = batch.episode_starts.to(device)
        actions = {k: v.to(device) for k, v in batch.actions.items()}
        op_labels = None
        if batch.memory_ops is not None and self.observation_decoder is not None:
            op_labels = batch.memory_ops.to(device)
        aux = {"memory_ops": 0.0, "observation_recon": 0.0, "expert_latent": 0.0}
        latents = latent_frames = None
        if batch.expert_latents is not None and self.cfg.expert_latent_coef > 0:
            latents = batch.expert_latents.to(device)
            if self.cfg.expert_latent_frames == "onset" and batch.latent_onsets is not None:
                latent_frames = batch.latent_onsets.to(device)
            self._ensure_latent_decoder(latents.shape[-1])
        loss_fn = self._ponder_loss if self.cfg.think == "ponder" else self._sampled_loss
        loss, imitation, halting, steps, value, state = loss_fn(
            batch.obs, self._lane_state, starts, actions, op_labels, aux, latents, latent_frames
        )
        target = self.agent.value_norm.normalize(batch.returns.to(device))
        value_loss = 0.5 * (value - target).pow(2).mean()
        total = loss + value_loss
        if self.model is not self.agent:  # DDP: every parameter must get a gradient
            total = total + touch_all_parameters(self.agent)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], 1.0
        )
        self.optimizer.step()
        self._lane_state = detach_state(state)
        return BCMetrics(
            *(float(x.detach()) for x in (total, imitation, value_loss, halting, steps)),
            **{k: float(v) for k, v in aux.items()},
        )

    def _ensure_latent_decoder(self, latent_dim: int) -> None:
        if self.latent_decoder is not None:
            return
        hidden = self.agent.policy.core.hidden_dim
        self.latent_decoder = nn.Linear(hidden, latent_dim).to(self.agent.device)
        self.optimizer.add_param_group({"params": list(self.latent_decoder.parameters())})

    def _latent_loss(self, hidden: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Squared error of the expert's latent read out of ``hidden`` ((T, B, H), or
        (T, B, K+1, H): every think step) against ``latents`` (T, B, d), per frame (and step),
        relative to the targets' spread so the weight means the same for every task."""
        pred = self.latent_decoder(hidden)  # (T, B, [K+1,] d)
        target = latents if pred.dim() == latents.dim() else latents.unsqueeze(2)
        err = (pred - target).pow(2).mean(-1)
        return err / latents.var(dim=(0, 1)).mean().clamp_min(1e-6)

    def _latent_mean(self, per_frame: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        """Mean of a (T, B) loss over every frame, or over the ``frames`` mask ((T, B) bool;
        0 when the batch has none of them)."""
        if frames is None:
            return per_frame.mean()
        return (per_frame * frames).sum() / frames.sum().clamp_min(1)

    def _ponder_loss(
        self, obs, state, starts, actions, op_labels=None, aux=None, latents=None, frames=None
    ):
        with _traced(self.agent, op_labels is not None) as (trace, embedding):
            out, new_state = self.model(obs, state, starts, ponder=True, mem_ops=op_labels)
        T, B, K1, H = out.hidden.shape
        dist = self.agent.policy.action_distribution(out.hidden.reshape(-1, H))
        target = {
            k: v.unsqueeze(2).expand(T, B, K1, *v.shape[2:]).reshape(T * B * K1, *v.shape[2:])
            for k, v in actions.items()
        }
        per_step = soft_target_loss(self.agent, dist, target, self.cfg, self.generator)
        per_step = per_step.reshape(T, B, K1)
        # sum_n p_n L_n, averaged over frames (speech and silence balanced, frame_weights)
        imitation = (out.expected(per_step) * frame_weights(actions, self.cfg)).mean()
        kl = out.kl_to_geometric(self.cfg.lambda_p).mean() if K1 > 1 else per_step.new_zeros(())
        loss = imitation + self.cfg.kl_coef * kl
        if latents is not None:  # every think step's state, weighted like the imitation
            latent = self._latent_mean(out.expected(self._latent_loss(out.hidden, latents)), frames)
            aux["expert_latent"] = float(latent.detach())
            loss = loss + self.cfg.expert_latent_coef * latent
        if op_labels is not None:
            # -log p(label) of the observe step's call + -log p(none) of every think step
            # (all K ran), on labelled frames
            op_dist = self.agent.policy.memory.op_distribution(out.hidden)  # (T, B, K1)
            step_labels = torch.zeros_like(out.mem_ops)
            step_labels[..., 0] = op_labels.clamp_min(0)
            op_ce = -op_dist.log_prob(step_labels).sum(-1)  # (T, B)
            observe_calls = [t * K1 for t in range(T)]  # every env ran all K1 steps
            loss = loss + self._memory_losses(
                op_ce, op_labels, observe_calls, trace, embedding[0], aux
            )
        return loss, imitation, kl, out.expected_steps().mean(), out.value, new_state

    def _sampled_loss(
        self, obs, state, starts, actions, op_labels=None, aux=None, latents=None, frames=None
    ):
        # 1) sample the think steps the policy would take (no gradient) ...
        with torch.no_grad():
            x, tokens = self.agent.encode_frames(obs)  # (T, B, D), (T, B, N, Dt) or None
            s, steps, ops = state, [], []
            for t in range(x.shape[0]):
                frame_tokens = None if tokens is None else tokens[t]
                _, s, info = self.agent.policy.act(x[t], s, starts[t], obs_tokens=frame_tokens)
                steps.append(info.decisions.think_steps)
                ops.append(info.decisions.mem_ops)
        decisions = Decisions(torch.stack(steps), torch.stack(ops))
        if op_labels is not None:  # the expert's memory calls, teacher-forced
            decisions = Decisions(decisions.think_steps, forced_ops(decisions.mem_ops, op_labels))
        # 2) ... then replay them with gradients: imitation through the sampled path, and
        # REINFORCE on the halting (and unlabelled memory) decisions with reward -imitation.
        targets = sample_soft_targets(self.agent, actions, self.cfg, self.generator)
        with (
            _traced(self.agent, op_labels is not None) as (trace, embedding),
            _heads_input(self.agent, latents is not None) as final_hidden,
        ):
            info, new_state = self.model(obs, state, starts, actions=targets, decisions=decisions)
        # log-likelihood of a target sampled from the soft target distribution: a one-sample
        # estimate of the same cross-entropy the ponder path computes in closed form
        imitation_per = -info.log_prob_action  # (T, B)
        advantage = -(imitation_per.detach() - imitation_per.detach().mean())
        memory_lp = info.log_prob_memory  # (T, B)
        extra = imitation_per.new_zeros(())
        if op_labels is not None:
            labelled = op_labels >= 0
            memory_lp = torch.where(labelled, 0.0, memory_lp)  # cloned, not reinforced
            # the observe step's call of each frame: frames run 1 + (most think steps in
            # the batch) memory calls, in order
            most = decisions.think_steps.reshape(op_labels.shape[0], -1).max(dim=1).values
            observe_calls = [0]
            for n in most.tolist()[:-1]:
                observe_calls.append(observe_calls[-1] + 1 + int(n))
            if len(trace) != observe_calls[-1] + 1 + int(most[-1]):
                raise RuntimeError(f"memory trace has {len(trace)} calls for frames: {most}")
            # -log p(label) summed over the frame's steps
            extra = self._memory_losses(
                -info.log_prob_memory, op_labels, observe_calls, trace, embedding[0], aux
            )
        if latents is not None:  # the state each frame acted from
            h = final_hidden[0].reshape(*latents.shape[:2], -1)  # (T, B, H)
            latent = self._latent_mean(self._latent_loss(h, latents), frames)
            aux["expert_latent"] = float(latent.detach())
            extra = extra + self.cfg.expert_latent_coef * latent
        reinforce = -(advantage * (info.log_prob_halt + memory_lp)).mean()
        imitation = (imitation_per * frame_weights(actions, self.cfg)).mean()
        loss = imitation + reinforce + extra
        steps = info.think_steps.float().mean()
        return loss, imitation, reinforce.detach(), steps, info.value, new_state

    def _memory_losses(
        self, op_ce, op_labels, observe_calls, trace, embedding, aux
    ) -> torch.Tensor:
        """Op cloning + codec loss on the set items + observation reconstruction from w.

        ``op_ce`` (T, B): cross-entropy of the labelled calls per frame; ``observe_calls``:
        per frame, the index in ``trace`` of its observe step's memory call."""
        memory = self.agent.policy.memory
        labelled = op_labels >= 0  # (T, B)
        # every op class present weighs the same (a get may label one frame in hundreds)
        present = [labelled & (op_labels == op) for op in range(len(OP_NAMES))]
        present = [m for m in present if bool(m.any())]
        op_loss = sum(_masked_mean(op_ce, m) for m in present) / max(len(present), 1)
        w = torch.stack([trace[i][0] for i in observe_calls])  # (T, B, slot_dim) observe steps
        target = embedding.detach()  # (T, B, D): the frame, not a moving target for the encoder
        # relative to the embedding's spread, so the loss does not fade with its scale
        err = (self.observation_decoder(w) - target).pow(2).mean()
        recon = err / target.var(dim=(0, 1)).mean().clamp_min(1e-8)
        sets = torch.cat([w_i[op_i == OP_SET] for w_i, op_i in trace])  # (n_set, slot_dim)
        codec = recon.new_zeros(())
        if sets.shape[0] >= 2 and memory.config.codec_loss_coef > 0:
            memory.codec.update_statistics(sets.detach())
            codec = memory.config.codec_loss_coef * memory.codec.reconstruction_loss(sets)[0].mean()
        aux["memory_ops"], aux["observation_recon"] = float(op_loss.detach()), float(recon.detach())
        return self.cfg.memory_op_coef * op_loss + self.cfg.observation_recon_coef * recon + codec


def frame_weights(actions: dict[str, torch.Tensor], cfg: BCConfig) -> torch.Tensor:
    """(T, B) weights of the frames' imitation losses, mean 1. With ``balance_speech`` and a
    ``text`` action, the frames where the expert says a token and those where it is silent
    weigh half each (an answer can be one frame in sixty: unweighted, the clone learns
    silence first and the answer last); else all 1."""
    text = actions.get("text")
    if text is None or not cfg.balance_speech:
        some = next(iter(actions.values()))
        return torch.ones(some.shape[:2], device=some.device)
    speech = (text.reshape(*text.shape[:2], -1) != 0).any(-1)  # (T, B)
    n, n_speech = speech.numel(), int(speech.sum())
    if n_speech in (0, n):
        return torch.ones(speech.shape, device=text.device)
    return torch.where(speech, 0.5 * n / n_speech, 0.5 * n / (n - n_speech))


def forced_ops(sampled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Memory ops (T, B, K+1) to replay: on labelled frames (``labels`` (T, B) >= 0) the
    label at the observe step and no call on the think steps that ran (-1 where none ran);
    unlabelled frames keep the sampled ops."""
    forced = torch.where(sampled >= 0, OP_NONE, -1)
    forced[..., 0] = labels.clamp_min(0)
    return torch.where((labels >= 0)[..., None], forced, sampled)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


@contextmanager
def _heads_input(agent: MindloopAgent, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Within the block, collect what the action heads are called on (the replay's final
    hidden states, (T * B, H), with their graph)."""
    captured: list[torch.Tensor] = []
    if not enabled:
        yield captured
        return
    handle = agent.policy.heads.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def _traced(agent: MindloopAgent, enabled: bool) -> Iterator[tuple[list, list]]:
    """Within the block, collect the memory's calls (``TwoTierMemory.tracing``: (w, op) per
    call) and the encoder's output (the (T, B, D) observation embedding), both with graphs."""
    if not enabled:
        yield [], []
        return
    captured: list[torch.Tensor] = []

    def keep_embedding(module, args, out) -> None:  # out: embedding, or (embedding, tokens)
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = agent.encoder.register_forward_hook(keep_embedding)
    try:
        with agent.policy.memory.tracing() as trace:
            yield trace, captured
    finally:
        handle.remove()


def sample_soft_targets(
    agent: MindloopAgent,
    actions: dict[str, torch.Tensor],
    cfg: BCConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One sample per frame from the soft target distribution around the expert's action:
    bounded keys from the target Beta of :func:`beta_target`, discrete keys replaced by a
    uniform token with probability label_smoothing."""
    out = {}
    for key, value in actions.items():
        head = agent.policy.heads.heads[key]
        if isinstance(head, BetaHead):
            shape = value.shape
            flat = value.reshape(*shape[: value.dim() - len(head.shape)], -1).float()
            a, b = beta_target(head.low, head.scale, flat, cfg.target_concentration)
            out[key] = (head.low + head.scale * _sample_beta(a, b, generator)).reshape(shape)
        elif isinstance(head, CategoricalHead):
            n = head.proj.out_features
            swap = (
                torch.rand(value.shape, generator=generator, device=value.device)
                < cfg.label_smoothing
            )
            rand = (
                torch.randint(n, value.shape, generator=generator, device=value.device) + head.start
            )
            out[key] = torch.where(swap, rand, value.long())
        else:
            raise ValueError(f"no soft targets for the {type(head).__name__} head of {key!r}")
    return out


def _sample_beta(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None):
    """Beta(a, b) samples from two seeded Gamma draws (torch's Beta sampler takes no
    generator)."""
    x = torch._standard_gamma(a) if generator is None else _gamma(a, generator)
    y = torch._standard_gamma(b) if generator is None else _gamma(b, generator)
    return (x / (x + y)).clamp(1e-4, 1 - 1e-4)


def _gamma(shape_param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Marsaglia-Tsang for shape >= 1 (our targets have a, b >= 1), seeded by ``generator``
    d = shape_param - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(shape_param)
    todo = torch.ones_like(shape_param, dtype=torch.bool)
    while bool(todo.any()):
        z = torch.randn(shape_param.shape, generator=generator, device=shape_param.device)
        u = torch.rand(shape_param.shape, generator=generator, device=shape_param.device)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (
            torch.log(u.clamp_min(1e-12))
            < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-12))
        )
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
    return out


def _batch_of(state: State) -> int:
    return next(iter(state.values())).shape[0]


@torch.no_grad()
def action_agreement(agent: MindloopAgent, episodes: list[Episode]) -> dict[str, float]:
    """How well the deterministic policy matches expert labels, replaying whole episodes.

    Bounded keys: mean absolute error and R^2 over all action dimensions; discrete keys:
    accuracy. Keys come out as ``<action key>/mae``, ``/r2``, ``/accuracy``. With a memory
    and expert memory-op labels also ``memory_op/accuracy`` (all frames) and
    ``memory_op/call_recall`` (frames where the expert calls set/get: the same call made).
    """
    agent.eval()
    preds: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    op_pred: list[int] = []
    op_true: list[int] = []
    for ep in episodes:
        state = agent.initial_state(1)
        for t in range(len(ep)):
            obs = {k: v[t : t + 1] for k, v in ep.obs.items()}
            start = torch.tensor([t == 0])
            act, state, info = agent.act(obs, state, start, deterministic=True)
            if ep.memory_ops is not None and agent.policy.memory is not None:
                op_pred.append(int(info.decisions.mem_ops[0, 0]))
                op_true.append(int(ep.memory_ops[t]))
            for k, v in act.items():
                preds.setdefault(k, []).append(v.reshape(-1))
                labels.setdefault(k, []).append(np.asarray(ep.actions[k][t]).reshape(-1))
    out: dict[str, float] = {}
    for key in preds:
        p = np.stack(preds[key]).astype(np.float64)
        y = np.stack(labels[key]).astype(np.float64)
        if np.issubdtype(np.asarray(episodes[0].actions[key]).dtype, np.integer):
            out[f"{key}/accuracy"] = float(np.mean(p == y))
        else:
            out[f"{key}/mae"] = float(np.mean(np.abs(p - y)))
            out[f"{key}/r2"] = float(
                1 - np.sum((p - y) ** 2) / max(np.sum((y - y.mean(0)) ** 2), 1e-12)
            )
    if op_true:
        pred, true = np.array(op_pred), np.array(op_true)
        out["memory_op/accuracy"] = float(np.mean(pred == true))
        calls = true != OP_NONE
        if calls.any():
            out["memory_op/call_recall"] = float(np.mean(pred[calls] == true[calls]))
    return out


def fit_normalization(
    agent: MindloopAgent, episodes: list[Episode], gather=None, chunk: int = 4096
) -> None:
    """Set the RunningNorm statistics from demonstration frames (before training on them).
    ``gather`` concatenates the recorded inputs across DDP ranks (identical statistics)."""
    from agent.agent import NormRecorder

    recorder = NormRecorder(agent)
    agent.eval()
    with torch.no_grad(), recorder.recording():
        for ep in episodes:
            for start in range(0, len(ep), chunk):
                _encode_vectors_only(
                    agent, {k: v[start : start + chunk] for k, v in ep.obs.items()}
                )
    recorder.apply(gather)


def _encode_vectors_only(agent: MindloopAgent, obs: dict[str, np.ndarray]) -> None:
    """Run only the encoders that hold a RunningNorm (skips the costly image/audio nets)."""
    from encoders.normalization import RunningNorm

    for key, encoder in agent.encoder.encoders.items():
        if any(isinstance(m, RunningNorm) for m in encoder.modules()):
            encoder(torch.as_tensor(obs[key]).to(agent.device))


__all__ = [
    "SOFT_TARGET_LOSSES",
    "BCMetrics",
    "BCTrainer",
    "action_agreement",
    "beta_soft_nll",
    "categorical_smoothed_ce",
    "fit_normalization",
    "sample_soft_targets",
    "soft_target_loss",
]
