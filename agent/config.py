"""Typed configs of a training run: env, encoders, core/think, memory, algorithm, run.

One dataclass per part (CleanRL's ``Args`` + LeRobot's sub-configs), every field with a
one-line docstring that becomes its ``--help`` text through ``tyro``. Each validates itself in
``__post_init__`` with a one-line ``ValueError`` naming the bad value and the allowed ones, so
``train.py`` can print it and exit. The whole :class:`TrainConfig` goes to the run directory
and into every checkpoint as ``config.json`` (:func:`config_to_dict` /
:func:`config_from_dict`), enough to rebuild the agent and to check a ``--resume``.

The core, think and memory configs are the ones their modules define (``agent.cores``,
``agent.think``, ``agent.memory``), used as they are.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from agent.cores import CoreConfig
from agent.memory import MemoryConfig
from agent.think import ThinkConfig
from encoders.fusion import FusedEncoderConfig

DEFAULT_TASK_ID = "mindloop/MuscleReach-v0"
LIGHT_ENCODERS: dict[str, str] = {
    "image.channels": "(8, 16, 32)",
    "audio.channels": "(8, 16)",
    "audio.embed_dim": "64",
}
"""Encoder options of the default agent: the image CNN with 8-16-32 channels and a smaller
audio net cost ~40% of the encoders' defaults per trained frame (measured, 1 thread), which
is what lets ``python train.py`` finish in 10 minutes on 2 cores."""
VECTORIZATIONS = ("async", "sync")
START_METHODS = ("forkserver", "spawn", "fork")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
"""Device names: auto (CUDA when available), cpu, cuda, or one CUDA device by index."""


def check_device_name(option: str, device: str) -> None:
    """One-line ``ValueError`` naming ``option`` unless ``device`` is one of :data:`DEVICES`
    (``cuda:N`` with a number N). Whether the machine has it is checked where it is used."""
    if device not in ("auto", "cpu", "cuda") and re.fullmatch(r"cuda:\d+", device) is None:
        raise ValueError(f"unknown {option} {device!r}; choose from: {', '.join(DEVICES)}")


LR_SCHEDULES = ("linear", "constant")
BC_THINK_MODES = ("ponder", "sampled")
LATENT_FRAMES = ("all", "onset")


def _check_choice(name: str, value: object, choices: typing.Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from: {', '.join(map(str, choices))}")


def _check_min(owner: str, obj: object, names: typing.Sequence[str], low: float) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < low:
            raise ValueError(f"{owner}.{name} must be >= {low}, got {value}")


@dataclass
class EnvConfig:
    """Which task, how many copies, and how they run."""

    id: str = DEFAULT_TASK_ID
    """Gymnasium id: a mindloop/ task, or a registered env with Dict observations and actions."""
    num_envs: int = 8
    """Environments stepped together per process (per rank under torchrun)."""
    vectorization: str = "async"
    """async: one worker process per env (Gymnasium AsyncVectorEnv); sync: all in-process."""
    start_method: str = "forkserver"
    """How async workers start: forkserver, spawn or fork (each worker makes its own renderer)."""
    kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Constructor arguments of the task, e.g. delay_steps 200 for CueRecall."""
    obs_keys: tuple[str, ...] | None = None
    """Observation keys the env produces (None: all of the task's keys)."""

    def __post_init__(self) -> None:
        _check_min("env", self, ("num_envs",), 1)
        _check_choice("env.vectorization", self.vectorization, VECTORIZATIONS)
        _check_choice("env.start_method", self.start_method, START_METHODS)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
            if not self.obs_keys:
                raise ValueError("env.obs_keys is empty; give some keys or None for all")

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``gymnasium.make`` (obs_keys joined in when set)."""
        kwargs: dict[str, Any] = dict(self.kwargs)
        if self.obs_keys is not None:
            kwargs["obs_keys"] = self.obs_keys
        return kwargs


@dataclass
class AgentConfig:
    """The agent: encoders -> core with think steps -> heads (+ optional memory tool)."""

    encoders: FusedEncoderConfig = field(
        default_factory=lambda: FusedEncoderConfig(options=dict(LIGHT_ENCODERS))
    )
    """Encoder per observation key (image cnn, audio logmel, proprio, touch, text) and fusion;
    by default the image and audio nets are slimmed for 2-core training (options
    image.channels (8, 16, 32), audio.channels (8, 16), audio.embed_dim 64; on train.py's
    command line they apply beneath the options given, e.g. ``--agent.encoders.options
    image.pool mean``)."""
    core: CoreConfig = field(default_factory=CoreConfig)
    think: ThinkConfig = field(default_factory=lambda: ThinkConfig(k_max=2))
    """Think steps; up to 2 by default (on, but cheap: each costs a core step and think_cost)."""
    think_tokens_from: str = "image"
    """Observation key whose encoder hands the ``attend``/``scan`` think inputs its tokens
    (``image``: the CNN's feature-map cells with their positions; ``text``: the words)."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    use_memory: bool = False
    """Give the policy the two-tier memory tool (get/set calls) configured by memory."""


@dataclass
class PPOConfig:
    """Recurrent PPO: rollouts of rollout_steps x num_envs, truncated BPTT over chunks."""

    total_steps: int = 8192
    """Env steps to train for (all envs of all ranks together). The default is the short
    fine-tune of the quickstart's bc+ppo; PPO from scratch needs ~10-100x more."""
    rollout_steps: int = 64
    """Steps per env per rollout (T)."""
    bptt_steps: int = 16
    """Length of the sequence chunks trained with backprop through time (divides T)."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per epoch (split over chunks)."""
    lr: float = 1e-4
    """Adam learning rate (small by default: fine-tuning a cloned policy)."""
    lr_schedule: str = "linear"
    """linear (anneal to 0 over total_steps) or constant."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip."""
    clip_value: bool = False
    """Clip the value update like the policy (CleanRL's clip_vloss)."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Entropy bonus on the action heads."""
    decision_entropy_coef: float = 0.001
    """Entropy bonus on the halting and memory-op decisions (keeps them exploring)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (inf: no clipping)."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    target_kl: float | None = None
    """Stop an update's epochs early when the approximate KL exceeds this."""
    think_cost: float = 0.001
    """Reward subtracted per think step (the seed's "reward fewer think tokens"). An episode
    of T frames thinking k steps each pays T * k * think_cost, so keep it well below a task's
    reward: at 0.01, CountAnswer's thinking cost more than a right answer earns and PPO learned
    to stop thinking although thinking helped (benchmarks/RESULTS.md)."""
    memory_cost: float | None = None
    """Reward subtracted per memory call (None: the memory config's call_cost)."""
    anchor_coef: float | None = None
    """Weight of a KL penalty that keeps the policy near the one the phase started from (over
    every decision of a frame: action, think stops, memory ops; a mean over frames); 0: off.
    None (the default): 1.0 when PPO fine-tunes a behaviour-cloned policy (bc+ppo), 0 from
    scratch. It keeps PPO from undoing what BC learned: with it no CountAnswer run of 27 fell
    below 78% (benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        _check_min("ppo", self, ("total_steps", "rollout_steps", "bptt_steps", "epochs"), 1)
        _check_min("ppo", self, ("minibatches",), 1)
        _check_min("ppo", self, ("value_coef", "entropy_coef", "decision_entropy_coef"), 0)
        _check_min("ppo", self, ("think_cost",), 0)
        if not self.max_grad_norm > 0:  # 0 would scale every gradient to zero: no learning
            raise ValueError(
                f"ppo.max_grad_norm must be > 0 (inf: no clipping), got {self.max_grad_norm}"
            )
        if self.anchor_coef is not None:
            _check_min("ppo", self, ("anchor_coef",), 0)
        _check_choice("ppo.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.rollout_steps % self.bptt_steps:
            raise ValueError(
                f"ppo.bptt_steps={self.bptt_steps} must divide ppo.rollout_steps={self.rollout_steps}"
            )
        if not self.lr > 0:
            raise ValueError(f"ppo.lr must be > 0, got {self.lr}")
        if not self.clip > 0:
            raise ValueError(f"ppo.clip must be > 0 (PPO's epsilon, e.g. 0.2), got {self.clip}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"ppo.target_kl must be > 0 or None, got {self.target_kl}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ppo.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.memory_cost is not None and self.memory_cost < 0:
            raise ValueError(f"ppo.memory_cost must be >= 0 or None, got {self.memory_cost}")


@dataclass
class BCConfig:
    """Behaviour cloning from the task's scripted expert (env.unwrapped.expert_action())."""

    episodes: int = 500
    """Expert demonstration episodes collected before training."""
    updates: int = 1000
    """Gradient steps of behaviour cloning on the demonstrations (before DAgger rounds)."""
    batch_envs: int = 8
    """Sequences per gradient step."""
    seq_len: int = 16
    """Frames per training sequence (BPTT length)."""
    lr: float = 1.5e-3
    """Adam learning rate (warmup, then cosine-annealed to 10% over all updates)."""
    warmup: int = 50
    """Updates of linear learning-rate warmup (then cosine to 10%)."""
    label_smoothing: float = 0.1
    """Soft targets for categorical heads (text tokens): mass spread over other tokens."""
    target_concentration: float = 100.0
    """Soft targets for bounded (muscle) heads: concentration k of the target
    Beta(1 + k u*, 1 + k (1 - u*)) around the expert's action u* (std ~0.05 at k=100)."""
    think: str = "ponder"
    """Think steps: ponder (expected loss over the halting distribution) or sampled path."""
    lambda_p: float = 0.5
    """PonderNet geometric prior on think steps (larger: fewer think steps)."""
    kl_coef: float = 0.01
    """Weight of KL(halting || geometric prior)."""
    dagger_rounds: int = 2
    """DAgger: rounds of relabelling states the learner visits with expert actions (on the
    default task 2 rounds lifted the worst seed from 68% to 100% success at the same cost)."""
    dagger_episodes: int = 100
    """Learner episodes collected (and relabelled) per DAgger round."""
    dagger_beta: float = 0.5
    """DAgger mixture: probability that a step of a DAgger rollout executes the expert's
    action instead of the learner's (labels are the expert's either way); halved each round."""
    dagger_updates: int = 200
    """Gradient steps after each DAgger round (on all data so far), after the first updates."""
    dataset: str | None = None
    """Directory of a Minari dataset of demonstrations (agent.datasets / eval.py --record) to
    train on instead of recording new ones."""
    balance_speech: bool = True
    """Text tasks: frames where the expert says a token and silent frames weigh half each in
    the imitation loss (CountAnswer answers once in ~60 frames; unweighted, the clone learns
    to stay silent long before it learns to answer)."""
    memory_op_coef: float = 1.0
    """Weight of the cross-entropy that clones the expert's memory calls (set/get/none), on
    tasks whose expert labels them (CueRecall); each op class (none, set, get) weighs the
    same, so a rare call is not drowned by the frames without one. 0: no op cloning."""
    observation_recon_coef: float = 1.0
    """Weight of the auxiliary reconstruction of the observation embedding from the memory's
    workable vector (what a set stores), when memory ops are cloned: no task gradient crosses
    the store, so this keeps what a set writes about the present frame."""

    expert_latent_coef: float = 1.0
    """Weight of the auxiliary regression of the expert's latent (``expert_latent()``: the
    posture a reach heads for, CountAnswer's running count) from the core's state, on tasks
    that expose it; relative to the latent's spread. It teaches the state to hold *what* the
    expert acts on (which ball, how many), which the action loss alone teaches slowly. 0: off."""

    expert_latent_frames: str = "all"
    """Frames the latent is regressed on: "all", or "onset": only where it takes a new value
    (an episode's first frame, the balls showing, a ball landing), before the expert's action
    toward it can show in the body's own sensing. On later frames a reach's goal is readable
    from the arm's motion toward it, a shortcut the clone's own arm does not give it in closed
    loop (the copycat problem of BC); at the onset only the senses and memory can tell it."""

    def __post_init__(self) -> None:
        _check_min("bc", self, ("episodes", "updates", "batch_envs", "seq_len"), 1)
        _check_min(
            "bc", self, ("memory_op_coef", "observation_recon_coef", "expert_latent_coef"), 0
        )
        _check_min("bc", self, ("dagger_rounds", "dagger_episodes", "dagger_updates", "warmup"), 0)
        _check_min("bc", self, ("target_concentration", "kl_coef"), 0)
        _check_choice("bc.think", self.think, BC_THINK_MODES)
        _check_choice("bc.expert_latent_frames", self.expert_latent_frames, LATENT_FRAMES)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"bc.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dagger_beta <= 1.0:
            raise ValueError(f"bc.dagger_beta must be in [0, 1], got {self.dagger_beta}")
        if not 0.0 < self.lambda_p <= 1.0:
            raise ValueError(f"bc.lambda_p must be in (0, 1], got {self.lambda_p}")
        if not self.lr > 0:
            raise ValueError(f"bc.lr must be > 0, got {self.lr}")


@dataclass
class RunConfig:
    """Where the run goes, seeds, evaluation, checkpoints, logging."""

    dir: str | None = None
    """Run directory (None: runs/<task>__<algo>__<seed>__<time>)."""
    seed: int = 1
    """Seed of torch, numpy and python; the envs, demonstrations and DAgger rollouts draw from
    blocks derived from it (``agent.vector.derived_seed``: seeds 1 and 2 share no episode)."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, or cuda:N (one GPU; under torchrun each rank
    takes cuda:LOCAL_RANK, so give cuda)."""
    threads: int = 1
    """torch intra-op threads (0: torch's default). 1 by default: with env workers on the same
    cores, 2 threads ran BC ~20x slower on a busy 2-core machine (measured)."""
    eval_episodes: int = 50
    """Episodes of the final (and periodic) evaluation, deterministic policy."""
    eval_every: int = 0
    """Evaluate every this many PPO updates (0: only at the end); when on, the best-evaluated
    weights (success rate, then return; the final evaluation included) are kept in
    ``checkpoints/best``."""
    checkpoint_every: int = 10
    """Save a checkpoint every this many PPO updates (and always at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (older ones are deleted; latest always stays)."""
    video: bool = True
    """Write an MP4 of the trained agent at the end."""
    progress: bool = True
    """Show a progress bar (fps, success, think steps) when stderr is a terminal; in a log
    file or pipe, and with --run.no-progress, a progress line every 10 s instead."""
    tensorboard: bool = True
    """Write TensorBoard logs under <dir>/tb."""
    max_env_steps: int | None = None
    """Env-step budget of the whole run (expert demonstrations, recorded by the run or given
    as ``bc.dataset``, DAgger rollouts and PPO together, all ranks; every step a vector env
    takes, also those of envs idling until a collection's last episode ends): PPO runs
    ``ppo.total_steps`` or what the earlier phases left, if less (whole updates). For
    budget-matched comparisons (``benchmarks/learning.py``)."""

    def __post_init__(self) -> None:
        check_device_name("run.device", self.device)
        _check_min("run", self, ("seed", "threads", "eval_episodes", "eval_every"), 0)
        if self.eval_every and not self.eval_episodes:
            raise ValueError(
                f"run.eval_every={self.eval_every} evaluates during training, but "
                "run.eval_episodes=0 asks for no episodes; give --run.eval-episodes N >= 1, "
                "or --run.eval-every 0"
            )
        _check_min("run", self, ("checkpoint_every", "keep_checkpoints"), 1)
        if self.max_env_steps is not None and self.max_env_steps < 1:
            raise ValueError(
                f"run.max_env_steps must be >= 1 (or None: no budget), got {self.max_env_steps}"
            )


@dataclass
class TrainConfig:
    """python train.py: train a mindloop agent (see --algo for the algorithms)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    algo: str = "bc+ppo"
    """Training algorithm: bc+ppo (clone the scripted expert, then PPO), ppo, bc, sft-rl (text
    tasks), sb3-ppo, sb3-recurrentppo (baselines); the registry is agent.training.ALGORITHMS."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str | None = None
    """Continue the run in this directory from its latest checkpoint (same config)."""

    def __post_init__(self) -> None:
        check_finite(self)


INFINITE_OK: frozenset[tuple[type, str]] = frozenset(
    {
        # inf is PPO's "no gradient clipping": torch's clip_grad_norm_ (and SB3's) scales by
        # min(1, max_norm / norm) = 1, and there is no None for it
        (PPOConfig, "max_grad_norm"),
        # inf: never stop an update's epochs early, as None (older configs may hold it)
        (PPOConfig, "target_kl"),
    }
)
"""Float fields where inf is a meaningful setting, which :func:`check_finite` lets through
(their own range checks still apply: -inf fails max_grad_norm's > 0)."""


def check_finite(config: Any, where: str = "") -> None:
    """One-line ``ValueError`` for a NaN anywhere in dataclass ``config`` (its nested configs,
    tuples and dicts included) or a +/-inf in one of its float fields (but
    :data:`INFINITE_OK`'s): range checks such as ``x < 0`` let NaN through, and training
    died on it many steps later inside torch."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{where}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_finite(value, f"{name}.")
        elif _has_nonfinite(value, allow_inf=(type(config), f.name) in INFINITE_OK):
            rule = "be a finite number" if isinstance(value, float) else "hold only finite numbers"
            raise ValueError(f"{name} must {rule}, got {value!r}")


def _has_nonfinite(value: Any, allow_inf: bool, in_dict: bool = False) -> bool:
    """Whether ``value`` is or holds a NaN, or an inf where one is not allowed (in dicts,
    e.g. env.kwargs or encoder options, only NaN: their fields are not known here)."""
    if isinstance(value, float):
        return math.isnan(value) or (math.isinf(value) and not (allow_inf or in_dict))
    if isinstance(value, list | tuple):
        return any(_has_nonfinite(v, allow_inf, in_dict) for v in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v, allow_inf, True) for v in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(
            _has_nonfinite(getattr(value, f.name), allow_inf, True)
            for f in dataclasses.fields(value)
        )
    return False


# --------------------------------------------------------------------------- JSON round trip

RESUME_FREE_FIELDS = ("resume", "run.progress", "run.device", "run.threads")
"""Fields a ``--resume`` may change: they do not change what is computed on CPU."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON data (tuples become lists)."""
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


SAVED_BEFORE_FIELD: dict[tuple[type, str], Any] = {
    # the KL anchor did not exist before: those runs trained without one (today's None
    # default would anchor a bc+ppo resume to a reference the checkpoint does not hold)
    (PPOConfig, "anchor_coef"): 0.0,
}
"""Fields added with a default that changes what an older run computed: a saved config
without the field gets the value that reproduces the run it came from."""


def config_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Rebuild dataclass ``cls`` from :func:`config_to_dict` data (nested dataclasses and
    tuples restored; a value of the wrong type for its field (:func:`_restore`) or an unknown
    field is a one-line error naming it; a field missing from older data takes
    :data:`SAVED_BEFORE_FIELD`'s value where it has one, else its default)."""
    if not isinstance(data, dict):
        raise ValueError(
            f"config {where.rstrip('.') or cls.__name__} must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(f'{where}{u}' for u in unknown)}; "
            f"{cls.__name__} has: {', '.join(sorted(names))}"
        )
    kwargs = {k: _restore(hints[k], v, f"{where}{k}.") for k, v in data.items()}
    for name in names - set(data):
        if (cls, name) in SAVED_BEFORE_FIELD:
            kwargs[name] = SAVED_BEFORE_FIELD[(cls, name)]
    return cls(**kwargs)


def _restore(hint: Any, value: Any, where: str) -> Any:
    """``value`` of JSON data as field type ``hint`` (``where``: the field's dotted name and a
    dot), or a one-line error naming the field, the type and the value: a hand-edited
    config.json with ``"lr": "fast"`` failed with a traceback from deep in a check."""
    restored = _conform(hint, value, where)
    if restored is _MISMATCH:
        raise ValueError(f"config {where.rstrip('.')} must be {_describe(hint)}, got {value!r}")
    return restored


_MISMATCH = object()


def _conform(hint: Any, value: Any, where: str) -> Any:
    """``value`` as ``hint`` wants it, or :data:`_MISMATCH`. Checked: bool, int (not bool; an
    integral float such as 2.0 becomes an int), float (int or float, not bool), str, tuples
    (element types when given), dicts, nested config dataclasses and ``| None``; any other
    hint (Any, Literal, ...) takes the value as it is."""
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None):
            if value is None:
                return None
        elif dataclasses.is_dataclass(option):
            if isinstance(value, dict):
                return config_from_dict(option, value, where)
        elif origin is tuple:
            if isinstance(value, list | tuple):
                items = _conform_items(option, value, where)
                if items is not _MISMATCH:
                    return items
        elif origin is dict:
            if isinstance(value, dict):
                return value
        elif option is bool:
            if isinstance(value, bool):
                return value
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif option is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
        elif option is str:
            if isinstance(value, str):
                return value
        else:
            return value
    return _MISMATCH


def _conform_items(hint: Any, value: list | tuple, where: str) -> Any:
    args = typing.get_args(hint)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(args) != len(value):
        return _MISMATCH
    items = tuple(_conform(a, v, where) for a, v in zip(args, value, strict=True))
    return _MISMATCH if any(item is _MISMATCH for item in items) else items


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: "a float", "a list of 3 floats", "a mapping of PPOConfig fields or
    None"."""
    words = []
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        args = typing.get_args(option)
        if option is type(None):
            words.append("None")
        elif dataclasses.is_dataclass(option):
            words.append(f"mapping{'s' if plural else ''} of {option.__name__} fields")
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            words.append(f"list{'s' if plural else ''} of {_describe(args[0], plural=True)}")
        elif origin is tuple and args and len(set(args)) == 1:
            words.append(f"list{'s' if plural else ''} of {len(args)} {_describe(args[0], True)}")
        elif origin is tuple and args:
            parts = ", ".join(_describe(a) for a in args)
            words.append(f"list{'s' if plural else ''} of {len(args)} items ({parts})")
        elif origin is tuple:
            words.append("lists" if plural else "list")
        elif origin is dict:
            words.append("mappings" if plural else "mapping")
        elif option in (bool, int, float):
            words.append(f"{option.__name__}{'s' if plural else ''}")
        elif option is str:
            words.append("strings" if plural else "string")
        else:
            words.append(str(option))
    if not plural:
        words = [w if w == "None" else f"{'an' if w[0] in 'aeiou' else 'a'} {w}" for w in words]
    return " or ".join(words)


def _options(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two :func:`config_to_dict` dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


__all__ = [
    "DEFAULT_TASK_ID",
    "RESUME_FREE_FIELDS",
    "SAVED_BEFORE_FIELD",
    "AgentConfig",
    "BCConfig",
    "EnvConfig",
    "PPOConfig",
    "RunConfig",
    "TrainConfig",
    "check_finite",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
]
