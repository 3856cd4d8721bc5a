"""Recall across long delays: GRU core alone vs GRU + two-tier memory vs a torch LSTM.

The task (in the spirit of CueRecall): at step 0 a cue (one of ``classes`` random unit
vectors plus Gaussian noise, with a "cue" flag) is shown; then ``D`` distractor steps show
random class vectors plus noise (no flag: they look like cues); then a "query" flag; one
step later (the answer step, what one think step gives the policy) the model classifies
the cue. Chance = 1/classes.

Protocol (the same for every contender, side by side in one run, one torch thread each):
every contender is trained for ``updates`` Adam steps on batches of episodes whose delay is
drawn log-uniformly from ``train_delays`` (10-500 by default), then evaluated on held-out
episodes at every D in ``delays`` (1,000 and 5,000 are longer than any training episode).
``--train-delays 50 500`` is the harder protocol with no short episodes to learn from.

- ``gru``: the registered GRU core (``agent/cores.py``) + a linear classifier, trained with
  full backprop through time over the whole episode.
- ``lstm``: ``torch.nn.LSTM`` + linear classifier (the cell of sb3-contrib's RecurrentPPO)
  with as many parameters as the memory model, full BPTT.
- ``gru+memory``: the same GRU core with :class:`agent.memory.TwoTierMemory`, stepped with
  the MemoryTool calls ``MindloopPolicy`` makes (core input = [x, memory.read(state)];
  op ~ memory.op_distribution(h); memory.apply(h, op, state)). Training uses truncated
  BPTT with two windows of ``window`` steps, at the start (the cue and the set decision)
  and before the answer (the get and the readout); the delay between runs without autograd,
  since the store carries the cue outside the gradient path. When to set/get is learned
  either by cloning the scripted schedule "set at the cue, get at the query"
  (``--op-training bc``, the default, as train.py clones scripted experts before RL) or by
  REINFORCE alone on the answer's log-likelihood minus ``call_cost`` per call (``rl``).
  Two auxiliary losses: the codec's reconstruction of the items set, and a reconstruction
  of the observation from the workable vector in the windows. The second exists because
  no task gradient crosses the store: without it, the loss of the set decision shaped the
  cue step's h toward "a cue is here" and washed out *which* cue, so the stored item was
  nearly the same for every class (measured: centered codec cosine 0.18, chance recall).

Naps: at D = max(delays) the memory model is also evaluated with a nap (workable slots ->
encoded store) every ``nap_every`` distractor steps, and with ``set`` disabled, with and
without naps: does consolidation help, and can it stand in for an explicit set?

Run: ``python benchmarks/memory_recall.py [--quick]``. Writes benchmarks/out/memory_recall.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch import distributions as D
from torch import nn

from agent.cores import CoreConfig, build_core, count_parameters
from agent.memory import OP_GET, OP_NONE, OP_SET, MemoryConfig, build_memory
from agent.state import State, detach_state, state_nbytes

CONTENDERS = ("gru", "lstm", "gru+memory")


@dataclass
class Args:
    """Recall benchmark settings (defaults = the full run recorded in RESULTS.md)."""

    quick: bool = False
    """Tiny budgets (under a minute): a smoke run, not the recorded numbers."""
    delays: tuple[int, ...] = (10, 100, 1000, 5000)
    """Distractor steps D between the cue and the query, evaluated."""
    train_delays: tuple[int, int] = (10, 500)
    """Training delays for every contender: D ~ log-uniform in this range, one D per batch."""
    updates: int = 500
    """Training updates per contender."""
    classes: int = 8
    """Number of cue classes (chance = 1/classes)."""
    cue_dim: int = 16
    """Width of the cue/distractor vectors."""
    noise: float = 0.1
    """Std of the Gaussian noise added to every cue and distractor vector."""
    hidden: int = 64
    """GRU hidden width (also the workable slot width: full-width slots)."""
    batch: int = 64
    """Training episodes per update."""
    lr: float = 3e-3
    """Adam learning rate, all contenders."""
    window: int = 16
    """Memory model: length of each truncated-BPTT window."""
    op_training: str = "bc"
    """How the memory model learns when to set/get: bc (clone the scripted schedule) or rl
    (REINFORCE on the answer log-likelihood minus call_cost per call)."""
    bc_weight: float = 0.1
    """Weight of the schedule-cloning loss (bc) relative to the answer's cross-entropy."""
    recon_weight: float = 1.0
    """Weight of the auxiliary observation reconstruction from the workable vector."""
    call_cost: float = 0.002
    """Per set/get cost in the REINFORCE return (MemoryConfig.call_cost)."""
    code_dim: int = 16
    """Stored code width (a workable slot is ``hidden`` floats)."""
    capacity: int = 2048
    """Encoded store capacity per env (items)."""
    nap_every: int = 250
    """Nap interval (distractor steps) in the nap evaluation."""
    eval_episodes: int = 512
    """Held-out episodes per delay and contender."""
    contenders: tuple[str, ...] = CONTENDERS
    """Which contenders to train and evaluate."""
    seed: int = 0
    """Seed of the task vectors, initializations and episodes."""
    out: str = str(Path(__file__).resolve().parent / "out" / "memory_recall.json")
    """Where the JSON results go (default: benchmarks/out/ next to this script)."""

    def __post_init__(self) -> None:
        positive = ("updates", "classes", "cue_dim", "hidden", "batch", "window", "code_dim")
        for name in (*positive, "capacity", "nap_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.op_training not in ("bc", "rl"):
            raise ValueError(f"--op-training {self.op_training!r} is not one of bc, rl")
        unknown = sorted(set(self.contenders) - set(CONTENDERS))
        if unknown:
            raise ValueError(f"--contenders {unknown} unknown; choose from {', '.join(CONTENDERS)}")
        if min(self.delays) < 1 or not 1 <= self.train_delays[0] <= self.train_delays[1]:
            raise ValueError(
                f"--delays {self.delays} and --train-delays {self.train_delays} must be >= 1 "
                "(train-delays as LOW HIGH)"
            )
        if self.quick:
            self.delays, self.train_delays = (10, 100, 1000), (5, 60)
            self.updates, self.eval_episodes, self.nap_every = 100, 128, 100


# ----------------------------------------------------------------------------- the task
class RecallTask:
    """Streams episodes step by step (a D = 5,000 batch is never materialized).

    Inputs x_t (B, cue_dim + 3): [vector, cue flag, query flag, answer flag].
    Steps: 0 cue, 1..D distractors, D+1 query, D+2 answer (classify here).
    """

    def __init__(self, classes: int, cue_dim: int, noise: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vectors = F.normalize(torch.randn(classes, cue_dim, generator=gen), dim=-1)
        self.classes, self.cue_dim, self.noise = classes, cue_dim, noise
        self.input_dim = cue_dim + 3

    def length(self, delay: int) -> int:
        return delay + 3

    def labels(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.classes, (batch,), generator=gen)

    def step(self, t: int, delay: int, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        B = labels.shape[0]
        x = torch.zeros(B, self.input_dim)
        if t <= delay:  # cue (t = 0) or distractor: a class vector plus noise
            cls = labels if t == 0 else torch.randint(0, self.classes, (B,), generator=gen)
            noise = self.noise * torch.randn(B, self.cue_dim, generator=gen)
            x[:, : self.cue_dim] = self.vectors[cls] + noise
        flag = {0: 0, delay + 1: 1, delay + 2: 2}.get(t)
        if flag is not None:
            x[:, self.cue_dim + flag] = 1.0
        return x


def oracle_ops(t: int, delay: int, batch: int) -> torch.Tensor:
    """The scripted tool schedule: set at the cue, get at the query, nothing else."""
    op = {0: OP_SET, delay + 1: OP_GET}.get(t, OP_NONE)
    return torch.full((batch,), op, dtype=torch.long)


def sample_delay(args: Args, gen: torch.Generator) -> int:
    lo, hi = args.train_delays
    u = torch.rand((), generator=gen).item()
    return round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


# ----------------------------------------------------------------------------- contenders
class CoreClassifier(nn.Module):
    """A registered core + a linear classifier on its last h (the GRU-alone baseline)."""

    def __init__(self, core: str, input_dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.core = build_core(CoreConfig(name=core, hidden_dim=hidden), input_dim)
        self.head = nn.Linear(hidden, classes)

    def run(self, task: RecallTask, delay: int, labels: torch.Tensor, gen) -> tuple:
        state = self.core.initial_state(labels.shape[0])
        for t in range(task.length(delay)):
            h, state = self.core.step(task.step(t, delay, labels, gen), state)
        return self.head(h), state_nbytes(state)


class LSTMClassifier(nn.Module):
    """torch.nn.LSTM + linear classifier (the cell sb3-contrib's RecurrentPPO runs)."""

    def __init__(self, input_dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def run(self, task: RecallTask, delay: int, labels: torch.Tensor, gen, chunk: int = 512):
        state, T = None, task.length(delay)
        for start in range(0, T, chunk):  # chunks carry (h, c) with their graph: full BPTT
            xs = torch.stack(
                [task.step(t, delay, labels, gen) for t in range(start, min(T, start + chunk))]
            )  # (chunk, B, input_dim)
            out, state = self.lstm(xs, state)
        return self.head(out[-1]), 2 * self.lstm.hidden_size * 4  # h and c, float32


class MemoryAgent(nn.Module):
    """GRU core + two-tier memory + classifier, stepped like MindloopPolicy's core step."""

    def __init__(self, input_dim: int, hidden: int, classes: int, memory: MemoryConfig) -> None:
        super().__init__()
        self.memory = build_memory(memory, hidden)
        self.core = build_core(
            CoreConfig(name="gru", hidden_dim=hidden), input_dim + self.memory.read_dim
        )
        self.head = nn.Linear(hidden, classes)
        # Auxiliary decoder of the observation from the workable vector (training only):
        # no task gradient crosses the store, so this is what keeps what a set stores about
        # the present input (without it the set decision's loss washed the cue out of h).
        self.observation_decoder = nn.Linear(memory.slot_dim, input_dim)

    def initial_state(self, batch: int) -> State:
        return {**self.core.initial_state(batch), **self.memory.initial_state(batch)}

    def step(
        self,
        x: torch.Tensor,
        state: State,
        choose_op: Callable[[D.Categorical], torch.Tensor],
        track: bool = False,
    ) -> tuple[torch.Tensor, State, D.Categorical, torch.Tensor, dict]:
        """One core step and one memory call; ``track``: build the graph (a BPTT window).

        The op head always gets a graph when autograd is on (its log-prob or cloning loss
        is per step), with h a constant outside the windows.
        """
        core = {k: v for k, v in state.items() if k.startswith("core/")}
        mem = {k: v for k, v in state.items() if k.startswith("mem/")}
        with torch.set_grad_enabled(track):
            h, core = self.core.step(torch.cat([x, self.memory.read(mem)], dim=-1), core)
        dist = self.memory.op_distribution(h)
        op = choose_op(dist)
        with torch.set_grad_enabled(track):
            mem, stats = self.memory.apply(h, op, mem)
        return h, {**core, **mem}, dist, op, stats


# ----------------------------------------------------------------------------- training
def train_baseline(model: nn.Module, task: RecallTask, args: Args, gen) -> float:
    """Full BPTT over whole episodes of the training delays; returns seconds spent."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for _ in range(args.updates):
        delay = sample_delay(args, gen)
        labels = task.labels(args.batch, gen)
        logits, _ = model.run(task, delay, labels, gen)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


def memory_update_loss(agent: MemoryAgent, task: RecallTask, args: Args, gen) -> tuple:
    """One batch of episodes -> (loss, accuracy, calls per episode)."""
    delay = sample_delay(args, gen)
    labels = task.labels(args.batch, gen)
    T, W = task.length(delay), args.window
    state = agent.initial_state(args.batch)
    logp = torch.zeros(args.batch)  # sum of op log-probs (rl)
    ce_call, ce_none = torch.zeros(()), torch.zeros(())  # summed cloning losses (bc)
    calls = torch.zeros(args.batch)
    recon, n_recon = torch.zeros(()), 0  # observation reconstruction in the windows
    stored = []  # workable vectors that were set: the codec's training items
    for t in range(T):
        if t in (W, T - W):  # window boundaries: truncate BPTT
            state = detach_state(state)
        if args.op_training == "bc":
            target = oracle_ops(t, delay, args.batch)
            choose = lambda dist, target=target: target  # noqa: E731
        else:
            choose = lambda dist: dist.sample()  # noqa: E731
        track = t < W or t >= T - W
        x = task.step(t, delay, labels, gen)
        h, state, dist, op, _ = agent.step(x, state, choose, track)
        if track and args.recon_weight > 0:
            w = agent.memory.workable_vector(h)
            recon = recon + F.mse_loss(agent.observation_decoder(w), x)
            n_recon += 1
        if args.op_training == "bc":
            ce_op = F.cross_entropy(dist.logits, op)
            if t in (0, delay + 1):
                ce_call = ce_call + ce_op
            else:
                ce_none = ce_none + ce_op
        else:
            logp = logp + dist.log_prob(op)
        calls = calls + (op != OP_NONE).float()
        if bool((op == OP_SET).any()):
            with torch.no_grad():
                stored.append(agent.memory.workable_vector(h[op == OP_SET]))
    logits = agent.head(h)
    ce = F.cross_entropy(logits, labels, reduction="none")  # (B,)
    loss = ce.mean()
    if args.op_training == "bc":
        # The set and the get weigh 1 each, the T - 2 "none" steps 1 together: a rare call
        # is not drowned by the long delay. bc_weight keeps this per-step loss from
        # swamping the answer's gradient in the core (all gradients share one clip).
        loss = loss + args.bc_weight * (ce_call + ce_none / (T - 2))
    else:
        ret = -ce.detach() - args.call_cost * calls  # (B,) the episode's return
        loss = loss - ((ret - ret.mean()) * logp).mean()  # batch-mean baseline (one D/batch)
    if n_recon:
        loss = loss + args.recon_weight * recon / n_recon
    if stored:
        items = torch.cat(stored)
        agent.memory.codec.update_statistics(items)
        codec_loss, _ = agent.memory.codec.reconstruction_loss(items)
        loss = loss + agent.memory.config.codec_loss_coef * codec_loss.mean()
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    return loss, accuracy, float(calls.mean())


def train_memory(agent: MemoryAgent, task: RecallTask, args: Args, gen) -> float:
    """Truncated BPTT with two windows, ops cloned (bc) or by REINFORCE (rl); seconds spent."""
    opt = torch.optim.Adam(agent.parameters(), lr=args.lr)
    start, log = time.perf_counter(), []
    every = max(1, args.updates // 10)
    for update in range(args.updates):
        loss, accuracy, calls = memory_update_loss(agent, task, args, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
        opt.step()
        log.append((accuracy, calls))
        if (update + 1) % every == 0:
            acc = sum(a for a, _ in log[-every:]) / every
            calls_mean = sum(c for _, c in log[-every:]) / every
            print(
                f"  update {update + 1}/{args.updates}: train acc {acc:.3f}, "
                f"calls/episode {calls_mean:.1f}",
                flush=True,
            )
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_baseline(model: nn.Module, task: RecallTask, delay: int, args: Args, gen) -> dict:
    labels = task.labels(args.eval_episodes, gen)
    logits, nbytes = model.run(task, delay, labels, gen)
    return {"acc": float((logits.argmax(-1) == labels).float().mean()), "state_bytes": nbytes}


@torch.no_grad()
def evaluate_memory(
    agent: MemoryAgent,
    task: RecallTask,
    delay: int,
    args: Args,
    gen,
    nap_every: int = 0,
    allow_set: bool = True,
) -> dict:
    """Greedy ops (argmax, as ``act(deterministic=True)``); optional naps / no set."""
    labels = task.labels(args.eval_episodes, gen)
    state = agent.initial_state(args.eval_episodes)

    def greedy(dist: D.Categorical) -> torch.Tensor:
        op = dist.probs.argmax(-1)
        return op if allow_set else torch.where(op == OP_SET, OP_NONE, op)

    sets = gets = naps = 0.0
    for t in range(task.length(delay)):
        h, state, _, _, stats = agent.step(task.step(t, delay, labels, gen), state, greedy)
        sets += float(stats["set"].mean())
        gets += float(stats["get"].mean())
        if nap_every and 1 <= t <= delay and t % nap_every == 0:  # an idle frame
            mem = {k: v for k, v in state.items() if k.startswith("mem/")}
            mem, nap_stats = agent.memory.nap(mem)
            state.update(mem)
            naps += float(nap_stats["napped"].mean())
    acc = float((agent.head(h).argmax(-1) == labels).float().mean())
    occupancy = float(state["mem/store_count"].float().mean())
    store = {k: v for k, v in state.items() if k.startswith("mem/store_")}
    rest = state_nbytes(state) - state_nbytes(store)  # core + workable tier
    return {
        "acc": acc,
        "state_bytes": state_nbytes(state),  # allocated: core + workable + whole store
        "used_bytes": int(rest + occupancy * agent.memory.item_nbytes),
        "occupancy": occupancy,
        "sets_per_episode": sets,
        "gets_per_episode": gets,
        "napped_per_episode": naps,
    }


@torch.no_grad()
def codec_cosine(agent: MemoryAgent, task: RecallTask, args: Args, gen) -> dict[str, float]:
    """Cosine between the cue-step workable vector and what the store gives back for it:
    raw, and centered (both minus the mean cue vector: the item-specific part only)."""
    labels = task.labels(args.eval_episodes, gen)
    state = agent.initial_state(args.eval_episodes)
    h, *_ = agent.step(task.step(0, 10, labels, gen), state, lambda d: torch.zeros_like(labels))
    w = agent.memory.workable_vector(h)
    back = agent.memory.codec.decode(*agent.memory.codec.encode(w))
    mean = w.mean(0)
    return {
        "raw": float(F.cosine_similarity(back, w, dim=-1).mean()),
        "centered": float(F.cosine_similarity(back - mean, w - mean, dim=-1).mean()),
    }


# ----------------------------------------------------------------------------- main
def build_contenders(task: RecallTask, args: Args) -> dict[str, nn.Module]:
    torch.manual_seed(args.seed)
    mem_cfg = MemoryConfig(
        slot_dim=args.hidden,
        num_slots=4,
        code_dim=args.code_dim,
        key_dim=8,
        capacity=args.capacity,
        get_topk=2,
        call_cost=args.call_cost,
    )
    agent = MemoryAgent(task.input_dim, args.hidden, args.classes, mem_cfg)
    # LSTM width with about the memory model's parameters: 4(H^2 + (I + 2)H) + (H + 1)C.
    n_mem, n_in, C = count_parameters(agent), task.input_dim, args.classes
    a, b, c = 4, 4 * (n_in + 2) + C, C - n_mem
    lstm_hidden = round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    models = {
        "gru": CoreClassifier("gru", n_in, args.hidden, C),
        "lstm": LSTMClassifier(n_in, lstm_hidden, C),
        "gru+memory": agent,
    }
    return {name: models[name] for name in args.contenders}


def main(args: Args) -> dict:
    torch.set_num_threads(1)  # fair between contenders and quiet on a shared machine
    task = RecallTask(args.classes, args.cue_dim, args.noise, args.seed)
    models = build_contenders(task, args)
    results: dict = {"args": asdict(args), "contenders": {}, "rows": [], "naps": {}}
    t0 = time.perf_counter()
    for name, model in models.items():
        gen = torch.Generator().manual_seed(args.seed)  # the same episodes for everyone
        print(f"training {name} ({count_parameters(model)} params)", flush=True)
        train = train_memory if name == "gru+memory" else train_baseline
        secs = train(model, task, args, gen)
        results["contenders"][name] = {"params": count_parameters(model), "train_seconds": secs}
        print(f"  trained in {secs:.0f}s", flush=True)
    agent = models.get("gru+memory")
    if agent is not None:
        gen = torch.Generator().manual_seed(args.seed + 1)
        results["codec_cosine"] = codec_cosine(agent, task, args, gen)
        results["item_bytes"] = agent.memory.item_nbytes
        results["slot_bytes"] = agent.memory.workable_slot_nbytes

    for delay in args.delays:
        row: dict = {"delay": delay}
        for name, model in models.items():
            gen = torch.Generator().manual_seed(args.seed + 1000 + delay)  # same test episodes
            evaluate = evaluate_memory if name == "gru+memory" else evaluate_baseline
            row[name] = evaluate(model, task, delay, args, gen)
        results["rows"].append(row)
        print(f"D={delay}: " + "  ".join(f"{n} {row[n]['acc']:.3f}" for n in models), flush=True)

    if agent is not None:
        d_max = max(args.delays)
        for label, nap_every, allow_set in (
            ("no naps", 0, True),
            (f"naps every {args.nap_every} steps", args.nap_every, True),
            ("set disabled, no naps", 0, False),
            (f"set disabled, naps every {args.nap_every}", args.nap_every, False),
        ):
            gen = torch.Generator().manual_seed(args.seed + 1000 + d_max)
            results["naps"][label] = evaluate_memory(
                agent, task, d_max, args, gen, nap_every, allow_set
            )
    results["total_seconds"] = time.perf_counter() - t0
    report(results, args)
    return results


def report(results: dict, args: Args) -> None:
    """Print the table (accuracy, ratios, bytes per env) and write the JSON."""
    names = list(results["contenders"])
    has_mem = "gru+memory" in names
    others = [n for n in names if n != "gru+memory"]
    print(
        f"\nRecall accuracy (chance {1 / args.classes:.3f}), {args.eval_episodes} test "
        f"episodes per cell; trained on D in {list(args.train_delays)}"
    )
    head = f"{'D':>6} |" + "".join(f" {n:>10}" for n in names)
    if has_mem:
        head += " |" + "".join(f" {'mem/' + n:>8}" for n in others)
    head += " | state bytes/env:" + "".join(f" {n:>10}" for n in names)
    if has_mem:
        head += f" {'mem used':>9} {'items':>6}"
    print(head)
    for row in results["rows"]:
        line = f"{row['delay']:>6} |" + "".join(f" {row[n]['acc']:>10.3f}" for n in names)
        if has_mem:
            mem = row["gru+memory"]
            line += " |" + "".join(
                f" {mem['acc'] / max(row[n]['acc'], 1e-9):>8.2f}" for n in others
            )
        line += " |                 " + "".join(f" {row[n]['state_bytes']:>10}" for n in names)
        if has_mem:
            line += f" {mem['used_bytes']:>9} {mem['occupancy']:>6.1f}"
        print(line)
    print(
        "params: "
        + ", ".join(f"{n} {c['params']}" for n, c in results["contenders"].items())
        + "; train seconds: "
        + ", ".join(f"{n} {c['train_seconds']:.0f}" for n, c in results["contenders"].items())
    )
    if has_mem:
        cos = results["codec_cosine"]
        print(
            f"stored item {results['item_bytes']} B vs workable slot {results['slot_bytes']} B "
            f"({results['slot_bytes'] / results['item_bytes']:.1f}x smaller); codec cosine on "
            f"cue items {cos['raw']:.3f} (centered on the mean cue vector: {cos['centered']:.3f})"
        )
        print(f"\nNaps at D={max(args.delays)} (gru+memory, greedy ops):")
        for label, r in results["naps"].items():
            print(
                f"  {label:<30} acc {r['acc']:.3f}  store items {r['occupancy']:7.1f}  "
                f"sets/ep {r['sets_per_episode']:5.2f}  gets/ep {r['gets_per_episode']:5.2f}  "
                f"napped/ep {r['napped_per_episode']:6.1f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['total_seconds']:.0f}s)")
    at_1000 = next(
        (r["gru+memory"]["acc"] for r in results["rows"] if r["delay"] == 1000 and has_mem),
        float("nan"),
    )
    print(f"headline: recall_at_1000={at_1000:.3f} (target >=0.95)")


if __name__ == "__main__":
    main(tyro.cli(Args))
