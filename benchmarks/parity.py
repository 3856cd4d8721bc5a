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

Training uses a curriculum on the number of non-zeros (DESIGN §7: without one a GRU stays at
chance on a CPU budget): the maximum starts at ``curriculum_start`` and rises by
``curriculum_step`` when the running accuracy on the hardest inputs seen passes
``curriculum_threshold``.

    python benchmarks/parity.py --quick            # under a minute, smoke numbers
    nice -n 5 python benchmarks/parity.py          # full run (up to ~1 h on 2 CPU cores)

Writes ``benchmarks/out/parity.json``; last line ``headline: parity_extrapolation=<acc>``.
"""

from __future__ import annotations

import json
import math
import time
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


@dataclass
class Args:
    """Parity benchmark settings (defaults: the full run)."""

    quick: bool = False
    """Tiny budget (under a minute): checks the pipeline, not the targets."""
    protocols: tuple[str, ...] = ("interpolation", "extrapolation")
    """Which protocols to run."""
    minutes_interpolation: float = 22.0
    """Training wall-clock budget of mindloop on the interpolation protocol."""
    minutes_extrapolation: float = 14.0
    """Training wall-clock budget of mindloop on the extrapolation protocol."""
    baseline_minutes: float = 7.0
    """Training wall-clock budget of the no-think baseline (per protocol)."""
    stop_accuracy: float = 0.995
    """Stop early once the curriculum is at its maximum and the running accuracy passes this."""
    max_updates: int = 200_000
    """Upper bound on updates per contender (the time budget usually ends training first)."""
    batch: int = 128
    lr: float = 1e-3
    core: str = "gru"
    hidden: int = 128
    core_layers: int = 1
    encoder: str = "elementwise"
    """Input encoder: mlp (a 2-layer MLP on the vector), elementwise (DeepSets), none (raw)."""
    encoder_hidden: int = 32
    """Hidden width of the input encoder."""
    embed_dim: int = 64
    """Observation embedding size the encoder produces."""
    think: ThinkConfig = field(
        default_factory=lambda: ThinkConfig(
            k_max=12,
            think_input="adapter",
            step_encoding="learned",
            reinject_obs=True,
            init_halt_prob=0.1,
        )
    )
    lambda_p: float = 0.1
    """PonderNet geometric prior parameter."""
    beta: float = 0.01
    """Weight of the KL to the geometric prior."""
    curriculum_start: int = 4
    curriculum_step: int = 2
    curriculum_threshold: float = 0.95
    frontier_fraction: float = 0.5
    """Share of each batch drawn near the curriculum maximum (the rest: 1..maximum)."""
    eval_batches: int = 8
    """Test batches per bucket of non-zeros."""
    bucket_width: int = 8
    contenders: tuple[str, ...] = ("mindloop", "no_think")
    """Which contenders to train (the table needs both)."""
    threads: int = 1
    """torch threads (1 keeps runs fair on a shared machine)."""
    seed: int = 0
    log_every: int = 250

    def __post_init__(self) -> None:
        if self.encoder not in ("mlp", "elementwise", "none"):
            raise ValueError(f"unknown encoder {self.encoder!r}; available: mlp, elementwise, none")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol {bad[0]!r}; available: {', '.join(PROTOCOLS)}")
        if self.quick:
            self.minutes_interpolation = self.minutes_extrapolation = 0.15
            self.baseline_minutes = 0.1
            self.eval_batches = 1
            self.log_every = 100


class ElementwiseEncoder(nn.Module):
    """DeepSets encoder (Zaheer et al. 2017): a shared MLP on every entry, summed.

    The entries of a parity input are exchangeable, so a set encoder makes counts of entry
    values linear features of the embedding; the parity of a count, the part that needs
    depth, is left to the core. The sum is scaled by a constant (not normalised) so counts
    beyond the training range stay distinguishable (extrapolation).
    """

    def __init__(self, dims: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.scale = 8.0 / dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi(x[..., None]).sum(dim=-2) * self.scale  # (B, dims, E) -> (B, E)


def build_encoder(dims: int, args: Args) -> tuple[nn.Module, int]:
    """The observation encoder named by ``args.encoder`` and its embedding size."""
    if args.encoder == "elementwise":
        return ElementwiseEncoder(dims, args.encoder_hidden, args.embed_dim), args.embed_dim
    if args.encoder == "mlp":
        mlp = nn.Sequential(
            nn.Linear(dims, args.encoder_hidden),
            nn.ReLU(),
            nn.Linear(args.encoder_hidden, args.embed_dim),
        )
        return mlp, args.embed_dim
    return nn.Identity(), dims


class ParityNet(nn.Module):
    """Input encoder (the observation embedding) + a MindloopPolicy answering Discrete(2)."""

    def __init__(self, dims: int, args: Args, think: ThinkConfig) -> None:
        super().__init__()
        self.encoder, obs_dim = build_encoder(dims, args)
        config = PolicyConfig(
            core=CoreConfig(name=args.core, hidden_dim=args.hidden, num_layers=args.core_layers),
            think=think,
        )
        self.policy = MindloopPolicy(obs_dim, spaces.Dict(answer=spaces.Discrete(2)), config)

    def answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., 2): the answer head applied to any hidden state."""
        return self.policy.heads.heads["answer"].proj(hidden)


def make_batch(
    dims: int, lo: int, hi: int, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, dims) with m ~ U{lo..hi} random entries set to +/-1; y = (#(+1) odd); m."""
    m = torch.randint(lo, hi + 1, (batch,), generator=gen)
    order = torch.rand(batch, dims, generator=gen).argsort(dim=1)
    nonzero = order < m[:, None]  # the first m of a random permutation
    signs = torch.randint(0, 2, (batch, dims), generator=gen) * 2 - 1
    x = (nonzero * signs).float()
    y = ((x == 1).sum(dim=1) % 2).long()
    return x, y, m


def train(net: ParityNet, proto: Protocol, args: Args, label: str, minutes: float) -> dict:
    """PonderNet training with a curriculum on the number of non-zeros; returns a log."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    lo, hi = proto.train_range
    cur = min(args.curriculum_start, hi)
    acc_ema, start, history = 0.5, time.perf_counter(), []
    update = 0
    for update in range(1, args.max_updates + 1):
        n_front = int(args.batch * args.frontier_fraction)
        front_lo = max(lo, cur - 2 * args.curriculum_step + 1)
        x1, y1, m1 = make_batch(proto.dims, lo, cur, args.batch - n_front, gen)
        x2, y2, m2 = make_batch(proto.dims, front_lo, cur, n_front, gen)
        x, y, m = torch.cat([x1, x2]), torch.cat([y1, y2]), torch.cat([m1, m2])
        emb = net.encoder(x)
        out, _ = net.policy.ponder(emb, None, torch.ones(args.batch, dtype=torch.bool))
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

        with torch.no_grad():  # accuracy under the halting distribution, on the hardest rows
            correct = (logits.argmax(-1) == y[:, None]).float()  # (B, K+1)
            acc = out.expected(correct)
            hard = m >= max(lo, cur - args.curriculum_step + 1)
            if hard.any():
                acc_ema = 0.98 * acc_ema + 0.02 * acc[hard].mean().item()
        if acc_ema >= args.curriculum_threshold and cur < hi:
            cur = min(hi, cur + args.curriculum_step)
            acc_ema = 0.5
        elapsed = time.perf_counter() - start
        if update % args.log_every == 0:
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
                f"  [{label}] upd {update:6d}  max_nonzeros {cur:3d}  loss {loss.item():.3f}  "
                f"acc_ema {acc_ema:.3f}  E[steps] {steps:5.2f}  {elapsed:6.0f}s",
                flush=True,
            )
        if elapsed > minutes * 60:
            break
        if cur == hi and acc_ema >= args.stop_accuracy:
            print(f"  [{label}] converged at update {update} ({elapsed:.0f}s)", flush=True)
            break
    return {
        "updates": update,
        "final_max_nonzeros": cur,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


@torch.no_grad()
def evaluate(net: ParityNet, proto: Protocol, args: Args) -> list[dict]:
    """Accuracy and mean think steps per bucket of non-zeros (sampled and deterministic)."""
    gen = torch.Generator().manual_seed(args.seed + 1000)
    lo, hi = proto.test_range
    rows = []
    for b_lo in range(lo, hi + 1, args.bucket_width):
        b_hi = min(hi, b_lo + args.bucket_width - 1)
        stats = {"sampled": [0.0, 0.0], "deterministic": [0.0, 0.0]}
        n = 0
        for _ in range(args.eval_batches):
            x, y, _ = make_batch(proto.dims, b_lo, b_hi, args.batch, gen)
            emb = net.encoder(x)
            start = torch.ones(args.batch, dtype=torch.bool)
            for mode, det in (("sampled", False), ("deterministic", True)):
                action, _, info = net.policy.act(emb, None, start, deterministic=det)
                stats[mode][0] += (action["answer"] == y).float().sum().item()
                stats[mode][1] += info.think_steps.float().sum().item()
            n += args.batch
        rows.append(
            {
                "nonzeros": f"{b_lo}-{b_hi}",
                "acc": stats["sampled"][0] / n,
                "steps": stats["sampled"][1] / n,
                "acc_det": stats["deterministic"][0] / n,
                "steps_det": stats["deterministic"][1] / n,
            }
        )
    return rows


def overall(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def run_protocol(proto: Protocol, args: Args) -> dict:
    results = {}
    contenders = {"mindloop": args.think, "no_think": replace(args.think, k_max=0)}
    for label, think in contenders.items():
        if label not in args.contenders:
            continue
        torch.manual_seed(args.seed)
        net = ParityNet(proto.dims, args, think)
        minutes = (
            args.baseline_minutes if think.k_max == 0 else getattr(args, f"minutes_{proto.name}")
        )
        log = train(net, proto, args, f"{proto.name}/{label}", minutes)
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
        f"{base['train']['updates']} updates, curriculum reached "
        f"{think['train']['final_max_nonzeros']} / {base['train']['final_max_nonzeros']} non-zeros"
    )


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    print(f"parity benchmark: {json.dumps(asdict(args), default=str)}")
    results = {}
    for name in args.protocols:
        proto = PROTOCOLS[name]
        results[name] = run_protocol(proto, args)
        print_table(proto, results[name])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "parity.json").write_text(
        json.dumps({"args": asdict(args), "results": results}, indent=1, default=str)
    )
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
