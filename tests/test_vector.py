"""Vector env workers (agent.vector): how they take Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Ctrl-C in a terminal reaches every process of the foreground group: env workers too.
_INTERRUPT_SCRIPT = """
import os, signal, sys, time
import numpy as np
from agent.config import EnvConfig


def main():
    # the parent notes Ctrl-C and steps on: the workers must still be there to step
    interrupted = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    kind = sys.argv[1]
    config = EnvConfig(id="mindloop/MuscleReach-v0", num_envs=2, vectorization="async")
    config.obs_keys = ("proprio",)
    if kind == "train":
        from agent.vector import make_vector_env
        envs = make_vector_env(config)
    elif kind == "eval":
        from agent.evaluation import make_eval_env
        envs = make_eval_env(config.id, 2, config.make_kwargs(), vectorization="async")
    else:
        from agent.baselines import make_sb3_vec_env
        envs = make_sb3_vec_env(config, seed=0, backend=kind)
    sb3 = kind in ("sb3", "gymnasium")
    envs.reset() if sb3 else envs.reset(seed=0)
    act = lambda: np.stack([envs.action_space.sample()] * 2) if sb3 else envs.action_space.sample()
    for _ in range(10):
        envs.step(act())
    os.killpg(os.getpgid(0), signal.SIGINT)
    time.sleep(1.0)  # let every process of the group take it
    for _ in range(10):
        envs.step(act())
    envs.close()
    print("interrupted:", bool(interrupted), "stepped on")


if __name__ == "__main__":  # forkserver workers import this file
    main()
"""


@pytest.mark.parametrize("kind", ["train", "eval", "sb3", "gymnasium"])
def test_ctrl_c_stops_the_parent_and_leaves_env_workers_quiet(kind, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does) is the parent's to handle: the
    env workers ignore it and keep stepping. Before, each worker raised KeyboardInterrupt
    mid-step and died, and a Ctrl-C of train.py printed 8 worker tracebacks above its
    one-line "interrupted; continue with ..." message."""
    script = tmp_path / "interrupt.py"
    script.write_text(_INTERRUPT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), kind],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group: the SIGINT stays inside it
    )
    assert "interrupted: True stepped on" in proc.stdout, proc.stderr[-2000:]
    assert "KeyboardInterrupt" not in proc.stderr, proc.stderr[-2000:]
