"""agent.recording / agent.datasets: lossless Minari round trips, replay without the model."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import h5py
import numpy as np
import pytest

import envs  # noqa: F401  (registers the mindloop/ ids)
from agent.datasets import collect_expert_dataset, load_demonstrations
from agent.demonstrations import load_episodes
from agent.evaluation import AgentPolicy, evaluate, make_policy
from agent.recording import (
    RECORD_FORMAT,
    EpisodeRecord,
    num_episodes,
    read_records,
    record_metadata,
    write_records,
)
from agent.video import EpisodeRenderer
from tests.test_eval import tiny_agent

SIZE = 96
# Short episodes of three kinds: an arm (MuscleReach), lights and distractors (CueRecall),
# falling balls, a question and a growing answer (CountAnswer: a ragged state variable).
REPLAY_CASES = {
    "mindloop/MuscleReach-v0": {},
    "mindloop/CueRecall-v0": {"delay_steps": 8, "distractor_rate": 0.5},
    "mindloop/CountAnswer-v0": {"watch_steps": 24, "max_events": 2, "answer_steps": 3},
}


def expert_records(env_id: str, kwargs: dict, episodes: int = 1, seed: int = 0):
    result = evaluate(make_policy("expert"), env_id, episodes, seed=seed, env_kwargs=kwargs,
                      record=True)  # fmt: skip
    return result


def assert_records_equal(a: EpisodeRecord, b: EpisodeRecord) -> None:
    assert (a.env_id, a.env_kwargs, a.seed) == (b.env_id, b.env_kwargs, b.seed)
    for name in ("observations", "actions", "memory"):
        da, db = getattr(a, name), getattr(b, name)
        assert da.keys() == db.keys(), name
        for k in da:
            assert da[k].dtype == db[k].dtype and np.array_equal(da[k], db[k]), (name, k)
    for name in ("rewards", "terminations", "truncations", "is_success"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.text_shown == b.text_shown and a.text_emitted == b.text_emitted
    assert a.phase == b.phase
    assert (a.think_steps is None) == (b.think_steps is None)
    if a.think_steps is not None:
        assert np.array_equal(a.think_steps, b.think_steps)
    assert (a.audio is None) == (b.audio is None)
    if a.audio is not None:
        assert np.array_equal(a.audio, b.audio)
    assert (a.expert_latent is None) == (b.expert_latent is None)
    if a.expert_latent is not None:
        assert np.array_equal(a.expert_latent, b.expert_latent)
    assert len(a.states) == len(b.states)
    for sa, sb in zip(a.states, b.states, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert np.array_equal(sa[k], sb[k]) and np.asarray(sa[k]).dtype == sb[k].dtype, k


@pytest.mark.parametrize("env_id", list(REPLAY_CASES))
def test_replay_frames_identical_to_live_render(env_id, tmp_path):
    """A record replayed from disk, without the policy, renders the frames the live env drew."""
    kwargs = REPLAY_CASES[env_id]
    live_env = gym.make(env_id, render_mode="rgb_array", render_size=SIZE, **kwargs)
    live_env.reset(seed=4)
    live, done = [live_env.render()], False
    while not done:
        *_, terminated, truncated, _ = live_env.step(live_env.unwrapped.expert_action())
        live.append(live_env.render())
        done = terminated or truncated
    live_env.close()

    result = expert_records(env_id, kwargs, seed=4)
    path = write_records(tmp_path / "rec", result.records, result.observation_space,
                         result.action_space, policy="expert")  # fmt: skip
    (record,) = read_records(path)
    assert_records_equal(result.records[0], record)
    if env_id == "mindloop/CueRecall-v0":
        assert record.phase[0] == "cue" and record.phase[-1] == "reach"
    with EpisodeRenderer(SIZE) as renderer:
        replayed = list(renderer.frames(record))
    assert len(replayed) == len(live) == record.length + 1
    for t, (a, b) in enumerate(zip(live, replayed, strict=True)):
        assert np.array_equal(a, b), f"frame {t} differs"


def test_round_trip_is_lossless_with_agent_extras(tmp_path):
    """Images (uint8), sound (float32), think steps, memory calls, states: all exact."""
    kwargs = {"max_steps": 6}
    agent, _ = tiny_agent(env_kwargs=kwargs)
    result = evaluate(AgentPolicy(agent), "mindloop/MuscleReach-v0", 2, seed=3, env_kwargs=kwargs,
                      num_envs=2, record=True)  # fmt: skip
    records = result.records
    assert records[0].think_steps is not None and records[0].memory
    path = write_records(tmp_path / "agent_rec", records, result.observation_space,
                         result.action_space, policy="agent")  # fmt: skip
    back = read_records(path)
    assert len(back) == 2
    for a, b in zip(records, back, strict=True):
        assert_records_equal(a, b)
    assert back[0].observations["image"].dtype == np.uint8


def test_text_tasks_round_trip(tmp_path):
    """MultiDiscrete text observations, Discrete text actions, words said, ragged state."""
    result = expert_records("mindloop/CountAnswer-v0", REPLAY_CASES["mindloop/CountAnswer-v0"], 2)
    path = write_records(tmp_path / "count", result.records, result.observation_space,
                         result.action_space, policy="expert")  # fmt: skip
    back = read_records(path, episodes=[1])
    assert_records_equal(result.records[1], back[0])
    rec = back[0]
    assert rec.observations["text"].dtype == np.int64 and rec.actions["text"].dtype == np.int64
    assert rec.text_shown[-1] == "how many balls fell ?"
    assert [w for w in rec.text_emitted if w] == [result.episodes[1].answer]
    answers = [s["task/_answer"].shape for s in rec.states]  # grows from () to (1,)
    assert answers[0] == (0,) and answers[-1] == (1,)


def test_plain_minari_reads_it_and_nothing_is_pickled(tmp_path, monkeypatch):
    import minari

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    result = expert_records("mindloop/MuscleReach-v0", {}, 2)
    path = write_records(tmp_path / "rec", result.records, result.observation_space,
                         result.action_space, policy="expert")  # fmt: skip
    assert "MINARI_DATASETS_PATH" not in os.environ
    assert not (tmp_path / "home").exists()  # nothing went to ~/.minari
    dataset = minari.MinariDataset(path / "data")
    assert dataset.total_episodes == 2
    episode = next(dataset.iterate_episodes([0]))
    assert np.array_equal(episode.observations["image"], result.records[0].observations["image"])
    assert dataset.spec.dataset_id == "mindloop/MuscleReach/expert-v0"
    files = sorted(p.name for p in path.rglob("*") if p.is_file())
    assert files == ["main_data.hdf5", "metadata.json"]
    meta = json.loads((path / "data" / "metadata.json").read_text())
    assert meta["mindloop"]["format"] == RECORD_FORMAT and meta["jpeg_encoding"] is False

    def no_opaque(name, obj):  # pickled blobs would be opaque (V) or object-typed bytes
        if isinstance(obj, h5py.Dataset):
            kind = obj.dtype.kind
            assert kind in "biuf" or h5py.check_string_dtype(obj.dtype), (name, obj.dtype)

    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        f.visititems(no_opaque)
    assert record_metadata(path)["env_id"] == "mindloop/MuscleReach-v0"
    assert num_episodes(path) == 2


def test_a_module_prefixed_id_keeps_the_env_spec_minari_recovers_from(tmp_path):
    """``envs:mindloop/MuscleReach-v0`` (Gymnasium's module:id form) recorded no env spec,
    so Minari's ``recover_environment`` failed: 'env_spec is None'."""
    import minari

    kwargs = {"obs_keys": ["proprio"], "max_steps": 3}
    result = expert_records("envs:mindloop/MuscleReach-v0", kwargs)
    path = write_records(tmp_path / "rec", result.records, result.observation_space,
                         result.action_space, policy="expert")  # fmt: skip
    dataset = minari.MinariDataset(path / "data")
    assert dataset.spec.env_spec.id == "mindloop/MuscleReach-v0"
    assert dataset.spec.env_spec.kwargs == kwargs
    with dataset.recover_environment() as env:
        assert env.observation_space == dataset.observation_space


def test_writes_are_atomic(tmp_path):
    result = expert_records("mindloop/MuscleReach-v0", {}, 1)
    spaces = (result.observation_space, result.action_space)
    path = write_records(tmp_path / "rec", result.records, *spaces)
    with pytest.raises(ValueError, match="already exists"):
        write_records(path, result.records, *spaces)
    before = (path / "data" / "main_data.hdf5").stat().st_ino
    write_records(path, result.records * 2, *spaces, overwrite=True)
    assert num_episodes(path) == 2 and (path / "data" / "main_data.hdf5").stat().st_ino != before
    bad = result.records[0]
    bad.env_kwargs = {"audio": object()}  # not JSON: refused before anything is written
    with pytest.raises(ValueError, match="JSON"):
        write_records(tmp_path / "bad", [bad], *spaces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]  # no partial or temp dirs


def test_a_failed_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    """An overwrite that fails as the new dataset moves in puts the old one back (it sat in
    the temporary directory that is removed on the way out)."""
    import agent.recording as recording_mod

    result = expert_records("mindloop/MuscleReach-v0", {}, 1)
    spaces = (result.observation_space, result.action_space)
    path = write_records(tmp_path / "rec", result.records, *spaces)
    real_replace = recording_mod.os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old -> aside done; new -> path fails (disk full, permissions)
            raise OSError("simulated failure")
        real_replace(src, dst)

    monkeypatch.setattr(recording_mod.os, "replace", fail_second)
    with pytest.raises(OSError, match="simulated"):
        write_records(path, result.records * 2, *spaces, overwrite=True)
    monkeypatch.setattr(recording_mod.os, "replace", real_replace)
    assert num_episodes(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


def test_relative_path_writes_where_it_says(tmp_path, monkeypatch):
    """``train.py``'s default run dir is relative (runs/...): the dataset lands there, once."""
    monkeypatch.chdir(tmp_path)
    result = expert_records("mindloop/MuscleReach-v0", {}, 1)
    path = write_records("runs/r/demos", result.records, result.observation_space,
                         result.action_space)  # fmt: skip
    assert path == tmp_path / "runs" / "r" / "demos"
    assert num_episodes("runs/r/demos") == 1
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == ["demos"]


def test_not_a_record_is_one_line(tmp_path):
    import minari
    from minari.data_collector import EpisodeBuffer

    with pytest.raises(ValueError, match="does not exist"):
        read_records(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a Minari dataset"):
        read_records(tmp_path)
    # A Minari dataset that mindloop did not write.
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path / "root")
    try:
        space = gym.spaces.Box(-1, 1, (2,), np.float32)
        buffer = EpisodeBuffer(observations=np.zeros((3, 2), np.float32),
                               actions=np.zeros((2, 2), np.float32), rewards=[0.0, 1.0],
                               terminations=[False, True], truncations=[False, False])  # fmt: skip
        with pytest.warns(UserWarning):
            minari.create_dataset_from_buffers("other/plain-v0", [buffer], action_space=space,
                                               observation_space=space)  # fmt: skip
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    with pytest.raises(ValueError, match="not a mindloop record") as e:
        read_records(tmp_path / "root" / "other" / "plain-v0")
    assert "\n" not in str(e.value)
    result = expert_records("mindloop/MuscleReach-v0", {}, 1)
    path = write_records(tmp_path / "rec", result.records, result.observation_space,
                         result.action_space)  # fmt: skip
    with pytest.raises(ValueError, match=r"episode 5 is not in .*: it has episodes 0\.\.0"):
        read_records(path, episodes=[5])


def test_expert_dataset_for_behaviour_cloning(tmp_path):
    path = collect_expert_dataset("mindloop/InstructedReach-v0", 3, seed=10, path=tmp_path / "d",
                                  num_envs=2)  # fmt: skip
    demos = load_demonstrations(path)
    result = expert_records("mindloop/InstructedReach-v0", {}, 3, seed=10)
    lengths = [r.length for r in result.records]
    assert len(demos) == sum(lengths) and demos.num_episodes == 3
    assert demos.episode_bounds.tolist() == [
        [sum(lengths[:i]), sum(lengths[: i + 1])] for i in range(3)
    ]
    assert np.flatnonzero(demos.episode_starts).tolist() == demos.episode_bounds[:, 0].tolist()
    assert demos.seeds.tolist() == [10, 11, 12]
    for i, rec in enumerate(result.records):  # the obs each action was taken on, exactly
        obs, actions = demos.episode(i)
        for k in obs:
            assert np.array_equal(obs[k], rec.observations[k][:-1]), k
        assert np.array_equal(actions["muscles"], rec.actions["muscles"])
    assert demos.observations["text"].dtype == np.int64
    assert demos.observations["image"].dtype == np.uint8
    obs, actions, mask = demos.padded()
    T = max(lengths)
    assert obs["image"].shape == (T, 3, 64, 64, 3) and actions["muscles"].shape == (T, 3, 6)
    assert mask.sum(axis=0).tolist() == lengths
    assert demos.env_id == "mindloop/InstructedReach-v0"
    assert isinstance(demos.observation_space, gym.spaces.Dict)
    # BC's auxiliary target, frame by frame: the posture the expert heads for
    episodes = load_episodes(path)
    for ep, rec in zip(episodes, result.records, strict=True):
        assert ep.expert_latents.shape == (len(ep), 2)
        assert np.array_equal(ep.expert_latents, rec.expert_latent)
    with pytest.raises(ValueError, match="already exists"):
        collect_expert_dataset("mindloop/InstructedReach-v0", 1, seed=0, path=path)


def test_overwrite_replaces_only_a_record(tmp_path):
    """overwrite=True deletes an earlier record, never another directory (a mistyped path to
    a run directory took its checkpoints with it)."""
    result = expert_records("mindloop/MuscleReach-v0", {}, 1)
    spaces = (result.observation_space, result.action_space)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_text("weights")
    plain = tmp_path / "notes.txt"
    plain.write_text("notes")
    for target in (run, plain):
        with pytest.raises(ValueError, match="is not a mindloop record, so overwrite") as e:
            write_records(target, result.records, *spaces, overwrite=True)
        assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert (run / "checkpoints" / "latest.pt").read_text() == "weights"
    assert plain.read_text() == "notes"
    empty = tmp_path / "empty"
    empty.mkdir()  # nothing to lose: an empty directory may be replaced
    assert num_episodes(write_records(empty, result.records, *spaces, overwrite=True)) == 1


@pytest.fixture(scope="module")
def good_record(tmp_path_factory):
    result = expert_records("mindloop/MuscleReach-v0", {"max_steps": 4}, 1)
    path = tmp_path_factory.mktemp("good") / "rec"
    return write_records(path, result.records, result.observation_space, result.action_space)


def _damaged(good, tmp_path, edit_meta=None, raw=None, truncate=False, edit_h5=None):
    """A copy of the record ``good`` with its metadata (``edit_meta`` on the ``mindloop``
    dict, or ``raw`` text), its HDF5 file (``truncate``; ``edit_h5`` on episode 0's group)
    damaged."""
    import shutil

    path = tmp_path / "rec"
    shutil.copytree(good, path)
    meta_file = path / "data" / "metadata.json"
    if raw is not None:
        meta_file.write_text(raw)
    if edit_meta is not None:
        meta = json.loads(meta_file.read_text())
        edit_meta(meta["mindloop"])
        meta_file.write_text(json.dumps(meta))
    if truncate:
        h5 = path / "data" / "main_data.hdf5"
        h5.write_bytes(h5.read_bytes()[:1000])
    if edit_h5 is not None:
        with h5py.File(path / "data" / "main_data.hdf5", "r+") as f:
            edit_h5(f["episode_0"])
    return path


def _replace(key, cut):
    """An ``edit_h5`` that rewrites dataset ``key`` of an episode as ``cut(old values)``."""

    def edit(episode):
        values = cut(episode[key][()])
        del episode[key]
        episode[key] = values

    return edit


DAMAGE = {
    "truncated hdf5": ({"truncate": True}, "main_data.hdf5 (", True),
    "metadata a list": ({"raw": "[1, 2]"}, "metadata.json holds a JSON list", True),
    "invalid json": ({"raw": "{nope"}, "metadata.json is not valid JSON", True),
    "no env_id": (
        {"edit_meta": lambda m: m.pop("env_id")},
        "metadata.json: mindloop.env_id must be a task id, got None",
        True,
    ),
    "env_kwargs a list": (
        {"edit_meta": lambda m: m.update(env_kwargs=[1])},
        "mindloop.env_kwargs must be a JSON object",
        True,
    ),
    "unregistered env": (
        {"edit_meta": lambda m: m.update(env_id="mindloop/Nope-v0")},
        "unknown task 'mindloop/Nope-v0'",
        False,  # reading needs no env; replay does
    ),
    "bogus env kwarg": (
        {"edit_meta": lambda m: m.update(env_kwargs={"bogus": 1})},
        "has no constructor argument 'bogus'",
        False,
    ),
    # what replay needs of the episodes, checked before the video is opened (were a
    # KeyError, MuJoCo's TypeError, an IndexError and a numpy broadcast error mid-video)
    "no physics state": (
        {"edit_h5": lambda ep: ep["infos/state"].__delitem__("physics")},
        "episode 0: infos/state/physics is missing (the record is damaged)",
        False,  # reading without the env (behaviour cloning) needs no physics
    ),
    "physics too narrow": (
        {"edit_h5": _replace("infos/state/physics", lambda v: v[:, :30])},
        "episode 0: infos/state/physics has width 30, the env mindloop/MuscleReach-v0 needs 52 "
        "(the record is damaged or of another task)",
        False,
    ),
    "another task's env id": (
        {"edit_meta": lambda m: m.update(env_id="mindloop/CountAnswer-v0", env_kwargs={})},
        "episode 0: infos/state/physics has width 52, the env mindloop/CountAnswer-v0 needs 162",
        False,
    ),
    "fewer state rows than frames": (
        {"edit_h5": _replace("infos/state/physics", lambda v: v[:-1])},
        "episode 0: infos/state/physics has 4 rows, the episode has 5 frames",
        True,
    ),
    "fewer image rows than frames": (
        {"edit_h5": _replace("observations/image", lambda v: v[:-2])},
        "episode 0: observations/image has 3 rows, the episode has 5 frames",
        True,
    ),
    "short geom_rgba": (
        {"edit_h5": _replace("infos/state/geom_rgba", lambda v: v[:, :3])},
        "episode 0: infos/state/geom_rgba has shape (3, 4) per frame, the env "
        "mindloop/MuscleReach-v0 needs (8, 4)",
        False,
    ),
    "sample rate 0": (
        {"edit_meta": lambda m: m.update(audio_sample_rate=0)},
        "metadata.json: mindloop.audio_sample_rate must be a positive whole number",
        True,
    ),
    "negative sample rate": (
        {"edit_meta": lambda m: m.update(audio_sample_rate=-16000)},
        "mindloop.audio_sample_rate must be a positive whole number of samples per second "
        "(e.g. 16000), got -16000",
        True,
    ),
    "dt 0": (
        {"edit_meta": lambda m: m.update(dt=0)},
        "metadata.json: mindloop.dt must be a positive number of seconds per control step "
        "(e.g. 0.04), got 0",
        True,
    ),
    "negative dt": (
        {"edit_meta": lambda m: m.update(dt=-0.04)},
        "mindloop.dt must be a positive number",
        True,
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_record_is_one_line_naming_it(case, good_record, tmp_path):
    """Replay and BC's loader fail in one line naming the record (were tracebacks: OSError,
    AttributeError, KeyError, NameNotFound, TypeError)."""
    from agent.video import replay_to_video

    damage, message, reading_fails = DAMAGE[case]
    path = _damaged(good_record, tmp_path, **damage)
    readers = [lambda: replay_to_video(path, tmp_path / "r.mp4", size=64)]
    if reading_fails:
        readers += [lambda: read_records(path), lambda: load_demonstrations(path)]
    for read in readers:
        with pytest.raises(ValueError) as e:
            read()
        assert message in str(e.value) and str(path) in str(e.value)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "r.mp4").exists()
    assert not list(tmp_path.glob(".r.mp4*"))  # nor a half-written temporary video


def test_replay_never_imports_a_module_a_record_names(good_record, tmp_path, monkeypatch):
    """Gymnasium's "module:id" imports the module: from a record that is code execution, so
    replay refuses a module that is not imported yet, and accepts one that is."""
    import sys

    from agent.video import replay_to_video

    (tmp_path / "evil_mod.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env_id = "evil_mod:mindloop/MuscleReach-v0"
    path = _damaged(good_record, tmp_path, edit_meta=lambda m: m.update(env_id=env_id))
    with pytest.raises(ValueError, match="would import module 'evil_mod', which replay never"):
        replay_to_video(path, tmp_path / "r.mp4", size=64)
    [record] = read_records(path)  # reading runs nothing either
    with pytest.raises(ValueError, match="import evil_mod yourself first"):
        EpisodeRenderer(64).env_for(record)
    assert not (tmp_path / "ran").exists() and "evil_mod" not in sys.modules
    record.env_id = "envs:mindloop/MuscleReach-v0"  # imported already: fine
    with EpisodeRenderer(64) as renderer:
        assert renderer.env_for(record).spec.id == "mindloop/MuscleReach-v0"
