"""Episode records: what an agent saw, did, thought and heard, step by step, as Minari datasets.

One format for both uses: evaluation records (``eval.py --record DIR``) and the expert
demonstrations behaviour cloning learns from (:mod:`agent.datasets`). A record is a
`Minari <https://minari.farama.org>`_ dataset (HDF5, JSON metadata; nothing is pickled),
readable with ``minari.MinariDataset(path / "data")`` by anyone, and with
:func:`read_records` here. Images are stored raw (``jpeg_encoding=False``): lossless, so a
round trip gives back the exact observations.

Layout of one Minari episode (T steps; Minari's own fields first):

* ``observations`` ``(T+1, ...)`` per key, ``actions`` ``(T, ...)`` per key, ``rewards``,
  ``terminations``, ``truncations`` ``(T,)``;
* ``infos`` (all ``(T+1, ...)``, entry ``t`` belongs to frame ``t``, i.e. after reset for
  ``t = 0`` and after step ``t - 1`` otherwise):

  - ``state/<name>``: the env's ``get_state()`` (MuJoCo integration state, per-episode
    colours, task variables) for replay without the model; a value whose shape changes
    during the episode is zero-padded and its true shapes kept in ``state_shape/<name>``;
  - ``audio`` ``(T+1, 2, S)``: the sound of each control step (only when ``audio`` is not
    already an observation);
  - ``text_shown``: the instruction/question on screen; ``is_success``; ``phase`` (the
    task's ``info["phase"]``, when it has one);
  - ``agent/think_steps``, ``agent/text_emitted`` and ``agent/memory/<stat>``: the decision
    made *at* frame ``t`` (the last frame has none: -1, "" and 0);
  - ``expert/latent`` ``(T+1, d)``: the scripted expert's latent at frame ``t``
    (demonstrations of tasks with ``expert_latent()``; zeros on the last frame).

* per-episode attributes: ``seed``, ``success``, ``return``, ``length``.
* dataset metadata (``metadata.json``): Minari's fields plus ``mindloop`` =
  ``{"format": "mindloop.episodes", "version": 1, "env_id", "env_kwargs", "policy",
  "audio_sample_rate", "dt", ...}``, which is how :func:`read_records` knows a mindloop record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

RECORD_FORMAT = "mindloop.episodes"
RECORD_VERSION = 1
_PROJECT_URL = "https://github.com/mindloop/mindloop"

StateDict = dict[str, np.ndarray]


@dataclass
class EpisodeRecord:
    """One episode of ``T`` steps, in memory. Arrays are stacked over time."""

    env_id: str
    env_kwargs: dict[str, Any]
    """Constructor arguments the env was made with (JSON-like), to rebuild it for replay."""
    seed: int | None
    observations: dict[str, np.ndarray]
    """Per key ``(T+1, ...)``: after reset, then after every step."""
    actions: dict[str, np.ndarray]
    """Per key ``(T, ...)``."""
    rewards: np.ndarray
    """``(T,)`` float64."""
    terminations: np.ndarray
    """``(T,)`` bool."""
    truncations: np.ndarray
    """``(T,)`` bool."""
    is_success: np.ndarray
    """``(T+1,)`` bool: ``info["is_success"]`` at each frame."""
    text_shown: list[str]
    """``T+1`` strings: the instruction or question on screen at each frame ("" if none)."""
    phase: list[str] = field(default_factory=list)
    """``T+1`` task phases (``info["phase"]``, e.g. CueRecall's cue/delay/reach), or empty."""
    states: list[StateDict] | None = None
    """``T+1`` ``get_state()`` snapshots (for replay), or ``None`` if not recorded."""
    audio: np.ndarray | None = None
    """``(T+1, 2, S)`` float32 stereo sound of each frame's control step, or ``None``."""
    think_steps: np.ndarray | None = None
    """``(T,)`` int: think steps the agent took at each frame (``None``: not a thinking agent)."""
    text_emitted: list[str] = field(default_factory=list)
    """``T`` words the agent said at each frame ("" = silence); empty if it cannot speak."""
    memory: dict[str, np.ndarray] = field(default_factory=dict)
    """Per memory stat ``(T,)``: calls this frame (``set``, ``get``, ``hit``, ``evicted``) and
    the store after it (``occupancy`` items, ``store_bytes``)."""
    expert_latent: np.ndarray | None = None
    """``(T, d)`` float32: the scripted expert's latent at each frame (demonstrations of tasks
    with ``expert_latent()``; behaviour cloning's auxiliary target), else ``None``."""
    audio_sample_rate: int | None = None
    dt: float | None = None
    """Seconds per control step (frame)."""

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def success(self) -> bool:
        return bool(self.is_success[-1])

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))

    def frame_audio(self, t: int) -> np.ndarray | None:
        """``(2, S)`` sound of frame ``t`` (from ``audio`` or the ``audio`` observation)."""
        if self.audio is not None:
            return self.audio[t]
        if "audio" in self.observations:
            return self.observations["audio"][t]
        return None


class EpisodeRecorder:
    """Builds an :class:`EpisodeRecord` one step at a time (used by the evaluation loop)."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        seed: int | None,
        *,
        audio_sample_rate: int | None = None,
        dt: float | None = None,
    ) -> None:
        self.env_id, self.env_kwargs, self.seed = env_id, dict(env_kwargs), seed
        self.audio_sample_rate, self.dt = audio_sample_rate, dt
        self._obs: list[dict[str, np.ndarray]] = []
        self._actions: list[dict[str, np.ndarray]] = []
        self._rewards: list[float] = []
        self._term: list[bool] = []
        self._trunc: list[bool] = []
        self._success: list[bool] = []
        self._text_shown: list[str] = []
        self._phase: list[str] = []
        self._states: list[StateDict] = []
        self._audio: list[np.ndarray] = []
        self._think: list[int] = []
        self._said: list[str] = []
        self._memory: list[dict[str, float]] = []
        self._latent: list[np.ndarray] = []

    def frame(
        self,
        obs: dict[str, np.ndarray],
        *,
        is_success: bool,
        text_shown: str = "",
        phase: str = "",
        state: StateDict | None = None,
        audio: np.ndarray | None = None,
    ) -> None:
        """What the env showed after reset (the first call) or after a step."""
        self._obs.append({k: np.array(v, copy=True) for k, v in obs.items()})
        self._success.append(bool(is_success))
        self._text_shown.append(str(text_shown))
        self._phase.append(str(phase))
        if state is not None:
            self._states.append({k: np.array(v, copy=True) for k, v in state.items()})
        if audio is not None:
            self._audio.append(np.array(audio, dtype=np.float32, copy=True))

    def step(
        self,
        action: dict[str, np.ndarray],
        reward: float,
        terminated: bool,
        truncated: bool,
        *,
        think_steps: int | None = None,
        text_emitted: str | None = None,
        memory: dict[str, float] | None = None,
        expert_latent: np.ndarray | None = None,
    ) -> None:
        """The decision taken on the last frame and the step's outcome (then call ``frame``)."""
        self._actions.append({k: np.array(v, copy=True) for k, v in action.items()})
        self._rewards.append(float(reward))
        self._term.append(bool(terminated))
        self._trunc.append(bool(truncated))
        if think_steps is not None:
            self._think.append(int(think_steps))
        if text_emitted is not None:
            self._said.append(text_emitted)
        if memory:
            self._memory.append(dict(memory))
        if expert_latent is not None:
            self._latent.append(np.array(expert_latent, dtype=np.float32, copy=True))

    def finish(self) -> EpisodeRecord:
        """The finished record (frames must be one more than steps)."""
        t = len(self._rewards)
        if len(self._obs) != t + 1:
            raise RuntimeError(
                f"an episode of {t} steps needs {t + 1} frames, got {len(self._obs)}"
            )
        return EpisodeRecord(
            env_id=self.env_id,
            env_kwargs=self.env_kwargs,
            seed=self.seed,
            observations=_stack_dicts(self._obs),
            actions=_stack_dicts(self._actions),
            rewards=np.asarray(self._rewards, dtype=np.float64),
            terminations=np.asarray(self._term, dtype=bool),
            truncations=np.asarray(self._trunc, dtype=bool),
            is_success=np.asarray(self._success, dtype=bool),
            text_shown=list(self._text_shown),
            phase=list(self._phase) if any(self._phase) else [],
            states=list(self._states) if len(self._states) == t + 1 else None,
            audio=np.stack(self._audio) if len(self._audio) == t + 1 else None,
            think_steps=np.asarray(self._think, dtype=np.int64) if len(self._think) == t else None,
            text_emitted=list(self._said) if len(self._said) == t else [],
            memory=(
                {k: np.asarray([m.get(k, 0.0) for m in self._memory]) for k in self._memory[0]}
                if len(self._memory) == t and t > 0
                else {}
            ),
            expert_latent=np.stack(self._latent) if len(self._latent) == t and t > 0 else None,
            audio_sample_rate=self.audio_sample_rate,
            dt=self.dt,
        )


def _stack_dicts(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not items:
        return {}
    return {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}


# --------------------------------------------------------------------------- writing


def write_records(
    path: str | os.PathLike,
    records: Sequence[EpisodeRecord],
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    *,
    dataset_id: str | None = None,
    policy: str = "",
    description: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``records`` as one Minari dataset at ``path`` (a directory); returns ``path``.

    The dataset is built in a temporary directory next to ``path`` and moved into place with
    ``os.replace``, so ``path`` is either the complete old dataset or the complete new one.
    An overwrite takes two renames (old aside, new in); a failure between them moves the old
    one back, and a process killed there leaves it whole in ``.<name>.tmp-*/replaced``.
    ``dataset_id`` (Minari's ``namespace/name-vN``) defaults to
    ``mindloop/<Task>/<policy>-v0``; with ``MINARI_DATASETS_PATH`` pointing at a root and
    ``path = root / dataset_id``, ``minari.load_dataset(dataset_id)`` finds it too.
    """
    import minari

    if not records:
        raise ValueError("no episodes to write: records is empty")
    # absolute: Minari joins a relative dataset root onto itself ("runs/x/.../runs/x/...")
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another path or pass overwrite=True")
    if path.exists():
        check_overwritable(path)
    first = records[0]
    for r in records[1:]:
        if (r.env_id, r.env_kwargs) != (first.env_id, first.env_kwargs):
            raise ValueError(
                f"all records of a dataset must come from one env; got {first.env_id!r} "
                f"{first.env_kwargs} and {r.env_id!r} {r.env_kwargs}"
            )
    dataset_id = dataset_id or default_dataset_id(first.env_id, policy or "episodes")
    _check_json("env_kwargs", first.env_kwargs)
    meta = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "env_id": first.env_id,
        "env_kwargs": first.env_kwargs,
        "policy": policy,
        "audio_sample_rate": first.audio_sample_rate,
        "dt": first.dt,
        "has_states": all(r.states is not None for r in records),
        **(extra_metadata or {}),
    }
    _check_json("extra_metadata", meta)
    buffers = [_to_buffer(i, r) for i, r in enumerate(records)]
    spec = _env_spec(first.env_id, first.env_kwargs)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _minari_root(tmp_root), warnings.catch_warnings():
            # Minari warns about every optional metadata field left empty (author e-mail...).
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=spec,
                eval_env=spec,
                algorithm_name=policy or None,
                author="mindloop",
                code_permalink=_PROJECT_URL,
                observation_space=observation_space,
                action_space=action_space,
                description=description or f"mindloop episodes of {first.env_id} ({policy})",
                jpeg_encoding=False,  # lossless: a round trip gives the exact images back
            )
            dataset.storage.update_metadata({"mindloop": meta})
            dataset.storage.update_episode_metadata(
                [
                    {"success": r.success, "return": r.episode_return, "length": r.length}
                    for r in records
                ]
            )
        built = tmp_root / dataset_id
        if path.exists():  # overwrite: move the old dataset aside, then the new one in
            old = tmp_root / "replaced"
            os.replace(path, old)
            try:
                os.replace(built, path)
            except BaseException:  # the old dataset goes back, not out with tmp_root
                os.replace(old, path)
                raise
        else:
            os.replace(built, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return path


def check_overwritable(path: str | os.PathLike) -> None:
    """A one-line ``ValueError`` unless the existing ``path`` is an earlier mindloop record
    (or an empty directory): an overwrite deletes what is there, and a mistyped path (a run
    directory with its checkpoints) must not go with it."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
        return
    try:
        if not (p / "data" / "metadata.json").is_file():  # the layout write_records makes
            raise ValueError("no data/metadata.json")
        record_metadata(p)
    except ValueError:
        raise ValueError(
            f"{p} exists and is not a mindloop record, so overwrite will not delete it; "
            "choose another path"
        ) from None


def check_output_path(option: str, path: str | os.PathLike, *, directory: bool = False) -> None:
    """A one-line ``ValueError`` naming ``option`` and ``path`` unless a file (or, with
    ``directory``, a directory) can be written there; creates missing parent directories.
    Called before the episodes run, so a bad path costs no time and gives no traceback."""
    p = Path(path)
    if not directory and p.is_dir():
        raise ValueError(f"{option} {p} is a directory; give a file path")
    parent = p.absolute().parent
    blocker = _first_existing(parent)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{option} {p}: {blocker} is a file, not a directory; choose another path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # a real write finds what permissions alone miss (read-only mounts, /proc)
        tempfile.NamedTemporaryFile(dir=parent, prefix=f".{p.name}.check-").close()
    except OSError as e:
        raise ValueError(f"{option} {p}: cannot write in {parent} ({e.strerror or e})") from None


def _first_existing(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists (file or directory)."""
    return next((a for a in (path, *path.parents) if a.exists()), None)


def default_dataset_id(env_id: str, kind: str) -> str:
    """``mindloop/MuscleReach/expert-v0`` for ``mindloop/MuscleReach-v0`` and ``expert``."""
    name = env_id.split("/")[-1].split(":")[-1]
    task = name.rsplit("-v", 1)[0] if "-v" in name else name
    kind = "".join(c if c.isalnum() or c in "_." else "_" for c in kind) or "episodes"
    return f"mindloop/{task}/{kind}-v0"


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Point Minari's dataset root at ``root`` for the duration (nothing goes to ``~``)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _env_spec(env_id: str, env_kwargs: dict[str, Any]) -> gym.envs.registration.EnvSpec | None:
    """The registered spec with these kwargs (Minari stores it to recover the env). In
    Gymnasium's ``module:id`` form the id is what follows the colon (importing the module
    registered it)."""
    name = env_id.rpartition(":")[2]
    if name not in gym.registry:
        return None
    spec = gym.spec(name)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, **env_kwargs})


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except TypeError as e:
        raise ValueError(f"{name} must be JSON-serializable to be recorded ({e})") from None


def _to_buffer(index: int, r: EpisodeRecord) -> Any:
    from minari.data_collector import EpisodeBuffer

    n = r.length + 1  # infos have one entry per frame
    infos: dict[str, Any] = {
        "is_success": r.is_success.astype(bool),
        "text_shown": list(r.text_shown),
    }
    if r.phase:
        infos["phase"] = list(r.phase)
    if r.states is not None:
        values, shapes = _pack_states(r.states)
        infos["state"] = _nest(values)
        if shapes:
            infos["state_shape"] = _nest(shapes)
    if r.audio is not None and "audio" not in r.observations:
        infos["audio"] = r.audio.astype(np.float32)
    agent: dict[str, Any] = {}
    if r.think_steps is not None:
        agent["think_steps"] = np.append(r.think_steps, -1).astype(np.int64)
    if r.text_emitted:
        agent["text_emitted"] = [*r.text_emitted, ""]
    if r.memory:
        agent["memory"] = {k: np.append(v, 0.0).astype(np.float64) for k, v in r.memory.items()}
    if agent:
        infos["agent"] = agent
    if r.expert_latent is not None:
        last = np.zeros((1, *r.expert_latent.shape[1:]), np.float32)
        infos["expert"] = {"latent": np.concatenate([r.expert_latent, last]).astype(np.float32)}
    for key, value in _flatten(infos).items():
        if len(value) != n:
            raise RuntimeError(f"info {key!r} has {len(value)} entries, expected {n}")
    return EpisodeBuffer(
        id=index,
        seed=r.seed,
        observations=_space_value(r.observations),
        actions=_space_value(r.actions),
        rewards=r.rewards.tolist(),
        terminations=r.terminations.tolist(),
        truncations=r.truncations.tolist(),
        infos=infos,
    )


def _pack_states(states: list[StateDict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stack ``get_state()`` snapshots over time: ``(T+1, ...)`` per key. A key whose shape
    changes during the episode (e.g. an answer growing token by token) is zero-padded to
    its largest shape; its true shapes go to the second dict as ``(T+1, ndim)``."""
    values, shapes = {}, {}
    for key in states[0]:
        arrays = [np.asarray(s[key]) for s in states]
        dims = {a.shape for a in arrays}
        if len(dims) == 1:
            values[key] = np.stack(arrays)
            continue
        ndim = arrays[0].ndim
        big = tuple(max(a.shape[d] for a in arrays) for d in range(ndim))
        out = np.zeros((len(arrays), *big), dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            out[(i, *(slice(0, s) for s in a.shape))] = a
        values[key] = out
        shapes[key] = np.array([a.shape for a in arrays], dtype=np.int64).reshape(len(arrays), ndim)
    return values, shapes


def _unpack_states(
    values: dict[str, np.ndarray], shapes: dict[str, np.ndarray], n: int
) -> list[StateDict]:
    out: list[StateDict] = []
    for t in range(n):
        snap = {}
        for key, v in values.items():
            if key in shapes:
                snap[key] = v[(t, *(slice(0, int(s)) for s in shapes[key][t]))].copy()
            else:
                snap[key] = v[t]
        out.append(snap)
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"task/_goal": x}`` -> ``{"task": {"_goal": x}}``: HDF5 groups, as the names say."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- reading


def open_dataset(path: str | os.PathLike) -> Any:
    """The ``minari.MinariDataset`` at ``path`` (the dataset directory or its ``data/``);
    a one-line ``ValueError`` if there is none."""
    import minari

    data = _data_dir(path)
    try:
        return minari.MinariDataset(data)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path} is not a readable Minari dataset ({e})") from None


def record_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``mindloop`` metadata of the record at ``path``; a one-line ``ValueError`` if
    ``path`` is not a mindloop record."""
    file = _data_dir(path) / "metadata.json"
    meta = _read_json(file)
    mind = meta.get("mindloop")
    if not isinstance(mind, dict) or mind.get("format") != RECORD_FORMAT:
        raise ValueError(
            f"{path} is a Minari dataset but not a mindloop record (no 'mindloop' metadata); "
            "record episodes with `python eval.py --record DIR`"
        )
    version = mind.get("version", 0)
    if not isinstance(version, int):
        raise ValueError(f"{file}: mindloop.version must be an integer, got {version!r}")
    if version > RECORD_VERSION:
        raise ValueError(
            f"{path} is a mindloop record of version {version}, newer than this "
            f"mindloop reads ({RECORD_VERSION}); upgrade mindloop"
        )
    # what readers index without looking (a KeyError or TypeError deep inside otherwise)
    env_id, env_kwargs = mind.get("env_id"), mind.get("env_kwargs")
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"{file}: mindloop.env_id must be a task id, got {env_id!r}")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise ValueError(f"{file}: mindloop.env_kwargs must be a JSON object, got {env_kwargs!r}")
    return mind


def _read_json(file: Path) -> dict[str, Any]:
    """``file``'s JSON object; a one-line ``ValueError`` naming the file if it is not one."""
    try:
        with open(file, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); the record is damaged") from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{file} holds a JSON {type(meta).__name__}, not an object; the record is damaged"
        )
    return meta


def _data_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"record {p} does not exist")
    for candidate in (p, p / "data"):
        if (candidate / "metadata.json").is_file():
            return candidate
    raise ValueError(
        f"{p} is not a Minari dataset (no metadata.json in it or in {p / 'data'}); "
        "give the directory written by `eval.py --record` or `collect_expert_dataset`"
    )


def num_episodes(path: str | os.PathLike) -> int:
    record_metadata(path)
    return int(open_dataset(path).total_episodes)


def read_records(
    path: str | os.PathLike, episodes: Sequence[int] | None = None
) -> list[EpisodeRecord]:
    """Read mindloop records (all episodes, or those indexed by ``episodes``).

    A damaged record (an array with too few rows, a sample rate or ``dt`` that is not
    positive) is a one-line ``ValueError`` naming the record, the episode and the field."""
    meta = record_metadata(path)
    _check_timing(path, meta)
    dataset = open_dataset(path)
    total = dataset.total_episodes
    indices = list(range(total)) if episodes is None else [int(i) for i in episodes]
    for i in indices:
        if not 0 <= i < total:
            raise ValueError(f"episode {i} is not in {path}: it has episodes 0..{total - 1}")
    # Minari reads the HDF5 file lazily: a truncated or edited one fails here, deep in h5py
    try:
        seeds = [m.get("seed") for m in dataset.storage.get_episode_metadata(indices)]
        episodes_data = list(dataset.iterate_episodes(indices))
        records = []
        for i, s, ep in zip(indices, seeds, episodes_data, strict=True):
            _check_episode(path, i, ep)
            records.append(_from_episode(ep, meta, s))
        return records
    except _DamagedRecord:  # already names the record, the episode and the field
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:
        data = _data_dir(path) / "main_data.hdf5"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"cannot read the episodes in {data} ({reason}); the record is damaged"
        ) from None


class _DamagedRecord(ValueError):
    """A one-line message that names the record, the episode and the field already."""


def _check_timing(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """The metadata's sample rate and ``dt``: absent or positive (0 or less was accepted and
    ended in an obscure PyAV/ffmpeg error when a video was written)."""
    file = _data_dir(path) / "metadata.json"
    rate, dt = meta.get("audio_sample_rate"), meta.get("dt")
    if rate is not None and not (_is_number(rate) and rate > 0 and float(rate).is_integer()):
        raise ValueError(
            f"{file}: mindloop.audio_sample_rate must be a positive whole number of samples per "
            f"second (e.g. 16000), got {rate!r}; the record is damaged"
        )
    if dt is not None and not (_is_number(dt) and math.isfinite(dt) and dt > 0):
        raise ValueError(
            f"{file}: mindloop.dt must be a positive number of seconds per control step "
            f"(e.g. 0.04), got {dt!r}; the record is damaged"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_episode(path: str | os.PathLike, index: int, ep: Any) -> None:
    """Every per-frame array of episode ``index`` has one row per frame (``T+1``; actions
    ``T``): a short one failed later with an IndexError deep in replay."""
    frames = len(ep.rewards) + 1
    fields = []
    for group, values, rows in (
        ("observations", _as_dict(ep.observations), frames),
        ("actions", _as_dict(ep.actions), frames - 1),
        ("infos", _flatten(ep.infos or {}), frames),
    ):
        fields += [(f"{group}/{k}".rstrip("/"), v, rows) for k, v in values.items()]
    for name, value, rows in fields:
        if len(value) != rows:
            unit = "steps" if name.startswith("actions") else "frames"
            raise _DamagedRecord(
                f"record {path} episode {index}: {name} has {len(value)} rows, the episode has "
                f"{rows} {unit} (the record is damaged)"
            )


# what set_state copies into the MuJoCo model: its shape is the model's
_MODEL_STATE_KEYS = ("physics", "geom_rgba", "geom_group", "geom_contype", "geom_conaffinity")


def check_replay_states(
    path: str | os.PathLike, index: int, record: EpisodeRecord, template: StateDict
) -> None:
    """A one-line ``ValueError`` naming the record, the episode and the field unless
    ``record``'s states fit the env that replays them: every key of ``template`` (that env's
    ``get_state()``) present, the physics state as wide as the env's and the per-episode
    model arrays (``geom_*``) of the model's shape. Called before anything is written; the
    mismatches were a KeyError, MuJoCo's TypeError or a numpy broadcast error mid-video."""
    where = f"record {path} episode {index}"
    if record.states is None:
        raise ValueError(
            f"{where}: has no infos/state (physics states), so it cannot be replayed; record "
            "with eval.py --record"
        )
    for key, want in template.items():
        want = np.asarray(want)
        for state in record.states:
            if key not in state:
                raise ValueError(f"{where}: infos/state/{key} is missing (the record is damaged)")
            got = np.asarray(state[key])
            if key == "physics" and got.shape != want.shape:
                width = got.shape[0] if got.ndim == 1 else got.shape
                raise ValueError(
                    f"{where}: infos/state/physics has width {width}, the env {record.env_id} "
                    f"needs {want.size} (the record is damaged or of another task)"
                )
            if key in _MODEL_STATE_KEYS and got.shape != want.shape:
                raise ValueError(
                    f"{where}: infos/state/{key} has shape {got.shape} per frame, the env "
                    f"{record.env_id} needs {want.shape} (the record is damaged or of another "
                    "task)"
                )
            if got.ndim != want.ndim:
                raise ValueError(
                    f"{where}: infos/state/{key} has {got.ndim} dimensions per frame, the env "
                    f"{record.env_id} needs {want.ndim} (the record is damaged or of another "
                    "task)"
                )


def _from_episode(ep: Any, meta: dict[str, Any], seed: Any) -> EpisodeRecord:
    infos = _flatten(ep.infos or {})
    n = len(ep.rewards) + 1
    state_values = {k[len("state/") :]: v for k, v in infos.items() if k.startswith("state/")}
    state_shapes = {
        k[len("state_shape/") :]: v for k, v in infos.items() if k.startswith("state_shape/")
    }
    memory = {
        k[len("agent/memory/") :]: np.asarray(v)[:-1]
        for k, v in infos.items()
        if k.startswith("agent/memory/")
    }
    think = infos.get("agent/think_steps")
    said = infos.get("agent/text_emitted")
    return EpisodeRecord(
        env_id=meta["env_id"],
        env_kwargs=dict(meta.get("env_kwargs") or {}),
        seed=None if seed is None else int(seed),
        observations=_as_dict(ep.observations),
        actions=_as_dict(ep.actions),
        rewards=np.asarray(ep.rewards, dtype=np.float64),
        terminations=np.asarray(ep.terminations, dtype=bool),
        truncations=np.asarray(ep.truncations, dtype=bool),
        is_success=np.asarray(infos.get("is_success", np.zeros(n)), dtype=bool),
        text_shown=_strings(infos.get("text_shown"), n),
        phase=_strings(infos["phase"], n) if "phase" in infos else [],
        states=_unpack_states(state_values, state_shapes, n) if state_values else None,
        audio=np.asarray(infos["audio"], dtype=np.float32) if "audio" in infos else None,
        think_steps=None if think is None else np.asarray(think, dtype=np.int64)[:-1],
        text_emitted=[] if said is None else _strings(said, n)[:-1],
        memory=memory,
        expert_latent=(
            np.asarray(infos["expert/latent"], dtype=np.float32)[:-1]
            if "expert/latent" in infos
            else None
        ),
        audio_sample_rate=meta.get("audio_sample_rate"),
        dt=meta.get("dt"),
    )


def _space_value(value: dict[str, np.ndarray]) -> Any:
    """A record's per-key arrays as Minari wants them: a dict for a ``Dict`` space, the bare
    array for any other space (held under the key "")."""
    return value[""] if set(value) == {""} else dict(value)


def _as_dict(value: Any) -> dict[str, np.ndarray]:
    """Minari gives Dict spaces as dicts and other spaces as bare arrays (key "")."""
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    return {"": np.asarray(value)}


def _strings(value: Any, n: int) -> list[str]:
    if value is None:
        return [""] * n
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]


__all__ = [
    "RECORD_FORMAT",
    "EpisodeRecord",
    "EpisodeRecorder",
    "check_output_path",
    "check_overwritable",
    "check_replay_states",
    "default_dataset_id",
    "num_episodes",
    "open_dataset",
    "read_records",
    "record_metadata",
    "write_records",
]
