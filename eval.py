"""Evaluate a mindloop agent (or the scripted expert, or a random policy), record, replay.

    python eval.py --checkpoint runs/x --episodes 20 --video out.mp4 --record episodes/
    python eval.py --env mindloop/CueRecall-v0 --policy expert --video expert.mp4
    python eval.py replay episodes/ --video replay.mp4          # no model needed

Prints a table (success, return, length, think steps, memory calls) and writes what is
asked for: ``--json`` results, ``--video`` an MP4 with the env's sound and overlays,
``--record`` a Minari dataset of every episode (observations, actions, physics state per
step, think steps, text), which ``replay`` re-renders. The logic lives in
:mod:`agent.evaluation`, :mod:`agent.video` and :mod:`agent.recording`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from agent.cli import cli, path_error_line

DEFAULT_TASK_ID = "mindloop/MuscleReach-v0"


@dataclass
class EvalConfig:
    """Evaluate a policy over N episodes (episode k on seed `seed + k`): a table, and
    optionally JSON, an MP4 with sound, and a Minari record of every episode.
    `python eval.py replay DIR --video out.mp4` re-renders a record without the model."""

    checkpoint: str | None = None
    """A trained agent: a run directory, its checkpoints/latest, or a checkpoint directory."""
    policy: str | None = None
    """A policy by name instead of a checkpoint: expert (the task's scripted expert), random."""
    env: str | None = None
    """Gymnasium id (default: the checkpoint's task, else mindloop/MuscleReach-v0)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Task constructor arguments (added to the checkpoint's), e.g. delay_steps 200."""
    episodes: int = 10
    """Episodes to run."""
    seed: int = 0
    """Episode k is reset with seed + k (also seeds sampling)."""
    num_envs: int = 1
    """Envs stepped together (a Gymnasium vector env). Deterministic (default) evaluation plays
    the same episodes whatever it is (returns may differ in the last digits: the network runs
    on another batch size); --stochastic and --policy random draw from one RNG in batch order,
    so their exact returns depend on it (each command still reproduces exactly)."""
    vectorization: str = "sync"
    """sync (one process) or async (a worker process per env)."""
    stochastic: bool = False
    """Sample actions, think steps and memory calls instead of taking the most likely."""
    video: str | None = None
    """Write an MP4 (H.264 + AAC sound, overlays) of the first video_episodes episodes here."""
    video_episodes: int = 3
    """Episodes in the video."""
    video_size: int = 384
    """Width of the rendered scene in pixels (even)."""
    record: str | None = None
    """Write every episode here as a Minari dataset (replay with `eval.py replay DIR`)."""
    json: str | None = None
    """Write the results (per episode and summary) here as JSON."""
    overwrite: bool = False
    """Replace an existing --record directory."""
    device: str = "cpu"
    """Torch device for a checkpoint's agent (auto, cpu, cuda, cuda:N)."""

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.policy is not None:
            raise ValueError("give either --checkpoint or --policy, not both")
        if self.checkpoint is None and self.policy is None:
            raise ValueError(
                "nothing to evaluate: give --checkpoint RUN_DIR or --policy expert|random"
            )
        for name in ("episodes", "num_envs", "video_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.video_size < 64 or self.video_size % 2:
            raise ValueError(f"--video-size must be an even number >= 64, got {self.video_size}")


@dataclass
class ReplayConfig:
    """Re-render a recorded episode (or several) to MP4 with sound, without the model."""

    record: Annotated[str, tyro.conf.Positional]
    """A directory written by `eval.py --record` (a Minari dataset)."""
    video: str = "replay.mp4"
    """The MP4 to write."""
    episodes: tuple[int, ...] | None = None
    """Which episodes (indices; default: all)."""
    size: int = 384
    """Width of the rendered scene in pixels (even)."""
    overlay: bool = True
    """Draw the panel (text, think steps, memory calls) and the agent's view."""


def run_eval(config: EvalConfig) -> None:
    import torch

    from agent.distributed import resolve_device
    from agent.evaluation import evaluate_and_save, load_checkpoint_policy, make_policy
    from agent.vector import check_env_id

    # train.py's check: a one-line error before any checkpoint is read, not torch's traceback
    device = str(resolve_device(config.device, "--device"))
    torch.manual_seed(config.seed)  # sampled actions/think steps are reproducible
    kwargs: dict = {}
    env_id = config.env
    if config.checkpoint is not None:
        policy, trained_id, trained_kwargs = load_checkpoint_policy(
            config.checkpoint, deterministic=not config.stochastic, device=device
        )
        env_id = env_id or trained_id
        if env_id == trained_id:
            kwargs.update(trained_kwargs)
    else:
        assert config.policy is not None
        policy = make_policy(config.policy)
    env_id = env_id or DEFAULT_TASK_ID
    check_env_id(env_id)
    kwargs.update(config.env_kwargs)
    evaluate_and_save(
        policy,
        env_id,
        config.episodes,
        seed=config.seed,
        num_envs=config.num_envs,
        env_kwargs=kwargs,
        vectorization=config.vectorization,
        video=config.video,
        video_episodes=config.video_episodes,
        video_size=config.video_size,
        record_dir=config.record,
        json_path=config.json,
        overwrite=config.overwrite,
    )


def run_replay(config: ReplayConfig) -> None:
    from agent.video import replay_to_video

    info = replay_to_video(config.record, config.video, config.episodes, size=config.size,
                           overlay=config.overlay)  # fmt: skip
    print(f"video: {info.path} ({info.episodes} episodes, {info.frames} frames, "
          f"{info.seconds:.1f} s, with sound)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["replay"]:
            run_replay(cli(ReplayConfig, args=argv[1:], prog="eval.py replay"))
        else:
            run_eval(cli(EvalConfig, args=argv, prog="eval.py"))
    except (ValueError, FileNotFoundError) as e:  # a user mistake: one line, no traceback
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: nothing half-written is left
        print("\neval.py: interrupted", file=sys.stderr)
        return 130
    except _io_errors() as e:  # the last resort for a path the checks did not foresee
        print(f"eval.py: error: {path_error_line(e)}", file=sys.stderr)
        return 1
    return 0


def _io_errors() -> tuple[type[Exception], ...]:
    """OSError, and PyAV's errors (only some of which subclass OSError)."""
    import av

    return (OSError, av.error.FFmpegError)


if __name__ == "__main__":
    sys.exit(main())
