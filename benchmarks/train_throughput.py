"""Training throughput: env steps/s of the whole PPO loop (rollout + update), mindloop's
recurrent PPO against sb3-contrib RecurrentPPO and SB3 PPO, on the same env in one run.

Every contender trains on the default task (``mindloop/MuscleReach-v0``) with the same
mindloop fused encoder (``AgentConfig``'s default: cnn image, logmel audio, proprio, touch
-> 256), the same hidden width (``core.hidden_dim`` = 128), the same ``num_envs`` x ``rollout_steps`` per update,
``epochs`` and ``minibatches`` (SB3's ``batch_size = num_envs * rollout_steps / minibatches``),
and the same vector env (Gymnasium ``AsyncVectorEnv``, one worker process per env, forkserver):

* **mindloop**: ``agent.ppo.PPOTrainer`` on a ``MindloopAgent`` with its defaults: GRU core,
  up to ``think.k_max`` sampled think steps per frame, BPTT over ``bptt_steps`` chunks;
* **mindloop-nothink** (not in ``--quick``): the same with ``k_max`` = 0;
* **sb3-recurrentppo**: sb3-contrib ``RecurrentPPO``, one LSTM shared by actor and critic
  (``agent.baselines``), BPTT over whole rollout sequences;
* **sb3-ppo**: SB3 ``PPO``, no memory (one Tanh layer of 128 units per head);
* **sb3-ppo[sb3-vecenv]** (not in ``--quick``): SB3 PPO on SB3's own ``SubprocVecEnv`` (``DummyVecEnv``
  with ``--vectorization sync``) instead of Gymnasium's, to see which the baselines should use.

The contenders run **interleaved in one process**: each is built and warmed up by one
update (not timed), then in every round each runs ``--updates`` updates in turn (the order
rotates per round), so all see the same machine load. A contender's fps is its timed steps
over its timed seconds; ratios are also given per round (median, min-max). Torch uses
**1 intra-op thread** for every contender (``torch.set_num_threads(1)``): the env workers
need the other core, and one thread is the same for all.

    python benchmarks/train_throughput.py --quick       # < 1 minute
    nice -n 5 python benchmarks/train_throughput.py     # the full run in RESULTS.md

Writes ``benchmarks/out/train_throughput.json``; the last line is
``headline: ppo_vs_recurrentppo_fps=<mindloop / RecurrentPPO> (target >=3)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

from agent.agent import MindloopAgent
from agent.baselines import build_sb3_model, make_logger, make_sb3_vec_env
from agent.config import AgentConfig, EnvConfig, PPOConfig, RunConfig, TrainConfig
from agent.ppo import PPOTrainer
from agent.rollout import EnvRunner
from agent.vector import check_env_id, env_seeds, make_vector_env

OUT = Path(__file__).resolve().parent / "out" / "train_throughput.json"


@dataclass
class Contender:
    """A trainer that can run ``n`` updates and report the time split."""

    name: str
    run: Callable[[int], tuple[int, float, float]]
    """run(n) -> (env steps, rollout seconds, update seconds)."""
    close: Callable[[], None]
    params: int
    steps: int = 0
    seconds: float = 0.0
    rollout_s: float = 0.0
    update_s: float = 0.0
    rounds: list[float] = field(default_factory=list)
    """fps of each timed round."""

    @property
    def fps(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def train_config(args: argparse.Namespace, algo: str, k_max: int | None = None) -> TrainConfig:
    """The shared settings, as a mindloop TrainConfig (SB3 reads the same fields)."""
    agent = AgentConfig()  # mindloop's defaults: encoders, GRU width, think steps
    if k_max is not None:
        agent.think.k_max = k_max
    return TrainConfig(
        env=EnvConfig(id=args.env, num_envs=args.num_envs, vectorization=args.vectorization),
        agent=agent,
        algo=algo,
        ppo=PPOConfig(
            total_steps=10**9,  # never reached: the benchmark stops by update count
            rollout_steps=args.rollout_steps,
            bptt_steps=args.bptt_steps,
            epochs=args.epochs,
            minibatches=args.minibatches,
            lr_schedule="constant",
        ),
        run=RunConfig(seed=args.seed, threads=1, progress=False, tensorboard=False),
    )


def mindloop_contender(name: str, config: TrainConfig) -> Contender:
    envs = make_vector_env(config.env)
    torch.manual_seed(config.run.seed)
    agent = MindloopAgent(envs.single_observation_space, envs.single_action_space, config.agent)
    runner = EnvRunner(envs, agent, env_seeds(config.run.seed, config.env.num_envs))
    trainer = PPOTrainer(agent, runner, config.ppo, total_updates=10**6, seed=config.run.seed)

    def run(n: int) -> tuple[int, float, float]:
        steps = rollout_s = update_s = 0.0
        for _ in range(n):
            m = trainer.iterate()
            steps += m["steps"]
            rollout_s += m["rollout_seconds"]
            update_s += m["update_seconds"]
        return int(steps), rollout_s, update_s

    params = sum(p.numel() for p in agent.parameters())
    return Contender(name, run, envs.close, params)


class _SplitTimer(BaseCallback):
    """Time spent collecting rollouts (the rest of ``learn`` is the update)."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_s = 0.0
        self._t0 = 0.0

    def _on_rollout_start(self) -> None:
        self._t0 = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.rollout_s += time.perf_counter() - self._t0

    def _on_step(self) -> bool:
        return True


def sb3_contender(name: str, config: TrainConfig, backend: str) -> Contender:
    venv = make_sb3_vec_env(config.env, seed=config.run.seed, backend=backend)
    model = build_sb3_model(config, venv)
    model.set_logger(make_logger(Path("."), tensorboard=False))  # no /tmp/SB3-* folder
    per_update = config.ppo.rollout_steps * config.env.num_envs
    first = [True]

    def run(n: int) -> tuple[int, float, float]:
        timer = _SplitTimer()
        before = model.num_timesteps
        t0 = time.perf_counter()
        # learn() continues from the last observation and state (no env reset) when
        # reset_num_timesteps=False; it runs exactly n rollouts + n updates.
        model.learn(n * per_update, callback=timer, reset_num_timesteps=first[0])
        wall = time.perf_counter() - t0
        first[0] = False
        return model.num_timesteps - before, timer.rollout_s, wall - timer.rollout_s

    params = sum(p.numel() for p in model.policy.parameters())
    return Contender(name, run, venv.close, params)


BUILDERS: dict[str, Callable[[argparse.Namespace], Contender]] = {
    "mindloop": lambda a: mindloop_contender("mindloop", train_config(a, "ppo")),
    "sb3-recurrentppo": lambda a: sb3_contender(
        "sb3-recurrentppo", train_config(a, "sb3-recurrentppo"), "gymnasium"
    ),
    "sb3-ppo": lambda a: sb3_contender("sb3-ppo", train_config(a, "sb3-ppo"), "gymnasium"),
    "mindloop-nothink": lambda a: mindloop_contender(
        "mindloop-nothink", train_config(a, "ppo", k_max=0)
    ),
    "sb3-ppo[sb3-vecenv]": lambda a: sb3_contender(
        "sb3-ppo[sb3-vecenv]", train_config(a, "sb3-ppo"), "sb3"
    ),
}
QUICK = ("mindloop", "sb3-recurrentppo", "sb3-ppo")


def build(args: argparse.Namespace) -> list[Contender]:
    """The chosen contenders, each built and warmed up by one untimed update."""
    out = []
    for name in args.contenders:
        t0 = time.perf_counter()
        contender = BUILDERS[name](args)
        contender.run(1)  # warm-up: worker start, first allocations, lazy renderers
        print(f"built + warmed up {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        out.append(contender)
    return out


def measure(contenders: list[Contender], rounds: int, updates: int) -> None:
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            t0 = time.perf_counter()
            steps, rollout_s, update_s = c.run(updates)
            dt = time.perf_counter() - t0
            c.steps += steps
            c.seconds += dt
            c.rollout_s += rollout_s
            c.update_s += update_s
            c.rounds.append(steps / dt)
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{c.name} {c.rounds[-1]:.0f}" for c in contenders),
            flush=True,
        )


def ratio(a: Contender, b: Contender) -> dict[str, float]:
    per_round = [x / y for x, y in zip(a.rounds, b.rounds, strict=True)]
    return {
        "total": a.fps / b.fps,
        "median_round": statistics.median(per_round),
        "min_round": min(per_round),
        "max_round": max(per_round),
    }


def table(contenders: list[Contender], base: Contender) -> str:
    head = ["contender", "params", "steps/s", "x mindloop", "rollout s", "update s", "rollout %"]
    rows = [head]
    for c in contenders:
        rows.append(
            [
                c.name,
                f"{c.params / 1e6:.2f}M",
                f"{c.fps:,.0f}",
                f"{c.fps / base.fps:.2f}",
                f"{c.rollout_s:.1f}",
                f"{c.update_s:.1f}",
                f"{100 * c.rollout_s / max(c.rollout_s + c.update_s, 1e-9):.0f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 contenders, 1 round (< 1 min)")
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(BUILDERS),
        default=None,
        help=f"default: all ({', '.join(QUICK)} with --quick)",
    )
    parser.add_argument("--env", default="mindloop/MuscleReach-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument(
        "--vectorization", default="async", choices=("async", "sync"), help="quick: sync"
    )
    parser.add_argument("--rollout-steps", type=int, default=64)
    parser.add_argument("--bptt-steps", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds (default 5; 1 quick)"
    )
    parser.add_argument("--updates", type=int, default=None, help="updates per round (2; 1 quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        check_env_id(args.env)
    except ValueError as err:
        parser.error(str(err))
    for name in ("num_envs", "rollout_steps", "bptt_steps", "epochs", "minibatches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("rounds", "updates"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        # no worker processes to start: their start-up alone would take most of a minute
        args.num_envs, args.rollout_steps = min(args.num_envs, 4), min(args.rollout_steps, 32)
        args.vectorization = "sync"
    args.contenders = args.contenders or list(QUICK if args.quick else BUILDERS)
    rounds = args.rounds or (1 if args.quick else 5)
    updates = args.updates or (1 if args.quick else 2)
    torch.set_num_threads(1)

    t_start = time.perf_counter()
    contenders = build(args)
    try:
        measure(contenders, rounds, updates)
    finally:
        for c in contenders:
            c.close()
    by_name = {c.name: c for c in contenders}
    mind = by_name.get("mindloop", contenders[0])
    vs_rppo = ratio(mind, by_name["sb3-recurrentppo"]) if "sb3-recurrentppo" in by_name else None
    vs_ppo = ratio(mind, by_name["sb3-ppo"]) if "sb3-ppo" in by_name else None

    print()
    print(
        f"{args.env}: {args.num_envs} envs ({args.vectorization}) x {args.rollout_steps} steps per "
        f"update, {args.epochs} epochs x {args.minibatches} minibatches; 1 torch thread; "
        f"encoder options {train_config(args, 'ppo').agent.encoders.options or 'default'}, "
        f"mindloop k_max {train_config(args, 'ppo').agent.think.k_max}; "
        f"{rounds} interleaved rounds x {updates} updates each"
    )
    print(table(contenders, mind))
    for name, r, target in (("RecurrentPPO", vs_rppo, ">=3"), ("PPO", vs_ppo, ">=0.8")):
        if r is not None and "mindloop" in by_name:
            print(
                f"mindloop / {name}: {r['total']:.2f} (target {target}; rounds: median "
                f"{r['median_round']:.2f}, {r['min_round']:.2f}-{r['max_round']:.2f})"
            )
    if "sb3-ppo[sb3-vecenv]" in by_name and "sb3-ppo" in by_name:
        r = ratio(by_name["sb3-ppo"], by_name["sb3-ppo[sb3-vecenv]"])
        print(
            f"SB3 PPO on Gymnasium's vector env / on SB3's (SubprocVecEnv or DummyVecEnv): "
            f"{r['total']:.2f} "
            f"(rounds median {r['median_round']:.2f})"
        )
    agent = train_config(args, "ppo").agent
    result: dict[str, Any] = {
        "env": args.env,
        "encoders": agent.encoders.to_dict(),
        "hidden_dim": agent.core.hidden_dim,
        "k_max": agent.think.k_max,
        "num_envs": args.num_envs,
        "rollout_steps": args.rollout_steps,
        "bptt_steps": args.bptt_steps,
        "epochs": args.epochs,
        "minibatches": args.minibatches,
        "rounds": rounds,
        "updates_per_round": updates,
        "torch_threads": 1,
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load": os.getloadavg(),
        },
        "wall_s": time.perf_counter() - t_start,
        "contenders": {
            c.name: {
                "fps": c.fps,
                "steps": c.steps,
                "seconds": c.seconds,
                "rollout_s": c.rollout_s,
                "update_s": c.update_s,
                "round_fps": c.rounds,
                "params": c.params,
            }
            for c in contenders
        },
        "mindloop_vs_recurrentppo": vs_rppo,
        "mindloop_vs_ppo": vs_ppo,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    value = vs_rppo["total"] if vs_rppo is not None and "mindloop" in by_name else float("nan")
    print(f"headline: ppo_vs_recurrentppo_fps={value:.2f} (target >=3)")


if __name__ == "__main__":
    main()
