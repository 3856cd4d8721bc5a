"""Action heads built from a Gymnasium action space: h (B, hidden_dim) -> a distribution.

One head per key of the action ``Dict``, chosen by the key's space type from the
``ACTION_HEADS`` registry:

- ``Box`` with finite bounds (``muscles``: [0, 1]) -> independent Beta distributions scaled to
  the bounds. Beta is the proper bounded choice (Chou et al. 2017): no probability mass is
  clipped at the bounds, unlike a squashed or clipped Gaussian.
- ``Discrete(n)`` (``text``: token 0 = silence) -> a categorical.

:class:`ActionHeads` joins them into :class:`ActionDistribution` whose log-prob and entropy
are sums over keys (the action is one joint decision per frame).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import distributions as D
from torch import nn

from encoders.registry import Registry

Action = dict[str, torch.Tensor]

ACTION_HEADS: Registry[type[nn.Module]] = Registry("action head")


@ACTION_HEADS.register("Box")
class BetaHead(nn.Module):
    """Independent Beta(alpha, beta) per dimension of a bounded Box, affinely mapped to [low, high].

    alpha, beta = 1 + softplus(.) keeps every component unimodal (alpha, beta >= 1), so its peak
    (the mode) is a sensible deterministic action, and log-probs stay finite at the bounds.
    """

    eps = 1e-6  # samples at exactly 0 or 1 (float rounding) are clamped before log_prob

    def __init__(self, space: spaces.Box, hidden_dim: int) -> None:
        super().__init__()
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(
                f"a Box action needs finite bounds for the Beta head, got low={space.low.min()} "
                f"high={space.high.max()}; bound it (muscles use [0, 1])"
            )
        if not np.all(high > low):
            i = int(np.argmin((high - low).reshape(-1)))
            raise ValueError(
                f"a Box action needs high > low in every dimension for the Beta head, got "
                f"low={low.reshape(-1)[i]} high={high.reshape(-1)[i]} at flat index {i}; drop "
                "the fixed dimension or widen it (muscles use [0, 1])"
            )
        self.shape = tuple(space.shape)
        n = int(np.prod(self.shape))
        self.proj = nn.Linear(hidden_dim, 2 * n)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(-1))
        self.register_buffer("scale", torch.as_tensor(high - low, dtype=torch.float32).reshape(-1))

    def _apply(self, fn, recurse=True):
        # The bounds follow the module's device but never drop below float32: in bfloat16,
        # [-0.3, 0.7] became [-0.30078, 0.69922] and samples left the action space.
        low, scale = self.low, self.scale
        super()._apply(fn, recurse)
        for name, before in (("low", low), ("scale", scale)):
            after = getattr(self, name)
            dtype = torch.promote_types(after.dtype, torch.float32)
            if after.dtype != dtype:
                setattr(self, name, before.to(device=after.device, dtype=dtype))
        return self

    def forward(self, h: torch.Tensor) -> D.Distribution:
        # The distribution runs in at least float32: torch samples Beta (a Dirichlet) only in
        # float32/float64, and 1 - eps rounds to 1 in half precision (an infinite log-prob).
        dtype = torch.promote_types(h.dtype, torch.float32)
        params = self.proj(h).to(dtype)  # (B, 2n)
        alpha, beta = (1.0 + F.softplus(params)).chunk(2, dim=-1)  # (B, n) each
        low, scale = self.low.to(dtype), self.scale.to(dtype)
        return _ScaledBeta(alpha, beta, low, scale, self.shape, self.eps)


MODE_PSEUDO_COUNT = 0.01
"""Added to alpha - 1 and beta - 1 in the Beta head's deterministic action (see
:attr:`_ScaledBeta.mode`)."""


class _ScaledBeta:
    """A Beta on [low, low + scale] with the event flattened to ``shape`` (one joint action)."""

    def __init__(self, alpha, beta, low, scale, shape, eps) -> None:
        self.base = D.Beta(alpha, beta)  # (B, n)
        self.low, self.scale, self.shape, self.eps = low, scale, shape, eps
        # the density of an affine map picks up -log(scale) per dimension
        self._log_jacobian = torch.log(scale).sum()

    def _to_action(self, u: torch.Tensor) -> torch.Tensor:
        return (self.low + self.scale * u).reshape(u.shape[0], *self.shape)

    def sample(self) -> torch.Tensor:
        return self._to_action(self.base.sample())

    @property
    def mode(self) -> torch.Tensor:
        """The deterministic action: the Beta's most likely value (alpha - 1) / (alpha + beta
        - 2), with a pseudo-count of ``MODE_PSEUDO_COUNT`` on each side.

        Not the mean: the mean alpha / (alpha + beta) of an alpha >= 1 Beta never reaches a
        bound, so a muscle told to rest (activation 0) kept a tone of a few percent, and the
        arm drifted (CueRecall's 200-frame hold: 2-5% in every muscle, the hand 0.19 m off
        in 50 frames; with this action 0.013 m in 200). The mode reaches the bound as
        alpha -> 1. The pseudo-count keeps a nearly flat Beta (alpha, beta ~ 1, where the
        plain mode jumps from one bound to the other on a difference of 1e-3) near its
        centre; it moves a peaked one by about c (1 - 2 mode) / (alpha + beta - 2) of the
        range (3e-4 for a resting muscle at beta 31)."""
        a, b = self.base.concentration1, self.base.concentration0  # (B, n) each, >= 1
        c = MODE_PSEUDO_COUNT
        return self._to_action((a - 1.0 + c) / (a + b - 2.0 + 2.0 * c))

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        u = (action.reshape(action.shape[0], -1) - self.low) / self.scale
        u = u.clamp(self.eps, 1.0 - self.eps)
        return self.base.log_prob(u).sum(-1) - self._log_jacobian  # (B,)

    def entropy(self) -> torch.Tensor:
        return self.base.entropy().sum(-1) + self._log_jacobian  # (B,)


@ACTION_HEADS.register("Discrete")
class CategoricalHead(nn.Module):
    """A categorical over ``Discrete(n)`` (values ``start .. start+n-1``)."""

    def __init__(self, space: spaces.Discrete, hidden_dim: int) -> None:
        super().__init__()
        self.start = int(space.start)
        self.proj = nn.Linear(hidden_dim, int(space.n))

    def forward(self, h: torch.Tensor) -> _Categorical:
        return _Categorical(self.proj(h), self.start)


class _Categorical:
    def __init__(self, logits: torch.Tensor, start: int) -> None:
        self.dist = D.Categorical(logits=logits)
        self.start = start

    def sample(self) -> torch.Tensor:
        return self.dist.sample() + self.start

    @property
    def mode(self) -> torch.Tensor:
        return self.dist.probs.argmax(-1) + self.start

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(action.long() - self.start)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy()


class ActionDistribution:
    """The joint distribution over every key of the action Dict (independent given h)."""

    def __init__(self, parts: dict[str, _Categorical | _ScaledBeta]) -> None:
        self.parts = parts

    def sample(self) -> Action:
        return {k: d.sample() for k, d in self.parts.items()}

    def mode(self) -> Action:
        return {k: d.mode for k, d in self.parts.items()}

    def log_prob(self, action: Action) -> torch.Tensor:
        """(B,) summed over keys."""
        return sum(d.log_prob(action[k]) for k, d in self.parts.items())

    def log_prob_by_key(self, action: Action) -> dict[str, torch.Tensor]:
        return {k: d.log_prob(action[k]) for k, d in self.parts.items()}

    def entropy(self) -> torch.Tensor:
        """(B,) summed over keys."""
        return sum(d.entropy() for d in self.parts.values())


class ActionHeads(nn.Module):
    """One head per key of a ``gymnasium.spaces.Dict`` action space, built by space type."""

    def __init__(self, action_space: spaces.Space, hidden_dim: int) -> None:
        super().__init__()
        if not isinstance(action_space, spaces.Dict):
            raise ValueError(
                f"action_space must be a gymnasium.spaces.Dict (e.g. Dict(muscles=Box(0, 1, (6,)), "
                f"text=Discrete(V))), got {type(action_space).__name__}"
            )
        if len(action_space.spaces) == 0:
            raise ValueError("action_space Dict has no keys; add at least one of muscles, text")
        heads = {}
        for key, space in action_space.spaces.items():
            kind = type(space).__name__
            if kind not in ACTION_HEADS:
                raise ValueError(
                    f"no action head for {key!r}: {kind}; supported: {', '.join(ACTION_HEADS.names())}"
                )
            heads[key] = ACTION_HEADS.get(kind)(space, hidden_dim)
        self.heads = nn.ModuleDict(heads)

    def forward(self, h: torch.Tensor) -> ActionDistribution:
        return ActionDistribution({k: head(h) for k, head in self.heads.items()})


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(p), safe at p in {0, 1}."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


__all__ = [
    "ACTION_HEADS",
    "Action",
    "ActionDistribution",
    "ActionHeads",
    "BetaHead",
    "CategoricalHead",
    "bernoulli_entropy",
]
