"""torchrun + DistributedDataParallel on CPU (gloo): two ranks keep identical weights."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agent.checkpoint import read_checkpoint_meta

ROOT = Path(__file__).resolve().parents[1]

# What each rank runs: train.py's own parsing and agent.training.train, then every rank
# writes the weights it ended with (only rank 0 writes checkpoints).
RANK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from safetensors.torch import save_file
    from tests import tiny_envs  # registers mindloop_test/*
    import train
    from agent.training import train as run_training

    torch.set_num_threads(1)
    config = train.parse_config(sys.argv[1:])
    result = run_training(config)
    rank = int(os.environ["RANK"])
    weights = {{k: v.contiguous() for k, v in result.agent.state_dict().items()}}
    save_file(weights, os.path.join({out!r}, f"rank{{rank}}.safetensors"))
    if rank == 0:
        print("SUCCESS", result.success_rate, result.checkpoint)
    """
)


def test_two_ranks_keep_identical_weights(tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    script = tmp_path / "rank_main.py"
    script.write_text(RANK_SCRIPT.format(root=str(ROOT), out=str(out)))
    args = [
        "--env.id", "mindloop_test/TinyReach-v0", "--env.vectorization", "sync",
        "--env.num-envs", "2", "--algo", "bc+ppo",
        "--bc.episodes", "8", "--bc.updates", "4", "--bc.batch-envs", "2", "--bc.seq-len", "8",
        "--bc.dagger-rounds", "1", "--bc.dagger-episodes", "2", "--bc.dagger-updates", "2",
        "--ppo.total-steps", "256", "--ppo.rollout-steps", "16", "--ppo.bptt-steps", "4",
        "--ppo.epochs", "2", "--ppo.minibatches", "2",
        "--agent.encoders.embed-dim", "16", "--agent.core.hidden-dim", "16",
        "--run.dir", str(tmp_path / "run"), "--run.device", "cpu", "--run.eval-episodes", "2",
        "--run.no-video", "--run.no-progress", "--run.no-tensorboard",
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUCCESS" in proc.stdout
    w0 = load_file(str(out / "rank0.safetensors"))
    w1 = load_file(str(out / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    # both phases ran; only rank 0 wrote checkpoints, counting both ranks' env steps
    meta = read_checkpoint_meta(tmp_path / "run")
    assert meta["phases_done"] == ["bc", "ppo"]
    assert meta["step"] >= 256  # ppo.total_steps counts every rank's env steps
    # each rank used its own demonstrations (its own seeds)
    assert (tmp_path / "run" / "demos_rank0").exists() and (
        tmp_path / "run" / "demos_rank1"
    ).exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_all_gather_cat_single_process_is_identity():
    from agent.distributed import DistInfo, all_gather_cat, all_reduce_mean

    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(all_gather_cat(x, DistInfo()), x)
    assert all_reduce_mean(2.5, DistInfo()) == 2.5


@pytest.mark.parametrize(
    ("device", "cuda_devices", "expected"),
    [
        ("cpu", 2, "cpu"),
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda"),
        ("cuda", 2, "cuda"),
        ("cuda:1", 2, "cuda:1"),  # one GPU by index, as in SB3 and LeRobot
        ("cuda:2", 2, "this machine has 2 CUDA device(s): cuda:0..cuda:1"),
        ("cuda:0", 0, "run.device is cuda:0 but no CUDA device is available; use cpu or auto"),
        ("gpu", 2, "unknown run.device 'gpu'; choose from: auto, cpu, cuda, cuda:N"),
        ("cuda:x", 2, "unknown run.device 'cuda:x'"),
    ],
)
def test_device_names_resolve_or_fail_in_one_line(device, cuda_devices, expected, monkeypatch):
    from agent.config import RunConfig
    from agent.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    if " " in expected:  # an error message
        with pytest.raises(ValueError, match=re.escape(expected)):
            resolve_device(device)
    else:
        assert resolve_device(device) == torch.device(expected)
    if expected.startswith("unknown"):  # the config says it too, before anything runs
        with pytest.raises(ValueError, match=re.escape(expected)):
            RunConfig(device=device)


def test_cuda_index_under_torchrun_is_one_line_error(monkeypatch):
    from agent.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"each rank takes cuda:LOCAL_RANK; use --run.device cuda"):
        init_distributed("cuda:1")
