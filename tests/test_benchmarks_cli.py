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


def test_memory_recall_writes_next_to_the_script_from_any_cwd() -> None:
    """Like the other benchmarks, memory_recall.py's JSON goes to benchmarks/out/ whatever the
    working directory (it went to ./benchmarks/out/ under the cwd)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "memory_recall_bench", ROOT / "benchmarks" / "memory_recall.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert Path(module.Args().out) == ROOT / "benchmarks" / "out" / "memory_recall.json"
