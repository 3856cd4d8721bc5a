"""Train a mindloop agent: ``python train.py`` (defaults: BC + PPO on mindloop/MuscleReach-v0).

Examples::

    python train.py                                         # the default task, under 10 min on 2 cores
    python train.py --env.id mindloop/CueRecall-v0 --agent.use-memory --algo ppo
    python train.py --algo sb3-recurrentppo                 # a Stable-Baselines3 baseline
    python train.py --resume runs/MuscleReach-v0__bc+ppo__1__20260101-120000
    torchrun --nproc_per_node 2 train.py --run.device cpu   # DistributedDataParallel
    python train.py --help                                  # every option

The whole config is written to ``<run>/config.json`` and into every checkpoint; the logic
lives in :mod:`agent.training` (importable, testable); this file only parses and reports.
Imports stay inside ``main`` because async env workers re-import this module when they start.
"""

from __future__ import annotations

import sys


def parse_config(argv: list[str]):
    """The :class:`agent.config.TrainConfig` of the command line.

    With ``--resume DIR`` the run's saved config is the default, so ``--resume DIR`` alone
    continues it (a run stopped before its first checkpoint starts again); an option that
    would change anything but the resume-free fields (device, threads, progress bar) is a
    one-line error naming the field.
    """
    from agent.cli import cli
    from agent.config import (
        LIGHT_ENCODERS,
        RESUME_FREE_FIELDS,
        TrainConfig,
        config_diff,
        config_to_dict,
    )

    resume = _resume_arg(argv)
    if resume is None:
        # Encoder options are free KEY.FIELD VALUE pairs on the command line (tyro would
        # turn a non-empty default dict into fixed flags, one per default key); the light
        # defaults go in beneath whatever is given.
        default = TrainConfig()
        default.agent.encoders.options = {}
        config = cli(TrainConfig, args=argv, default=default, description=__doc__.split("\n")[0])
        config.agent.encoders.options = {**LIGHT_ENCODERS, **config.agent.encoders.options}
        return config
    from agent.checkpoint import saved_run_config

    saved = saved_run_config(resume)
    config = cli(TrainConfig, args=argv, default=saved)
    config.resume = resume
    diff = [
        name
        for name in config_diff(config_to_dict(saved), config_to_dict(config))
        if not any(name == f or name.startswith(f + ".") for f in RESUME_FREE_FIELDS)
    ]
    if diff:
        raise ValueError(
            f"--resume {resume}: the config differs from the run's in {', '.join(diff)}; "
            "resume with the run's settings or start a new run"
        )
    return config


def _resume_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--resume" and i + 1 < len(argv) and argv[i + 1] != "None":
            return argv[i + 1]
        if arg.startswith("--resume="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = None
    try:
        import encoders  # noqa: F401  (preloads triton before any MuJoCo render)
        from agent.distributed import launch_rank
        from agent.training import train

        if launch_rank() != 0 and any(arg in ("-h", "--help") for arg in argv):
            return 0  # under torchrun every rank parses; rank 0 prints the help once

        config = parse_config(argv)
        result = train(config)
    except ValueError as err:  # a user mistake: one line, no traceback
        sys.exit(f"error: {err}")
    except _PATH_ERRORS as err:  # e.g. a path under a file: the path and why
        from agent.cli import path_error_line

        sys.exit(f"error: {path_error_line(err)}")
    except KeyboardInterrupt:  # Ctrl-C: the latest checkpoint is complete (atomic writes)
        return _interrupted(config)
    except Exception as err:
        # Ctrl-C inside a ctypes call (e.g. an EGL render) surfaces as that call's error
        if isinstance(err.__context__, KeyboardInterrupt):
            return _interrupted(config)
        from gymnasium.error import DependencyNotInstalled

        if isinstance(err, DependencyNotInstalled):  # e.g. --env.kwargs render_mode human
            sys.exit(f"error: {str(err).splitlines()[0]}")
        raise
    if launch_rank() != 0:  # under torchrun, rank 0 reports for all
        return 0
    if result.success_rate is not None:
        print(f"success rate: {100 * result.success_rate:.1f}% ({config.env.id}, {config.algo})")
    elif (result.run_dir / "eval.json").exists():  # evaluated, but the env defines no success
        print(f"success rate: n/a ({config.env.id} gives no info['is_success'])")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    video = result.run_dir / "video.mp4"
    if video.exists():
        print(f"video: {video}")
    print(f"run: {result.run_dir} ({result.wall_seconds:.0f} s)")
    return 0


# OSErrors about a path the user gave (not every OSError: a crashed env worker's broken pipe
# keeps its traceback)
_PATH_ERRORS = (
    FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError
)  # fmt: skip


def _interrupted(config) -> int:
    run = (config and (config.resume or config.run.dir)) or "RUN_DIR (printed above)"
    print(
        f"\ninterrupted; continue with: python train.py --resume {run} (from its latest "
        "checkpoint, or from the start if it has none yet)"
    )
    return 130


if __name__ == "__main__":
    sys.exit(main())
