"""Learning: success rate after a fixed env-step budget on every task, mindloop against the
SB3 baselines, several seeds.

Contenders (each trains from scratch per task and seed, then is evaluated on the same
seeded episodes, deterministic policy, through :func:`agent.evaluation.evaluate`):

* **mindloop**: mindloop's own pipeline, ``train.py``'s default recipe (``--algo bc+ppo``:
  behaviour cloning from the task's scripted expert with 1,000 updates, 2 DAgger rounds,
  then recurrent PPO with the default KL anchor to the cloned policy, ``ppo.anchor_coef``
  1.0) with think steps and the memory tool, sized to the budget: 35% of it
  for expert demonstrations, 15% for the DAgger rollouts, and PPO gets what is left
  (``run.max_env_steps``: **every env step counted**, demonstrations and DAgger included,
  with the steps of envs that idle while the last episode of a collection finishes). Where
  the expert labels its memory calls (CueRecall: set on the cue, get when the balls show),
  BC clones them (``agent/bc.py``); the memory reads fetched items in the codec's
  standardized units (``memory.standardized_read``). On text tasks BC weighs the expert's
  answer frames and its silent frames half each (``bc.balance_speech``).
* **mindloop-nothink**: the same with think steps disabled (``k_max`` = 0).
* **mindloop-fixedthink** (not in the default set: ``--contenders mindloop-fixedthink``): the
  same with every frame thinking ``k_max`` steps (``think.halting = "fixed"``): whether the
  extra depth helps at all, apart from whether the halting head learns to use it.
* **mindloop-keypoints** (not in the default set): mindloop with the image CNN's keypoint
  pooling on a 32 x 32 map (``image.pool spatial_softmax``, ``image.channels (16,)``), the
  readout that needs the fewest layouts to find a coloured ball
  (``benchmarks/cue_perception.py``).
* **mindloop-nomemory** (not in the default set): mindloop without the memory tool, so
  only the core's recurrent state can carry a cue (trained through windows of
  ``bc.seq_len`` / ``ppo.bptt_steps`` frames): the control for what the memory tool adds
  on CueRecall.
* **sb3-recurrentppo**: sb3-contrib ``RecurrentPPO`` (LSTM), pure RL.
* **sb3-ppo**: SB3 ``PPO`` (no memory), pure RL.
* **random** and **expert** (references, no training): a uniform random policy and the
  task's scripted expert on the same evaluation episodes, the table's floor and ceiling.

All use the same mindloop encoders (``agent.config`` defaults), hidden width 128 and PPO
settings (``agent.config`` defaults: 8 envs x 64 steps per update, 4 epochs, 4 minibatches,
linear LR schedule; whole updates only, within the budget; the SB3 contenders learn from
scratch at SB3's default learning rate 3e-4), envs stepped in-process (``SyncVectorEnv``) and 1 torch
thread per run; ``--jobs`` runs that many runs at once, each in its own process. CueRecall
runs with ``delay_steps=200`` (the issue's target setting).

The budget is that of ``python train.py``'s default run (MuscleReach: 500 demonstrations, 2
DAgger rounds and 8k PPO steps, 18.2k env steps in all, 100% success): 20k env steps per run
(6k on MyoElbowReach, whose bone meshes render at ~40 steps/s), 20 evaluation episodes, seeds
1 and 2: 6 tasks x 4 trained contenders x 2 seeds = 48 runs, ~1.5 hours on the 2 shared
cores of the development machine with ``--jobs 2`` (behaviour cloning costs wall time, not
env steps). Results are written to JSON after every run, and a rerun with the same ``--out``
skips the runs already there (so a long run can be continued); runs of an earlier, wider
plan in that file are kept in it (the printed table shows this run's plan).

    python benchmarks/learning.py --quick                   # < 1 min: the headline task only
    nice -n 5 python benchmarks/learning.py --jobs 2        # the full run in RESULTS.md
    # CueRecall without the visual search (fixed ball places), mindloop with and without memory
    python benchmarks/learning.py --tasks mindloop/CueRecall-v0 --cue-layout fixed \\
        --contenders mindloop mindloop-nomemory sb3-ppo
    # a curriculum: mindloop's CueRecall demonstrations at delay 5 (DAgger, PPO, eval at 200)
    python benchmarks/learning.py --tasks mindloop/CueRecall-v0 --cue-demo-delay 5

``--quick`` checks that the pipeline runs, not what it learns: the headline task only
(CueRecall, delay 200) with mindloop, PPO and the two references, seed 1, 1,024 env steps,
4 BC updates, 4 evaluation episodes, two runs at once. ``--tasks`` / ``--contenders`` widen it.

The last line is ``headline: cuerecall200_mindloop_success=<rate> (target >=0.9)``
(``cuerecall200_<layout>_mindloop_success`` with ``--cue-layout slots`` or ``fixed``,
``..._demodelay<N>_...`` with ``--cue-demo-delay N``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "learning.json"
CONTENDERS = ("mindloop", "mindloop-nothink", "sb3-recurrentppo", "sb3-ppo", "random", "expert")
"""The default contenders; ``EXTRA_CONTENDERS`` run only when named."""
EXTRA_CONTENDERS = ("mindloop-fixedthink", "mindloop-keypoints", "mindloop-nomemory")
"""Trained contenders, then two untrained references (evaluation only)."""

CUE_TASK = "mindloop/CueRecall-v0"
"""The headline task."""
TASK_KWARGS: dict[str, dict[str, Any]] = {CUE_TASK: {"delay_steps": 200}}
"""Task arguments of this benchmark (others use the registered defaults)."""

FULL_BUDGET = 20_000
"""Env steps per run in the full benchmark (see ``budgets``)."""
SLOW_TASK_BUDGET = 6_000
"""MyoElbowReach renders MyoSuite's bone meshes (~40 steps/s here): a smaller budget."""
QUICK_BUDGET = 1_024
QUICK_TASKS = (CUE_TASK,)
"""``--quick``'s default tasks: the headline's."""
QUICK_CONTENDERS = ("mindloop", "sb3-ppo", "random", "expert")
"""``--quick``'s default contenders: the headline target's pair and the references."""
BC_UPDATES = 1000
"""Behaviour-cloning steps of the mindloop contenders (train.py's default)."""
SB3_LR = 3e-4
"""The SB3 contenders' learning rate: SB3's default for PPO/RecurrentPPO."""


@dataclass
class RunSpec:
    """One training run of the benchmark."""

    task: str
    contender: str
    seed: int
    budget: int
    """Env steps, all included (expert demonstrations for mindloop)."""
    eval_episodes: int
    num_envs: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    bc_updates: int = 0
    """Behaviour-cloning gradient steps (mindloop contenders only)."""
    recipe: str = ""
    """How the mindloop contenders split the budget (:data:`MINDLOOP_RECIPE`); part of the key,
    so results of an earlier recipe are not reused."""
    think_cost: float | None = None
    """``ppo.think_cost`` of the mindloop contenders (None: train.py's default); part of the
    key when given."""
    anchor_coef: float | None = None
    """``ppo.anchor_coef`` of the mindloop contenders (train.py's default resolved for bc+ppo
    when not given); part of the key."""
    demo_env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env arguments the mindloop contenders' expert demonstrations are recorded with, over
    ``env_kwargs`` (``--cue-demo-delay``: a curriculum); DAgger, PPO and the evaluation keep
    ``env_kwargs``. Part of the key when given."""
    dagger: tuple[int, int] | None = None
    """(rounds, episodes per round) of the mindloop contenders' DAgger instead of
    :data:`DAGGER_SHARE`'s sizing (``--dagger``); in the recipe, so part of the key."""

    @property
    def key(self) -> str:
        # env arguments other than this benchmark's own (TASK_KWARGS) are part of the key
        extra = {
            k: v for k, v in self.env_kwargs.items() if TASK_KWARGS.get(self.task, {}).get(k) != v
        }
        return (
            f"{self.task}|{self.contender}|{self.seed}|{self.budget}|{self.bc_updates}"
            + "".join(f"|{k}={v}" for k, v in sorted(extra.items()))
            + (f"|{self.recipe}" if self.recipe else "")
            + (f"|think_cost{self.think_cost:g}" if self.think_cost is not None else "")
            + (f"|anchor{self.anchor_coef:g}" if self.anchor_coef is not None else "")
            + "".join(f"|demo_{k}={v}" for k, v in sorted(self.demo_env_kwargs.items()))
        )


@dataclass
class RunResult:
    spec: RunSpec
    success: float | None
    return_mean: float | None
    env_steps: int
    """Env steps actually used for training (PPO rollouts + expert demonstrations)."""
    demo_steps: int
    """Of which expert demonstration steps (behaviour cloning)."""
    wall_s: float
    think_steps: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------- contenders


def base_config(spec: RunSpec, algo: str, run_dir: Path) -> Any:
    """The TrainConfig every contender starts from (mindloop's defaults, this run's task,
    budget, seed and evaluation)."""
    from agent.config import EnvConfig, PPOConfig, RunConfig, TrainConfig

    return TrainConfig(
        env=EnvConfig(
            id=spec.task, num_envs=spec.num_envs, vectorization="sync", kwargs=spec.env_kwargs
        ),
        algo=algo,
        ppo=PPOConfig(total_steps=spec.budget),
        run=RunConfig(
            dir=str(run_dir),
            seed=spec.seed,
            threads=1,
            eval_episodes=spec.eval_episodes,
            checkpoint_every=10**6,  # only the final checkpoint
            keep_checkpoints=1,
            video=False,
            progress=False,
        ),
    )


def run_sb3(spec: RunSpec, run_dir: Path) -> RunResult:
    from agent.baselines import train_sb3

    config = base_config(spec, spec.contender, run_dir)
    # whole updates within the budget (SB3 would finish the update that crosses it)
    per_update = config.ppo.rollout_steps * config.env.num_envs
    config.ppo.total_steps = max(1, spec.budget // per_update) * per_update
    # From scratch, at SB3's own default learning rate (mindloop's PPO default is a smaller
    # fine-tuning rate for after behaviour cloning).
    config.ppo.lr = SB3_LR
    t0 = time.perf_counter()
    result = train_sb3(config, log=print)
    assert result.final_eval is not None
    s = result.final_eval.summary()
    return RunResult(
        spec, s["success_rate"], s["return_mean"], result.steps, 0, time.perf_counter() - t0
    )


THINK_PRIOR = 0.2
"""PonderNet prior (``bc.lambda_p``) of the thinking contender: train.py's 0.5 puts half the
prior mass on 0 think steps, and its clones then took 0 think steps per frame in
deterministic evaluation (measured on CountAnswer), i.e. the same computation as the
no-think contender; 0.2 leans the prior toward using the k_max steps, and the halting head
still learns where thinking does not lower the loss."""

DEMO_SHARE = 0.35
"""Share of a mindloop run's budget spent on expert demonstrations (train.py's default run
on MuscleReach: 6.9k of 18.2k env steps)."""
DAGGER_SHARE = 0.15
"""Share planned for the DAgger rollouts (2 rounds; the learner's episodes can run longer
than the expert's, and what they take is counted: PPO gets the rest)."""


# "+latent": BC also regresses the expert's latent (bc.expert_latent_coef, train.py's default)
# "+counted": the demonstrations count towards run.max_env_steps, and demonstrations and DAgger
# count every env step taken (results before it gave mindloop its demonstrations for free)
MINDLOOP_RECIPE = f"demos{DEMO_SHARE}+dagger{DAGGER_SHARE}+ppo-rest+latent+counted"
"""The mindloop contenders' recipe, as it appears in the result keys."""


def mindloop_recipe(dagger: tuple[int, int] | None) -> str:
    """:data:`MINDLOOP_RECIPE`, with ``dagger<rounds>x<episodes>`` in place of the DAgger
    share when ``--dagger`` sets them (the default keeps earlier results' keys)."""
    if dagger is None:
        return MINDLOOP_RECIPE
    rounds, episodes = dagger
    return MINDLOOP_RECIPE.replace(f"dagger{DAGGER_SHARE}", f"dagger{rounds}x{episodes}")


def run_mindloop(spec: RunSpec, run_dir: Path) -> RunResult:
    """mindloop's pipeline (``--algo bc+ppo``, memory on, train.py's recipe): expert
    demonstrations recorded first (a Minari dataset, the trainer's own ``bc.dataset``
    option), DAgger rounds, then PPO on what ``run.max_env_steps`` leaves."""
    from agent.datasets import collect_expert_dataset, recording_env_steps
    from agent.training import demonstration_seed, train

    t0 = time.perf_counter()
    config = base_config(spec, "bc+ppo", run_dir)
    # the memory tool, except for the control that has only the core's recurrent state
    config.agent.use_memory = spec.contender != "mindloop-nomemory"
    # the fetched item reaches the core in the codec's standardized units (which cue, at
    # unit scale), and the codec's statistics follow the items within tens of updates
    config.agent.memory.standardized_read = True
    config.agent.memory.codec_momentum = 0.1
    config.run.progress = False
    if spec.contender == "mindloop-nothink":
        config.agent.think.k_max = 0
    elif spec.contender == "mindloop-fixedthink":
        config.agent.think.halting = "fixed"
    if spec.contender == "mindloop-keypoints":
        config.agent.encoders.options["image.pool"] = "spatial_softmax"
        config.agent.encoders.options["image.channels"] = "(16,)"
    if spec.contender not in ("mindloop-nothink", "mindloop-fixedthink"):
        config.bc.lambda_p = THINK_PRIOR
    if spec.think_cost is not None:
        config.ppo.think_cost = spec.think_cost
    if spec.anchor_coef is not None:
        config.ppo.anchor_coef = spec.anchor_coef
    run_dir.mkdir(parents=True, exist_ok=True)
    demos = run_dir / "demos"
    demo_kwargs = {**config.env.make_kwargs(), **spec.demo_env_kwargs}
    demo_length = expert_episode_length(spec.task, demo_kwargs)
    episodes = max(2, round(DEMO_SHARE * spec.budget / demo_length))
    collect_expert_dataset(
        spec.task,
        episodes,
        seed=demonstration_seed(spec.seed),  # the seeds the trainer itself would record with
        path=demos,
        env_kwargs=demo_kwargs,
        num_envs=min(spec.num_envs, episodes),
        overwrite=True,
    )
    demo_steps = recording_env_steps(demos)  # what the trainer counts for them
    config.bc.dataset = str(demos)
    config.bc.episodes = episodes
    config.bc.updates = spec.bc_updates
    config.bc.dagger_updates = min(config.bc.dagger_updates, max(1, spec.bc_updates // 5))
    if spec.dagger is not None:
        config.bc.dagger_rounds, config.bc.dagger_episodes = spec.dagger
    else:
        config.bc.dagger_episodes = max(
            1,
            round(
                DAGGER_SHARE
                * spec.budget
                / config.bc.dagger_rounds
                / expert_episode_length(spec.task, spec.env_kwargs)
            ),
        )
    config.ppo.total_steps = spec.budget
    config.run.max_env_steps = spec.budget  # demos + DAgger + PPO
    steps = train(config).env_steps
    eval_path = run_dir / "eval.json"
    summary = json.loads(eval_path.read_text())["summary"]
    return RunResult(
        spec,
        summary["success_rate"],
        summary["return_mean"],
        steps,
        demo_steps,
        time.perf_counter() - t0,
        think_steps=summary.get("think_steps_mean"),
    )


_EXPERT_LENGTH: dict[str, float] = {}


def expert_episode_length(task: str, env_kwargs: dict[str, Any]) -> float:
    """Mean length of the expert's episodes on the task with these env arguments (8 probe
    episodes, not counted: they only size the demonstration and DAgger sets)."""
    from agent.evaluation import evaluate, make_policy

    key = f"{task}|{json.dumps(env_kwargs, sort_keys=True)}"
    if key not in _EXPERT_LENGTH:
        result = evaluate(
            make_policy("expert"), task, 8, seed=999, num_envs=8, env_kwargs=env_kwargs
        )
        _EXPERT_LENGTH[key] = result.summary()["length_mean"]
    return _EXPERT_LENGTH[key]


def run_reference(spec: RunSpec, run_dir: Path) -> RunResult:
    """The scripted expert or a uniform random policy on the same evaluation episodes: no
    training, no budget (the table's ceiling and floor)."""
    from agent.evaluation import evaluate, make_policy
    from agent.training import EVAL_SEED_OFFSET

    t0 = time.perf_counter()
    result = evaluate(
        make_policy(spec.contender),
        spec.task,
        spec.eval_episodes,
        seed=EVAL_SEED_OFFSET + spec.seed,
        num_envs=min(spec.num_envs, spec.eval_episodes),
        env_kwargs=spec.env_kwargs,
    )
    s = result.summary()
    return RunResult(spec, s["success_rate"], s["return_mean"], 0, 0, time.perf_counter() - t0)


RUNNERS: dict[str, Callable[[RunSpec, Path], RunResult]] = {
    "mindloop": run_mindloop,
    "mindloop-nothink": run_mindloop,
    "mindloop-fixedthink": run_mindloop,
    "mindloop-keypoints": run_mindloop,
    "mindloop-nomemory": run_mindloop,
    "sb3-recurrentppo": run_sb3,
    "sb3-ppo": run_sb3,
    "expert": run_reference,
    "random": run_reference,
}


def run_one(spec: RunSpec, root: str) -> dict[str, Any]:
    """Run one spec in this (worker) process; never raises (a failure is a result)."""
    import torch

    torch.set_num_threads(1)
    run_dir = Path(root) / spec.key.replace("/", "_").replace("|", "__")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (train refuses to mix two)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        # the trainers' tables and progress lines go to the run's log, not the report
        with open(run_dir / "train.log", "w") as f, redirect_stdout(f), redirect_stderr(f):
            result = RUNNERS[spec.contender](spec, run_dir)
    except Exception as e:  # report and go on with the other runs
        tb = traceback.format_exc(limit=3)
        result = RunResult(spec, None, None, 0, 0, time.perf_counter() - t0, error=f"{e!r}\n{tb}")
    return asdict(result)


# --------------------------------------------------------------------------- planning


def budgets(task: str, quick: bool, budget: int | None) -> int:
    if budget is not None:
        return budget
    if quick:
        return QUICK_BUDGET // 2 if "MyoElbow" in task else QUICK_BUDGET
    return SLOW_TASK_BUDGET if "MyoElbow" in task else FULL_BUDGET


def task_kwargs(task: str, cue_layout: str = "random") -> dict[str, Any]:
    """The env arguments of ``task`` in this run: :data:`TASK_KWARGS`, and CueRecall's ball
    layout when ``--cue-layout`` is not the default."""
    kwargs = dict(TASK_KWARGS.get(task, {}))
    if task == CUE_TASK and cue_layout != "random":
        kwargs["layout"] = cue_layout
    return kwargs


def demo_env_kwargs(task: str, contender: str, cue_demo_delay: int | None) -> dict[str, Any]:
    """The env arguments a mindloop contender records its demonstrations with, over the
    task's: CueRecall's ``delay_steps`` when ``--cue-demo-delay`` is given."""
    if task == CUE_TASK and contender.startswith("mindloop") and cue_demo_delay is not None:
        return {"delay_steps": cue_demo_delay}
    return {}


def plan(args: argparse.Namespace) -> list[RunSpec]:
    from agent.config import PPOConfig, TrainConfig
    from agent.training import ppo_anchor_coef

    # train.py's rule for the PPO phase after "bc" (the mindloop contenders are all bc+ppo),
    # so the key tells anchored runs from the free ones made before it was the default
    anchor = ppo_anchor_coef(TrainConfig(ppo=PPOConfig(anchor_coef=args.anchor_coef)), ["bc"])
    specs = []
    for seed in args.seeds:  # seeds outermost: a partial run still covers every task
        for task in args.tasks:
            for contender in args.contenders:
                ours = contender.startswith("mindloop")  # the options only mindloop's take
                specs.append(
                    RunSpec(
                        task=task,
                        contender=contender,
                        seed=seed,
                        budget=budgets(task, args.quick, args.budget),
                        eval_episodes=args.eval_episodes,
                        num_envs=args.num_envs,
                        env_kwargs=task_kwargs(task, args.cue_layout),
                        bc_updates=args.bc_updates if ours else 0,
                        recipe=mindloop_recipe(args.dagger) if ours else "",
                        think_cost=args.think_cost if ours else None,
                        anchor_coef=anchor if ours else None,
                        demo_env_kwargs=demo_env_kwargs(task, contender, args.cue_demo_delay),
                        dagger=args.dagger if ours else None,
                    )
                )
    return specs


# --------------------------------------------------------------------------- report


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    v = 100 * np.asarray(values)
    return f"{v.mean():.0f} ± {v.std():.0f} ({len(v)})"


def table(results: list[dict[str, Any]], tasks: list[str], contenders: list[str]) -> str:
    """Success % mean ± std (seeds) per task x contender."""
    head = ["task", "budget", *contenders]
    rows = [head]
    for task in tasks:
        mine = [r for r in results if r["spec"]["task"] == task]
        budget = sorted({r["spec"]["budget"] for r in mine})
        kwargs = mine[0]["spec"]["env_kwargs"] if mine else None
        row = [_task_label(task, kwargs), "/".join(_steps(b) for b in budget) or "-"]
        for c in contenders:
            ok = [
                r["success"]
                for r in mine
                if r["spec"]["contender"] == c and r["success"] is not None
            ]
            failed = sum(1 for r in mine if r["spec"]["contender"] == c and r["error"])
            row.append(cell(ok) + (f" [{failed} failed]" if failed else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _steps(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def _task_label(task: str, kwargs: dict[str, Any] | None = None) -> str:
    """The task's name and the env arguments it ran with (default :data:`TASK_KWARGS`)."""
    name = task.split("/")[-1]
    kwargs = TASK_KWARGS.get(task) if kwargs is None else kwargs
    return name + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")


def demo_note(results: list[dict[str, Any]]) -> str:
    demo = [r for r in results if r["demo_steps"]]
    if not demo:
        return "no expert demonstration steps were used"
    share = np.mean([r["demo_steps"] / max(r["env_steps"], 1) for r in demo])
    return f"mindloop runs spent {100 * share:.0f}% of their env steps on expert demonstrations (counted)"


def success_of(results: list[dict[str, Any]], task: str, contender: str) -> float | None:
    values = [
        r["success"]
        for r in results
        if r["spec"]["task"] == task
        and r["spec"]["contender"] == contender
        and r["success"] is not None
    ]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- main


def load_previous(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {RunSpec(**r["spec"]).key: r for r in data.get("runs", []) if r.get("error") is None}


def save(
    path: Path, args: argparse.Namespace, results: list[dict[str, Any]], started: float
) -> None:
    payload = {
        "command": "python benchmarks/learning.py " + " ".join(args.argv),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load": os.getloadavg(),
        },
        "wall_s": time.perf_counter() - started,
        "task_kwargs": TASK_KWARGS,
        "runs": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``) ends the worker processes too, as Ctrl-C does."""
    raise KeyboardInterrupt


def targets(results: list[dict[str, Any]], cue_label: str = "CueRecall delay 200") -> list[str]:
    """The issue's learning targets, checked on these results (``cue_label`` names the
    CueRecall setting they ran at)."""
    cue, count = CUE_TASK, "mindloop/CountAnswer-v0"
    chance = 1 / 3  # CueRecall's default num_targets: reaching a random ball
    lines = []

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    ml, ppo = success_of(results, cue, "mindloop"), success_of(results, cue, "sb3-ppo")
    if ml is not None:
        lines.append(
            f"{cue_label}, mindloop >= 90%: {pct(ml)} ({'met' if ml >= 0.9 else 'NOT met'})"
        )
    if ppo is not None:
        lines.append(
            f"{cue_label}, PPO without memory near chance ({pct(chance)} for a random "
            f"ball): {pct(ppo)}"
        )
    think, flat = (
        success_of(results, count, "mindloop"),
        success_of(results, count, "mindloop-nothink"),
    )
    if think is not None and flat is not None:
        steps = [
            r["think_steps"]
            for r in results
            if r["spec"]["task"] == count
            and r["spec"]["contender"] == "mindloop"
            and r["think_steps"] is not None
        ]
        used = float(np.mean(steps)) if steps else 0.0
        # "with think steps" means the thinking clone actually thinks in the evaluation
        verdict = "met" if think > flat and used > 0 else "NOT met"
        lines.append(
            f"CountAnswer, think > no think: {pct(think)} vs {pct(flat)} ({verdict}; the "
            f"thinking contender took {used:.2f} think steps per frame in the evaluation)"
        )
    fixed = success_of(results, count, "mindloop-fixedthink")
    if fixed is not None and flat is not None:
        lines.append(
            f"CountAnswer, every frame thinking k_max steps vs no think: {pct(fixed)} vs "
            f"{pct(flat)}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    import envs
    from envs import cue_recall

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="under a minute: the headline task, 4 contenders, 1 seed, 1k steps, 2 jobs",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="default every task (quick: CueRecall)"
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=None,
        choices=CONTENDERS + EXTRA_CONTENDERS,
        help=f"default {' '.join(CONTENDERS)} (quick: {' '.join(QUICK_CONTENDERS)})",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 1 2 (quick: 1)")
    parser.add_argument("--budget", type=int, default=None, help="env steps per run, every task")
    parser.add_argument("--eval-episodes", type=int, default=None, help="default 20 (quick: 4)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument(
        "--bc-updates",
        type=int,
        default=None,
        help=f"mindloop's BC steps (default {BC_UPDATES}; quick 4)",
    )
    parser.add_argument(
        "--think-cost",
        type=float,
        default=None,
        help="ppo.think_cost of the mindloop contenders (default: train.py's)",
    )
    parser.add_argument(
        "--anchor-coef",
        type=float,
        default=None,
        help="ppo.anchor_coef of the mindloop contenders (default: train.py's)",
    )
    parser.add_argument(
        "--cue-layout",
        choices=cue_recall.LAYOUTS,
        default="random",
        help="CueRecall's balls: new places every episode (the task's default); 'slots': fixed "
        "places, shuffled colours (no visual search); 'fixed': fixed places and colours (the "
        "memory test alone)",
    )
    parser.add_argument(
        "--cue-demo-delay",
        type=int,
        default=None,
        help="CueRecall: record the mindloop contenders' demonstrations at this delay_steps (a "
        "curriculum: at a short delay the reach is most of each episode; DAgger, PPO and the "
        "evaluation keep the task's delay)",
    )
    parser.add_argument(
        "--dagger",
        type=int,
        nargs=2,
        metavar=("ROUNDS", "EPISODES"),
        default=None,
        help=f"the mindloop contenders' DAgger: ROUNDS rounds of EPISODES learner episodes "
        f"each (default: 2 rounds sized to {DAGGER_SHARE:g} of the budget; a multiple of "
        "--num-envs keeps envs from idling; what is left goes to PPO)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="runs at once (processes; default 1, quick 2)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="run directories (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    for name in ("budget", "eval_episodes", "num_envs", "bc_updates", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.cue_demo_delay is not None and args.cue_demo_delay < 0:
        parser.error(f"--cue-demo-delay must be >= 0, got {args.cue_demo_delay}")
    if args.dagger is not None:
        if min(args.dagger) < 1:
            parser.error(f"--dagger ROUNDS EPISODES must both be >= 1, got {args.dagger}")
        args.dagger = tuple(args.dagger)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.tasks = args.tasks or list(QUICK_TASKS if args.quick else envs.TASK_IDS)
    args.contenders = args.contenders or list(QUICK_CONTENDERS if args.quick else CONTENDERS)
    args.jobs = args.jobs or (2 if args.quick else 1)
    for task in args.tasks:
        if task not in envs.TASK_IDS:
            parser.error(f"unknown task {task!r}; choose from: {', '.join(envs.TASK_IDS)}")
    args.seeds = args.seeds or ([1] if args.quick else [1, 2])
    args.eval_episodes = args.eval_episodes or (4 if args.quick else 20)
    args.bc_updates = args.bc_updates or (4 if args.quick else BC_UPDATES)
    out = args.out or (OUT.with_name("learning_quick.json") if args.quick else OUT)

    import tempfile

    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="mindloop-learning-"))
    specs = plan(args)
    previous = load_previous(out)
    results = [previous[s.key] for s in specs if s.key in previous]
    todo = [s for s in specs if s.key not in previous]
    # runs of a wider earlier plan stay in the file (not in this run's table)
    planned = {s.key for s in specs}
    kept = [r for key, r in previous.items() if key not in planned]
    started = time.perf_counter()
    print(
        f"{len(specs)} runs ({len(results)} already in {out}): {len(args.tasks)} tasks x "
        f"{len(args.contenders)} contenders x seeds {args.seeds}; {args.jobs} at once; "
        f"run dirs under {root}",
        flush=True,
    )
    ctx = get_context("forkserver")
    # Every run forks from a server that imported mindloop once: runs start faster, and all
    # of them train with the code as it was when the benchmark started.
    ctx.set_forkserver_preload(["envs", "encoders", "agent.training", "agent.baselines"])
    signal.signal(signal.SIGTERM, _interrupt)
    pool = ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1)
    try:
        futures = {pool.submit(run_one, s, str(root)): s for s in todo}
        for future in as_completed(futures):
            r = future.result()
            results.append(r)
            save(out, args, results + kept, started)
            s = r["spec"]
            status = (
                "FAILED " + r["error"].splitlines()[0]
                if r["error"]
                else f"success {100 * r['success']:.0f}%"
            )
            print(
                f"[{len(results)}/{len(specs)}] {s['task']} {s['contender']} seed {s['seed']}: "
                f"{status}, {r['env_steps']} steps in {r['wall_s']:.0f} s",
                flush=True,
            )
    except KeyboardInterrupt:
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public handle
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()

    budget_text = ", ".join(
        f"{_task_label(t, task_kwargs(t, args.cue_layout))} {budgets(t, args.quick, args.budget):,}"
        for t in args.tasks
    )
    print()
    print(
        f"Success rate % (mean ± std over seeds {args.seeds}, n) after a fixed budget of env "
        f"steps per run ({budget_text}); {args.eval_episodes} deterministic evaluation "
        f"episodes per run. mindloop: --algo bc+ppo with memory (not mindloop-nomemory), "
        f"{args.bc_updates} BC updates; "
        f"{demo_note(results)}."
    )
    print(table(results, args.tasks, args.contenders))
    layout = args.cue_layout if CUE_TASK in args.tasks else "random"
    label = "CueRecall delay 200" + (f", {layout} layout" if layout != "random" else "")
    if args.cue_demo_delay is not None and CUE_TASK in args.tasks:
        label += f", demonstrations at delay {args.cue_demo_delay}"
    if args.dagger is not None:
        label += f", DAgger {args.dagger[0]} x {args.dagger[1]} episodes"
    for line in targets(results, label):
        print(line)
    save(out, args, results + kept, started)
    print(f"wrote {out}")
    value = success_of(results, CUE_TASK, "mindloop")
    name = "cuerecall200" + (f"_{layout}" if layout != "random" else "")
    if args.cue_demo_delay is not None and CUE_TASK in args.tasks:
        name += f"_demodelay{args.cue_demo_delay}"
    if args.dagger is not None:
        name += f"_dagger{args.dagger[0]}x{args.dagger[1]}"
    name += "_mindloop_success"
    shown = "nan" if value is None else f"{value:.2f}"
    print(f"headline: {name}={shown} (target >=0.9)")


if __name__ == "__main__":
    main()
