"""Per-frame latency and state memory: recurrent core vs causal transformer with a KV cache.

Seed 000: a recurrent core pays O(1) per frame however long the episode; a transformer that
attends to its history pays O(history). This measures one core step (one frame) of the GRU
core and the transformer core of the same width and (as near as the architecture allows) the
same parameter count, at batch 1 and batch 64, after 64, 256, 1,024 and 4,096 frames of
history, plus the per-env state memory each needs.

Fairness notes:
- The transformer gets its fastest inference path: a static KV cache written in place
  (``CoreConfig.inplace_kv``), scaled-dot-product attention, a context window equal to the
  history (so it attends to every past frame, as a transformer baseline would), one block
  with the MLP ratio that matches the GRU's parameter count. Its functional-cache path (what
  training uses) is reported too.
- Both cores get the same small-batch treatment (``agent/cores.py``): fused or functional
  ATen ops on the parameters instead of nested module calls, weights stored input-major
  (the GEMM layout MKL prefers for a few rows), no copies that one layer/one position does
  not need. Both run under ``torch.inference_mode``.
- The history is put in the cache directly (random keys/values, position = history): the
  step's cost does not depend on the cached values, and stepping 4,096 frames to fill it
  would only make the run longer.
- ``torch.set_num_threads(1)`` (``--threads``): the machine is shared; one thread makes both
  contenders compete for the same resources. Times are the CPU time of that thread per step
  (``time.thread_time``), so waiting for a busy core is not counted; wall-clock speedups are
  printed beside them. Medians over repeats, contenders interleaved.

    python benchmarks/core_latency.py --quick
    nice -n 5 python benchmarks/core_latency.py

Writes ``benchmarks/out/core_latency.json``; last line
``headline: rnn_vs_transformer_at_1024=<speedup> (target >=10)``: the smaller of the batch 1
and batch 64 CPU-time speedups at 1,024 frames, at the default core width (128).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from agent.cores import CoreConfig, build_core, count_parameters
from agent.state import State, state_nbytes

OUT = Path(__file__).parent / "out"


@dataclass
class Args:
    """Core latency benchmark settings (defaults: the full run)."""

    quick: bool = False
    """Fewer histories and repeats (under a minute)."""
    widths: tuple[int, ...] = (128, 256)
    """Hidden widths of both cores (and the input size)."""
    headline_width: int = 128
    """Width of the headline (the default ``CoreConfig.hidden_dim``)."""
    histories: tuple[int, ...] = (64, 256, 1024, 4096)
    batches: tuple[int, ...] = (1, 64)
    steps: int = 50
    """Steps timed per repeat."""
    repeats: int = 5
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("widths", "histories", "batches"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1 each, got {getattr(self, name)}")
        if self.quick:
            self.histories = tuple(h for h in self.histories if h in (64, 1024)) or (1024,)
            self.widths = (self.headline_width,)
            self.steps, self.repeats = 20, 3
        if self.headline_width not in self.widths:
            raise ValueError(
                f"headline_width {self.headline_width} must be one of widths {self.widths}"
            )
        if 1024 not in self.histories:
            raise ValueError(f"histories must include 1024 for the headline, got {self.histories}")


def matched_mlp_ratio(width: int, target_params: int) -> float:
    """The transformer MLP ratio whose parameter count is closest to ``target_params``."""
    best, best_gap = 1.0, float("inf")
    for ratio in [r / 32 for r in range(1, 257)]:
        core = build_core(CoreConfig(name="transformer", hidden_dim=width, mlp_ratio=ratio), width)
        gap = abs(count_parameters(core) - target_params)
        if gap < best_gap:
            best, best_gap = ratio, gap
    return best


def filled_transformer_state(core, batch: int, history: int, gen: torch.Generator) -> State:
    """A state whose cache holds ``history`` frames (random keys/values)."""
    state = core.initial_state(batch)
    for key in state:
        if key != "core/pos":  # core/k{i}, core/v{i}: (B, max_context, D)
            state[key] = torch.randn(state[key].shape, generator=gen)
    state["core/pos"] = torch.full((batch,), history, dtype=torch.long)
    return state


@torch.inference_mode()
def time_steps(core, state: State, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per step (frame), stepping ``core`` from ``state``.

    CPU time of this thread (``time.thread_time``) is what the step costs; on a shared
    machine the wall time also counts the time spent waiting for a core.
    """
    for _ in range(3):  # warm-up
        _, state = core.step(x, state)
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(steps):
        _, state = core.step(x, state)
    return (time.thread_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def measure_width(W: int, args: Args, gen: torch.Generator) -> dict:
    """All histories and batches for cores of width ``W``: rows, parameter counts, MLP ratio."""
    gru = build_core(CoreConfig(name="gru", hidden_dim=W), W).eval()
    ratio = matched_mlp_ratio(W, count_parameters(gru))
    params = {"gru": count_parameters(gru)}
    print(f"width {W}: GRU params {params['gru']:,}", flush=True)
    rows = []
    for history in args.histories:
        tf_cfg = dict(
            name="transformer", hidden_dim=W, num_heads=4, mlp_ratio=ratio, max_context=history
        )
        tf_fast = build_core(CoreConfig(**tf_cfg, inplace_kv=True), W).eval()
        tf_func = build_core(CoreConfig(**tf_cfg), W).eval()
        tf_func.load_state_dict(tf_fast.state_dict())
        params["transformer"] = count_parameters(tf_fast)
        for batch in args.batches:
            x = torch.randn(batch, W, generator=gen)
            times = {"gru": [], "transformer": [], "transformer_functional": []}
            for _ in range(args.repeats):  # interleaved, so load spikes hit all contenders
                times["gru"].append(time_steps(gru, gru.initial_state(batch), x, args.steps))
                state = filled_transformer_state(tf_fast, batch, history, gen)
                times["transformer"].append(time_steps(tf_fast, state, x, args.steps))
                state = filled_transformer_state(tf_func, batch, history, gen)
                steps = max(5, args.steps // 5)  # the functional path copies the cache: slower
                times["transformer_functional"].append(time_steps(tf_func, state, x, steps))
            cpu = {k: statistics.median(c for c, _ in v) for k, v in times.items()}
            wall = {k: statistics.median(w for _, w in v) for k, v in times.items()}
            rows.append(
                {
                    "width": W,
                    "history": history,
                    "batch": batch,
                    "gru_us": cpu["gru"] * 1e6,
                    "transformer_us": cpu["transformer"] * 1e6,
                    "transformer_functional_us": cpu["transformer_functional"] * 1e6,
                    "speedup": cpu["transformer"] / cpu["gru"],
                    "gru_wall_us": wall["gru"] * 1e6,
                    "transformer_wall_us": wall["transformer"] * 1e6,
                    "speedup_wall": wall["transformer"] / wall["gru"],
                    "gru_state_bytes": state_nbytes(gru.initial_state(1)),
                    "transformer_state_bytes": state_nbytes(tf_fast.initial_state(1)),
                }
            )
            r = rows[-1]
            print(
                f"  history {history:5d} batch {batch:3d}: gru {r['gru_us']:9.1f} us  "
                f"transformer {r['transformer_us']:9.1f} us  speedup {r['speedup']:6.1f}x",
                flush=True,
            )
    return {"rows": rows, "params": params, "mlp_ratio": ratio}


def print_table(W: int, result: dict, batches: tuple[int, ...]) -> None:
    params, rows = result["params"], result["rows"]
    print(
        f"\nwidth {W}: parameters GRU {params['gru']:,}, transformer {params['transformer']:,} "
        f"(1 block, 4 heads, mlp_ratio {result['mlp_ratio']:g}); CPU us per frame (median)"
    )
    header = (
        f"{'history':>7} {'batch':>5} | {'GRU':>9} {'TF':>10} {'TF functional':>13} | "
        f"{'speedup':>8} {'wall':>7} | {'GRU state B':>11} {'TF state B':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['history']:>7} {r['batch']:>5} | {r['gru_us']:9.1f} {r['transformer_us']:10.1f} "
            f"{r['transformer_functional_us']:13.1f} | {r['speedup']:7.1f}x "
            f"{r['speedup_wall']:6.1f}x | {r['gru_state_bytes']:>11,} "
            f"{r['transformer_state_bytes']:>11,}"
        )
    for batch in batches:
        gru_times = [r["gru_us"] for r in rows if r["batch"] == batch]
        print(
            f"GRU flatness at batch {batch}: slowest/fastest over histories = "
            f"{max(gru_times) / min(gru_times):.2f} (the GRU step does not see the history)"
        )


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"core latency: widths {args.widths}, threads {args.threads}")
    results = {W: measure_width(W, args, gen) for W in args.widths}
    for W, result in results.items():
        print_table(W, result, args.batches)
    head = results[args.headline_width]["rows"]
    at_1024 = min(r["speedup"] for r in head if r["history"] == 1024)
    by_batch = ", ".join(
        f"batch {r['batch']}: {r['speedup']:.1f}x" for r in head if r["history"] == 1024
    )
    print(f"\nat 1,024 frames, width {args.headline_width}: {by_batch} (headline: the smaller)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "core_latency.json").write_text(
        json.dumps({"args": asdict(args), "results": results}, indent=1)
    )
    print(f"headline: rnn_vs_transformer_at_1024={at_1024:.1f} (target >=10)")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
