"""Encoder throughput vs the default env's step rate, measured side by side in one run.

Frames per second of every registered image and audio encoder (each timm backbone in the
list below counts as one) at batch 1 and batch 64, on CPU with one torch thread (the env
steps on one core, so one thread is the fair match; set --threads to change it), and of the
default fused encoder (every observation key of the env, default encoders) at batch 1,
batch N (= --num-envs, a vector env's batch) and 64.

The headline compares the fused encoder's *per-frame* rate at batch N with the env's
single-env step rate: in a rollout over N vector envs one encoder call encodes the N frames
that N env steps produced, so that ratio is what decides whether encoding keeps up with the
envs. The batch-1 ratio (one env, one frame per call: latency-bound) is reported beside it.

    python benchmarks/encoder_throughput.py --quick      # < 1 minute
    nice -n 5 python benchmarks/encoder_throughput.py    # the full run in RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

import gymnasium as gym
import numpy as np
import torch

from encoders import ENCODERS, build_encoder, build_fused_encoder, obs_to_tensors

ENV_ID = "mindloop/MuscleReach-v0"
TIMM_FULL = ("mobilenetv3_small_050", "resnet10t", "regnetx_002", "efficientnet_b0", "resnet18")
TIMM_QUICK = ("mobilenetv3_small_050", "resnet10t")
OUT = Path(__file__).resolve().parent / "out" / "encoder_throughput.json"


def timed_chunk(step: Callable[[], Any], items_per_call: int, seconds: float) -> float:
    """Items per second of ``step`` over one chunk of about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            return n * items_per_call / dt


def interleaved_best_rates(
    contenders: dict[str, tuple[Callable[[], Any], int]], budget_s: float, rounds: int = 3
) -> dict[str, float]:
    """Best items/s of each contender over ``rounds`` rounds that run every contender once.

    Interleaving puts the contenders under the same machine load (this machine is shared);
    taking the best chunk drops the slowdowns that noise causes, which only ever slow a run.
    """
    for step, _ in contenders.values():  # warm-up
        step()
        step()
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, (step, items) in contenders.items():
            best[name] = max(best[name], timed_chunk(step, items, budget_s / rounds))
    return best


def env_stepper(env: gym.Env) -> tuple[Callable[[], None], list[dict[str, np.ndarray]]]:
    """A function doing one env step under random actions (resetting at episode ends), and
    the list of the first 64 frames it saw (real observations for the encoders)."""
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    frames: list[dict[str, np.ndarray]] = [obs]

    def step() -> None:
        nonlocal obs
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
        if len(frames) < 64:
            frames.append(obs)

    for _ in range(64):
        step()
    return step, frames


def batch_of(frames: list[dict[str, np.ndarray]], key: str | None, batch: int) -> Any:
    """A batch of real observations (cycled if fewer were collected): a tensor for one key,
    a dict of tensors for all keys."""
    picked = [frames[i % len(frames)] for i in range(batch)]
    if key is None:
        return obs_to_tensors({k: np.stack([f[k] for f in picked]) for k in picked[0]})
    return torch.as_tensor(np.stack([f[key] for f in picked]))


def inference_step(module: torch.nn.Module, x: Any) -> Callable[[], Any]:
    module.eval()

    def step() -> Any:
        with torch.inference_mode():
            return module(x)

    return step


def encoder_cases(space: gym.spaces.Dict, quick: bool) -> list[tuple[str, str, str, gym.Space]]:
    """(label, registry name, observation key, space) for every image and audio encoder."""
    cases = []
    for name in ENCODERS.names():
        modality = ENCODERS.get(name).modality
        if modality not in ("image", "audio"):
            continue
        key_space = space.spaces.get(modality)
        if key_space is None:  # the env lacks this sense: use the encoder's own example space
            key_space = ENCODERS.get(name).example_space()
        if name == "timm":
            for backbone in TIMM_QUICK if quick else TIMM_FULL:
                cases.append((f"timm/{backbone}", f"timm/{backbone}", modality, key_space))
        else:
            cases.append((name, name, modality, key_space))
    return cases


def synthetic_frames(space: gym.spaces.Dict, n: int = 64) -> list[dict[str, np.ndarray]]:
    space.seed(0)
    return [space.sample() for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings (under a minute)")
    parser.add_argument("--num-envs", type=int, default=8, help="vector-env batch for the headline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the encoders")
    parser.add_argument("--env-id", default=ENV_ID, help="the env whose step rate is compared")
    args = parser.parse_args()
    for name in ("num_envs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    budget = 0.6 if args.quick else 3.0

    import envs  # noqa: F401  (registers the mindloop/ ids)

    if args.env_id not in gym.registry:
        raise SystemExit(f"env {args.env_id!r} is not registered; pass --env-id to pick another")
    env = gym.make(args.env_id)
    space = env.observation_space
    env_step, frames = env_stepper(env)

    # Every image/audio encoder, batch 1 and 64, each timed beside the env.
    rows: list[dict[str, Any]] = []
    for label, name, key, key_space in encoder_cases(space, args.quick):
        torch.manual_seed(0)
        enc = build_encoder(name, key_space)
        data = (
            frames if key in space.spaces else synthetic_frames(gym.spaces.Dict({key: key_space}))
        )
        contenders = {"env": (env_step, 1)}
        for batch in (1, 64):
            contenders[batch] = (inference_step(enc, batch_of(data, key, batch)), batch)
        rates = interleaved_best_rates(contenders, budget)
        for batch in (1, 64):
            rows.append(
                {
                    "encoder": label,
                    "key": key,
                    "shape": list(key_space.shape),
                    "batch": batch,
                    "frames_per_s": rates[batch],
                    "env_steps_per_s": rates["env"],
                }
            )

    # The headline: the default fused encoder against the env, interleaved in rounds.
    torch.manual_seed(0)
    fused = build_fused_encoder(space)
    batches = sorted({1, args.num_envs, 64})
    contenders = {"env": (env_step, 1)}
    for batch in batches:
        contenders[batch] = (inference_step(fused, batch_of(frames, None, batch)), batch)
    rates = interleaved_best_rates(contenders, 3 * budget, rounds=5)
    env.close()
    env_rate = rates["env"]
    fused_rows = [{"batch": b, "frames_per_s": rates[b]} for b in batches]

    # --- report ---------------------------------------------------------------------------
    print(
        f"env {args.env_id}: {env_rate:,.0f} steps/s (one env, random actions); torch threads "
        f"{args.threads}; keys {', '.join(space.spaces)}; 'x env' = frames/s over the env "
        f"steps/s measured in the same interleaved rounds"
    )
    print(f"{'encoder':32s} {'key':6s} {'input':14s} {'batch':>5s} {'frames/s':>10s} {'x env':>7s}")
    for r in rows:
        print(
            f"{r['encoder']:32s} {r['key']:6s} {tuple(r['shape'])!s:14s} {r['batch']:5d} "
            f"{r['frames_per_s']:10,.0f} {r['frames_per_s'] / r['env_steps_per_s']:7.2f}"
        )
    for r in fused_rows:
        print(
            f"{'fused (default, all keys)':32s} {'all':6s} {'':14s} {r['batch']:5d} "
            f"{r['frames_per_s']:10,.0f} {r['frames_per_s'] / env_rate:7.2f}"
        )
    by_batch = {r["batch"]: r["frames_per_s"] for r in fused_rows}
    ratio = by_batch[args.num_envs] / env_rate
    ratio_b1 = by_batch[1] / env_rate
    print(
        f"fused encoder vs env, per frame: batch {args.num_envs} (vector envs) {ratio:.2f}x, "
        f"batch 1 (latency) {ratio_b1:.2f}x"
    )

    OUT.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "env_id": args.env_id,
        "env_steps_per_s": env_rate,
        "torch_threads": args.threads,
        "quick": args.quick,
        "num_envs": args.num_envs,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "encoders": rows,
        "fused": fused_rows,
        "fused_config": fused.config.to_dict(),
        "encode_vs_env": ratio,
        "encode_vs_env_batch1": ratio_b1,
    }
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")
    print(f"headline: encode_vs_env={ratio:.2f} (target >=1)")


if __name__ == "__main__":
    main()
