"""Self-describing, atomically written checkpoints (safetensors + JSON, no pickle).

Layout of a run directory::

    <run>/config.json                      the run's TrainConfig (written once at the start)
    <run>/checkpoints/step_000012800/      one checkpoint
        config.json                        TrainConfig + the env's spaces + step, version
        model.safetensors                  the agent's parameters and buffers
        trainer.safetensors                optimizer tensors, RNG states, env/rollout state
        trainer.json                       everything else needed to resume exactly
    <run>/checkpoints/latest -> step_000012800   (a relative symlink, replaced atomically)
    <run>/checkpoints/best/                the best-evaluated weights so far (with periodic
                                           evaluation on; SB3's EvalCallback best model)

A checkpoint is written into a hidden temporary directory next to its final place, every
file flushed to disk, then renamed (``os.replace``) into place; only then is ``latest``
switched to it (a new symlink renamed over the old one). A process killed at any moment leaves
``latest`` pointing at a complete checkpoint (and at worst a stray ``.tmp-*`` directory,
removed by the next save). Re-saving an existing name (the final save after the last
evaluation, ``best``) cannot swap two directories in one rename: the old copy is first renamed
to ``.old-<name>`` and removed only once the new one is in place; if the process dies in
between, :func:`resolve_checkpoint` reads ``.old-<name>`` and the next save moves it back.

:func:`load_agent` rebuilds the agent from a checkpoint directory alone (nanoGPT's model args
stored with the weights, LeRobot's ``from_pretrained``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from agent.agent import MindloopAgent
from agent.config import TrainConfig, config_from_dict, config_to_dict

FORMAT_VERSION = 1
LATEST = "latest"
BEST = "best"
CHECKPOINTS = "checkpoints"
OLD_PREFIX = ".old-"
"""Prefix of the previous copy while a name is re-saved (see the module docstring)."""


# --------------------------------------------------------------------------- spaces as JSON


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A Gymnasium space as JSON data (Box, Discrete, MultiDiscrete, MultiBinary, Dict)."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _compact(space.low),
            "high": _compact(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise ValueError(
        f"cannot store a {type(space).__name__} space in a checkpoint; supported: Dict, Box, "
        "Discrete, MultiDiscrete, MultiBinary"
    )


def _compact(x: np.ndarray) -> Any:
    """A bound array as one number when it is uniform (a 64x64x3 image Box has two)."""
    flat = np.asarray(x).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return _num(flat[0])
    return [_num(v) for v in flat]


def _num(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return v


def space_from_dict(data: Mapping[str, Any]) -> spaces.Space:
    """Inverse of :func:`space_to_dict`."""
    kind = data["type"]
    if kind == "Dict":
        return spaces.Dict({k: space_from_dict(v) for k, v in data["spaces"].items()})
    if kind == "Box":
        shape = tuple(data["shape"])
        dtype = np.dtype(data["dtype"])

        low = np.array([float(v) for v in np.atleast_1d(_unjson(data["low"]))])
        high = np.array([float(v) for v in np.atleast_1d(_unjson(data["high"]))])
        low = np.broadcast_to(low, shape) if low.size == 1 else low.reshape(shape)
        high = np.broadcast_to(high, shape) if high.size == 1 else high.reshape(shape)
        return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=data.get("dtype", "int64"))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    raise ValueError(f"unknown space type {kind!r} in checkpoint")


def _unjson(v: Any) -> Any:
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    if v == "inf":
        return np.inf
    if v == "-inf":
        return -np.inf
    return v


# --------------------------------------------------------------------------- trainer state


@dataclass
class TrainerState:
    """What a trainer needs beyond the weights to continue exactly: tensors (optimizer
    moments, RNG states, last observations, recurrent state ...) and JSON-able metadata
    (counters, numpy/python RNG states, env snapshots' scalars)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split nested data into JSON and tensors: every numpy array / tensor inside ``obj``
    goes into ``tensors`` under ``prefix/...`` and is replaced by a reference. Tuples become
    lists (JSON has no tuples)."""
    if torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        key = prefix
        # np.array(order=C) keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
        t = torch.as_tensor(np.array(obj, order="C")) if isinstance(obj, np.ndarray) else obj
        tensors[key] = t.detach().cpu().contiguous()
        return {"__tensor__": key, "numpy": isinstance(obj, np.ndarray)}
    if isinstance(obj, dict):
        return {str(k): pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def unpack(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack` (arrays come back as numpy, tensors as tensors)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            t = tensors[obj["__tensor__"]]
            return t.numpy() if obj.get("numpy") else t
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj


def optimizer_to_state(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> TrainerState:
    """An optimizer's ``state_dict`` split into tensors and JSON (safetensors holds no
    nested structure)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        entry: dict[str, Any] = {}
        for name, value in pstate.items():
            if torch.is_tensor(value):
                key = f"{prefix}/{pid}/{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[name] = {"tensor": key}
            else:
                entry[name] = value
        meta_state[str(pid)] = entry
    return TrainerState(
        tensors, {prefix: {"state": meta_state, "param_groups": sd["param_groups"]}}
    )


def optimizer_from_state(
    optimizer: torch.optim.Optimizer, state: TrainerState, prefix: str = "optim"
) -> None:
    meta = state.meta[prefix]
    restored: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        restored[int(pid)] = {
            name: state.tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in entry.items()
        }
    optimizer.load_state_dict({"state": restored, "param_groups": meta["param_groups"]})
    _match_param_strides(optimizer)


def _match_param_strides(optimizer: torch.optim.Optimizer) -> None:
    """Give per-parameter state tensors (Adam's moments) their parameter's strides back.

    An optimizer makes them with ``zeros_like(param)`` (the same strides, e.g. (1, 48) for a
    transposed weight); safetensors stores them contiguous. Measured: with fused Adam a
    resumed run's first step then differed from the uninterrupted run's on exactly the
    transposed weights (the step takes another kernel path when the strides of the
    parameter, its gradient and its moments disagree), so ``--resume`` was not exact.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            pstate = optimizer.state.get(param, {})
            for name, value in pstate.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    strided = torch.empty_strided(
                        param.shape, param.stride(), dtype=value.dtype, device=value.device
                    )
                    pstate[name] = strided.copy_(value)


# --------------------------------------------------------------------------- save / load


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def save_checkpoint(
    directory: str | os.PathLike,
    agent: MindloopAgent,
    config: TrainConfig,
    *,
    step: int = 0,
    trainer: TrainerState | None = None,
    keep: int | None = 3,
    extra_meta: Mapping[str, Any] | None = None,
    name: str | None = None,
    point_latest: bool = True,
) -> Path:
    """Write a checkpoint ``<directory>/step_<step>`` atomically and point ``latest`` at it.

    Args:
        directory: the checkpoints folder (``<run>/checkpoints``); created if missing.
        agent: the agent whose weights (parameters and buffers) are saved.
        config: the run's config (rebuilds the agent; checks a resume).
        step: env steps so far (names the checkpoint).
        trainer: optimizer/RNG/env state for an exact ``--resume`` (None: weights only).
        keep: keep this many newest checkpoints (None: all); ``latest`` is never deleted.
        extra_meta: JSON-able facts stored in config.json (e.g. evaluation results).
        name: the checkpoint's directory name instead of ``step_<step>`` (e.g. ``best``: an
            existing one is replaced atomically; only ``step_*`` checkpoints are pruned).
        point_latest: switch ``latest`` to it (False for a side copy such as ``best``).

    Returns: the path of the new checkpoint.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    _recover(root)
    name = name or f"step_{step:012d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a checkpoint is not
    try:
        _write_checkpoint_files(tmp, agent, config, step, trainer, extra_meta)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same name (the final save, best): replace it
            old = root / f"{OLD_PREFIX}{name}"
            os.replace(final, old)  # from here until the next rename, old is the checkpoint
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if point_latest:
        _point_latest(root, name)
    _fsync_dir(root)
    if keep is not None:
        _prune(root, keep, protect=name)
    return final


def _write_checkpoint_files(
    path: Path,
    agent: MindloopAgent,
    config: TrainConfig,
    step: int,
    trainer: TrainerState | None,
    extra_meta: Mapping[str, Any] | None,
) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "config": config_to_dict(config),
        "observation_space": space_to_dict(agent.observation_space),
        "action_space": space_to_dict(agent.action_space),
        **(dict(extra_meta) if extra_meta else {}),
    }
    _write_tensors(path / "model.safetensors", agent.state_dict())
    if trainer is not None:
        _write_tensors(path / "trainer.safetensors", trainer.tensors)
        _write_json(path / "trainer.json", trainer.meta)
    # config.json last: a directory with config.json was written completely.
    _write_json(path / "config.json", meta)


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors file on disk (fsynced) and readable like the JSON files beside it."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    os.chmod(path, 0o666 & ~_umask())  # safetensors writes through a private (0600) temp file
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _recover(root: Path) -> None:
    """Tidy what a killed save left in ``root``: unfinished ``.tmp-*`` directories go; an
    ``.old-<name>`` copy is moved back where ``<name>`` is missing, else removed."""
    for stray in root.glob(".tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)
    for old in root.glob(f"{OLD_PREFIX}*"):
        final = root / old.name[len(OLD_PREFIX) :]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _point_latest(root: Path, name: str) -> None:
    """Switch ``root/latest`` to ``name`` atomically (a symlink renamed over the old one;
    where symlinks are not allowed, a text file holding the name)."""
    tmp = root / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except OSError:
        tmp.write_text(name)
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int, protect: str) -> None:
    names = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    for old in names[:-keep] if keep > 0 else names:
        if old != protect:
            shutil.rmtree(root / old, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint itself, a ``latest`` link or
    file, a checkpoints folder, or a run directory (its latest checkpoint)."""
    p = Path(path)
    for candidate in (p, p / LATEST, p / CHECKPOINTS / LATEST):
        if candidate.is_file() and candidate.name == LATEST:  # pointer file fallback
            candidate = candidate.parent / candidate.read_text().strip()
        elif candidate.is_symlink() and not candidate.exists():  # latest -> a name mid-re-save
            candidate = candidate.parent / os.readlink(candidate)
        if not candidate.exists():  # a re-save was killed between its two renames
            candidate = candidate.parent / f"{OLD_PREFIX}{candidate.name}"
        if _is_checkpoint(candidate):
            return candidate.resolve()
    complete = [d for root in (p, p / CHECKPOINTS) for d in sorted(root.glob("step_*"))]
    complete = [d for d in complete if _is_checkpoint(d)]
    if complete:  # latest lost or pointing at a deleted step: say which ones are there
        raise ValueError(
            f"no checkpoint at {str(p)!r}: its {LATEST} is missing or names a checkpoint that "
            f"is gone; the newest complete one is {str(complete[-1])!r} (use that path)"
        )
    raise ValueError(
        f"no checkpoint at {str(p)!r}: expected a directory with config.json and "
        "model.safetensors, or a run directory with checkpoints/latest"
    )


def _is_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def _corrupt(path: Path, why: object) -> ValueError:
    return ValueError(
        f"{path} is corrupt ({why}); copy the checkpoint again, or use an older one "
        f"({path.parent.parent}/step_*)"
    )


def _read_json_object(path: Path, fix: str | None = None) -> dict[str, Any]:
    """The JSON object in ``path``; anything else is a one-line error naming the file and
    ``fix`` (default: a checkpoint file's)."""
    try:
        with open(path) as f:
            data = json.load(f)
        why = None if isinstance(data, dict) else "not a JSON object"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        why = err
    if why is None:
        return data
    if fix is None:
        raise _corrupt(path, why)
    raise ValueError(f"{path} is corrupt ({why}); {fix}")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file on the CPU; a corrupt one is a one-line error naming it
    (a truncated copy fails in the header)."""
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise _corrupt(path, err) from None


def unstarted_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory stopped before its first checkpoint (its
    config.json written, no checkpoints folder yet): ``--resume`` starts it again from its
    beginning, with that config."""
    p = Path(path)
    return (
        (p / "config.json").is_file()
        and not (p / CHECKPOINTS).exists()
        and not (p / "model.safetensors").exists()  # a checkpoint directory itself
    )


def checkpoint_to_resume(path: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume path`` continues from: None for a run directory stopped
    before its first checkpoint (it starts again there); a checkpoint outside a run's
    ``checkpoints/`` folder is a one-line error, since the run a resume writes to is the
    checkpoint's grandparent: for a checkpoint copied out of its run, an unrelated folder
    whose eval.json and video.mp4 would be overwritten."""
    if unstarted_run(path):
        return None
    checkpoint = resolve_checkpoint(path)
    resume_run_dir(path, checkpoint)
    return checkpoint


def resume_run_dir(path: str | os.PathLike, checkpoint: Path | None = None) -> Path:
    """The run directory ``--resume path`` writes to: ``path`` itself, or the run above it
    when ``path`` is its ``checkpoints/`` folder, a checkpoint in it or its ``latest``.
    Read from the path as given, not the resolved checkpoint, so a ``checkpoints/`` that is
    a symlink (to scratch storage) still belongs to its run."""
    p = Path(path)
    checkpoint = checkpoint or resolve_checkpoint(path)
    for run in (p, p.parent, p.parent.parent):
        folder = run / CHECKPOINTS
        if folder.is_dir() and checkpoint.is_relative_to(folder.resolve()):
            return run
    raise ValueError(
        f"--resume {path}: {checkpoint} is not in a run's {CHECKPOINTS}/ folder, so there is "
        "no run to continue; resume the run directory it came from"
    )


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config (as a dict) that ``--resume path`` continues: that of the latest checkpoint,
    or of the run directory's config.json for a run stopped before its first checkpoint."""
    if unstarted_run(path):
        return _read_json_object(
            Path(path) / "config.json",
            "the run has no checkpoint to fall back on: start it again with a new --run.dir",
        )
    return read_checkpoint_meta(path)["config"]


def saved_config(file: Path, data: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a saved config.json's ``data``; a value the config does
    not accept (edited by hand, or allowed by an older mindloop's checks) is a one-line error
    naming the file."""
    try:
        return config_from_dict(TrainConfig, data)
    except ValueError as err:
        raise ValueError(f"{file}: {err}; edit that value in the file") from None


def saved_run_config(path: str | os.PathLike) -> TrainConfig:
    """:func:`read_run_config` as a :class:`TrainConfig` (errors name the file read)."""
    folder = Path(path) if unstarted_run(path) else resolve_checkpoint(path)
    return saved_config(folder / "config.json", read_run_config(path))


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of the checkpoint at ``path`` (a format newer than this
    mindloop reads is a one-line error: for loading, evaluating and resuming alike)."""
    ckpt = resolve_checkpoint(path)
    meta = _read_json_object(ckpt / "config.json")
    if not isinstance(meta.get("config"), dict):
        raise _corrupt(ckpt / "config.json", "no config object in it")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _corrupt(ckpt / "config.json", f"format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(ckpt)!r} has format {version}; this mindloop reads up to "
            f"{FORMAT_VERSION} (upgrade mindloop)"
        )
    return meta


def load_agent(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[MindloopAgent, TrainConfig]:
    """Rebuild the agent saved at ``path`` (see :func:`resolve_checkpoint`) and its config.

    Needs nothing but the directory: the spaces and every config field are in config.json.
    The agent is returned in eval mode on ``device``.
    """
    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    config = saved_config(ckpt / "config.json", meta["config"])
    agent = MindloopAgent(
        space_from_dict(meta["observation_space"]),
        space_from_dict(meta["action_space"]),
        config.agent,
    )
    load_weights(agent, ckpt)
    return agent.to(device).eval(), config


def load_weights(module: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load ``<checkpoint>/model.safetensors`` into ``module`` (strict), with a one-line error
    when the weights do not fit the module (``load_agent`` and ``train.py --resume``)."""
    path = Path(checkpoint) / "model.safetensors"
    state = load_tensors(path)
    _check_weights_fit(path, state, module.state_dict())
    module.load_state_dict(state, strict=True)


def _check_weights_fit(
    path: Path, saved: Mapping[str, torch.Tensor], built: Mapping[str, torch.Tensor]
) -> None:
    """A one-line error naming the first differences where the saved weights do not fit the
    agent that config.json builds (instead of load_state_dict's one line per tensor)."""
    missing = [k for k in built if k not in saved]
    unexpected = [k for k in saved if k not in built]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in built.items()
        if k in saved and saved[k].shape != v.shape
    ]
    found = [("missing", missing), ("unexpected", unexpected), ("shape saved vs built", shapes)]
    parts = [f"{what}: {_first_few(names)}" for what, names in found if names]
    if parts:
        raise ValueError(
            f"{path} does not fit the agent its config.json builds ({'; '.join(parts)}); "
            "was config.json edited, or the checkpoint written by another mindloop version?"
        )


def _first_few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def best_evaluation(root: str | os.PathLike) -> dict[str, Any] | None:
    """The evaluation record of ``<root>/best`` (``success_rate``, ``episode_return``,
    ``episodes``), or None when there is no best copy yet."""
    path = Path(root) / BEST
    if not path.exists():  # a re-save of best was killed between its renames
        path = Path(root) / f"{OLD_PREFIX}{BEST}"
    if not (path / "config.json").is_file():
        return None
    return read_checkpoint_meta(path)["eval"]


def evaluation_record(success_rate: float, episode_return: float, episodes: int) -> dict[str, Any]:
    """What a ``best`` checkpoint stores about the evaluation that put it there."""
    return {
        "success_rate": float(success_rate),
        "episode_return": float(episode_return),
        "episodes": int(episodes),
    }


def beats_best(root: str | os.PathLike, success_rate: float, episode_return: float) -> bool:
    """Whether an evaluation beats ``<root>/best``'s: success rate first, then return (what
    SB3's ``EvalCallback`` compares by mean reward alone); True when there is no best yet."""
    prev = best_evaluation(root)
    if prev is None:
        return True
    return (float(success_rate), float(episode_return)) > (
        prev["success_rate"],
        prev["episode_return"],
    )


def load_trainer_state(path: str | os.PathLike) -> TrainerState:
    """The trainer state saved with the checkpoint at ``path`` (for ``--resume``)."""
    ckpt = resolve_checkpoint(path)
    if not (ckpt / "trainer.safetensors").is_file():
        raise ValueError(
            f"checkpoint {str(ckpt)!r} holds weights only (no trainer state); it can be "
            "evaluated or fine-tuned but not resumed"
        )
    tensors = load_tensors(ckpt / "trainer.safetensors")
    return TrainerState(tensors, _read_json_object(ckpt / "trainer.json"))


__all__ = [
    "BEST",
    "TrainerState",
    "beats_best",
    "best_evaluation",
    "checkpoint_root",
    "evaluation_record",
    "load_agent",
    "load_tensors",
    "load_trainer_state",
    "load_weights",
    "optimizer_from_state",
    "optimizer_to_state",
    "pack",
    "read_checkpoint_meta",
    "read_run_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "space_from_dict",
    "space_to_dict",
    "unpack",
    "unstarted_run",
]
