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

import numpy as np
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
    (
        "cue_recall_bc.py",
        ["--delay", "10", "--min-delay", "20"],
        "--min-delay must be in [0, --delay=10], got 20",
    ),
    ("parity.py", ["--updates-interpolation", "0"], "--updates-interpolation must be >= 1"),
    ("core_latency.py", ["--steps", "0"], "--steps must be >= 1"),
    ("memory_recall.py", ["--quick", "--batch", "0"], "--batch must be >= 1"),
    ("core_latency.py", ["--batches", "1", "0"], "--batches must be >= 1 each"),
    ("learning.py", ["--quick", "--num-envs", "0"], "--num-envs must be >= 1"),
    ("learning.py", ["--quick", "--eval-episodes", "-1"], "--eval-episodes must be >= 1"),
    ("learning.py", ["--quick", "--cue-demo-delay", "-1"], "--cue-demo-delay must be >= 0, got -1"),
    (
        "learning.py",
        ["--quick", "--dagger", "2", "0"],
        "--dagger ROUNDS EPISODES must both be >= 1, got [2, 0]",
    ),
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

    def specs(
        cue_layout: str = "random",
        contender: str = "sb3-ppo",
        cue_demo_delay: int | None = None,
        dagger: tuple[int, int] | None = None,
    ) -> dict[str, object]:
        args = learning.argparse.Namespace(
            tasks=tasks, contenders=[contender], seeds=[1], quick=False, budget=None,
            eval_episodes=20, num_envs=8, bc_updates=1000, think_cost=None, anchor_coef=None,
            cue_layout=cue_layout, cue_demo_delay=cue_demo_delay, dagger=dagger,
        )  # fmt: skip
        return {s.task: s for s in learning.plan(args)}

    default, slots = specs(), specs("slots")
    assert default[task].env_kwargs == {"delay_steps": 200}
    assert slots[task].env_kwargs == {"delay_steps": 200, "layout": "slots"}
    assert default[task].key == f"{task}|sb3-ppo|1|20000|0"  # as before the option existed
    assert slots[task].key == f"{task}|sb3-ppo|1|20000|0|layout=slots"
    reach = "mindloop/MuscleReach-v0"
    assert slots[reach].env_kwargs == {} and slots[reach].key == default[reach].key
    # --cue-demo-delay: only the mindloop contenders' CueRecall demonstrations, own keys
    curriculum = specs(contender="mindloop", cue_demo_delay=5)
    plain = specs(contender="mindloop")
    assert curriculum[task].demo_env_kwargs == {"delay_steps": 5}
    assert curriculum[task].env_kwargs == {"delay_steps": 200}  # DAgger, PPO, evaluation
    assert curriculum[task].key == plain[task].key + "|demo_delay_steps=5"
    assert curriculum[reach].key == plain[reach].key
    assert specs(cue_demo_delay=5)[task].key == default[task].key  # SB3: no demonstrations
    # --dagger ROUNDS EPISODES: the mindloop contenders' recipe names them instead of the share
    assert plain[task].key.endswith(f"|{learning.MINDLOOP_RECIPE}|anchor1")  # as before
    dagger = specs(contender="mindloop", dagger=(6, 8))
    assert dagger[task].dagger == (6, 8) and plain[task].dagger is None
    assert dagger[task].key == plain[task].key.replace("dagger0.15", "dagger6x8")
    assert specs(dagger=(6, 8))[task].key == default[task].key  # SB3: no DAgger
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


def test_cue_probe_reads_a_cue_that_is_there_and_not_one_that_is_not() -> None:
    """cue_recall_bc's probe: features that carry the cue (plus noise) give ~1, features
    without it ~chance; an episode whose cue nobody else had is skipped, not scored."""
    probe = _load_benchmark("cue_recall_bc").cue_probe
    rng = np.random.default_rng(0)
    cues = np.repeat(np.arange(3), 20)  # (60,)
    carried = np.eye(3)[cues] @ rng.normal(size=(3, 16)) + 0.3 * rng.normal(size=(60, 16))
    assert probe(carried, cues) > 0.95
    assert probe(rng.normal(size=(60, 16)), cues) < 0.6
    lone = np.concatenate([cues, [7]])
    assert probe(np.concatenate([carried, rng.normal(size=(1, 16))]), lone) > 0.95


@pytest.mark.parametrize("ablate", ["none", "item", "workable", "both"])
def test_cue_recall_ablation_zeroes_its_memory_tier_between_frames(ablate: str) -> None:
    """cue_recall_bc's ablations: every frame after the first starts from a state whose
    ablated tier is all zeros, so the action cannot lean on what it held; where the
    workable tier is not ablated, its slots do carry over (the fetched item cannot be
    checked that way: an untrained agent's gets need not hit)."""
    import torch

    bench = _load_benchmark("cue_recall_bc")
    torch.manual_seed(0)
    agent, _ = bench.build_agent({"delay_steps": 2, "layout": "fixed"}, True, 1, "ponder")
    agent.policy.memory.proj.bias.data[-1] = 5.0  # an open write gate: slots fill every step
    seen: list[dict[str, torch.Tensor]] = []
    act = agent.act

    def recording_act(obs, state, start, deterministic=False):
        seen.append({k: v.clone() for k, v in state.items() if k.startswith("mem/")})
        return act(obs, state, start, deterministic)

    agent.act = recording_act
    bench.evaluate_clone(agent, {"delay_steps": 2, "layout": "fixed", "reach_steps": 8}, 1, ablate)
    later = seen[1:]  # the first frame starts from the initial (zero) state anyway
    assert len(later) > 5
    workable, item = ("mem/slots", "mem/slot_keys", "mem/read"), ("mem/got", "mem/hit")
    zeroed = {"none": (), "item": item, "workable": workable, "both": item + workable}[ablate]
    for key in zeroed:
        assert all(not s[key].any() for s in later), key
    if ablate in ("none", "item"):  # the workable tier is left to carry what it holds
        for key in workable:
            assert any(s[key].any() for s in later), key
