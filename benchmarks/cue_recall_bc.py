"""CueRecall behaviour-cloning diagnostics: where the memory-guided reach fails.

Trains mindloop's BC (``agent/bc.py``, ``train.py``'s defaults unless given) on scripted
expert episodes of ``mindloop/CueRecall-v0`` at one delay, optionally with DAgger rounds,
then evaluates the deterministic clone at one or more delays and reports, besides success:

* **near any ball**: episodes whose hand came within the success radius of some ball
  (a reach that goes somewhere, right or wrong);
* **goal selection**: episodes whose closest approach to any ball was to the cued one
  (chance 1/3 with three balls), with the memory intact and with a tier of it **ablated**
  every frame (:data:`ABLATIONS`): ``item``, the item the last get fetched (and its hit
  flag); ``workable``, the workable slots and their read, so nothing the slots hold lasts
  from one frame to the next; ``both``. If an ablation changes nothing, the action does not
  lean on that tier;
* memory calls per episode (set / get) of the deterministic policy;
* whether the cue can be read back, when the first get fetches (leave-one-out
  nearest-centroid probe over the evaluation episodes), from the fetched item, from the
  core's recurrent state and from the workable slots: a cue in the item that the action
  ignores is a use problem, a cue in none of them a storage problem;
* with the expert-latent target (``--latent-coef``, train.py's default 1): how well the
  core's state knows the posture the expert heads for once the balls show, **teacher-forced**
  on held-out expert episodes and **closed-loop** in the clone's own evaluation episodes
  (R², and the share of reach frames where the posture read out is nearest the cued ball).
  A large gap between the two is the copycat shortcut of behaviour cloning (de Haan et al.
  2019; Wen et al. 2020): on expert frames the target is readable from the arm's own motion
  toward it, which the clone's arm does not have.

Every env step spent on training (demonstrations + DAgger rollouts) is counted. One torch
thread. Demonstrations are cached under ``benchmarks/out/cue_recall_bc/`` per (kwargs, n).

    python benchmarks/cue_recall_bc.py --quick
    nice -n 10 python benchmarks/cue_recall_bc.py --delay 5 --episodes 1000 --updates 2000 \\
        --dagger 2 --eval-delays 5 200
    # an agent trained elsewhere (train.py, learning.py): the same table, no training
    python benchmarks/cue_recall_bc.py --checkpoint RUN/checkpoints/latest --eval-delays 200

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
    kwargs: dict[str, Any],
    memory: bool,
    k_max: int,
    think: str,
    think_input: str = "token",
    halting: str = "sampled",
    image_pool: str = "flatten",
    image_channels: tuple[int, ...] | None = None,
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
    cfg.agent.think.halting = halting
    cfg.agent.encoders.options["image.pool"] = image_pool
    if image_channels is not None:
        cfg.agent.encoders.options["image.channels"] = str(tuple(image_channels))
    cfg.bc.think = think
    cfg = resolve_for_env(cfg)
    return MindloopAgent(*_env_spaces(cfg), cfg.agent), cfg


_ITEM_KEYS = ("mem/got", "mem/hit")
_WORKABLE_KEYS = ("mem/slots", "mem/slot_keys", "mem/read")
ABLATIONS = {
    "none": (),
    "item": _ITEM_KEYS,
    "workable": _WORKABLE_KEYS,
    "both": _ITEM_KEYS + _WORKABLE_KEYS,
}
"""Memory state keys each ablation zeroes after every frame (the encoded store itself is
left alone: without a fetched item the core cannot see it)."""


def evaluate_clone(
    agent, kwargs: dict[str, Any], episodes: int, ablate: str = "none", latent_decoder=None
):
    """Deterministic episodes (seeds 1,000,001+) -> success, wrong, near-any-ball, goal
    selection rates and memory calls per episode; with ``latent_decoder`` (BC's readout of
    the expert's latent) also the closed-loop latent R² and the share of reach frames whose
    read-out posture is nearest the cued ball's."""
    import gymnasium as gym
    import torch

    import envs  # noqa: F401  (registers the tasks)

    env = gym.make(TASK, **kwargs)
    u = env.unwrapped
    rows = []
    read, true, nearest = [], [], []  # reach frames: read-out latent, the expert's, pick ok
    # at each episode's first get: the fetched item, the core's state, the workable slots
    items, cores, slots, cues = [], [], [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=1_000_001 + k)
        state, start = agent.initial_state(1), True
        closest, closest_ball, sets, gets = 9.0, -1, 0, 0
        while True:
            o = {key: np.asarray(v)[None] for key, v in obs.items()}
            with torch.no_grad():
                if latent_decoder is not None and u._obj_active.any():
                    # the observe step's state for this frame (what BC's readout is trained on)
                    out, _ = agent({k: v[None] for k, v in o.items()}, state,
                                   torch.tensor([[start]]), ponder=True)  # fmt: skip
                    pred = latent_decoder(out.hidden[0, 0, 0]).numpy()  # (n_joints,)
                    read.append(pred)
                    true.append(u.expert_latent())
                    nearest.append(int(np.linalg.norm(u._obj_q - pred, axis=1).argmin()) == u._goal)
                act, state, info = agent.act(o, state, torch.tensor([start]), deterministic=True)
            start = False
            if agent.policy.memory is not None:
                op = int(info.decisions.mem_ops[0, 0])
                sets, gets = sets + (op == 1), gets + (op == 2)
                if op == 2 and gets == 1 and ablate == "none":
                    # what the core reads from the next frame on: the item in the codec's units
                    memory = agent.policy.memory
                    item = memory.codec.standardize(state["mem/got"]) * state["mem/hit"]
                    items.append(item[0].numpy())
                    core = [
                        v.reshape(-1) for k, v in sorted(state.items()) if k.startswith("core/")
                    ]
                    cores.append(torch.cat(core).numpy())  # every core's recurrent state
                    slots.append(state["mem/slots"][0].reshape(-1).numpy())  # (N * slot_dim,)
                    cues.append(u._cue)
                for key in ABLATIONS[ablate]:  # nothing of this tier reaches the next frame
                    state[key] = torch.zeros_like(state[key])
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
    out = dict(zip(keys, (float(x) for x in r.mean(0)), strict=True))
    if read:
        out["latent_r2_closed_loop"] = r2_score(np.array(read), np.array(true))
        out["latent_nearest_cued"] = float(np.mean(nearest))
    if len(set(cues)) > 1:
        out["cue_from_item"] = cue_probe(np.array(items), np.array(cues))
        out["cue_from_core"] = cue_probe(np.array(cores), np.array(cues))
        out["cue_from_workable"] = cue_probe(np.array(slots), np.array(cues))
        out["cue_probe_chance"] = float(np.bincount(cues).max() / len(cues))
        out["cue_probe_episodes"] = len(cues)
    return out


def cue_probe(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy of the cue from (N, d) features (each
    dimension standardized): does the fetched item, or the core's state, still say which
    cue was shown when the balls appear? Episodes whose cue no other episode had are skipped
    (no centroid to find)."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    hits = []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        if not (labels[rest] == labels[i]).any():
            continue
        classes = np.unique(labels[rest])
        centroids = np.stack([x[rest & (labels == c)].mean(0) for c in classes])  # (C, d)
        hits.append(classes[np.linalg.norm(centroids - x[i], axis=1).argmin()] == labels[i])
    return float(np.mean(hits)) if hits else float("nan")


def evaluation_table(
    agent, kwargs: dict[str, Any], delays: list[int], episodes: int, latent_decoder=None
) -> list[dict[str, Any]]:
    """:func:`evaluate_clone` at each delay, with the memory intact and (an agent with
    memory) each of :data:`ABLATIONS`; prints the table and returns its rows."""
    print(
        "| eval delay | ablated | success | wrong | near any ball | goal selected | set/ep | get/ep |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    results = []
    fixed = {k: v for k, v in kwargs.items() if k != "min_delay_steps"}  # each delay on its own
    for delay in delays:
        for ablate in ABLATIONS if agent.policy.memory is not None else ("none",):
            m = evaluate_clone(
                agent, {**fixed, "delay_steps": delay}, episodes, ablate,
                latent_decoder if ablate == "none" else None,
            )  # fmt: skip
            results.append({"eval_delay": delay, "ablated": ablate, **m})
            print(f"| {delay} | {ablate} | {m['success']:.2f} | "
                  f"{m['wrong']:.2f} | {m['near_any_ball']:.2f} | {m['goal_selected']:.2f} | "
                  f"{m['set_per_episode']:.1f} | {m['get_per_episode']:.1f} |")  # fmt: skip
    for m in results:
        if "cue_from_item" in m:
            print(f"delay {m['eval_delay']}: the cue from the item fetched by the first get "
                  f"{m['cue_from_item']:.2f}, from the core's state then "
                  f"{m['cue_from_core']:.2f}, from the workable slots "
                  f"{m['cue_from_workable']:.2f} (majority cue {m['cue_probe_chance']:.2f}; "
                  f"leave-one-out nearest centroid over {m['cue_probe_episodes']} "
                  "episodes)")  # fmt: skip
    return results


def load_cue_recall_agent(path: Path):
    """The mindloop agent at ``path`` and its config; ValueError/FileNotFoundError (one line)
    for no checkpoint there, an SB3 baseline's, or one trained on another task."""
    from agent.baselines import is_sb3_checkpoint
    from agent.checkpoint import load_agent

    if is_sb3_checkpoint(path):
        raise ValueError(
            f"--checkpoint {path} is an SB3 baseline's; this table needs a mindloop agent "
            "(its memory is what it ablates)"
        )
    agent, config = load_agent(path)
    if config.env.id != TASK:
        raise ValueError(f"--checkpoint {path} was trained on {config.env.id}, not {TASK}")
    return agent, config


def evaluate_checkpoint(
    agent, config, path: Path, delays: list[int], episodes: int, out: Path
) -> None:
    """The same evaluation of an agent trained elsewhere (``train.py``, ``learning.py``) on
    the CueRecall arguments it was trained with, at ``delays``: does it use its memory?"""
    kwargs = config.env.make_kwargs()
    print(f"checkpoint {path}: {TASK} {kwargs}")
    results = evaluation_table(agent, kwargs, delays, episodes)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(path), "env_kwargs": kwargs, "results": results}
    out.write_text(json.dumps(record, indent=2))
    last = [r for r in results if r["eval_delay"] == delays[-1] and r["ablated"] == "none"]
    print(f"headline: cuerecall_bc_success={last[0]['success']:.2f} (target >=0.9)")


def r2_score(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE / SST over all entries of (N, d) arrays (per-dimension means)."""
    sst = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - float(((pred - target) ** 2).sum()) / max(sst, 1e-12)


def teacher_forced_latent_r2(agent, decoder, episodes) -> tuple[float, float]:
    """R² of BC's latent readout on expert episodes replayed through the agent, on the frames
    after the balls show (where the expert's latent differs from its first frame's), and on
    the first of them only (the balls just appeared: the arm has not moved toward one yet)."""
    import torch

    read, true = [], []
    with torch.no_grad():
        for ep in episodes:
            obs = {k: v[:, None] for k, v in ep.obs.items()}  # (L, 1, ...)
            starts = torch.zeros(len(ep), 1, dtype=torch.bool)
            starts[0] = True
            out, _ = agent(obs, agent.initial_state(1), starts, ponder=True)
            pred = decoder(out.hidden[:, 0, 0]).numpy()  # (L, d): observe-step states
            moved = np.abs(ep.expert_latents - ep.expert_latents[0]).sum(-1) > 1e-6
            read.append(pred[moved])
            true.append(ep.expert_latents[moved])
    first = r2_score(np.stack([r[0] for r in read]), np.stack([t[0] for t in true]))
    return r2_score(np.concatenate(read), np.concatenate(true)), first


def main() -> None:
    from envs import cue_recall

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (under a minute)")
    ap.add_argument("--delay", type=int, default=20, help="delay_steps of the training episodes")
    ap.add_argument(
        "--min-delay",
        type=int,
        default=None,
        help="draw each training episode's delay uniformly from [--min-delay, --delay] "
        "(the env's min_delay_steps; default: every episode at --delay)",
    )
    ap.add_argument("--cue-stays", action="store_true", help="visually guided control")
    ap.add_argument(
        "--layout",
        choices=cue_recall.LAYOUTS,
        default="random",
        help="ball places: new every episode; 'slots': fixed, colours shuffled; 'fixed': "
        "fixed places and colours",
    )
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
    ap.add_argument(
        "--halting",
        default="sampled",
        help="sampled (default), budget, fixed (every frame thinks k_max steps)",
    )
    ap.add_argument(
        "--image-pool",
        default="flatten",
        choices=("flatten", "mean", "spatial_softmax"),
        help="the image CNN's embedding: flattened map (default), mean over cells, or keypoints",
    )
    ap.add_argument(
        "--image-channels",
        type=int,
        nargs="+",
        default=None,
        help="the image CNN's channels (default the agent's 8 16 32; one per stride-2 conv)",
    )
    ap.add_argument(
        "--latent-coef", type=float, default=1.0, help="bc.expert_latent_coef (0: no latent)"
    )
    ap.add_argument(
        "--latent-frames",
        default="all",
        choices=("all", "onset"),
        help="bc.expert_latent_frames: regress the latent on every frame or at its onsets",
    )
    ap.add_argument("--dagger", type=int, default=0, help="DAgger rounds (steps counted)")
    ap.add_argument("--dagger-episodes", type=int, default=200)
    ap.add_argument(
        "--dagger-beta",
        type=float,
        default=None,
        help="expert share of the first DAgger round, halved each round (train.py's default "
        "unless given; 0: the clone alone drives)",
    )
    ap.add_argument("--dagger-updates", type=int, default=500)
    ap.add_argument("--eval-delays", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"default {OUT} (with --checkpoint: ..._checkpoint.json)",
    )
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="evaluate this trained CueRecall agent (memory intact and ablated) instead of "
        "training one; its env arguments, at --eval-delays",
    )
    a = ap.parse_args()
    lows = {"delay": 0, "episodes": 1, "updates": 1, "k_max": 0, "dagger": 0}
    lows |= {"dagger_episodes": 1, "dagger_updates": 0, "eval_episodes": 1}
    for name, low in lows.items():
        if getattr(a, name) < low:
            ap.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(a, name)}")
    if a.min_delay is not None and not 0 <= a.min_delay <= a.delay:
        ap.error(f"--min-delay must be in [0, --delay={a.delay}], got {a.min_delay}")
    if min(a.eval_delays) < 0:
        ap.error(f"--eval-delays must be >= 0, got {a.eval_delays}")
    if a.image_channels is not None and not 1 <= len(a.image_channels) <= 6:
        ap.error(f"--image-channels takes 1 to 6 values for a 64x64 image, got {a.image_channels}")
    if a.image_channels is not None and min(a.image_channels) < 1:
        ap.error(f"--image-channels must be >= 1, got {a.image_channels}")
    if a.checkpoint is not None:
        # the checkpoint brings its own env arguments and agent: training flags do not apply
        ignored = [f for f in ("quick", "cue_stays") if getattr(a, f)]
        ignored += [f for f in ("delay", "layout") if getattr(a, f) != ap.get_default(f)]
        if ignored:
            flags = ", ".join("--" + f.replace("_", "-") for f in ignored)
            ap.error(
                f"--checkpoint evaluates on the checkpoint's own env arguments; leave out {flags}"
            )
        try:
            agent, config = load_cue_recall_agent(a.checkpoint)
        except (FileNotFoundError, ValueError) as e:  # no checkpoint, SB3's, another task's
            ap.error(str(e))
        import torch

        torch.set_num_threads(1)
        out = a.out or OUT.with_name("cue_recall_bc_checkpoint.json")
        evaluate_checkpoint(agent, config, a.checkpoint, a.eval_delays, a.eval_episodes, out)
        return
    a.out = a.out or OUT
    if a.quick:
        a.delay, a.episodes, a.updates, a.eval_delays, a.eval_episodes = 5, 16, 20, [5], 2
        a.dagger_episodes, a.dagger_updates = 8, 10

    import torch

    from agent.bc import BCTrainer, action_agreement, fit_normalization
    from agent.datasets import collect_expert_dataset, recording_env_steps
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
    if a.min_delay is not None:
        kwargs["min_delay_steps"] = a.min_delay
    if a.cue_stays:
        kwargs["cue_stays"] = True
    if a.layout != "random":
        kwargs["layout"] = a.layout
    tag = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    demos = OUT.parent / "cue_recall_bc" / f"{tag}_n{a.episodes}_s{a.seed}"
    episodes = load_episodes(demos) if (demos / "data").exists() else None
    # none cached yet, or a cache from before latents were recorded
    if episodes is None or episodes[0].expert_latents is None:
        collect_expert_dataset(
            TASK, a.episodes, seed=a.seed + 100_000, path=demos, env_kwargs=kwargs, num_envs=8,
            overwrite=True,
        )  # fmt: skip
        episodes = load_episodes(demos)
    # what recording took (idle envs' steps included); a cache from before that was kept: frames
    env_steps = recording_env_steps(demos) or sum(len(e) for e in episodes)
    seed_everything(a.seed)
    agent, cfg = build_agent(
        kwargs,
        not a.no_memory,
        a.k_max,
        a.think,
        a.think_input,
        a.halting,
        a.image_pool,
        a.image_channels,
    )
    cfg.bc.expert_latent_coef = a.latent_coef
    cfg.bc.expert_latent_frames = a.latent_frames
    if a.dagger_beta is not None:
        cfg.bc.dagger_beta = a.dagger_beta
    train_eps, held_out = split_episodes(episodes, 0.1, seed=a.seed)
    fit_normalization(agent, train_eps)
    trainer = BCTrainer(agent, cfg.bc, gamma=cfg.ppo.gamma, seed=a.seed)
    sampler = SequenceSampler(train_eps, cfg.bc.batch_envs, cfg.bc.seq_len, cfg.ppo.gamma, a.seed)
    total = a.updates + a.dagger * a.dagger_updates
    trainer.train(sampler, a.updates, total_updates=total)
    for r in range(1, a.dagger + 1):
        envs = make_vector_env(cfg.env)
        beta = cfg.bc.dagger_beta * 0.5 ** (r - 1)
        new, steps = collect_episodes(
            envs, a.dagger_episodes, seeds=env_seeds(a.seed + 7919 * r, 8), agent=agent,
            beta=beta, seed=r,
        )  # fmt: skip
        envs.close()
        env_steps += steps  # every env's steps, those past the last kept episode too
        sampler.add(new)
        trainer.train(sampler, a.dagger_updates, total_updates=total)
    agreement = action_agreement(agent, held_out[:20])
    decoder = trainer.latent_decoder
    if decoder is not None:
        (
            agreement["latent_r2_teacher_forced"],
            agreement["latent_r2_teacher_forced_first_frame"],
        ) = teacher_forced_latent_r2(agent, decoder, held_out[:30])
    print(f"trained on {env_steps} env steps in {time.perf_counter() - t0:.0f}s; held-out "
          + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()))  # fmt: skip
    results = evaluation_table(agent, kwargs, a.eval_delays, a.eval_episodes, decoder)
    for m in results:
        if "latent_r2_closed_loop" in m:
            print(f"delay {m['eval_delay']}: expert latent R² closed-loop "
                  f"{m['latent_r2_closed_loop']:.3f} (teacher-forced held-out "
                  f"{agreement['latent_r2_teacher_forced']:.3f}, on the balls' first frame "
                  f"{agreement['latent_r2_teacher_forced_first_frame']:.3f}); read-out "
                  f"posture nearest the cued ball on {m['latent_nearest_cued']:.2f} of reach "
                  "frames")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) for k, v in vars(a).items()}, "env_steps": env_steps,
              "agreement": agreement, "results": results}  # fmt: skip
    a.out.write_text(json.dumps(record, indent=2))
    last = [r for r in results if r["eval_delay"] == a.eval_delays[-1] and r["ablated"] == "none"]
    print(f"headline: cuerecall_bc_success={last[0]['success']:.2f} (target >=0.9)")


if __name__ == "__main__":
    main()
