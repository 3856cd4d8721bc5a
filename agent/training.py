"""The training entry point behind ``train.py``: config in, trained agent + checkpoint out.

:func:`train` sets up a run (directory, seeds, device, torchrun ranks, envs, agent, logger),
runs the algorithm named by ``config.algo`` from :data:`ALGORITHMS`, then saves the final
checkpoint and evaluates the agent (success table, ``eval.json``, ``video.mp4``).

An algorithm is a list of *phases* (``bc``, ``ppo``, ...), each a function registered in
:data:`PHASES` that trains ``run.agent`` in place. A checkpoint records which phases are done
and the running phase's exact state, so ``--resume`` continues from the phase and update it
stopped at. The SB3 baselines (``sb3-ppo``, ``sb3-recurrentppo``) plug in as algorithms that
hand the whole run to :func:`agent.baselines.train_sb3`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agent.agent import MindloopAgent
from agent.bc import BCTrainer, action_agreement, fit_normalization
from agent.checkpoint import (
    BEST,
    CHECKPOINTS,
    TrainerState,
    beats_best,
    checkpoint_root,
    checkpoint_to_resume,
    evaluation_record,
    load_trainer_state,
    load_weights,
    optimizer_from_state,
    optimizer_to_state,
    pack,
    read_checkpoint_meta,
    resolve_checkpoint,
    resume_run_dir,
    save_checkpoint,
    unpack,
)
from agent.config import TrainConfig, config_from_dict, config_to_dict
from agent.demonstrations import (
    Episode,
    SequenceSampler,
    collect_episodes,
    load_episodes,
    split_episodes,
)
from agent.distributed import (
    DistInfo,
    all_gather_cat,
    all_reduce_mean,
    broadcast_object,
    gather_objects,
    init_distributed,
    launch_world_size,
    shutdown,
    wrap_model,
)
from agent.logger import RunLogger
from agent.ppo import PPOTrainer
from agent.rollout import EnvRunner, run_episodes
from agent.vector import (
    SEED_DAGGER,
    SEED_DEMOS,
    SEED_ENVS,
    check_env_id,
    derived_seed,
    env_seeds,
    make_vector_env,
)
from encoders.registry import Registry

EVAL_SEED_OFFSET = 1_000_000
"""Evaluation episode ``k`` of run seed ``s`` is reset with seed ``EVAL_SEED_OFFSET + s + k``:
away from the training envs' blocks (:func:`agent.vector.derived_seed`), and the same
episodes for every algorithm run with that seed (paired comparisons)."""


@dataclass
class Run:
    """Everything a phase needs (one per process)."""

    config: TrainConfig
    run_dir: Path
    dist: DistInfo
    device: torch.device
    agent: MindloopAgent
    model: nn.Module
    """``agent`` or its DDP wrapper: training forwards go through it."""
    logger: RunLogger
    env_step: int = 0
    """Env steps of the whole job (all ranks) so far, the x-axis of every chart but behaviour
    cloning's curves (``losses/bc_*``, ``charts/bc_think_steps``): BC steps no env, so their x
    is the frames trained on."""
    phases_done: list[str] = field(default_factory=list)
    resume: TrainerState | None = None
    """The checkpoint's trainer state when resuming (consumed by the phase it belongs to)."""
    results: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        self.logger.info(message)

    def save(
        self, phase_state: dict[str, Any] | None, optimizer: torch.optim.Optimizer | None
    ) -> Path | None:
        """A checkpoint, written by rank 0. With a ``phase_state`` (mid-phase, for an exact
        resume) every rank must call this: each contributes its own state (envs, RNG)."""
        per_rank = gather_objects(phase_state, self.dist) if phase_state is not None else None
        if not self.dist.is_main:
            return None
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "env_step": self.env_step,
            "phases_done": list(self.phases_done),
            "world_size": self.dist.world_size,
            "python_random": _jsonable_random_state(),
            **_jsonable_numpy_state(),
        }
        tensors["rng/torch"] = torch.get_rng_state()
        if per_rank is not None and per_rank[0] is not None:
            meta["ranks"] = [pack(s, f"rank{r}", tensors) for r, s in enumerate(per_rank)]
        if optimizer is not None:
            opt = optimizer_to_state(optimizer)
            tensors.update(opt.tensors)
            meta.update(opt.meta)
        trainer = TrainerState(tensors, meta)
        path = save_checkpoint(
            checkpoint_root(self.run_dir),
            self.agent,
            self.config,
            step=self.env_step,
            trainer=trainer,
            keep=self.config.run.keep_checkpoints,
            extra_meta={"phases_done": list(self.phases_done), "results": self.results},
        )
        return path

    def take_resume(self, optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
        """This rank's saved phase state (and the optimizer's), if resuming; else None."""
        state, self.resume = self.resume, None
        if state is None or "ranks" not in state.meta:
            return None
        if state.meta["world_size"] != self.dist.world_size:
            raise ValueError(
                f"the checkpoint was written by {state.meta['world_size']} processes, this run "
                f"has {self.dist.world_size}; resume with the same --nproc_per_node"
            )
        if optimizer is not None and "optim" in state.meta:
            optimizer_from_state(optimizer, state)
        mine = unpack(state.meta["ranks"][self.dist.rank], state.tensors)
        torch.set_rng_state(state.tensors["rng/torch"])
        if self.dist.enabled:  # each rank's torch RNG is part of its own state
            torch.set_rng_state(mine["torch_rng"])
        return mine


# --------------------------------------------------------------------------- phases

Phase = Callable[[Run], None]
PHASES: Registry[Phase] = Registry("training phase")


@dataclass(frozen=True)
class Algorithm:
    """A named sequence of phases (or a whole different trainer, for the SB3 baselines)."""

    phases: tuple[str, ...]
    description: str
    external: Callable[[TrainConfig], Any] | None = None


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
ALGORITHMS.register("ppo")(Algorithm(("ppo",), "recurrent PPO from scratch"))
ALGORITHMS.register("bc")(Algorithm(("bc",), "behaviour cloning from the scripted expert"))
ALGORITHMS.register("bc+ppo")(
    Algorithm(("bc", "ppo"), "behaviour cloning, then recurrent PPO fine-tuning")
)
ALGORITHMS.register("sft-rl")(
    Algorithm(("sft-rl",), "text tasks: PPO rewarded by answer-token correctness (SFT as RL)")
)


def _register_baselines() -> None:
    """SB3 PPO / RecurrentPPO as algorithms (agent.baselines owns them)."""

    def run_baseline(config: TrainConfig) -> Any:
        from agent.baselines import train_sb3

        return train_sb3(config)

    for name in ("sb3-ppo", "sb3-recurrentppo"):
        if name not in ALGORITHMS:
            ALGORITHMS.register(name)(
                Algorithm((), f"Stable-Baselines3 baseline {name}", external=run_baseline)
            )


_register_baselines()


@PHASES.register("bc")
def bc_phase(run: Run) -> None:
    """Behaviour cloning: demonstrations (Minari) -> soft-target BC (+ DAgger rounds)."""
    cfg, agent = run.config, run.agent
    bc = cfg.bc
    t0 = time.perf_counter()
    episodes = _demonstrations(run)
    train_eps, held_out = split_episodes(episodes, 0.1, seed=cfg.run.seed)
    frames = sum(len(e) for e in episodes)
    run.log(
        f"bc: {len(episodes)} expert episodes ({frames} frames, success "
        f"{np.mean([e.success for e in episodes]):.0%}) in {time.perf_counter() - t0:.1f}s"
    )
    fit_normalization(agent, train_eps, gather=_gather(run))
    trainer = BCTrainer(
        agent, bc, gamma=cfg.ppo.gamma, model=run.model, seed=_rank_seed(run), gather=_gather(run)
    )
    sampler = SequenceSampler(
        train_eps, bc.batch_envs, bc.seq_len, cfg.ppo.gamma, seed=_rank_seed(run)
    )
    per_round = [bc.updates] + [bc.dagger_updates] * bc.dagger_rounds
    total = sum(per_round)
    frames_per_update = bc.batch_envs * bc.seq_len * run.dist.world_size

    def on_update(u: int, m: Any) -> None:
        # x: frames trained on (BC steps no env; env steps would stack every point at one x)
        if u % 10 == 0 or u == total:
            run.logger.scalars(
                "losses",
                {"bc_loss": m.loss, "bc_imitation": m.imitation, "bc_value": m.value,
                 "bc_halting": m.halting, "bc_expert_latent": m.expert_latent},
                u * frames_per_update,
            )  # fmt: skip
            run.logger.scalars("charts", {"bc_think_steps": m.think_steps}, u * frames_per_update)
            run.logger.progress(
                run.env_step, {"phase": "bc", "update": f"{u}/{total}", "loss": m.imitation}
            )

    envs = None
    try:
        for r in range(len(per_round)):
            if r > 0:  # DAgger: the learner drives, the expert labels what it visits
                if envs is None:
                    envs = make_vector_env(cfg.env)
                dagger_seed = derived_seed(cfg.run.seed, SEED_DAGGER, r)
                seeds = env_seeds(dagger_seed, cfg.env.num_envs, run.dist.rank)
                beta = bc.dagger_beta * 0.5 ** (r - 1)  # Ross et al.'s decaying mixture
                new, steps = collect_episodes(
                    envs, bc.dagger_episodes, seeds=seeds, agent=agent, beta=beta, seed=seeds[0]
                )
                run.env_step += steps * run.dist.world_size  # dropped episodes' steps too
                sampler.add(new)
                run.log(
                    f"bc: DAgger round {r}: rollouts (learner, expert mixed in at beta={beta:g}) "
                    f"succeed {np.mean([e.success for e in new]):.0%}; {sampler.frames} labelled "
                    "frames"
                )
            metrics = trainer.train(sampler, per_round[r], total_updates=total, on_update=on_update)
    finally:
        if envs is not None:
            envs.close()
    agreement = action_agreement(agent, held_out[:20]) if held_out else {}
    run.logger.scalars("eval", {f"bc_{k}": v for k, v in agreement.items()}, run.env_step)
    run.results["bc"] = {"imitation_loss": metrics.imitation, **agreement}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in agreement.items())
    run.log(
        f"bc: done in {time.perf_counter() - t0:.0f}s; held-out agreement "
        + (scores or f"not measured ({len(episodes)} episodes: none held out)")
    )


def demonstration_seed(run_seed: int, rank: int = 0) -> int:
    """Seed of the first expert demonstration a run records (episode ``k`` on ``+ k``): the
    one rule for the trainer and for tools that record a run's demonstrations ahead of it."""
    return derived_seed(run_seed, SEED_DEMOS, rank)


def _demonstrations(run: Run) -> list[Episode]:
    """The BC data: the dataset given in ``bc.dataset``, or expert episodes recorded into
    ``<run>/demos`` (a Minari dataset, one per rank) and read back. Either way the env steps
    of the recording count towards ``run.max_env_steps``."""
    from agent.datasets import collect_expert_dataset, recording_env_steps

    cfg = run.config
    if cfg.bc.dataset is not None:
        path, copies = Path(cfg.bc.dataset), 1  # one dataset, shared by every rank
    else:
        path = run.run_dir / ("demos" if not run.dist.enabled else f"demos_rank{run.dist.rank}")
        copies = run.dist.world_size  # each rank records its own
        if not (path / "data").exists():
            collect_expert_dataset(
                cfg.env.id,
                cfg.bc.episodes,
                seed=demonstration_seed(cfg.run.seed, run.dist.rank),
                path=path,
                env_kwargs=cfg.env.make_kwargs(),
                num_envs=min(cfg.env.num_envs, cfg.bc.episodes),
                vectorization=cfg.env.vectorization,
                overwrite=True,
            )
    episodes = load_episodes(path)
    # what recording took, envs idling after their last episode included (the dataset's
    # metadata); a dataset that does not say counts its frames
    recorded = recording_env_steps(path)
    run.env_step += (sum(len(e) for e in episodes) if recorded is None else recorded) * copies
    return episodes


def check_budget_fits_an_update(config: TrainConfig, world_size: int = 1) -> None:
    """A one-line error when ``run.max_env_steps`` is less than one PPO update of a run that
    starts with RL: it would train nothing (mindloop's PPO and the SB3 baselines alike step
    in whole updates, so neither goes past the budget)."""
    budget = config.run.max_env_steps
    per_update = config.ppo.rollout_steps * config.env.num_envs * world_size
    if budget is not None and budget < per_update:
        ranks = f" x {world_size} processes" if world_size > 1 else ""
        raise ValueError(
            f"run.max_env_steps={budget} is less than one PPO update ({config.env.num_envs} "
            f"envs x {config.ppo.rollout_steps} rollout steps{ranks} = {per_update} env "
            "steps), so nothing would train; raise it, or lower --ppo.rollout-steps or "
            "--env.num-envs"
        )


def ppo_updates(config: TrainConfig, phase_start_step: int, steps_per_update: int) -> int:
    """PPO updates of a phase that starts at env step ``phase_start_step``: ``ppo.total_steps``
    worth (at least one), or the whole updates left of ``run.max_env_steps`` if fewer."""
    updates = max(1, config.ppo.total_steps // steps_per_update)
    budget = config.run.max_env_steps
    if budget is not None:
        updates = min(updates, max(0, budget - phase_start_step) // steps_per_update)
    return updates


ANCHOR_AFTER_BC = 1.0
"""``ppo.anchor_coef`` when the config leaves it None and PPO fine-tunes a cloned policy."""


def ppo_anchor_coef(config: TrainConfig, phases_done: list[str]) -> float:
    """The KL anchor's weight for a PPO phase: the config's, or by default
    :data:`ANCHOR_AFTER_BC` after behaviour cloning (keep what BC learned) and 0 from scratch
    (a random initial policy is nothing to stay near)."""
    if config.ppo.anchor_coef is not None:
        return config.ppo.anchor_coef
    return ANCHOR_AFTER_BC if "bc" in phases_done else 0.0


@PHASES.register("ppo")
def ppo_phase(run: Run, reward_fn=None, needs_expert: bool = False, name: str = "ppo") -> None:
    """Recurrent PPO for ``ppo.total_steps`` env steps (all ranks together), or what
    ``run.max_env_steps`` leaves after the earlier phases if less."""
    cfg, agent = run.config, run.agent
    p = dataclasses.replace(cfg.ppo, anchor_coef=ppo_anchor_coef(cfg, run.phases_done))
    steps_per_update = p.rollout_steps * cfg.env.num_envs * run.dist.world_size
    total_updates = ppo_updates(cfg, run.env_step, steps_per_update)  # from the phase start
    if total_updates == 0 and run.resume is None:
        run.log(
            f"{name}: no env steps left of run.max_env_steps={cfg.run.max_env_steps}: the "
            f"earlier phases used {run.env_step} (fewer --bc.episodes / --bc.dagger-episodes "
            "leave PPO some)"
        )
        return
    envs = make_vector_env(cfg.env)
    try:
        seeds = env_seeds(derived_seed(cfg.run.seed, SEED_ENVS), cfg.env.num_envs, run.dist.rank)
        runner = EnvRunner(envs, agent, seeds)
        trainer = PPOTrainer(
            agent,
            runner,
            p,
            total_updates,
            model=run.model,
            reward_fn=reward_fn,
            needs_expert=needs_expert,
            reduce=lambda x: all_reduce_mean(x, run.dist),
            gather=_gather(run),
            seed=_rank_seed(run),
        )
        saved = run.take_resume(trainer.optimizer)
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
            # the budget is counted from where the phase started, not from the resume point
            start = run.env_step - trainer.updates_done * steps_per_update
            total_updates = ppo_updates(cfg, start, steps_per_update)
            trainer.total_updates = max(total_updates, 1)
            run.log(f"{name}: resumed at update {trainer.updates_done}/{total_updates}")
        if p.anchor_coef:
            run.log(f"{name}: KL anchor {p.anchor_coef:g} to the policy this phase starts from")
        # the bar's total was a guess for the earlier phases; from here it is known exactly
        run.logger.set_total(
            run.env_step + (total_updates - trainer.updates_done) * steps_per_update
        )
        recent_success: list[float] = []
        while trainer.updates_done < total_updates:
            metrics = trainer.iterate()
            run.env_step += steps_per_update
            episodes = runner.drain()
            summary = episodes.summary()
            success = all_reduce_mean(summary.get("success_rate", float("nan")), run.dist)
            if summary and success == success:  # NaN: the env reports no success
                recent_success.append(success)
            charts = {
                "fps": metrics["fps"] * run.dist.world_size,
                "learning_rate": metrics["lr"],
                "think_steps": metrics["think_steps"],
                "memory_calls": metrics["memory_calls"],
                "reward": metrics["reward"],
                "reward_with_costs": metrics["reward_shaped"],
                **{k: v for k, v in summary.items() if k not in ("think_steps", "memory_calls")},
            }
            run.logger.scalars("charts", charts, run.env_step)
            run.logger.scalars(
                "losses",
                {k: metrics[k] for k in ("policy_loss", "value_loss", "entropy", "decision_entropy",
                                         "approx_kl", "clipfrac", "explained_variance", "grad_norm",
                                         "anchor_kl") if k in metrics},
                run.env_step,
            )  # fmt: skip
            run.logger.progress(
                run.env_step,
                {
                    "phase": name,
                    "fps": charts["fps"],
                    "success": success if summary else float("nan"),
                    "think": metrics["think_steps"],
                },
            )
            u = trainer.updates_done
            if cfg.run.eval_every and u % cfg.run.eval_every == 0 and u < total_updates:
                _periodic_eval(run)
            if u % cfg.run.checkpoint_every == 0 and u < total_updates:
                run.save({"trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state()},
                         trainer.optimizer)  # fmt: skip
        if recent_success:
            run.results[name] = {"train_success_rate_last": recent_success[-1]}
    finally:
        envs.close()


@PHASES.register("sft-rl")
def sft_rl_phase(run: Run) -> None:
    """SFT as RL (text tasks): PPO where a step's reward is 1 if the agent emitted the answer
    token the scripted expert says at that state, else 0; the env's own reward is not used.
    Only the answer tokens are judged: silence, speech while the expert is silent, and the
    think steps get no targets (think steps still pay ``ppo.think_cost``)."""

    def answer_reward(step, actions, info, labels) -> np.ndarray:
        said, want = np.asarray(actions["text"]), np.asarray(labels["text"])
        return ((want != 0) & (said == want)).astype(np.float32)

    ppo_phase(run, reward_fn=answer_reward, needs_expert=True, name="sft-rl")


def _periodic_eval(run: Run) -> None:
    """A short deterministic evaluation on rank 0, logged under ``eval/``."""
    if not run.dist.is_main:
        return
    cfg = run.config
    envs = make_vector_env(cfg.env, num_envs=min(cfg.env.num_envs, cfg.run.eval_episodes))
    try:
        runner = EnvRunner(
            envs, run.agent, env_seeds(EVAL_SEED_OFFSET + cfg.run.seed, envs.num_envs)
        )
        summary = run_episodes(runner, max(cfg.run.eval_episodes, 1)).summary()
    finally:
        envs.close()
    run.logger.scalars("eval", summary, run.env_step)
    success = summary["success_rate"]  # NaN: the env reports no info["is_success"]
    best = keep_best(run, success if success == success else 0.0, summary["episode_return"])
    run.log(
        f"eval @ {run.env_step} steps: success "
        + ("n/a" if success != success else f"{success:.0%}")
        + ", return "
        f"{summary['episode_return']:.2f}, think {summary['think_steps']:.2f}"
        + (" (best so far: checkpoints/best)" if best else "")
    )


def keep_best(run: Run, success_rate: float, episode_return: float) -> bool:
    """With periodic evaluation on, save the weights to ``checkpoints/best`` when they beat
    the best evaluated so far (success rate, then return), as SB3's ``EvalCallback`` keeps
    its best model. The record is read from the saved copy, so it survives ``--resume``.
    PPO fine-tuning can undo what BC learned (measured on CountAnswer, benchmarks/RESULTS.md);
    the best copy keeps the better weights. -> whether it was saved."""
    if not run.config.run.eval_every or not run.dist.is_main:
        return False
    root = checkpoint_root(run.run_dir)
    if not beats_best(root, success_rate, episode_return):
        return False
    record = evaluation_record(success_rate, episode_return, max(run.config.run.eval_episodes, 1))
    save_checkpoint(
        root, run.agent, run.config, step=run.env_step, keep=None, extra_meta={"eval": record},
        name=BEST, point_latest=False,
    )  # fmt: skip
    return True


def _gather(run: Run):
    if not run.dist.enabled:
        return None
    return lambda x: all_gather_cat(x, run.dist)


def _rank_seed(run: Run) -> int:
    return run.config.run.seed + 1000 * run.dist.rank


# --------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the evaluation)."""

    run_dir: Path
    agent: MindloopAgent | None
    checkpoint: Path | None
    success_rate: float | None
    results: dict[str, Any]
    wall_seconds: float
    env_steps: int | None = None
    """Env steps the run trained on (demonstrations, DAgger and RL rollouts, all ranks)."""


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says; returns the run directory, agent, checkpoint, success rate."""
    # every check again, through the round trip config.json will take: a field set after the
    # config was built (cfg.ppo.think_cost = nan) skipped its __post_init__ checks
    config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(config))))
    algorithm = ALGORITHMS.get(config.algo)
    check_env_id(config.env.id)
    for phase in algorithm.phases:
        PHASES.get(phase)
    if config.env.kwargs.get("render_mode", "rgb_array") != "rgb_array":  # "human" failed in
        raise ValueError(  # every worker (no pygame); rgb_array is harmless (older runs)
            f"env.kwargs render_mode {config.env.kwargs['render_mode']!r}: training makes its "
            "envs without a render mode (the agent sees the image observation, and the run's "
            "video.mp4 is rendered after training); leave it out"
        )
    config = resolve_for_env(config)
    check_before_writing(config, algorithm)
    if algorithm.external is not None:
        t0 = time.perf_counter()
        out = algorithm.external(config)
        final = getattr(out, "final_eval", None)
        success = final.success_rate if final is not None and final.reports_success else None
        return TrainResult(
            Path(out.run_dir), None, out.checkpoint, success, {}, time.perf_counter() - t0,
            env_steps=out.steps,
        )  # fmt: skip
    return _train_mindloop(config, algorithm)


def check_before_writing(config: TrainConfig, algorithm: Algorithm) -> None:
    """The one-line errors a run can know of before it writes anything (so a mistake leaves
    no run directory behind): a ``run.dir`` that holds another run or is a file, ``sft-rl``
    on a task without text actions, a ``bc.dataset`` that is missing, of other
    observations/actions, or given to an algorithm that does no behaviour cloning."""
    run_dir = Path(config.run.dir) if config.run.dir else None
    if run_dir is not None:
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.is_file()), None)
        if blocker is not None:
            raise ValueError(
                f"run.dir {str(run_dir)!r} cannot be a directory: {str(blocker)!r} is a file; "
                "choose another --run.dir"
            )
    if config.bc.dataset is not None and "bc" not in algorithm.phases:
        raise ValueError(
            f"--bc.dataset is for behaviour cloning; --algo {config.algo} does none (use "
            "--algo bc or bc+ppo, or leave out --bc.dataset)"
        )
    holds_a_run = run_dir is not None and (
        (run_dir / "config.json").exists() or (run_dir / CHECKPOINTS).exists()
    )
    if config.resume is None and holds_a_run:
        raise ValueError(
            f"run.dir {str(run_dir)!r} already holds a run; continue it with --resume "
            f"{run_dir}, or choose a new --run.dir (or delete that one)"
        )
    if algorithm.phases and algorithm.phases[0] in ("ppo", "sft-rl"):
        check_budget_fits_an_update(config, launch_world_size())
    needs_dataset = "bc" in algorithm.phases and config.bc.dataset is not None
    # the scripted expert records the demonstrations, labels DAgger's rollouts, judges sft-rl
    needs_expert = "sft-rl" in algorithm.phases or (
        "bc" in algorithm.phases and (config.bc.dataset is None or config.bc.dagger_rounds > 0)
    )
    if not (needs_expert or needs_dataset):
        return
    observation_space, action_space, has_expert = _task_facts(config)
    if "sft-rl" in algorithm.phases and "text" not in action_space.spaces:
        raise ValueError(
            f"--algo sft-rl needs a task that answers with text tokens; {config.env.id} "
            f"acts with {', '.join(action_space.spaces)}"
        )
    if needs_expert and not has_expert:  # it failed later, naming --record or --video
        raise ValueError(
            f"--algo {config.algo} needs the task's scripted expert (env.unwrapped."
            f"expert_action(), which every mindloop/ task has); {config.env.id} has none: use "
            "--algo ppo, sb3-ppo or sb3-recurrentppo"
        )
    if needs_dataset:
        from agent.datasets import check_dataset_spaces

        check_dataset_spaces(config.bc.dataset, config.env.id, observation_space, action_space)


def _train_mindloop(config: TrainConfig, algorithm: Algorithm) -> TrainResult:
    t0 = time.perf_counter()
    info, device = init_distributed(config.run.device)
    try:
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        resume_from = resume_checkpoint(config)
        # every rank builds the same initial weights (DDP also broadcasts rank 0's); the agent
        # is built before anything is written, so a bad encoder name leaves no run behind
        torch.manual_seed(config.run.seed)
        agent = MindloopAgent(*_env_spaces(config), config.agent).to(device)
        run_dir = broadcast_object(_run_dir(config, resume_from) if info.is_main else None, info)
        seed_everything(config.run.seed + 1000 * info.rank)
        run = Run(
            config=config,
            run_dir=run_dir,
            dist=info,
            device=device,
            agent=agent,
            model=agent,
            logger=RunLogger(
                run_dir,
                _expected_steps(config, algorithm),
                tensorboard=config.run.tensorboard,
                # a bar's carriage returns garble a log file or pipe: lines there instead
                progress=config.run.progress
                and (sys.stderr.isatty() or "ipykernel" in sys.modules),  # Jupyter draws it
                enabled=info.is_main,
            ),
        )
        if resume_from is not None:
            _restore(run, resume_from)
        elif config.resume is not None:
            run.log(f"resume: {run_dir} has no checkpoint yet; its run starts again")
        run.model = wrap_model(agent, info, device)
        run.logger.log_config(config_to_dict(config))
        run.log(
            f"{config.algo}: {algorithm.description}; {config.env.num_envs} envs x "
            f"{info.world_size} process(es) of {config.env.id} -> {run_dir}"
        )
        for phase in algorithm.phases:
            if phase in run.phases_done:
                continue
            PHASES.get(phase)(run)
            run.phases_done.append(phase)
            run.save(None, None)
        checkpoint = resolve_checkpoint(run_dir) if info.is_main else None
        success = None
        if info.is_main:
            run.logger.close_bar()
            if config.run.eval_episodes:
                success = final_evaluation(run)
                checkpoint = run.save(None, None)  # the evaluation goes into the checkpoint
            run.logger.close()
        return TrainResult(
            run_dir, agent, checkpoint, success, run.results, time.perf_counter() - t0,
            env_steps=run.env_step,
        )  # fmt: skip
    finally:
        shutdown(info)


def evaluate_trained(
    policy: Any, config: TrainConfig, run_dir: Path, log: Callable[[str], None] = print
) -> Any:
    """Evaluate a trained policy (mindloop's or an SB3 baseline's ``EvalPolicy``) as
    ``eval.py`` does, on the run's task and evaluation seeds: table, ``eval.json`` and
    ``video.mp4`` in ``run_dir``. -> ``agent.evaluation.EvalResult``."""
    from agent.evaluation import evaluate_and_save

    episodes = max(config.run.eval_episodes, 1)
    video = config.run.video and _can_record(config, log)
    return evaluate_and_save(
        policy,
        config.env.id,
        episodes,
        seed=EVAL_SEED_OFFSET + config.run.seed,
        num_envs=min(config.env.num_envs, episodes),
        env_kwargs=config.env.make_kwargs(),
        vectorization=config.env.vectorization,
        video=run_dir / "video.mp4" if video else None,
        json_path=run_dir / "eval.json",
        progress=config.run.progress,
        log=log,
    )


def _can_record(config: TrainConfig, log: Callable[[str], None]) -> bool:
    """Whether the task's episodes can be recorded for the video (it must replay them with
    ``get_state``/``set_state``, as the mindloop tasks do); a wrapped Gymnasium env cannot,
    and its run then ends without a video instead of failing after training."""
    env = gym.make(config.env.id, **config.env.make_kwargs())
    try:
        if env.has_wrapper_attr("get_state") and env.has_wrapper_attr("set_state"):
            return True
    finally:
        env.close()
    log(f"video: skipped ({config.env.id} has no get_state()/set_state() to replay episodes)")
    return False


def final_evaluation(run: Run) -> float | None:
    """Evaluate the trained agent as ``eval.py`` does: table, eval.json, video.mp4; returns
    the success rate (None when the env reports no ``info["is_success"]``)."""
    from agent.evaluation import AgentPolicy

    cfg = run.config
    policy = AgentPolicy(run.agent, deterministic=True, name=f"mindloop {cfg.algo}")
    result = evaluate_trained(policy, cfg, run.run_dir)
    summary = result.summary()
    episodes = max(cfg.run.eval_episodes, 1)
    run.results["eval"] = {"success_rate": summary["success_rate"], "episodes": episodes}
    keep_best(run, result.success_rate, summary["return_mean"])  # no success: by return
    scalars = {
        "success_rate": summary["success_rate"],
        "episode_return": summary["return_mean"],
        "episode_length": summary["length_mean"],
        "think_steps": summary.get("think_steps_mean", 0.0),
    }
    run.logger.scalars("eval", {k: v for k, v in scalars.items() if v is not None}, run.env_step)
    return summary["success_rate"]


def _restore(run: Run, checkpoint: Path) -> None:
    """Weights, phases done, results, env step and the trainer state of the checkpoint."""
    load_weights(run.agent, checkpoint)
    state = load_trainer_state(checkpoint)
    run.resume = state
    run.env_step = int(state.meta["env_step"])
    run.phases_done = list(state.meta["phases_done"])
    # what the phases done reported (e.g. BC's held-out agreement), for the final checkpoint
    run.results = dict(read_checkpoint_meta(checkpoint).get("results") or {})
    random.setstate(_random_state_from_json(state.meta["python_random"]))
    _set_numpy_state(state.meta)
    torch.set_rng_state(state.tensors["rng/torch"])
    run.log(f"resumed from {checkpoint} (phases done: {', '.join(run.phases_done) or 'none'})")


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint ``config.resume`` continues from; None for a new run, and for a run
    directory stopped before its first checkpoint (it starts again, in that directory)."""
    return None if config.resume is None else checkpoint_to_resume(config.resume)


def _run_dir(config: TrainConfig, resume_from: Path | None) -> Path:
    if resume_from is not None:
        return resume_run_dir(config.resume, resume_from)
    if config.resume is not None:  # stopped before its first checkpoint: start it again
        path = Path(config.resume)
    elif config.run.dir:
        path = Path(config.run.dir)
    else:
        task = config.env.id.split("/")[-1]
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{task}__{config.algo}__{config.run.seed}__{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".config.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(config_to_dict(config), indent=2))
    os.replace(tmp, path / "config.json")
    return path


def resolve_for_env(config: TrainConfig) -> TrainConfig:
    """``config`` without the default light encoder options that do not fit (a key the task
    does not have, or an encoder chosen for it without that field: ``agent.agent.encoders_for``),
    so every algorithm, baselines included, and the saved config.json see the encoders the
    agent really has."""
    from agent.agent import encoders_for

    observation_space, _ = _env_spaces(config)
    encoders = encoders_for(config.agent.encoders, observation_space)
    if encoders is config.agent.encoders:
        return config
    agent = dataclasses.replace(config.agent, encoders=encoders)
    return dataclasses.replace(config, agent=agent)


def _env_spaces(config: TrainConfig):
    """The single-env observation and action spaces of the task (one env made and closed),
    checked to be ``Dict`` spaces (:func:`check_dict_spaces`)."""
    observation_space, action_space, _ = _task_facts(config)
    return observation_space, action_space


def _task_facts(config: TrainConfig) -> tuple[Any, Any, bool]:
    """:func:`_env_spaces` and whether the task has a scripted expert (``expert_action``)."""
    from agent.vector import make_env

    env = make_env(config.env.id, config.env.make_kwargs())
    try:
        check_dict_spaces(config.env.id, env.observation_space, env.action_space)
        has_expert = callable(getattr(env.unwrapped, "expert_action", None))
        return env.observation_space, env.action_space, has_expert
    finally:
        env.close()


def check_dict_spaces(env_id: str, observation_space: Any, action_space: Any) -> None:
    """A one-line error for a task whose spaces are not ``Dict``s: mindloop agents encode
    observations per key and build action heads per key, and the SB3 baselines read the same
    spaces; a plain Gymnasium env (``Hopper-v5``: two ``Box``es) would otherwise fail deep
    inside the agent with an AttributeError."""
    bad = [
        f"{name} space {' '.join(str(space).split())}"  # one line even for array bounds
        for name, space in (("observation", observation_space), ("action", action_space))
        if not isinstance(space, gym.spaces.Dict)
    ]
    if bad:
        raise ValueError(
            f"--env.id {env_id} has {' and '.join(bad)}; train.py needs Dict observations and "
            "Dict actions: use a mindloop/ task (e.g. mindloop/MuscleReach-v0), or register an "
            "env that has both (a Gymnasium MuJoCo env: envs.wrappers.DictActionWrapper("
            "MujocoSensesWrapper(env)), see the README)"
        )


def _expected_steps(config: TrainConfig, algorithm: Algorithm) -> int:
    total = 0
    if "bc" in algorithm.phases:  # ~20 frames an episode: only the progress bar's scale
        total += (config.bc.episodes + config.bc.dagger_rounds * config.bc.dagger_episodes) * 20
    if any(p in algorithm.phases for p in ("ppo", "sft-rl")):
        total += config.ppo.total_steps
    return max(total, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _random_state_from_json(data: list[Any]) -> tuple[Any, ...]:
    return (data[0], tuple(data[1]), data[2])


def _jsonable_numpy_state() -> dict[str, Any]:
    """numpy's legacy global RNG, all of it: the MT19937 key and position, and the second
    normal of the last Box-Muller pair (``randn`` hands it out next)."""
    _, key, pos, has_gauss, cached_gauss = np.random.get_state()
    return {
        "numpy_random": key.tolist(),
        "numpy_random_pos": int(pos),
        "numpy_random_gauss": [int(has_gauss), float(cached_gauss)],
    }


def _set_numpy_state(meta: Mapping[str, Any]) -> None:
    """Restore what :func:`_jsonable_numpy_state` saved (runs saved before the Gaussian was
    stored have none cached)."""
    has_gauss, cached_gauss = meta.get("numpy_random_gauss", (0, 0.0))
    key = np.asarray(meta["numpy_random"], dtype=np.uint32)
    np.random.set_state(
        ("MT19937", key, int(meta["numpy_random_pos"]), int(has_gauss), cached_gauss)
    )


__all__ = [
    "ALGORITHMS",
    "PHASES",
    "Algorithm",
    "Run",
    "TrainResult",
    "demonstration_seed",
    "final_evaluation",
    "keep_best",
    "seed_everything",
    "train",
]
