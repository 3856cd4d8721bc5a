"""Shared test setup."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test. The tests use tiny tensors, where threads gain nothing, and
    the suite runs as 2 xdist workers on 2 cores: two threads per worker oversubscribe the
    cores and spin-waiting made a 1 s codec fit, or a tiny training run, take minutes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def sb3_logs_in_tmp_path(tmp_path, monkeypatch):
    """SB3's ``learn()`` without a custom logger makes a log folder even when it writes
    nothing (``$SB3_LOGDIR``, else ``/tmp/SB3-<timestamp>``): keep it in the test's tmp dir."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))
