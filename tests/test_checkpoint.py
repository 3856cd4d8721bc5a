"""Checkpoints: round trip from the directory alone, atomic ``latest``, spaces as JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import agent.checkpoint as ckpt_mod
from agent.agent import MindloopAgent
from agent.checkpoint import (
    load_agent,
    optimizer_from_state,
    optimizer_to_state,
    resolve_checkpoint,
    save_checkpoint,
    space_from_dict,
    space_to_dict,
)
from agent.config import AgentConfig, TrainConfig, config_from_dict, config_to_dict
from agent.cores import CoreConfig
from agent.think import ThinkConfig
from encoders.fusion import FusedEncoderConfig

OBS_SPACE = spaces.Dict(
    image=spaces.Box(0, 255, (16, 16, 3), np.uint8),
    proprio=spaces.Box(-100.0, 100.0, (5,), np.float32),
    text=spaces.MultiDiscrete(np.full(4, 9)),
)
ACT_SPACE = spaces.Dict(muscles=spaces.Box(0.0, 1.0, (3,), np.float32), text=spaces.Discrete(9))


def tiny_config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.agent = AgentConfig(
        encoders=FusedEncoderConfig(embed_dim=16, options={"image.channels": "(4, 8)"}),
        core=CoreConfig(hidden_dim=16),
        think=ThinkConfig(k_max=2),
    )
    return cfg


def tiny_agent(seed: int = 0) -> tuple[MindloopAgent, TrainConfig]:
    torch.manual_seed(seed)
    cfg = tiny_config()
    return MindloopAgent(OBS_SPACE, ACT_SPACE, cfg.agent), cfg


def sample_obs(batch: int = 3) -> dict[str, np.ndarray]:
    OBS_SPACE.seed(0)
    samples = [OBS_SPACE.sample() for _ in range(batch)]
    return {k: np.stack([s[k] for s in samples]) for k in OBS_SPACE.spaces}


@pytest.mark.parametrize(
    "space",
    [
        OBS_SPACE,
        ACT_SPACE,
        spaces.Box(-np.inf, np.inf, (2, 3), np.float32),
        spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 2.0]), (2,), np.float64),
        spaces.Discrete(5, start=-2),
        spaces.MultiBinary(4),
    ],
)
def test_space_json_round_trip(space):
    data = json.loads(json.dumps(space_to_dict(space)))
    assert space_from_dict(data) == space


def test_config_json_round_trip():
    cfg = tiny_config()
    cfg.env.kwargs = {"delay_steps": 200}
    cfg.env.obs_keys = ("image", "proprio")
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(TrainConfig, data) == cfg


def test_unknown_config_field_is_one_line():
    data = config_to_dict(tiny_config())
    data["ppo"]["lrr"] = 1.0
    with pytest.raises(ValueError, match=r"ppo\.lrr") as err:
        config_from_dict(TrainConfig, data)
    assert "\n" not in str(err.value)


def test_load_agent_rebuilds_from_directory_alone(tmp_path):
    agent, cfg = tiny_agent()
    path = save_checkpoint(tmp_path / "checkpoints", agent, cfg, step=7)
    for where in (path, tmp_path / "checkpoints", tmp_path, tmp_path / "checkpoints" / "latest"):
        loaded, loaded_cfg = load_agent(where)
        assert loaded_cfg == cfg
        for (k, a), (k2, b) in zip(
            agent.state_dict().items(), loaded.state_dict().items(), strict=True
        ):
            assert k == k2 and torch.equal(a, b), k
    obs = sample_obs()
    start = np.ones(3, bool)
    torch.manual_seed(1)
    a1, _, i1 = agent.act(obs, None, start)
    torch.manual_seed(1)
    a2, _, i2 = loaded.act(obs, None, start)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k])
    assert torch.equal(i1.think_steps, i2.think_steps)
    assert a1["muscles"].dtype == np.float32 and a1["text"].shape == (3,)


def test_crash_mid_save_keeps_latest_loadable(tmp_path, monkeypatch):
    agent, cfg = tiny_agent()
    root = tmp_path / "checkpoints"
    first = save_checkpoint(root, agent, cfg, step=1)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(1.0)

    real_save = ckpt_mod.save_file

    def crash_after_weights(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)  # half the files are on disk ...
        raise KeyboardInterrupt("killed mid-checkpoint")  # ... when the process dies

    monkeypatch.setattr(ckpt_mod, "save_file", crash_after_weights)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, agent, cfg, step=2)
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)

    assert resolve_checkpoint(tmp_path) == first.resolve()
    loaded, _ = load_agent(tmp_path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not (root / "step_000000000002").exists()
    # the next save succeeds, cleans up and moves latest
    second = save_checkpoint(root, agent, cfg, step=2)
    assert resolve_checkpoint(tmp_path) == second.resolve()
    assert not list(root.glob(".tmp-*"))


def _shifted(agent: MindloopAgent) -> dict[str, torch.Tensor]:
    """Add 1 to every parameter; return the weights as they were before."""
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(1.0)
    return before


def _assert_weights(path, expected: dict[str, torch.Tensor]) -> None:
    loaded, _ = load_agent(path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_interrupted_resave_keeps_the_old_copy(tmp_path, monkeypatch):
    """Re-saving a name (the final save after the last evaluation, ``best``) replaces a
    directory in two renames; an interrupt at the second leaves the old copy in place."""
    agent, cfg = tiny_agent()
    root = tmp_path / "checkpoints"
    save_checkpoint(root, agent, cfg, step=7)
    before = _shifted(agent)
    real_replace = ckpt_mod.os.replace
    calls = []

    def interrupted_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # tmp -> step_7, after step_7 -> .old-step_7
            raise KeyboardInterrupt("killed mid-checkpoint")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, agent, cfg, step=7)
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000000000007"]
    _assert_weights(tmp_path, before)


@pytest.mark.parametrize("name", [None, "best"])
def test_resave_killed_between_renames_is_recovered(tmp_path, name):
    """A process killed (no handler runs) after the old copy was renamed away and before the
    new one took its place: the old copy is what resolves, and the next save restores it."""
    from agent.checkpoint import best_evaluation, evaluation_record

    agent, cfg = tiny_agent()
    root = tmp_path / "checkpoints"
    record = {"eval": evaluation_record(0.5, 1.0, 10)}
    first = save_checkpoint(
        root, agent, cfg, step=7, name=name, extra_meta=record, point_latest=name is None
    )
    before = _shifted(agent)
    # the disk as such a kill leaves it: the old copy renamed, the new one still a .tmp-*
    (root / f".old-{first.name}").mkdir()
    for f in first.iterdir():
        f.rename(root / f".old-{first.name}" / f.name)
    first.rmdir()
    (root / f".tmp-{first.name}-x").mkdir()

    if name is None:
        assert resolve_checkpoint(tmp_path).name == f".old-{first.name}"
        _assert_weights(tmp_path, before)
    else:
        assert best_evaluation(root) == record["eval"]
        _assert_weights(root / "best", before)
    save_checkpoint(root, agent, cfg, step=8)  # any next save tidies up
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    _assert_weights(first, before)


def test_checkpoint_files_are_flushed_and_readable_alike(tmp_path, monkeypatch):
    """Every file of a checkpoint is fsynced before the rename makes it visible (else a power
    cut can leave empty weights beside a complete config.json), and the weights get the same
    permissions as the JSON files (safetensors writes through a private temp file)."""
    import os

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    agent, cfg = tiny_agent()
    synced = []
    real_fsync = ckpt_mod.os.fsync

    def spy(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(ckpt_mod.os, "fsync", spy)
    trainer = ckpt_mod.TrainerState({"t": torch.zeros(2)}, {"k": 1})
    path = save_checkpoint(tmp_path, agent, cfg, step=1, trainer=trainer)
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors", "trainer.json", "trainer.safetensors"]
    assert set(files) <= set(synced)
    modes = {f: (path / f).stat().st_mode & 0o777 for f in files}
    assert len(set(modes.values())) == 1, modes


def test_keep_prunes_old_checkpoints(tmp_path):
    agent, cfg = tiny_agent()
    for step in range(5):
        save_checkpoint(tmp_path, agent, cfg, step=step, keep=2)
    names = sorted(p.name for p in tmp_path.glob("step_*"))
    assert names == ["step_000000000003", "step_000000000004"]
    assert resolve_checkpoint(tmp_path).name == "step_000000000004"


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint") as err:
        load_agent(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_saved_config_a_check_refuses_is_one_line_naming_the_file(tmp_path):
    """A value an older mindloop accepted (max_grad_norm 0) or a hand edit: loading names the
    checkpoint's config.json, not just the field."""
    agent, cfg = tiny_agent()
    path = save_checkpoint(tmp_path, agent, cfg, step=1)
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["ppo"]["max_grad_norm"] = 0.0
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        load_agent(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path / 'config.json'}: ppo.max_grad_norm")
    assert message.endswith("edit that value in the file")


def test_dangling_latest_names_the_newest_complete_checkpoint(tmp_path):
    """A ``latest`` naming a deleted checkpoint said only "no checkpoint" although others
    were there; the error names the newest complete one, which loads."""
    agent, cfg = tiny_agent()
    for step in range(3):
        save_checkpoint(tmp_path / "checkpoints", agent, cfg, step=step)
    shutil.rmtree(tmp_path / "checkpoints" / "step_000000000002")
    with pytest.raises(ValueError, match="names a checkpoint that is gone") as err:
        resolve_checkpoint(tmp_path)
    newest = tmp_path / "checkpoints" / "step_000000000001"
    assert "\n" not in str(err.value) and repr(str(newest)) in str(err.value)
    assert resolve_checkpoint(newest) == newest.resolve()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda agent: agent["core"].update(hidden_dim=24), "shape saved vs built: "),
        (lambda agent: agent.update(use_memory=True), "missing: policy.memory."),
        (lambda agent: agent["think"].update(halting="fixed"), "unexpected: policy.halting.head"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path, edit, expected):
    """Weights that config.json does not describe (an edited config, another version's
    checkpoint) fail in one line naming the file and the first differences."""
    agent, cfg = tiny_agent()
    path = save_checkpoint(tmp_path, agent, cfg, step=1)
    meta = json.loads((path / "config.json").read_text())
    edit(meta["config"]["agent"])
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        load_agent(path)
    message = str(err.value)
    assert "\n" not in message and "model.safetensors does not fit" in message, message
    assert expected in message, message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("model.safetensors", None),  # truncated: a copy cut short
        ("trainer.safetensors", None),
        ("config.json", "{bad"),
        ("config.json", "[]"),
        ("trainer.json", "{bad"),
    ],
)
def test_corrupt_checkpoint_is_one_line_error_naming_the_file(tmp_path, name, content):
    """A damaged file of a checkpoint (a truncated copy, an edited JSON) is named in a one-line
    error that says what to do, for evaluation (load_agent) and --resume (trainer state)."""
    agent, cfg = tiny_agent()
    trainer = ckpt_mod.TrainerState({"t": torch.zeros(2)}, {"k": 1})
    path = save_checkpoint(tmp_path, agent, cfg, step=1, trainer=trainer)
    target = path / name
    if content is None:
        target.write_bytes(target.read_bytes()[:20])
    else:
        target.write_text(content)
    load = ckpt_mod.load_trainer_state if name.startswith("trainer") else load_agent
    with pytest.raises(ValueError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and name in message and "corrupt" in message, message


def test_env_snapshots_continue_exactly_through_files(tmp_path):
    """A mindloop task's resume_state, written as safetensors + JSON and read back into a
    fresh vector env, continues bit for bit: images, stereo audio (impact tails included),
    proprio, rewards and later episodes (env RNGs)."""
    from safetensors.torch import load_file, save_file

    from agent.checkpoint import pack, unpack
    from agent.config import EnvConfig
    from agent.vector import expert_actions, make_vector_env, step_vector_env

    cfg = EnvConfig(num_envs=2, vectorization="sync")
    rng = np.random.default_rng(0)

    def run(envs, steps):
        out = []
        for t in range(steps):
            # expert actions make contacts (taps); noise on every 3rd step changes the course
            act = expert_actions(envs)
            if t % 3 == 0:
                act = {"muscles": rng.uniform(0, 1, (2, 6)).astype(np.float32)}
            out.append(step_vector_env(envs, act))
        return out

    envs = make_vector_env(cfg)
    envs.reset(seed=[3, 4])
    run(envs, 25)
    snapshot = list(envs.get_attr("resume_state"))
    rng_state = rng.bit_generator.state
    expected = run(envs, 80)
    envs.close()

    tensors: dict[str, torch.Tensor] = {}
    meta = pack(snapshot, "envs", tensors)
    save_file(tensors, str(tmp_path / "envs.safetensors"))
    (tmp_path / "envs.json").write_text(json.dumps(meta))
    restored = unpack(json.loads((tmp_path / "envs.json").read_text()),
                      load_file(str(tmp_path / "envs.safetensors")))  # fmt: skip

    envs = make_vector_env(cfg)
    envs.reset(seed=[100, 200])  # different episodes, overwritten by the snapshot
    envs.set_attr("resume_state", restored)
    rng.bit_generator.state = rng_state
    got = run(envs, 80)
    envs.close()
    assert any(s.done.any() for s in expected), "the check must cross episode resets"
    assert max(float(np.abs(s.obs["audio"]).max()) for s in expected) > 0, "no sound was made"
    for a, b in zip(expected, got, strict=True):
        for k in a.obs:
            np.testing.assert_array_equal(a.obs[k], b.obs[k], err_msg=k)
        np.testing.assert_array_equal(a.reward, b.reward)


@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_optimizer_state_round_trip_continues_exactly(kind):
    """Adam restored from its saved state takes the same next step as the original (fused
    and foreach, with a transposed parameter). The end-to-end case that needed the strides
    back (``_match_param_strides``) is ``test_train.py::test_resume_continues_exactly``."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(16, 48).t())  # (48, 16), strides (1, 48)
    bias = torch.nn.Parameter(torch.randn(16))
    params = [weight, bias]

    def adam(ps):
        return torch.optim.Adam(ps, lr=1e-2, **{kind: True})

    def step(opt, ps, seed):
        g = torch.Generator().manual_seed(seed)
        for p in ps:
            # with the parameter's strides, as autograd makes them
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        opt.step()

    opt = adam(params)
    for seed in range(3):
        step(opt, params, seed)
    saved = optimizer_to_state(opt)
    saved.tensors = {k: v.clone() for k, v in saved.tensors.items()}  # as if from disk
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin[0] = torch.nn.Parameter(params[0].detach().t().contiguous().t())  # same strides
    twin_opt = adam(twin)
    optimizer_from_state(twin_opt, saved)
    step(opt, params, 3)
    step(twin_opt, twin, 3)
    for a, b in zip(params, twin, strict=True):
        assert torch.equal(a, b)
