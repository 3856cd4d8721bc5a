"""CueRecall behaviour-cloning diagnostics: where the memory-guided reach fails.

Trains mindloop's BC (``agent/bc.py``, ``train.py``'s defaults unless given) on scripted
expert episodes of ``mindloop/CueRecall-v0`` at one delay, optionally with DAgger rounds,
then evaluates the deterministic clone at one or more delays and reports, besides success:

* **near any ball**: episodes whose hand came within the success radius of some ball
  (a reach that goes somewhere, right or wrong);
* **goal selection**: episodes whose closest approach to any ball was to the cued one
  (chance 1/3 with three balls), with the memory read intact and with it **ablated** (the
  fetched item and hit flag zeroed every frame): if ablation changes nothing, the action
  does not use what the memory fetched;
* memory calls per episode (set / get) of the deterministic policy.

Every env step spent on training (demonstrations + DAgger rollouts) is counted. One torch
thread. Demonstrations are cached under ``benchmarks/out/cue_recall_bc/`` per (kwargs, n).

    python benchmarks/cue_recall_bc.py --quick
    nice -n 10 python benchmarks/cue_recall_bc.py --delay 5 --episodes 1000 --updates 2000 \\
        --dagger 2 --eval-delays 5 200

The last line is ``headline: cuerecall_bc_success=<rate at the last eval delay> (target >=0.9)``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "cue_recall_bc.json"
TASK = "mindloop/CueRecall-v0"


def build_agent(
    kwargs: dict[str, Any], memory: bool, k_max: int, think: str, think_input: str = "token"
):
    """mindloop's default agent for CueRecall (memory with the standardized read, as
    benchmarks/learning.py configures it) and its train config."""
    from agent.agent import MindloopAgent
    from agent.config import EnvConfig, TrainConfig
    from agent.training import _env_spaces, resolve_for_env

    cfg = TrainConfig(env=EnvConfig(id=TASK, num_envs=8, vectorization="sync", kwargs=kwargs))
    cfg.agent.use_memory = memory
    cfg.agent.memory.standardized_read = True
    cfg.agent.memory.codec_momentum = 0.1
    cfg.agent.think.k_max = k_max
    cfg.agent.think.think_input = think_input
    cfg.bc.think = think
    cfg = resolve_for_env(cfg)
    return MindloopAgent(*_env_spaces(cfg), cfg.agent), cfg


def evaluate_clone(agent, kwargs: dict[str, Any], episodes: int, ablate: bool = False):
    """Deterministic episodes (seeds 1,000,001+) -> success, wrong, near-any-ball, goal
    selection rates and memory calls per episode."""
    import gymnasium as gym
    import torch

    import envs  # noqa: F401  (registers the tasks)

    env = gym.make(TASK, **kwargs)
    u = env.unwrapped
    rows = []
    for k in range(episodes):
        obs, _ = env.reset(seed=1_000_001 + k)
        state, start = agent.initial_state(1), True
        closest, closest_ball, sets, gets = 9.0, -1, 0, 0
        while True:
            o = {key: np.asarray(v)[None] for key, v in obs.items()}
            with torch.no_grad():
                act, state, info = agent.act(o, state, torch.tensor([start]), deterministic=True)
            start = False
            if agent.policy.memory is not None:
                op = int(info.decisions.mem_ops[0, 0])
                sets, gets = sets + (op == 1), gets + (op == 2)
                if ablate:  # the action sees no fetched item
                    state["mem/got"] = torch.zeros_like(state["mem/got"])
                    state["mem/hit"] = torch.zeros_like(state["mem/hit"])
            obs, _, term, trunc, step_info = env.step(
                {key: np.asarray(v[0]) for key, v in act.items()}
            )
            if u._obj_active.any():
                d = np.linalg.norm(u._obj_point - u.hand_pos(), axis=1)
                d[~u._obj_active] = np.inf
                if d.min() < closest:
                    closest, closest_ball = float(d.min()), int(d.argmin())
            if term or trunc:
                success = bool(step_info.get("is_success"))
                rows.append(
                    (success, term and not success, closest < u.success_radius,
                     closest_ball == u._goal, sets, gets)
                )  # fmt: skip
                break
    env.close()
    r = np.array(rows, dtype=np.float64)
    keys = (
        "success",
        "wrong",
        "near_any_ball",
        "goal_selected",
        "set_per_episode",
        "get_per_episode",
    )
    return dict(zip(keys, (float(x) for x in r.mean(0)), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (under a minute)")
    ap.add_argument("--delay", type=int, default=20, help="delay_steps of the training episodes")
    ap.add_argument("--cue-stays", action="store_true", help="visually guided control")
    ap.add_argument("--episodes", type=int, default=300, help="expert demonstrations")
    ap.add_argument("--updates", type=int, default=1000, help="BC gradient steps")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--think", default="ponder", choices=("ponder", "sampled"))
    ap.add_argument("--k-max", type=int, default=2)
    ap.add_argument(
        "--think-input",
        default="token",
        help="token (default), adapter, attend, scan (image cells)",
    )
    ap.add_argument("--dagger", type=int, default=0, help="DAgger rounds (steps counted)")
    ap.add_argument("--dagger-episodes", type=int, default=200)
    ap.add_argument("--dagger-updates", type=int, default=500)
    ap.add_argument("--eval-delays", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.quick:
        a.delay, a.episodes, a.updates, a.eval_delays, a.eval_episodes = 5, 16, 20, [5], 2
        a.dagger_episodes, a.dagger_updates = 8, 10

    import torch

    from agent.bc import BCTrainer, action_agreement, fit_normalization
    from agent.datasets import collect_expert_dataset
    from agent.demonstrations import (
        SequenceSampler,
        collect_episodes,
        load_episodes,
        split_episodes,
    )
    from agent.training import seed_everything
    from agent.vector import env_seeds, make_vector_env

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"delay_steps": a.delay}
    if a.cue_stays:
        kwargs["cue_stays"] = True
    tag = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    demos = OUT.parent / "cue_recall_bc" / f"{tag}_n{a.episodes}_s{a.seed}"
    if not (demos / "data").exists():
        collect_expert_dataset(
            TASK, a.episodes, seed=a.seed + 100_000, path=demos, env_kwargs=kwargs, num_envs=8,
            overwrite=True,
        )  # fmt: skip
    episodes = load_episodes(demos)
    env_steps = sum(len(e) for e in episodes)
    seed_everything(a.seed)
    agent, cfg = build_agent(kwargs, not a.no_memory, a.k_max, a.think, a.think_input)
    train_eps, held_out = split_episodes(episodes, 0.1, seed=a.seed)
    fit_normalization(agent, train_eps)
    trainer = BCTrainer(agent, cfg.bc, gamma=cfg.ppo.gamma, seed=a.seed)
    sampler = SequenceSampler(train_eps, cfg.bc.batch_envs, cfg.bc.seq_len, cfg.ppo.gamma, a.seed)
    total = a.updates + a.dagger * a.dagger_updates
    trainer.train(sampler, a.updates, total_updates=total)
    for r in range(1, a.dagger + 1):
        envs = make_vector_env(cfg.env)
        beta = cfg.bc.dagger_beta * 0.5 ** (r - 1)
        new = collect_episodes(
            envs, a.dagger_episodes, seeds=env_seeds(a.seed + 7919 * r, 8), agent=agent,
            beta=beta, seed=r,
        )  # fmt: skip
        envs.close()
        env_steps += sum(len(e) for e in new)
        sampler.add(new)
        trainer.train(sampler, a.dagger_updates, total_updates=total)
    agreement = action_agreement(agent, held_out[:20])
    print(f"trained on {env_steps} env steps in {time.perf_counter() - t0:.0f}s; held-out "
          + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()))  # fmt: skip
    results = []
    print(
        "| eval delay | read | success | wrong | near any ball | goal selected | set/ep | get/ep |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for delay in a.eval_delays:
        for ablate in (False, True) if agent.policy.memory is not None else (False,):
            m = evaluate_clone(agent, {**kwargs, "delay_steps": delay}, a.eval_episodes, ablate)
            results.append({"eval_delay": delay, "ablated_read": ablate, **m})
            print(f"| {delay} | {'ablated' if ablate else 'intact'} | {m['success']:.2f} | "
                  f"{m['wrong']:.2f} | {m['near_any_ball']:.2f} | {m['goal_selected']:.2f} | "
                  f"{m['set_per_episode']:.1f} | {m['get_per_episode']:.1f} |")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) for k, v in vars(a).items()}, "env_steps": env_steps,
              "agreement": agreement, "results": results}  # fmt: skip
    a.out.write_text(json.dumps(record, indent=2))
    last = [r for r in results if r["eval_delay"] == a.eval_delays[-1] and not r["ablated_read"]]
    print(f"headline: cuerecall_bc_success={last[0]['success']:.2f} (target >=0.9)")


if __name__ == "__main__":
    main()
