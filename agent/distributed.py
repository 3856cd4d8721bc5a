"""torchrun / DistributedDataParallel, the standard way (no home-made distributed layer).

``torchrun --nproc_per_node N train.py ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and a rendezvous in the environment; :func:`init_distributed` joins the
process group (``gloo`` on CPU, ``nccl`` on GPU, one GPU per local rank). Each rank runs its
own vector envs with its own seeds; the agent is wrapped in ``DistributedDataParallel``,
which broadcasts rank 0's weights at construction and averages gradients in every backward,
so the ranks keep identical weights. Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from agent.config import check_device_name


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def launch_world_size() -> int:
    """Processes torchrun launched (1 when not launched by torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def resolve_device(device: str, option: str = "run.device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device; a
    one-line ``ValueError`` naming ``option`` (the flag the user set) for an unknown name, for
    CUDA on a machine without it, or for a GPU index it does not have. Shared by train.py and
    eval.py so both say the same."""
    check_device_name(option, device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option} is {device} but no CUDA device is available; use cpu or auto"
            )
        count = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= count:
            raise ValueError(
                f"{option} is {device} but this machine has {count} CUDA device(s): "
                f"cuda:0..cuda:{count - 1}"
            )
        return torch.device(device)
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if launched by torchrun; pick this rank's device.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (one process
    only: under torchrun each rank takes ``cuda:LOCAL_RANK``).
    """
    resolved = resolve_device(device)
    if not launched_by_torchrun():
        return DistInfo(), resolved
    if ":" in device:
        raise ValueError(
            f"run.device is {device}, but under torchrun each rank takes cuda:LOCAL_RANK; "
            "use --run.device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    use_cuda = resolved.type == "cuda"
    rank, world = launch_rank(), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local), dev


def wrap_model(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` under torchrun, else ``module`` itself.

    Trainers add :func:`touch_all_parameters` to every loss, so every parameter gets a
    gradient in every backward (a minibatch where no env thinks leaves the think input
    unused); DDP can then run without ``find_unused_parameters`` and losses may use parts of
    the module outside its ``forward`` (behaviour cloning evaluates the action heads on the
    ponder states). Running-norm buffers are synchronised explicitly (:func:`all_gather_cat`),
    so DDP does not broadcast buffers before each forward (it does once at wrapping, where
    every rank holds the same seeded or resumed values anyway; ``broadcast_buffers`` is
    deprecated).
    """
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=False, forward_sync_buffers=False
    )


def touch_all_parameters(module: nn.Module) -> torch.Tensor:
    """A zero that depends on every trainable parameter of ``module`` (add it to a loss so
    that each one gets a gradient, possibly zero, in every backward)."""
    return sum((p.reshape(-1)[:1] * 0.0).sum() for p in module.parameters() if p.requires_grad)


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of a float over ranks (identity on one process)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / info.world_size


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order; dim 0 may differ by rank,
    the other dims must agree)."""
    if not info.enabled:
        return x
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]]))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n.item())] for p, n in zip(parts, sizes, strict=True)])


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` on one process.

    Used for per-rank env snapshots in checkpoints (in memory only; what is written to disk
    is safetensors + JSON)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter_object(objs: list[Any] | None, info: DistInfo) -> Any:
    """Rank r receives ``objs[r]`` from rank 0 (``objs[0]`` on one process)."""
    if not info.enabled:
        assert objs is not None
        return objs[0]
    out: list[Any] = [None]
    dist.scatter_object_list(out, objs if info.is_main else None, src=0)
    return out[0]


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistInfo",
    "all_gather_cat",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "init_distributed",
    "launched_by_torchrun",
    "scatter_object",
    "shutdown",
    "touch_all_parameters",
    "wrap_model",
]
