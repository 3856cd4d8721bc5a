"""Parity with sampled think steps: PonderNet's (Banino et al. 2021) and ACT's (Graves 2016) task.

An input is one vector with a random number of entries set to +/-1 (the rest 0); the target
is whether the count of +1 entries is odd. The input arrives in one observe step, so all
depth must come from think steps. Two protocols (PonderNet §3.1):

- interpolation: 64-element vectors, 1-64 non-zeros, train and test on that;
- extrapolation: 96-element vectors, train with 1-48 non-zeros, test with 49-96.

In one run, per protocol, it trains mindloop (``MindloopPolicy`` with sampled think steps,
trained with PonderNet's loss: the expected cross-entropy under the halting distribution plus
a KL to a geometric prior) and the same model with think steps disabled (``k_max=0``), then
reports accuracy and mean think steps per bucket of non-zeros, with the halting *sampled*
(as in rollouts) and deterministic.

mindloop's default think input is ``scan`` over the ``events`` encoder's tokens: the vector is
handed over as its non-zero entries in order, and think step k reads entries 4(k-1)..4k-1
(summed). Every think step then does the same small job (fold the parity of up to four
entries into the running answer), so a vector with more non-zeros takes more think steps,
and what is learned on short lists can carry over to longer ones. The no-think baseline
gets the same pooled embedding (a scaled sum over the entries) and no think steps.

Training uses a curriculum on the number of non-zeros (without one a GRU stays at
chance on a CPU budget): the maximum starts at ``curriculum_start`` and rises by
``curriculum_step`` when the running accuracy on the hardest inputs seen passes
``curriculum_threshold``.

    python benchmarks/parity.py --quick            # under a minute, smoke numbers
    nice -n 5 python benchmarks/parity.py          # full run (up to ~1 h on 2 CPU cores)
    nice -n 5 python benchmarks/parity.py --jobs 2 # the two protocols in parallel processes

Writes ``benchmarks/out/parity.json``; last line ``headline: parity_extrapolation=<acc>``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from gymnasium import spaces
from torch import nn

from agent.cores import CoreConfig
from agent.policy import MindloopPolicy, PolicyConfig
from agent.think import ThinkConfig

OUT = Path(__file__).parent / "out"


@dataclass(frozen=True)
class Protocol:
    name: str
    dims: int
    train_range: tuple[int, int]
    test_range: tuple[int, int]


PROTOCOLS = {
    "interpolation": Protocol("interpolation", 64, (1, 64), (1, 64)),
    "extrapolation": Protocol("extrapolation", 96, (1, 48), (49, 96)),
}


ENCODERS = ("elementwise", "events", "mlp", "none")
TOKEN_ENCODERS = ("elementwise", "events")
"""The encoders that hand the think steps per-entry tokens."""


@dataclass
class Args:
    """Parity benchmark settings (defaults: the full run)."""

    quick: bool = False
    """Tiny budget (under a minute): checks the pipeline, not the targets."""
    protocols: tuple[str, ...] = ("interpolation", "extrapolation")
    """Which protocols to run."""
    updates_interpolation: int = 12000
    """Training updates (batches) per contender on the interpolation protocol."""
    updates_extrapolation: int = 10000
    """Training updates (batches) per contender on the extrapolation protocol."""
    max_minutes: float = 60.0
    """Safety cap on one contender's training wall-clock time (the budget is in updates, so
    results do not depend on how loaded the shared machine is; this only bounds a run)."""
    stop_accuracy: float = 0.995
    """Stop early once the curriculum is at its maximum and the running accuracy passes this."""
    batch: int = 128
    lr_interpolation: float = 5e-4
    """Adam learning rate on the interpolation protocol (peak of the schedule)."""
    lr_extrapolation: float = 1e-3
    """... on the extrapolation protocol. Measured (RESULTS.md): 5e-4 brought interpolation
    to 0.998 in 12k updates where 1e-3 reached 0.974 in 8k; on extrapolation 1e-3
    converged in 4.2k updates and 5e-4 had not passed 44 non-zeros after 10k."""
    lr_schedule: str = "cosine"
    """constant, or cosine decay to ``lr_final`` x lr over the update budget."""
    lr_final: float = 0.05
    core: str = "gru"
    hidden: int = 128
    core_layers: int = 1
    encoder: str = "events"
    """Input encoder: elementwise (per-entry MLP: summed embedding + per-entry tokens),
    events (the same, tokens only for the non-zero entries, packed in order), mlp (a 2-layer
    MLP on the vector, no tokens), none (the raw vector, no tokens)."""
    encoder_hidden: int = 32
    """Hidden width of the input encoder."""
    embed_dim: int = 64
    """Observation embedding size the encoder produces."""
    think: ThinkConfig = field(
        default_factory=lambda: ThinkConfig(
            k_max=12,
            think_input="scan",
            scan_group=4,
            step_encoding="none",
            reinject_obs=False,
            init_halt_prob=0.1,
        )
    )
    """mindloop's think settings. The default ``scan`` reads the vector's non-zero entries
    (``encoder`` events) four per think step; its k_max is set per protocol to read the
    longest vector (see :func:`think_for`). ``attend`` (with ``encoder`` elementwise) and
    ``adapter`` are the earlier settings recorded in RESULTS.md."""
    lambda_p: float = 0.1
    """PonderNet geometric prior parameter."""
    beta: float = 0.01
    """Weight of the KL to the geometric prior."""
    curriculum: str = "nonzeros"
    """What grows during training: nonzeros (the maximum number of non-zeros), length (the
    part of the vector the non-zeros may lie in), none (train on the full range at once)."""
    curriculum_start: int = 4
    """First level of the curriculum (non-zeros or length)."""
    curriculum_step: int = 2
    curriculum_threshold: float = 0.95
    level_updates: int = 25
    """Fewest updates spent at a curriculum level."""
    frontier_fraction: float = 0.5
    """Share of each batch drawn near the curriculum maximum (the rest: 1..maximum)."""
    eval_batches: int = 8
    """Test batches per bucket of non-zeros."""
    bucket_width: int = 8
    contenders: tuple[str, ...] = ("mindloop", "no_think")
    """Which contenders to train (the table needs both)."""
    threads: int = 1
    """torch threads per process (1 keeps runs fair on a shared machine)."""
    jobs: int = 1
    """Protocols trained at once, one process each (2 on a 2-core machine halves the wall
    time; every number is per update, so the results do not depend on it)."""
    seed: int = 0
    log_every: int = 250
    out: str = str(OUT / "parity.json")
    """Where the JSON results go."""

    def __post_init__(self) -> None:
        positive = ("updates_interpolation", "updates_extrapolation", "batch", "hidden")
        positive += ("core_layers", "encoder_hidden", "embed_dim", "level_updates")
        positive += ("eval_batches", "bucket_width", "threads", "jobs", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; available: {', '.join(ENCODERS)}")
        if self.curriculum not in ("nonzeros", "length", "none"):
            raise ValueError(
                f"unknown curriculum {self.curriculum!r}; available: nonzeros, length, none"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; available: constant, cosine"
            )
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol {bad[0]!r}; available: {', '.join(PROTOCOLS)}")
        bad = [c for c in self.contenders if c not in ("mindloop", "no_think")]
        if bad:
            raise ValueError(f"unknown contender {bad[0]!r}; available: mindloop, no_think")
        if self.think.think_input in ("attend", "scan") and self.encoder not in TOKEN_ENCODERS:
            raise ValueError(
                f"think_input {self.think.think_input!r} reads per-entry tokens: use encoder "
                f"{' or '.join(TOKEN_ENCODERS)}, not {self.encoder!r}"
            )
        if self.quick:
            self.updates_interpolation = self.updates_extrapolation = 60
            self.eval_batches = 1
            self.log_every = 20


class ElementwiseEncoder(nn.Module):
    """Per-entry encoder: a shared MLP on every entry; pooled by a sum (DeepSets, Zaheer et
    al. 2017) into the observation embedding, and kept per entry (+ a learned position
    embedding) as the frame's tokens for the ``attend`` think input.

    No entry sees another here: whatever combines entries (counting, parity) happens in the
    core's steps. The sum is scaled by a constant (not normalised) so counts beyond the
    training range stay distinguishable (extrapolation).
    """

    def __init__(self, dims: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.position = nn.Parameter(torch.randn(dims, embed_dim) * 0.5)
        self.scale = 8.0 / dims

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, dims) -> pooled embedding (B, E), tokens (B, dims, E)."""
        per_entry = self.phi(x[..., None])  # (B, dims, E)
        return per_entry.sum(dim=-2) * self.scale, per_entry + self.position


class EventEncoder(nn.Module):
    """The vector as a list of events: one token per non-zero entry, in the vector's order.

    The same per-entry MLP as :class:`ElementwiseEncoder`, but the tokens are only the
    non-zero entries (packed to the front, zero-padded to ``dims``: the frame as events, as
    an event camera or a list of sounds would give them), with no position embedding (the
    task does not depend on where an entry is). The pooled embedding is the scaled sum.
    With the ``scan`` think input a think step reads the next ``scan_group`` events, so a
    vector with more non-zeros takes more think steps to read.
    """

    def __init__(self, dims: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.scale = 8.0 / dims

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, dims) -> pooled embedding (B, E), tokens (B, dims, E): non-zeros first."""
        nonzero = x != 0
        per_entry = self.phi(x[..., None]) * nonzero[..., None]  # (B, dims, E), zeros -> 0
        # non-zero entries first, each group in the vector's order (a stable sort key)
        key = (~nonzero).float() * x.shape[1] + torch.arange(x.shape[1], device=x.device)
        order = key.argsort(dim=1)[..., None].expand_as(per_entry)
        return per_entry.sum(dim=-2) * self.scale, per_entry.gather(1, order)


def build_encoder(dims: int, args: Args) -> tuple[nn.Module, int]:
    """The observation encoder named by ``args.encoder`` and its embedding size. Every
    encoder maps x (B, dims) to (embedding (B, E), tokens (B, N, E) or None)."""
    if args.encoder == "elementwise":
        return ElementwiseEncoder(dims, args.encoder_hidden, args.embed_dim), args.embed_dim
    if args.encoder == "events":
        return EventEncoder(dims, args.encoder_hidden, args.embed_dim), args.embed_dim
    if args.encoder == "mlp":
        mlp = nn.Sequential(
            nn.Linear(dims, args.encoder_hidden),
            nn.ReLU(),
            nn.Linear(args.encoder_hidden, args.embed_dim),
        )
        return _NoTokens(mlp), args.embed_dim
    return _NoTokens(nn.Identity()), dims


class _NoTokens(nn.Module):
    """An encoder of the whole vector: the frame has no tokens to re-read."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


class ParityNet(nn.Module):
    """Input encoder (the observation embedding) + a MindloopPolicy answering Discrete(2)."""

    def __init__(self, dims: int, args: Args, think: ThinkConfig) -> None:
        super().__init__()
        self.encoder, obs_dim = build_encoder(dims, args)
        config = PolicyConfig(
            core=CoreConfig(name=args.core, hidden_dim=args.hidden, num_layers=args.core_layers),
            think=think,
        )
        self.policy = MindloopPolicy(
            obs_dim, spaces.Dict(answer=spaces.Discrete(2)), config, token_dim=obs_dim
        )

    def answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., 2): the answer head applied to any hidden state."""
        return self.policy.heads.heads["answer"].proj(hidden)


def make_batch(
    dims: int,
    lo: int,
    hi: int,
    batch: int,
    gen: torch.Generator,
    length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, dims) with m ~ U{lo..hi} random entries set to +/-1; y = (#(+1) odd); m.

    ``length`` (B,): put row i's non-zeros among its first ``length[i]`` entries only (and
    m <= length[i]); the rest stay 0 (the length curriculum). Default: anywhere.
    """
    top = torch.full((batch,), hi) if length is None else length.clamp(max=hi)
    m = lo + (torch.rand(batch, generator=gen) * (top - lo + 1)).long()  # U{lo..top} per row
    scores = torch.rand(batch, dims, generator=gen)
    if length is not None:  # entries past the row's length rank after every active one
        scores = scores + (torch.arange(dims)[None, :] >= length[:, None]).float() * 2
    rank = scores.argsort(dim=1).argsort(dim=1)  # a random permutation, inactive entries last
    nonzero = rank < m[:, None]
    signs = torch.randint(0, 2, (batch, dims), generator=gen) * 2 - 1
    x = (nonzero * signs).float()
    y = ((x == 1).sum(dim=1) % 2).long()
    return x, y, m


def curriculum_batch(
    proto: Protocol, args: Args, cur: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch at curriculum level ``cur`` -> x, y, m, hard (B,) bool: the rows at
    the frontier, whose accuracy decides when the level rises.

    - nonzeros: m <= cur (``frontier_fraction`` of the rows near cur), anywhere in the vector;
    - length: the non-zeros lie in the first L entries, L = cur for ``frontier_fraction`` of
      the rows, else uniform in curriculum_start..cur; m ~ U{lo..min(hi, L)}. Short vectors
      come first, and densely filled ones are seen at every length;
    - none: the protocol's training distribution from the start.
    """
    lo, hi = proto.train_range
    B, step = args.batch, args.curriculum_step
    n_front = int(B * args.frontier_fraction)
    if args.curriculum == "length":
        start = min(args.curriculum_start, cur)
        length = torch.cat(
            [
                torch.full((n_front,), cur),
                torch.randint(start, cur + 1, (B - n_front,), generator=gen),
            ]
        )
        x, y, m = make_batch(proto.dims, lo, hi, B, gen, length)
        return x, y, m, length > cur - step
    if args.curriculum == "none":
        x, y, m = make_batch(proto.dims, lo, hi, B, gen)
        return x, y, m, torch.ones(B, dtype=torch.bool)
    front_lo = max(lo, cur - 2 * step + 1)
    x1, y1, m1 = make_batch(proto.dims, lo, cur, B - n_front, gen)
    x2, y2, m2 = make_batch(proto.dims, front_lo, cur, n_front, gen)
    m = torch.cat([m1, m2])
    return torch.cat([x1, x2]), torch.cat([y1, y2]), m, m >= max(lo, cur - step + 1)


def train(net: ParityNet, proto: Protocol, args: Args, label: str, updates: int) -> dict:
    """PonderNet training with a curriculum on the number of non-zeros; returns a log."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=getattr(args, f"lr_{proto.name}"))
    if args.lr_schedule == "cosine":
        final = args.lr_final
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda u: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * u / updates))
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    hi = proto.train_range[1]
    top = proto.dims if args.curriculum == "length" else hi  # the curriculum's last level
    cur = top if args.curriculum == "none" else min(args.curriculum_start, top)
    acc_ema, history, at_level = 0.5, [], 0
    start, cpu_start = time.perf_counter(), time.thread_time()
    fresh = torch.ones(args.batch, dtype=torch.bool)
    update, stopped = 0, "budget"
    for update in range(1, updates + 1):
        x, y, _, hard = curriculum_batch(proto, args, cur, gen)
        emb, tokens = net.encoder(x)
        out, _ = net.policy.ponder(emb, None, fresh, obs_tokens=tokens)
        logits = net.answer_logits(out.hidden)  # (B, K+1, 2)
        ce = F.cross_entropy(
            logits.flatten(0, 1), y.repeat_interleave(logits.shape[1]), reduction="none"
        ).view_as(out.halting)  # (B, K+1): loss of answering after n think steps
        loss = out.expected(ce).mean()
        if net.policy.k_max > 0:
            loss = loss + args.beta * out.kl_to_geometric(args.lambda_p).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()

        with torch.no_grad():  # accuracy under the halting distribution, on the hardest rows
            correct = (logits.argmax(-1) == y[:, None]).float()  # (B, K+1)
            acc = out.expected(correct)
            if hard.any():
                acc_ema = 0.98 * acc_ema + 0.02 * acc[hard].mean().item()
        at_level += 1
        if acc_ema >= args.curriculum_threshold and cur < top and at_level >= args.level_updates:
            # The running accuracy is kept, not reset: a model that generalises to the next
            # level climbs at once, one that does not falls below the threshold in a few
            # updates (the hard rows are then the new level's).
            cur, at_level = min(top, cur + args.curriculum_step), 0
        elapsed = time.perf_counter() - start
        if update % args.log_every == 0 or update == updates:
            steps = out.expected_steps().mean().item()
            history.append(
                {
                    "update": update,
                    "cur_max": cur,
                    "loss": loss.item(),
                    "acc_ema": acc_ema,
                    "expected_steps": steps,
                    "seconds": elapsed,
                }
            )
            print(
                f"  [{label}] upd {update:6d}  {args.curriculum} {cur:3d}  loss {loss.item():.3f}  "
                f"acc_ema {acc_ema:.3f}  E[steps] {steps:5.2f}  {elapsed:6.0f}s",
                flush=True,
            )
        if elapsed > args.max_minutes * 60:
            stopped = "time cap"
            print(f"  [{label}] stopped by the {args.max_minutes} min cap", flush=True)
            break
        if cur == top and acc_ema >= args.stop_accuracy:
            stopped = "converged"
            print(f"  [{label}] converged at update {update} ({elapsed:.0f}s)", flush=True)
            break
    return {
        "updates": update,
        "stopped": stopped,
        "curriculum": args.curriculum,
        "final_level": cur,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.thread_time() - cpu_start,
        "history": history,
    }


@torch.no_grad()
def evaluate(net: ParityNet, proto: Protocol, args: Args) -> list[dict]:
    """Accuracy and mean think steps per bucket of non-zeros (sampled and deterministic);
    for the attend think input also what the think steps read (deterministic halting):
    ``tokens_per_step`` (exp of the attention entropy) and ``nonzeros_unread`` (the share of
    non-zero entries that no think step gave a weight >= 0.05)."""
    gen = torch.Generator().manual_seed(args.seed + 1000)
    lo, hi = proto.test_range
    glimpse = net.policy.think_input if hasattr(net.policy.think_input, "recorded") else None
    rows = []
    for b_lo in range(lo, hi + 1, args.bucket_width):
        b_hi = min(hi, b_lo + args.bucket_width - 1)
        stats = {"sampled": [0.0, 0.0], "deterministic": [0.0, 0.0]}
        reads = {"tokens_per_step": [], "nonzeros_unread": []}
        n = 0
        for _ in range(args.eval_batches):
            x, y, _ = make_batch(proto.dims, b_lo, b_hi, args.batch, gen)
            emb, tokens = net.encoder(x)
            start = torch.ones(args.batch, dtype=torch.bool)
            for mode, det in (("sampled", False), ("deterministic", True)):
                if glimpse is not None and det:
                    glimpse.recorded = []
                action, _, info = net.policy.act(emb, None, start, det, obs_tokens=tokens)
                stats[mode][0] += (action["answer"] == y).float().sum().item()
                stats[mode][1] += info.think_steps.float().sum().item()
            if glimpse is not None:
                _read_stats(glimpse.recorded, info.think_steps, x, reads)
                glimpse.recorded = None
            n += args.batch
        row = {
            "nonzeros": f"{b_lo}-{b_hi}",
            "acc": stats["sampled"][0] / n,
            "steps": stats["sampled"][1] / n,
            "acc_det": stats["deterministic"][0] / n,
            "steps_det": stats["deterministic"][1] / n,
        }
        row.update({k: sum(v) / len(v) for k, v in reads.items() if v})
        rows.append(row)
    return rows


def _read_stats(weights: list[torch.Tensor], steps: torch.Tensor, x: torch.Tensor, out) -> None:
    """Add what the think steps that ran read (weights: per step (B, N, heads)); tokens per
    step is per head (exp of its attention entropy)."""
    if not weights:
        return
    w = torch.stack(weights, dim=1)  # (B, k, N, heads)
    ran = torch.arange(1, w.shape[1] + 1)[None, :] <= steps[:, None]  # (B, k)
    entropy = -(w * w.clamp_min(1e-12).log()).sum(2).mean(-1)  # (B, k), per head
    if ran.any():
        out["tokens_per_step"].append(entropy.exp()[ran].mean().item())
    seen = (w * ran[..., None, None]).amax(dim=(1, 3)) >= 0.05  # (B, N) by any step or head
    nonzero = x != 0
    out["nonzeros_unread"].append(((nonzero & ~seen).sum() / nonzero.sum()).item())


def overall(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def think_for(proto: Protocol, args: Args) -> ThinkConfig:
    """mindloop's think settings on a protocol: with the ``scan`` think input, enough steps
    to read every entry of the longest vector (dims / scan_group) plus two: one that sees
    the reads run out, and slack for a sampled stop (``args.think.k_max`` is then
    ignored); else ``args.think`` as given."""
    think = args.think
    if think.think_input == "scan":
        think = replace(think, k_max=math.ceil(proto.dims / think.scan_group) + 2)
    return think


def run_protocol(proto: Protocol, args: Args) -> dict:
    results = {}
    think = think_for(proto, args)
    print(f"{proto.name}: mindloop think k_max {think.k_max}, {think.think_input} think input")
    contenders = {"mindloop": think, "no_think": replace(think, k_max=0)}
    for label, think in contenders.items():
        if label not in args.contenders:
            continue
        torch.manual_seed(args.seed)
        net = ParityNet(proto.dims, args, think)
        updates = getattr(args, f"updates_{proto.name}")  # the same budget for both contenders
        log = train(net, proto, args, f"{proto.name}/{label}", updates)
        net.eval()
        rows = evaluate(net, proto, args)
        results[label] = {
            "train": log,
            "buckets": rows,
            "acc": overall(rows, "acc"),
            "acc_det": overall(rows, "acc_det"),
            "steps": overall(rows, "steps"),
        }
    return results


def print_table(proto: Protocol, res: dict) -> None:
    if len(res) < 2:
        for label, r in res.items():
            print(
                f"{proto.name}/{label}: acc {r['acc']:.3f} det {r['acc_det']:.3f} steps {r['steps']:.2f}"
            )
            for row in r["buckets"]:
                print("   ", row)
        return
    think, base = res["mindloop"], res["no_think"]
    print(f"\n{proto.name}: {proto.dims}-dim, train {proto.train_range}, test {proto.test_range}")
    print(
        f"{'non-zeros':>10} | {'mindloop acc':>12} {'steps':>6} {'acc det':>8} {'steps det':>9} | {'no-think acc':>12}"
    )
    for r, rb in zip(think["buckets"], base["buckets"], strict=True):
        print(
            f"{r['nonzeros']:>10} | {r['acc']:12.3f} {r['steps']:6.2f} {r['acc_det']:8.3f} "
            f"{r['steps_det']:9.2f} | {rb['acc']:12.3f}"
        )
    print(
        f"{'all':>10} | {think['acc']:12.3f} {think['steps']:6.2f} {think['acc_det']:8.3f} "
        f"{'':9} | {base['acc']:12.3f}   (think / no-think accuracy ratio "
        f"{think['acc'] / max(base['acc'], 1e-9):.2f}); trained {think['train']['updates']} / "
        f"{base['train']['updates']} updates, curriculum ({think['train']['curriculum']}) "
        f"reached {think['train']['final_level']} / {base['train']['final_level']}"
    )


def _run_protocol_in_worker(name: str, args: Args) -> dict:
    torch.set_num_threads(args.threads)
    return run_protocol(PROTOCOLS[name], args)


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    print(f"parity benchmark: {json.dumps(asdict(args), default=str)}")
    results = {}
    if args.jobs > 1 and len(args.protocols) > 1:  # one process per protocol (same settings)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(args.protocols)), mp_context=ctx) as pool:
            futures = {n: pool.submit(_run_protocol_in_worker, n, args) for n in args.protocols}
            results = {n: f.result() for n, f in futures.items()}
    else:
        results = {n: run_protocol(PROTOCOLS[n], args) for n in args.protocols}
    for name in args.protocols:
        print_table(PROTOCOLS[name], results[name])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": asdict(args), "results": results}, indent=1, default=str))
    headline_proto = "extrapolation" if "extrapolation" in results else args.protocols[0]
    acc = results[headline_proto].get("mindloop", {"acc": float("nan")})["acc"]
    acc = acc if not math.isnan(acc) else 0.0
    name = (
        "parity_extrapolation" if headline_proto == "extrapolation" else f"parity_{headline_proto}"
    )
    target = 0.90 if headline_proto == "extrapolation" else 0.99
    print(f"headline: {name}={acc:.3f} (target >={target:.2f})")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
