"""The benchmark scripts turn bad arguments into one error line (argparse's, or in tyro's box),
not a traceback.

Each case fails while parsing, before any env, model or timing is built (a few seconds each:
one interpreter start and the imports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

TYRO_SCRIPTS = ("core_latency.py", "memory_recall.py", "parity.py")

CASES = [
    ("env_throughput.py", ["--tasks", "mindloop/Foo-v0"], "unknown task 'mindloop/Foo-v0'"),
    ("env_throughput.py", ["--tasks"], "--tasks"),
    ("encoder_throughput.py", ["--num-envs", "0"], "--num-envs must be >= 1"),
    ("encoder_throughput.py", ["--threads", "0"], "--threads must be >= 1"),
    ("train_throughput.py", ["--env", "mindloop/Foo-v0"], "unknown task 'mindloop/Foo-v0'"),
    ("train_throughput.py", ["--num-envs", "0"], "--num-envs must be >= 1"),
    ("cue_perception.py", ["--train-frames", "0"], "--train-frames must be >= 1"),
    ("cue_recall_bc.py", ["--delay", "-1"], "--delay must be >= 0"),
    ("cue_recall_bc.py", ["--eval-delays", "20", "-5"], "--eval-delays must be >= 0"),
    ("cue_recall_bc.py", ["--image-channels", "16", "0"], "--image-channels must be >= 1"),
    ("cue_recall_bc.py", ["--image-channels", *["8"] * 7], "--image-channels takes 1 to 6"),
    ("cue_recall_bc.py", ["--checkpoint", "no/such/run"], "no checkpoint at 'no/such/run'"),
    ("cue_recall_bc.py", ["--checkpoint", "x", "--layout", "fixed"], "leave out --layout"),
    ("parity.py", ["--updates-interpolation", "0"], "--updates-interpolation must be >= 1"),
    ("core_latency.py", ["--steps", "0"], "--steps must be >= 1"),
    ("memory_recall.py", ["--quick", "--batch", "0"], "--batch must be >= 1"),
    ("core_latency.py", ["--batches", "1", "0"], "--batches must be >= 1 each"),
    ("learning.py", ["--quick", "--num-envs", "0"], "--num-envs must be >= 1"),
    ("learning.py", ["--quick", "--eval-episodes", "-1"], "--eval-episodes must be >= 1"),
]


@pytest.mark.parametrize(("script", "args", "message"), CASES, ids=lambda c: str(c))
def test_bad_argument_is_one_error_line(
    script: str, args: list[str], message: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if script == "learning.py":  # never into the repo's results, should it run
        args = [*args, "--out", str(tmp_path / "learning.json"), "--runs-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if script in TYRO_SCRIPTS:  # a tyro script: tyro's error box holds the one line
        assert message in proc.stderr, proc.stderr[-2000:]
    else:  # argparse: usage, then one "error:" line
        last = proc.stderr.strip().splitlines()[-1]
        assert "error:" in last and message in last, last


def _load_benchmark(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` (not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"{name}_bench", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_memory_recall_writes_next_to_the_script_from_any_cwd() -> None:
    """Like the other benchmarks, memory_recall.py's JSON goes to benchmarks/out/ whatever the
    working directory (it went to ./benchmarks/out/ under the cwd)."""
    module = _load_benchmark("memory_recall")
    assert Path(module.Args().out) == ROOT / "benchmarks" / "out" / "memory_recall.json"


def test_learning_cue_layout_is_part_of_the_plan_and_the_result_key() -> None:
    """``--cue-layout slots`` reaches CueRecall's env arguments, and its results get keys of
    their own: a rerun into the same JSON must not take the random layout's results for them
    (or the other way round), while the default plan keeps the keys of earlier results."""
    learning = _load_benchmark("learning")
    task = "mindloop/CueRecall-v0"
    tasks = [task, "mindloop/MuscleReach-v0"]

    def specs(cue_layout: str = "random") -> dict[str, object]:
        args = learning.argparse.Namespace(
            tasks=tasks, contenders=["sb3-ppo"], seeds=[1], quick=False, budget=None,
            eval_episodes=20, num_envs=8, bc_updates=1000, think_cost=None, anchor_coef=None,
            cue_layout=cue_layout,
        )  # fmt: skip
        return {s.task: s for s in learning.plan(args)}

    default, slots = specs(), specs("slots")
    assert default[task].env_kwargs == {"delay_steps": 200}
    assert slots[task].env_kwargs == {"delay_steps": 200, "layout": "slots"}
    assert default[task].key == f"{task}|sb3-ppo|1|20000|0"  # as before the option existed
    assert slots[task].key == f"{task}|sb3-ppo|1|20000|0|layout=slots"
    reach = "mindloop/MuscleReach-v0"
    assert slots[reach].env_kwargs == {} and slots[reach].key == default[reach].key
    # every contender the command line offers has a runner (a missing one failed every run)
    assert set(learning.RUNNERS) == set(learning.CONTENDERS + learning.EXTRA_CONTENDERS)
    assert learning._task_label(task, slots[task].env_kwargs) == (
        "CueRecall-v0 (delay_steps=200, layout=slots)"
    )
    lines = learning.targets(
        [{"spec": {"task": task, "contender": "sb3-ppo"}, "success": 0.25}],
        "CueRecall delay 200, slots layout",
    )
    assert lines == [
        "CueRecall delay 200, slots layout, PPO without memory near chance (33% for a random "
        "ball): 25%"
    ]
