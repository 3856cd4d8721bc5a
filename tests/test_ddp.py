"""torchrun + DistributedDataParallel on CPU (gloo): two ranks keep identical weights."""

from __future__ import annotations

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
