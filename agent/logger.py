"""Run logging: TensorBoard scalars under stable names, a progress bar, and console lines.

Metric names follow CleanRL/SB3 practice and stay stable across versions:

- ``charts/``: what the agent achieves and what it costs (success_rate, episode_return,
  episode_length, think_steps, memory_calls, fps, learning_rate, ...);
- ``losses/``: the optimizer's view (policy_loss, value_loss, entropy, approx_kl,
  clipfrac, explained_variance, bc_imitation, ...);
- ``eval/``: periodic and final evaluation with the deterministic policy.

The config is logged once at the start as TensorBoard text. Only rank 0 of a distributed
run logs (the other ranks get a :class:`RunLogger` with ``enabled=False``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RunLogger:
    """TensorBoard writer + tqdm progress bar over env steps.

    Args:
        run_dir: TensorBoard events go to ``run_dir/tb``.
        total_steps: the progress bar's total (env steps).
        tensorboard: write TensorBoard events.
        progress: show a progress bar (stderr); otherwise print a line per :meth:`log`.
        enabled: False on non-zero ranks: every method is a no-op.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        *,
        tensorboard: bool = True,
        progress: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.line_every = 10.0
        self._last_line = -float("inf")
        self._unprinted: str | None = None
        """Without a bar: the newest progress line not printed yet (printed at the end)."""
        self.writer = None
        self.bar = None
        self.t0 = time.perf_counter()
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr, smoothing=0.1
            )

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The config once, as TensorBoard text (a Markdown code block)."""
        if self.writer is not None:
            text = json.dumps(config, indent=2)
            self.writer.add_text("config", f"```\n{text}\n```", 0)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """``prefix/name`` scalars at env step ``step`` (NaN/None values skipped)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is None or value != value:  # NaN
                continue
            self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def progress(self, step: int, postfix: Mapping[str, float | str], force: bool = False) -> None:
        """Move the bar to ``step`` with a short postfix (fps, success, think steps); without
        a bar, print it as a line (at most every ``line_every`` seconds unless ``force``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = min(step, self.bar.total)
            self.bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=True)
        else:
            text = " ".join(f"{k}={_short(v)}" for k, v in postfix.items())
            self._unprinted = f"[{time.perf_counter() - self.t0:7.1f}s] step {step}: {text}"
            if force or time.perf_counter() - self._last_line >= self.line_every:
                self._last_line = time.perf_counter()
                self._print_unprinted()

    def _print_unprinted(self) -> None:
        if self._unprinted is not None:
            print(self._unprinted, flush=True)
            self._unprinted = None

    def set_total(self, total_steps: int) -> None:
        """Correct the bar's total (env steps) once the rest of the run is known."""
        if self.bar is not None:
            self.bar.total = max(int(total_steps), self.bar.n, 1)
            self.bar.refresh()

    def info(self, message: str) -> None:
        """A console line that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def close_bar(self) -> None:
        """End the progress bar (before printing a table); without a bar, print the last
        progress line if the time limit held it back. TensorBoard stays open."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self._print_unprinted()

    def close(self) -> None:
        self.close_bar()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def _short(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if v != v:  # NaN: nothing measured yet (no episode has ended)
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


__all__ = ["RunLogger"]
