"""MP4 videos of episodes, with the sound track and what the agent thought, said and stored.

Videos are rendered from :class:`agent.recording.EpisodeRecord` s: for every frame the env's
recorded physics state is restored (``env.set_state``) and drawn by ``env.render()`` at
``size`` x ``size``, so a video made right after an evaluation and one replayed later from a
saved record are the same video, and neither needs the model. Each frame gets:

* the scene, with the agent's own camera view (the ``image`` observation) as an inset;
* a panel: task, policy, episode and time; the instruction or question on screen; what the
  agent has said so far (this frame's word highlighted); think steps this frame with a strip
  of every frame's think steps; memory calls this frame and the store's size; the return;
* on the last frame (held for ``hold_frames``) a SUCCESS / FAILED banner.

The sound track is the env's own stereo audio (16 kHz) of each control step, so sound and
picture line up exactly: one control step is one video frame (25 fps for dt = 40 ms).
Encoding is H.264 (libx264, yuv420p) + AAC in MP4 through PyAV; files are written to a
temporary name and moved into place (``os.replace``) when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import gymnasium as gym
import numpy as np

import envs  # registers the mindloop/ ids; picks the GL backend first
from agent.recording import EpisodeRecord
from agent.vector import check_env_id

DEFAULT_SAMPLE_RATE = 16_000
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Panel colours (RGB).
_BG = (24, 26, 32)
_DIM = (150, 156, 170)
_TEXT = (235, 235, 240)
_SAID = (255, 214, 90)
_THINK = (110, 180, 255)
_MEM = (120, 230, 160)
_GOOD = (60, 200, 90)
_BAD = (225, 70, 60)


# --------------------------------------------------------------------------- writing MP4


class Mp4Writer:
    """H.264 + AAC MP4 writer (PyAV). Use as a context manager; the file appears at ``path``
    only when it is complete (written to a temporary name, then ``os.replace``).

    Args:
        path: the ``.mp4`` to write.
        width, height: frame size (even numbers, as yuv420p needs).
        fps: frames per second (a ``Fraction`` keeps e.g. 16000/640 exact).
        sample_rate: audio sample rate; ``None`` for a video without sound.
        crf: x264 quality (lower is better; 18-23 look good).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: Fraction | int | float,
        sample_rate: int | None = DEFAULT_SAMPLE_RATE,
        channels: int = 2,
        crf: int = 20,
    ) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"video size must be positive and even, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unique per writer (two writers to one path in a process must not share a temp file)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{id(self):x}")
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1000)
        self.channels = channels
        self.frames = 0
        self.samples = 0
        self._out = av.open(str(self._tmp), mode="w", format="mp4")
        self._video = self._out.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "veryfast"}
        self._audio = None
        if sample_rate is not None:
            self._audio = self._out.add_stream("aac", rate=int(sample_rate))
            self._audio.layout = "stereo" if channels == 2 else "mono"
            self.sample_rate = int(sample_rate)

    def write(self, frame: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Add one ``(H, W, 3)`` uint8 RGB frame and the sound that plays during it
        (``(channels, S)`` float32 in [-1, 1]; ``None`` = nothing new)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be ({self.height}, {self.width}, 3) uint8, got "
                f"{frame.shape} {frame.dtype}"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self._mux(self._video.encode(vf))
        self.frames += 1
        if audio is not None and self._audio is not None:
            pcm = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)
            if pcm.ndim != 2 or pcm.shape[0] != self.channels:
                raise ValueError(f"audio must be ({self.channels}, S), got {pcm.shape}")
            af = av.AudioFrame.from_ndarray(pcm, format="fltp", layout=self._audio.layout)
            af.sample_rate = self.sample_rate
            af.pts = self.samples
            self._mux(self._audio.encode(af))
            self.samples += pcm.shape[1]

    def _mux(self, packets: Iterable[Any]) -> None:
        for p in packets:
            self._out.mux(p)

    def close(self) -> Path:
        """Flush the encoders and move the finished file into place."""
        if self._out is None:
            return self.path
        if self.frames == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}; nothing to save")
        try:
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._mux(self._audio.encode(None))
            self._out.close()
            self._out = None
            os.replace(self._tmp, self.path)
        except BaseException:  # e.g. path is a directory: no temp file is left behind
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._out is not None:
            # A broken stream must not hide the error that got us here.
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- overlays


@dataclass
class FrameText:
    """What the panel shows for one frame."""

    header: str
    shown: str = ""
    said: Sequence[str] = ()
    word: str = ""
    think: int | None = None
    think_history: Sequence[int] = ()
    think_max: int = 1
    memory: dict[str, float] | None = None
    episode_return: float = 0.0
    outcome: bool | None = None
    """``True``/``False`` on the final frames (SUCCESS/FAILED banner), ``None`` before."""


@dataclass(frozen=True)
class PanelLayout:
    """Which rows the panel under the scene has (fixed for a whole video)."""

    shown: bool = True
    """A row for the instruction or question on screen."""
    said: bool = True
    """A row for what the agent says."""
    status: bool = True
    """A row for think steps and memory calls."""
    strip: bool = True
    """A strip with every frame's think steps."""

    @staticmethod
    def for_records(records: Sequence[EpisodeRecord]) -> PanelLayout:
        """Only the rows some record has something for."""
        return PanelLayout(
            shown=any(any(s for s in r.text_shown) for r in records),
            said=any(any(w for w in r.text_emitted) for r in records),
            status=any(r.think_steps is not None or bool(r.memory) for r in records),
            strip=any(r.think_steps is not None for r in records),
        )

    def height(self, size: int) -> int:
        k = size / 384.0
        rows = 1 + self.shown + self.said + self.status
        return _even(round(k * (9 + 19 * rows + 24 * self.strip)))


def compose_frame(
    scene: np.ndarray,
    text: FrameText,
    inset: np.ndarray | None = None,
    layout: PanelLayout | None = None,
) -> np.ndarray:
    """The scene ``(S, S, 3)`` with the agent's view inset, a banner, and the panel below:
    returns ``(S + layout.height(S), S, 3)`` uint8 RGB."""
    layout = layout or PanelLayout()
    size = scene.shape[1]
    k = size / 384.0  # all sizes below are for a 384-pixel wide video
    canvas = np.empty((scene.shape[0] + layout.height(size), size, 3), dtype=np.uint8)
    canvas[: scene.shape[0]] = scene
    canvas[scene.shape[0] :] = _BG
    if inset is not None:
        _draw_inset(canvas, inset, k)
    if text.outcome is not None:
        _draw_banner(canvas, scene.shape[0], text.outcome, k)

    x = int(10 * k)
    line = int(19 * k)
    y = scene.shape[0] + int(18 * k)
    _put(canvas, text.header, (x, y), 0.42 * k, _DIM)
    ret = f"return {text.episode_return:+.2f}"
    _put(canvas, ret, (size - x - _width(ret, 0.42 * k), y), 0.42 * k, _DIM)
    if layout.shown:
        y += line
        if text.shown:
            _put(canvas, f'"{text.shown}"', (x, y), 0.5 * k, _TEXT)
    if layout.said:
        y += line
        _draw_said(canvas, text, (x, y), k)
    if layout.status:
        y += line
        cx = x
        for s, color in _status(text):
            _put(canvas, s, (cx, y), 0.45 * k, color)
            cx += _width(s, 0.45 * k) + int(14 * k)
    if layout.strip and text.think_history:
        _draw_think_strip(canvas, text, (x, canvas.shape[0] - int(8 * k)), size - 2 * x, k)
    return canvas


def _status(text: FrameText) -> list[tuple[str, tuple[int, int, int]]]:
    bits = []
    if text.think is not None:
        bits.append((f"think {text.think}", _THINK))
    if text.memory:
        bits.append((_memory_text(text.memory), _MEM))
    return bits


def _memory_text(m: dict[str, float]) -> str:
    ops = []
    if m.get("set", 0) > 0:
        ops.append("SET" + (f"x{m['set']:.0f}" if m["set"] > 1 else ""))
    if m.get("get", 0) > 0:
        hit = "hit" if m.get("hit", 0) > 0 else "miss"
        ops.append("GET" + (f"x{m['get']:.0f}" if m["get"] > 1 else "") + f" ({hit})")
    ops_s = " ".join(ops) if ops else "-"
    store = ""
    if "occupancy" in m:
        store = f" | {m['occupancy']:.0f} items"
        if "store_bytes" in m:
            store += f" {m['store_bytes']:.0f} B"
    return f"memory {ops_s}{store}"


def _draw_said(canvas: np.ndarray, text: FrameText, org: tuple[int, int], k: float) -> None:
    x, y = org
    scale = 0.5 * k
    _put(canvas, "says:", (x, y), 0.42 * k, _DIM)
    x += _width("says:", 0.42 * k) + int(6 * k)
    words = list(text.said)[-8:]  # the last few words fit on one line
    for i, w in enumerate(words):
        current = text.word and i == len(words) - 1
        _put(canvas, w, (x, y), scale, _SAID if current else _TEXT, thick=2 if current else 1)
        x += _width(w, scale) + int(6 * k)


def _draw_think_strip(
    canvas: np.ndarray, text: FrameText, org: tuple[int, int], width: int, k: float
) -> None:
    """One bar per frame so far (height = think steps), the current frame brightest."""
    x0, y0 = org
    n = len(text.think_history)
    height = int(16 * k)
    bar = max(1.0, min(6.0 * k, width / max(n, 1)))
    top = max(text.think_max, 1)
    shown = text.think_history[-int(width / bar) :]  # the latest frames that fit
    for i, steps in enumerate(shown):
        h = round(height * steps / top)
        x = int(x0 + i * bar)
        color = _THINK if i == len(shown) - 1 else tuple(int(c * 0.55) for c in _THINK)
        cv2.line(canvas, (x, y0), (int(x + bar) - 1, y0), (60, 64, 74), 1)
        if h > 0:
            cv2.rectangle(canvas, (x, y0 - h), (max(x, int(x + bar) - 2), y0), color, -1)


def _draw_inset(canvas: np.ndarray, view: np.ndarray, k: float) -> None:
    side = round(84 * k)
    pad = int(8 * k)
    small = cv2.resize(view, (side, side), interpolation=cv2.INTER_NEAREST)
    x0 = canvas.shape[1] - side - pad
    y0 = pad + int(12 * k)
    canvas[y0 : y0 + side, x0 : x0 + side] = small
    cv2.rectangle(canvas, (x0 - 1, y0 - 1), (x0 + side, y0 + side), (230, 230, 230), 1)
    label_scale = 0.36 * k
    cv2.rectangle(canvas, (x0 - 1, y0 - int(13 * k)), (x0 + side, y0 - 1), (20, 20, 20), -1)
    _put(canvas, "agent view", (x0 + int(3 * k), y0 - int(4 * k)), label_scale, (235, 235, 235))


def _draw_banner(canvas: np.ndarray, scene_h: int, success: bool, k: float) -> None:
    label = "SUCCESS" if success else "FAILED"
    color = _GOOD if success else _BAD
    h = int(40 * k)
    y0 = scene_h - h - int(10 * k)
    region = canvas[y0 : y0 + h]
    region[:] = (0.35 * region + 0.65 * np.array(color)).astype(np.uint8)
    scale = 0.9 * k
    w = _width(label, scale, 2)
    _put(canvas, label, ((canvas.shape[1] - w) // 2, y0 + int(28 * k)), scale, (255, 255, 255), 2)


def _put(
    img: np.ndarray,
    s: str,
    org: tuple[int, int],
    scale: float,
    color: tuple[int, ...],
    thick: int = 1,
) -> None:
    cv2.putText(img, s, org, _FONT, scale, color, thick, cv2.LINE_AA)


def _width(s: str, scale: float, thick: int = 1) -> int:
    return cv2.getTextSize(s, _FONT, scale, thick)[0][0]


def _even(n: int) -> int:
    return n + (n % 2)


# --------------------------------------------------------------------------- episodes -> MP4


@dataclass
class VideoInfo:
    """What :func:`write_episodes_video` wrote."""

    path: Path
    frames: int
    seconds: float
    episodes: int


class EpisodeRenderer:
    """Re-renders recorded episodes: one env per (id, kwargs) with ``render_mode="rgb_array"``,
    its state restored frame by frame. No model needed."""

    def __init__(self, size: int = 384) -> None:
        if size < 64 or size % 2:
            raise ValueError(f"video size must be an even number >= 64, got {size}")
        self.size = size
        self._envs: dict[str, gym.Env] = {}

    def env_for(self, record: EpisodeRecord) -> gym.Env:
        key = json.dumps([record.env_id, record.env_kwargs], sort_keys=True)
        if key not in self._envs:
            kwargs = replay_kwargs(record.env_kwargs)
            check_replay_env(record.env_id, kwargs)
            env = gym.make(record.env_id, render_mode="rgb_array", render_size=self.size, **kwargs)
            env.reset(seed=record.seed)  # Gymnasium wants a reset before render()
            self._envs[key] = env
        return self._envs[key]

    def frames(self, record: EpisodeRecord) -> Iterable[np.ndarray]:
        """The scene at every recorded frame ``(size, size, 3)``, ``T+1`` of them."""
        if record.states is None:
            raise ValueError(
                "this record has no physics states, so it cannot be replayed; record with "
                "evaluate(..., record=True) / eval.py --record"
            )
        env = self._replay_env(record)
        for state in record.states:
            env.set_state(state)
            yield env.render()

    def state_template(self, record: EpisodeRecord) -> dict[str, np.ndarray]:
        """The replaying env's own ``get_state()``: the keys and shapes ``record``'s states
        must have (:func:`agent.recording.check_replay_states`)."""
        return self._replay_env(record).get_state()

    def _replay_env(self, record: EpisodeRecord) -> Any:
        env = self.env_for(record).unwrapped
        if not hasattr(env, "set_state") or not hasattr(env, "get_state"):
            raise ValueError(f"{record.env_id} has no set_state(); only mindloop envs replay")
        return env

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def __enter__(self) -> EpisodeRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay_kwargs(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A record's env kwargs without those replay sets itself (rendering, sound info)."""
    return {
        k: v for k, v in env_kwargs.items() if k not in ("render_mode", "render_size", "audio_info")
    }


def check_replay_env(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """A one-line ``ValueError`` unless the env a record names can be made: a registered id
    and constructor arguments it takes (a record is a file anyone may have edited; gym.make
    would fail with NameNotFound or a TypeError from the constructor).

    Gymnasium's ``module:id`` imports ``module``, i.e. runs its code: a record must never
    make replay do that, so only a module the user already imported is accepted."""
    module = env_id.rpartition(":")[0]
    if module and module not in sys.modules:
        raise ValueError(
            f"the recorded task {env_id!r} would import module {module!r}, which replay never "
            f"does for a record; import {module} yourself first (your own script) or register "
            "the task, then replay"
        )
    check_env_id(env_id)
    envs.check_env_kwargs(env_id, env_kwargs)


def frame_texts(record: EpisodeRecord, title: str, episode_label: str = "") -> list[FrameText]:
    """The panel text of each of the record's ``T+1`` frames."""
    T = record.length
    think = record.think_steps
    think_max = int(think.max()) if think is not None and len(think) else 1
    said: list[str] = []
    phase = record.phase or [""] * (T + 1)
    texts = []
    ret = 0.0
    for t in range(T + 1):
        word = record.text_emitted[t] if t < len(record.text_emitted) else ""
        if word:
            said.append(word)
        if t > 0:
            ret += float(record.rewards[t - 1])
        memory = {k: float(v[t]) for k, v in record.memory.items()} if t < T else None
        texts.append(
            FrameText(
                header=" | ".join(p for p in (title, episode_label, f"t={t}", phase[t]) if p),
                shown=record.text_shown[t] if t < len(record.text_shown) else "",
                said=tuple(said),
                word=word,
                think=int(think[t]) if think is not None and t < T else None,
                think_history=tuple(int(x) for x in think[: t + 1]) if think is not None else (),
                think_max=think_max,
                memory=memory,
                episode_return=ret,
                outcome=record.success if t == T else None,
            )
        )
    return texts


def write_episodes_video(
    path: str | os.PathLike,
    records: Sequence[EpisodeRecord],
    *,
    size: int = 384,
    policy: str = "",
    hold_frames: int = 8,
    overlay: bool = True,
    renderer: EpisodeRenderer | None = None,
) -> VideoInfo:
    """One MP4 of ``records`` back to back, with their sound and (``overlay``) the panel.

    Each episode contributes ``T + 1`` frames (after reset, then after every step) plus
    ``hold_frames`` repeats of its last frame with silence, so a viewer sees the outcome.
    """
    if not records:
        raise ValueError("no episodes to render")
    first = records[0]
    rate = first.audio_sample_rate or DEFAULT_SAMPLE_RATE
    chunk = first.frame_audio(0)
    if chunk is not None:
        fps = Fraction(rate, chunk.shape[-1])
    else:
        fps = Fraction(1.0 / first.dt).limit_denominator(1000) if first.dt else Fraction(25)
    samples_per_frame = round(rate / fps)
    own = renderer is None
    renderer = renderer or EpisodeRenderer(size)
    layout = PanelLayout.for_records(records)
    height = size + (layout.height(size) if overlay else 0)
    task = first.env_id.split("/")[-1]
    title = f"{task} | {policy}" if policy else task
    silence = np.zeros((2, samples_per_frame), dtype=np.float32)
    try:
        with Mp4Writer(path, size, height, fps, rate) as writer:
            for n, record in enumerate(records):
                label = f"episode {n + 1}/{len(records)}"
                texts = frame_texts(record, title, label) if overlay else None
                view = record.observations.get("image")
                frame = None
                for t, scene in enumerate(renderer.frames(record)):
                    frame = scene
                    if texts is not None:
                        inset = view[t] if view is not None else None
                        frame = compose_frame(scene, texts[t], inset, layout)
                    audio = record.frame_audio(t)
                    writer.write(frame, silence if audio is None else _stereo(audio))
                for _ in range(hold_frames):
                    writer.write(frame, silence)
            frames, seconds = writer.frames, float(writer.frames / fps)
    finally:
        if own:
            renderer.close()
    return VideoInfo(Path(path), frames, seconds, len(records))


def _stereo(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = np.stack([a, a])
    return a[:2] if a.shape[0] >= 2 else np.concatenate([a, a])


def replay_to_video(
    record: str | os.PathLike,
    video: str | os.PathLike,
    episodes: Sequence[int] | None = None,
    *,
    size: int = 384,
    overlay: bool = True,
    hold_frames: int = 8,
) -> VideoInfo:
    """Re-render episodes of a saved record (all, or those indexed by ``episodes``) to an
    MP4 with their sound, from the recorded physics states: no model involved."""
    from agent.recording import (
        check_output_path,
        check_replay_states,
        read_records,
        record_metadata,
    )

    if Path(video).suffix.lower() != ".mp4":
        raise ValueError(f"video path must end in .mp4, got {str(video)!r}")
    check_output_path("--video", video)
    meta = record_metadata(record)
    try:  # before the episodes are read: a damaged record fails fast
        check_replay_env(meta["env_id"], replay_kwargs(meta.get("env_kwargs") or {}))
    except ValueError as e:
        raise ValueError(f"record {record}: {e}") from None
    records = read_records(record, episodes)
    indices = range(len(records)) if episodes is None else [int(i) for i in episodes]
    with EpisodeRenderer(size) as renderer:
        # before the video is opened: a record that does not fit its env writes nothing
        for index, rec in zip(indices, records, strict=True):
            check_replay_states(record, index, rec, renderer.state_template(rec))
        return write_episodes_video(
            video,
            records,
            size=size,
            policy=str(meta.get("policy") or ""),
            hold_frames=hold_frames,
            overlay=overlay,
            renderer=renderer,
        )


__all__ = [
    "EpisodeRenderer",
    "FrameText",
    "Mp4Writer",
    "PanelLayout",
    "VideoInfo",
    "compose_frame",
    "frame_texts",
    "replay_to_video",
    "write_episodes_video",
]
