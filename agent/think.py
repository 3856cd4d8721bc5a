"""Think steps: what the core is fed instead of a frame, and when it stops thinking.

After each observe step the policy (``agent/policy.py``) may step the core up to ``k_max``
more times on a *think input* (seed 000: "RNN can be fed think tokens to be deep"). Two parts
here, each a small registry:

- ``THINK_INPUTS``: ``token`` (a learned think token), ``adapter`` (continuous
  chain-of-thought: h is fed back through a learned adapter into input space, which answers
  the seed's worry that "the output of the last layer and the input to the first layer have
  different distributions") or ``attend`` (the adapter plus a *glimpse*: each think step
  re-reads the frame by attending from h to the frame's tokens, e.g. the entries of a vector
  or the cells of a CNN feature map, so a think step can look at a different part of the
  frame each time). Optionally a step encoding (which think step this is, as the Universal
  Transformer's timestep embedding) and the observation re-fed at every think step (as ACT
  and PonderNet feed their input at every ponder step).
- ``HALTING``: ``sampled`` (a halting head gives p(stop | h_n) at every step n and the stop is
  *sampled*, so the number of think steps varies between runs) or ``budget`` (the agent picks
  k in 0..k_max up front from h_0: the seed's "tool call to allocate a think budget") or
  ``fixed`` (always k_max think steps, no decision: the fixed-depth baseline that adaptive
  halting is measured against).

Conventions shared by the policy and training code. Step n = 0 is the observe step, n >= 1
are think steps; ``think_steps`` n* in 0..k_max is the step after which the env answered.
The halting distribution over n* is ``p_n = lambda_n * prod_{j<n} (1 - lambda_j)`` with
``lambda_kmax = 1`` (PonderNet, Banino et al. 2021, eq. 2-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributions as D
from torch import nn

from agent.heads import bernoulli_entropy
from encoders.registry import Registry

THINK_INPUTS: Registry[type[nn.Module]] = Registry("think input")
HALTING: Registry[type[nn.Module]] = Registry("halting mode")
STEP_ENCODINGS = ("none", "learned", "sinusoidal")


@dataclass
class ThinkConfig:
    """How many think steps, on what input, and how the number is chosen."""

    k_max: int = 4
    """Most think steps after an observe step (0 disables thinking)."""
    think_input: str = "token"
    """What a think step feeds the core: token (learned think token), adapter (h fed back),
    attend (adapter + attention over the frame's tokens), scan (adapter + the next
    ``scan_group`` tokens of the frame)."""
    halting: str = "sampled"
    """sampled: p(stop) per step, sampled; budget: k in 0..k_max picked up front; fixed:
    always k_max think steps (the fixed-depth baseline)."""
    step_encoding: str = "none"
    """Add the think-step index to the think input: none, learned, sinusoidal."""
    reinject_obs: bool = False
    """Also add the frame's observation embedding to every think input (ACT/PonderNet style)."""
    halt_threshold: float = 0.5
    """Deterministic mode stops at the first step with p(stop) >= this (sampled halting)."""
    init_halt_prob: float = 0.5
    """Initial p(stop) of the sampled halting head (its bias); lower explores longer thinking."""
    attend_heads: int = 4
    """attend only: attention heads of the glimpse over the frame's tokens."""
    attend_dim: int = 0
    """attend only: width of the glimpse's queries, keys and values (split over the heads);
    0 = the core's input size."""
    attend_top_k: int = 0
    """attend only: a think step reads at most this many tokens (per head: hard top-k
    attention, a fovea); 0 = soft attention over all tokens."""
    scan_group: int = 4
    """scan only: tokens a think step reads (step k reads tokens (k-1)*G .. k*G-1)."""

    def __post_init__(self) -> None:
        if self.k_max < 0:
            raise ValueError(f"think k_max must be >= 0 (0 disables thinking), got {self.k_max}")
        if self.think_input not in THINK_INPUTS:
            raise ValueError(
                f"unknown think_input {self.think_input!r}; available: {', '.join(THINK_INPUTS.names())}"
            )
        if self.halting not in HALTING:
            raise ValueError(
                f"unknown halting {self.halting!r}; available: {', '.join(HALTING.names())}"
            )
        if self.step_encoding not in STEP_ENCODINGS:
            raise ValueError(
                f"unknown step_encoding {self.step_encoding!r}; available: {', '.join(STEP_ENCODINGS)}"
            )
        if not 0.0 < self.halt_threshold <= 1.0:
            raise ValueError(f"halt_threshold must be in (0, 1], got {self.halt_threshold}")
        if not 0.0 < self.init_halt_prob < 1.0:
            raise ValueError(f"init_halt_prob must be in (0, 1), got {self.init_halt_prob}")
        if self.attend_heads < 1:
            raise ValueError(f"attend_heads must be >= 1, got {self.attend_heads}")
        if self.scan_group < 1:
            raise ValueError(f"scan_group must be >= 1, got {self.scan_group}")
        if self.attend_top_k < 0:
            raise ValueError(f"attend_top_k must be >= 0 (0 = all tokens), got {self.attend_top_k}")
        if self.attend_dim < 0 or self.attend_dim % self.attend_heads:
            raise ValueError(
                f"attend_dim must be 0 (the input size) or a multiple of attend_heads="
                f"{self.attend_heads}, got {self.attend_dim}"
            )


# --------------------------------------------------------------------------- think inputs


class ThinkInput(nn.Module):
    """Base class: ``forward(h, k, x_obs, memo) -> x_k`` (B, input_dim) for think step k >= 1.

    Subclasses give the content (``_content``); the base adds the optional step encoding and
    the re-fed observation, so every think input gets them the same way. ``prepare`` does the
    per-frame work the frame's think steps share (``attend``: keys and values of the frame's
    tokens) and returns the ``memo`` passed to every step; modes that read no tokens return
    None. ``needs_tokens`` says whether the policy must be given ``obs_tokens``.
    """

    needs_tokens = False

    def __init__(
        self, input_dim: int, hidden_dim: int, config: ThinkConfig, token_dim: int | None = None
    ) -> None:
        super().__init__()
        self.mode_name = config.think_input
        self.reinject_obs = config.reinject_obs
        self.step_encoding = config.step_encoding
        n_steps = config.k_max + 1
        if config.step_encoding == "learned":
            self.step_table = nn.Parameter(torch.randn(n_steps, input_dim) * 0.5)
        elif config.step_encoding == "sinusoidal":
            self.register_buffer("step_table", _sinusoid(n_steps, input_dim), persistent=False)

    def prepare(self, obs_tokens: torch.Tensor | None) -> Any:
        """Per-frame work shared by its think steps, from the frame's tokens (B, N, token_dim)."""
        return None

    def check_tokens(self, obs_tokens: torch.Tensor | None) -> None:
        """A one-line error unless ``obs_tokens`` (B, N, token_dim) are what this think input
        reads; nothing for modes that read no tokens. The policy checks every frame up front,
        so a missing or wrong input fails whether or not any env goes on to think."""
        if self.needs_tokens:
            _check_tokens(obs_tokens, getattr(self, "token_dim", None), self.mode_name)

    def _content(self, h: torch.Tensor, k: int, x_obs: torch.Tensor, memo: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, h: torch.Tensor, k: int, x_obs: torch.Tensor, memo: Any = None
    ) -> torch.Tensor:
        x = self._content(h, k, x_obs, memo)  # (B, D) or (D,)
        if self.step_encoding != "none":
            x = x + self.step_table[k]
        if self.reinject_obs:
            x = x + x_obs
        return x.expand_as(x_obs)


def _sinusoid(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal encodings of positions 0..n-1 (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


@THINK_INPUTS.register("token")
class ThinkToken(ThinkInput):
    """A learned think token: the same vector at every think step (plus the step encoding)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, config: ThinkConfig, token_dim: int | None = None
    ) -> None:
        super().__init__(input_dim, hidden_dim, config)
        self.token = nn.Parameter(torch.randn(input_dim) * 0.5)

    def _content(self, h, k, x_obs, memo) -> torch.Tensor:
        return self.token  # (D,), broadcast over the batch


@THINK_INPUTS.register("adapter")
class HiddenAdapter(ThinkInput):
    """Continuous CoT: the last hidden state, mapped back into input space by a learned MLP.

    The LayerNorm puts h on a fixed scale first: the core's input layer was trained on
    observation embeddings, not on raw hidden states. With ``reinject_obs`` the MLP also sees
    the frame's observation embedding, so a think step can combine what it thought with what
    it sees non-linearly (e.g. look at a different part of the input at each step) before the
    core's gates, instead of only adding the two.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        config: ThinkConfig,
        token_dim: int | None = None,
        extra_dim: int = 0,
    ) -> None:
        super().__init__(input_dim, hidden_dim, config)
        self.norm = nn.LayerNorm(hidden_dim)
        in_dim = hidden_dim + (input_dim if config.reinject_obs else 0) + extra_dim
        self.adapter = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, input_dim)
        )

    def _adapt(self, h: torch.Tensor, x_obs: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        z = [self.norm(h)]  # (B, H)
        if self.reinject_obs:
            z.append(x_obs)  # (B, D)
        return self.adapter(torch.cat([*z, *extra], dim=-1))  # (B, D)

    def _content(self, h, k, x_obs, memo) -> torch.Tensor:
        return self._adapt(h, x_obs)


@THINK_INPUTS.register("attend")
class GlimpseAdapter(HiddenAdapter):
    """The adapter plus a glimpse: each think step re-reads the frame through attention.

    The frame comes as tokens (B, N, token_dim) beside its pooled embedding: the entries of a
    vector, the cells of a CNN feature map (with their position embedded), the words of a
    text. At think step k the query is made from h_{k-1} (and the step encoding, when on); a
    multi-head attention over the tokens reads (B, heads * d_head), and the adapter maps
    [norm(h), read (, x_obs)] to the core's input. So each think step can look at a different
    part of the frame: depth *and* a fresh look, where ``adapter`` only sees the pooled vector.
    With ``attend_top_k`` a step reads only its k best-matching tokens (a fovea): what one
    step can take in is bounded, so covering more of the frame takes more think steps.
    Keys and values are computed once per frame (``prepare``), each step costs one query.
    """

    needs_tokens = True

    def __init__(
        self, input_dim: int, hidden_dim: int, config: ThinkConfig, token_dim: int | None = None
    ) -> None:
        heads = config.attend_heads
        d_head = max(1, (config.attend_dim or input_dim) // heads)
        super().__init__(input_dim, hidden_dim, config, token_dim, extra_dim=heads * d_head)
        token_dim = token_dim or input_dim
        self.heads, self.d_head = heads, d_head
        step_dim = input_dim if config.step_encoding != "none" else 0
        self.query = nn.Linear(hidden_dim + step_dim, heads * d_head)
        self.key = nn.Linear(token_dim, heads * d_head)
        self.value = nn.Linear(token_dim, heads * d_head)
        self.token_dim = token_dim
        self.top_k = config.attend_top_k
        self.recorded: list[torch.Tensor] | None = None
        """Set to a list to collect each step's attention weights (B, N, heads), detached
        (for inspection: which tokens each think step read)."""

    def prepare(self, obs_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_tokens(obs_tokens, self.token_dim, "attend")
        B, N, _ = obs_tokens.shape
        split = (B, N, self.heads, self.d_head)
        return self.key(obs_tokens).view(split), self.value(obs_tokens).view(split)

    def _content(self, h, k, x_obs, memo) -> torch.Tensor:
        keys, values = memo  # (B, N, heads, d_head) each
        B = h.shape[0]
        z = self.norm(h)  # (B, H)
        if self.step_encoding != "none":
            z = torch.cat([z, self.step_table[k].expand(B, -1)], dim=-1)  # (B, H + D)
        q = self.query(z).view(B, 1, self.heads, self.d_head) * self.d_head**-0.5
        # One query per row: a broadcast product and sums, cheaper on CPU (backward included)
        # than batched matmuls of (1 x d) by (d x N) or the fused attention kernel.
        scores = (q * keys).sum(-1)  # (B, N, heads)
        if 0 < self.top_k < scores.shape[1]:  # a fovea: only the k best tokens are read
            kth = scores.topk(self.top_k, dim=1).values[:, -1:]  # (B, 1, heads)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        if self.recorded is not None:
            self.recorded.append(weights.detach())
        read = (weights[..., None] * values).sum(1)  # (B, heads, d_head)
        return self._adapt(h, x_obs, read.reshape(B, self.heads * self.d_head))


@THINK_INPUTS.register("scan")
class ScanAdapter(HiddenAdapter):
    """The adapter plus a serial read: think step k reads the next ``scan_group`` tokens.

    Step k takes in tokens (k-1)*G .. k*G-1 of the frame (G = ``scan_group``), summed to one
    (B, token_dim) read, and the adapter maps [norm(h), read (, x_obs)] to the core's input:
    a glimpse in a fixed order (the order the encoder emits its tokens: the events of a
    frame, the words of a text, the cells of a feature map in raster order). What one step
    takes in is bounded, so a frame with more tokens takes more think steps to read, and
    since every step applies the same function to the next group, what is learned on short
    frames carries over to longer ones (nothing depends on the step's index unless
    ``step_encoding`` is on). Reads past the last token, and all-zero padding tokens, are
    zeros: the halting head can learn to stop when the reads run out.
    """

    needs_tokens = True

    def __init__(
        self, input_dim: int, hidden_dim: int, config: ThinkConfig, token_dim: int | None = None
    ) -> None:
        token_dim = token_dim or input_dim
        super().__init__(input_dim, hidden_dim, config, token_dim, extra_dim=token_dim)
        self.token_dim, self.group = token_dim, config.scan_group

    def prepare(self, obs_tokens: torch.Tensor | None) -> torch.Tensor:
        _check_tokens(obs_tokens, self.token_dim, "scan")
        return obs_tokens

    def _content(self, h, k, x_obs, memo) -> torch.Tensor:
        tokens = memo  # (B, N, token_dim)
        read = tokens[:, (k - 1) * self.group : k * self.group].sum(1)  # (B, token_dim)
        return self._adapt(h, x_obs, read)


def _check_tokens(obs_tokens: torch.Tensor | None, token_dim: int | None, mode: str) -> None:
    if obs_tokens is None:
        raise ValueError(
            f"think_input={mode!r} reads the frame's tokens: pass obs_tokens (B, N, token_dim)"
        )
    if obs_tokens.dim() != 3 or (token_dim is not None and obs_tokens.shape[-1] != token_dim):
        raise ValueError(
            f"obs_tokens must be (B, N, token_dim={token_dim}), got {tuple(obs_tokens.shape)}"
        )


# --------------------------------------------------------------------------- halting


class Chooser:
    """How a decision is made: ``sample``, ``deterministic`` (threshold/argmax) or ``replay``
    (teacher forcing with recorded decisions, for the sequence forward)."""

    MODES = ("sample", "deterministic", "replay")

    def __init__(self, mode: str, threshold: float = 0.5) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown decision mode {mode!r}; available: {', '.join(self.MODES)}")
        self.mode = mode
        self.threshold = threshold

    def bernoulli(self, p: torch.Tensor, recorded: torch.Tensor | None) -> torch.Tensor:
        """A (B,) bool decision with P(True) = p."""
        if self.mode == "replay":
            return recorded.bool()
        if self.mode == "deterministic":
            return p >= self.threshold
        return torch.bernoulli(p.detach()).bool()

    def categorical(self, dist: D.Distribution, recorded: torch.Tensor | None) -> torch.Tensor:
        """A (B,) long decision from a categorical-like distribution."""
        if self.mode == "replay":
            return recorded.long()
        if self.mode == "deterministic":
            return dist.mode
        return dist.sample()


class Halting(nn.Module):
    """Base class of halting modes. The policy calls ``begin`` once at h_0, then ``decide``
    before each think step k = 1..k_max at h_{k-1}; each returns the decision's log-prob and
    entropy (B,) for the rows it applies to."""

    def begin(
        self, h0: torch.Tensor, choose: Chooser, recorded_steps: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Decisions made at h_0 -> (context for ``decide``, log_prob (B,), entropy (B,))."""
        zero = h0.new_zeros(h0.shape[0])
        return {}, zero, zero

    def decide(
        self,
        k: int,
        h: torch.Tensor,
        ctx: dict[str, torch.Tensor],
        choose: Chooser,
        recorded_steps: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stop before think step k (i.e. answer after k-1 think steps)? Decided at h_{k-1}.

        -> (stop (B,) bool, p_stop (B,), log_prob (B,), entropy (B,)).
        """
        raise NotImplementedError

    def distribution(self, h0: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
        """The halting distribution p_n (B, k_max+1) given h_0 and per-step p(stop) (B, k_max)."""
        raise NotImplementedError

    def stop_prob(self, h: torch.Tensor) -> torch.Tensor | None:
        """p(stop | h_n) (B,) when the mode decides step by step, else None."""
        return None

    def deterministic_steps(
        self, p: torch.Tensor, lambdas: torch.Tensor, threshold: float
    ) -> torch.Tensor:
        """(B,) the think steps of a deterministic decision, from the halting distribution
        p (B, K+1) and the per-step p(stop) (B, K): its most likely step by default."""
        return p.argmax(-1)

    scores_after_loop: bool = False
    """Whether the stops are scored after the think loop by :meth:`score_stops` from the
    per-step p(stop) (:meth:`stop_prob`): then a rollout's loop only samples, and a replay
    scores all its frames' recorded stops in one batched call."""

    def score_stops(
        self, p_stop: torch.Tensor, steps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score the stops of frames whose think steps are known (see ``scores_after_loop``).

        Args:
            p_stop: (..., k_max): p(stop) at each decision k = 1..k_max, made at h_{k-1}
                (any value where no decision was made).
            steps: (...,) long: the think steps taken (sampled or recorded).

        Returns: p_stop (..., k_max) (0 where no decision was made), log_prob (...),
        entropy (...): the sums over the decisions made, as :meth:`decide` gives them.
        """
        raise NotImplementedError


@HALTING.register("sampled")
class SampledHalting(Halting):
    """p(stop | h_n) = sigmoid(w . h_n + b) before every think step; the stop is sampled."""

    def __init__(self, hidden_dim: int, config: ThinkConfig) -> None:
        super().__init__()
        self.k_max = config.k_max
        self.head = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.head.weight)
        p = config.init_halt_prob
        nn.init.constant_(self.head.bias, math.log(p / (1 - p)))

    def stop_prob(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(h).squeeze(-1))  # (B,)

    def decide(self, k, h, ctx, choose, recorded_steps):
        p = self.stop_prob(h)
        recorded = None if recorded_steps is None else recorded_steps == k - 1
        stop = choose.bernoulli(p, recorded)
        return stop, p, _stop_log_prob(p, stop), bernoulli_entropy(p)

    def distribution(self, h0, lambdas):
        return halting_distribution(lambdas)

    def deterministic_steps(self, p, lambdas, threshold):
        # the first step whose p(stop) reaches the threshold; step K always stops
        # (B, K+1): the forced stop at K is its own column (K = 0: the only one)
        forced = torch.ones(lambdas.shape[0], 1, dtype=torch.bool, device=lambdas.device)
        over = torch.cat([lambdas >= threshold, forced], dim=-1)
        return over.float().argmax(-1)  # (B,) the first True

    scores_after_loop = True

    def score_stops(self, p_stop, steps):
        idx = torch.arange(p_stop.shape[-1], device=p_stop.device)  # decision idx + 1, at h_idx
        decided = idx <= steps[..., None]  # the env had not stopped before decision idx + 1
        log_prob = _stop_log_prob(p_stop, idx == steps[..., None])
        zero = torch.zeros_like(p_stop)
        return (
            torch.where(decided, p_stop, zero),
            torch.where(decided, log_prob, zero).sum(-1),
            torch.where(decided, bernoulli_entropy(p_stop), zero).sum(-1),
        )


def _stop_log_prob(p_stop: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """log P(stop) where ``stop``, log P(go on) elsewhere (p clamped away from 0 and 1)."""
    p_safe = p_stop.clamp(1e-7, 1 - 1e-7)
    return torch.where(stop, p_safe.log(), (1 - p_safe).log())


@HALTING.register("budget")
class BudgetHalting(Halting):
    """A categorical over k in 0..k_max from h_0: the think budget is chosen up front."""

    def __init__(self, hidden_dim: int, config: ThinkConfig) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_dim, config.k_max + 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def budget_distribution(self, h0: torch.Tensor) -> D.Categorical:
        return D.Categorical(logits=self.head(h0))

    def begin(self, h0, choose, recorded_steps):
        dist = self.budget_distribution(h0)
        budget = choose.categorical(dist, recorded_steps)
        # the hazard p(stop at n | not stopped before n), reported as the per-step p(stop)
        p = dist.probs  # (B, K+1)
        tail = p.flip(-1).cumsum(-1).flip(-1)  # sum_{j>=n} p_j
        hazard = p / tail.clamp_min(1e-10)
        return {"budget": budget, "hazard": hazard}, dist.log_prob(budget), dist.entropy()

    def decide(self, k, h, ctx, choose, recorded_steps):
        stop = ctx["budget"] == k - 1
        zero = h.new_zeros(h.shape[0])
        # the choice was made (and scored) up front: no log-prob or entropy here
        return stop, ctx["hazard"][:, k - 1], zero, zero

    def distribution(self, h0, lambdas):
        return self.budget_distribution(h0).probs


@HALTING.register("fixed")
class FixedHalting(Halting):
    """Always k_max think steps: nothing decided, nothing to learn, no log-prob. The
    fixed-depth baseline (PonderNet's and ACT's comparison), and a way to make every frame
    think, e.g. so the ``attend`` glimpse runs at evaluation too."""

    def __init__(self, hidden_dim: int, config: ThinkConfig) -> None:
        super().__init__()
        self.k_max = config.k_max

    def decide(self, k, h, ctx, choose, recorded_steps):
        zero = h.new_zeros(h.shape[0])
        return zero.bool(), zero, zero, zero

    def distribution(self, h0, lambdas):
        p = h0.new_zeros(h0.shape[0], self.k_max + 1)
        p[:, -1] = 1.0
        return p


def build_halting(config: ThinkConfig, hidden_dim: int) -> Halting:
    return HALTING.get(config.halting)(hidden_dim, config)


def build_think_input(
    config: ThinkConfig, input_dim: int, hidden_dim: int, token_dim: int | None = None
) -> ThinkInput:
    """The think input named by ``config``; ``token_dim`` (default ``input_dim``) is the size
    of the frame tokens that ``attend`` reads."""
    if token_dim is not None and token_dim < 1:
        raise ValueError(f"token_dim must be >= 1, got {token_dim}")
    return THINK_INPUTS.get(config.think_input)(input_dim, hidden_dim, config, token_dim)


# --------------------------------------------------------------------------- PonderNet maths


def halting_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p_n = lambda_n prod_{j<n}(1 - lambda_j) for n = 0..K from lambdas (..., K); the last
    step halts for sure (lambda_K = 1), so p sums to 1. Returns (..., K+1)."""
    ones = lambdas.new_ones(*lambdas.shape[:-1], 1)
    lam = torch.cat([lambdas, ones], dim=-1)  # (..., K+1)
    survive = torch.cumprod(torch.cat([ones, 1 - lambdas], dim=-1), dim=-1)  # prod_{j<n}
    return lam * survive


def geometric_prior(
    lambda_p: float, k_max: int, device: torch.device | None = None
) -> torch.Tensor:
    """PonderNet's prior: Geometric(lambda_p) over n = 0..k_max, truncated and renormalised."""
    if not 0.0 < lambda_p <= 1.0:
        raise ValueError(f"lambda_p must be in (0, 1], got {lambda_p}")
    n = torch.arange(k_max + 1, dtype=torch.float32, device=device)
    prior = lambda_p * (1 - lambda_p) ** n
    return prior / prior.sum()


def kl_to_geometric(p: torch.Tensor, lambda_p: float) -> torch.Tensor:
    """KL(p || Geometric(lambda_p)) per row of p (..., K+1) -> (...)."""
    prior = geometric_prior(lambda_p, p.shape[-1] - 1, p.device)
    p_safe = p.clamp_min(1e-10)
    return (p * (p_safe.log() - prior.log())).sum(-1)


__all__ = [
    "HALTING",
    "STEP_ENCODINGS",
    "THINK_INPUTS",
    "BudgetHalting",
    "Chooser",
    "GlimpseAdapter",
    "Halting",
    "HiddenAdapter",
    "SampledHalting",
    "ThinkConfig",
    "ThinkInput",
    "ThinkToken",
    "build_halting",
    "build_think_input",
    "geometric_prior",
    "halting_distribution",
    "kl_to_geometric",
]
