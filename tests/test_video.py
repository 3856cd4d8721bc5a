"""agent.video: real MP4s (H.264 video, AAC sound) with the right frame count and duration."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

import envs  # noqa: F401  (registers the mindloop/ ids)
from agent.evaluation import evaluate, make_policy
from agent.video import (
    FrameText,
    Mp4Writer,
    PanelLayout,
    compose_frame,
    frame_texts,
    write_episodes_video,
)

RATE, SAMPLES = 16_000, 640  # the envs' sound: 40 ms control steps at 16 kHz -> 25 fps
AAC_FRAME_S = 1024 / RATE  # AAC works in 1024-sample frames: durations agree to one of them


def probe(path):
    """(video frames decoded, video seconds, audio seconds, audio (2, N), sample rate, size)."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        v_sec = float(v.duration * v.time_base)
        a_sec = float(a.duration * a.time_base)
        rate, size = a.rate, (v.codec_context.height, v.codec_context.width)
        assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
        assert a.channels == 2
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return frames, v_sec, a_sec, audio, rate, size


def test_writer_streams_match_what_was_written(tmp_path):
    n = 30
    t = np.arange(n * SAMPLES) / RATE
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    pictures = []
    with Mp4Writer(tmp_path / "a.mp4", 64, 48, Fraction(RATE, SAMPLES), RATE) as w:
        for i in range(n):
            img = np.full((48, 64, 3), 40, np.uint8)
            img[:, 2 * i : 2 * i + 6] = (250, 200, 30)  # a bar moving right
            pictures.append(img)
            chunk = tone[i * SAMPLES : (i + 1) * SAMPLES]
            w.write(img, np.stack([0.5 * chunk, 0.1 * chunk]))  # louder on the left
    frames, v_sec, a_sec, audio, rate, size = probe(tmp_path / "a.mp4")
    assert len(frames) == n and size == (48, 64) and rate == RATE
    assert v_sec == pytest.approx(n / 25) and a_sec == pytest.approx(n / 25, abs=AAC_FRAME_S)
    assert np.abs(frames[-1].astype(int) - pictures[-1]).mean() < 12  # H.264 is lossy, not wrong
    rms = np.sqrt((audio**2).mean(axis=1))
    assert rms[0] == pytest.approx(0.5 / np.sqrt(2), rel=0.15)
    assert rms[0] > 3 * rms[1]


def test_writer_is_atomic_and_checks_input(tmp_path):
    path = tmp_path / "b.mp4"
    with pytest.raises(RuntimeError), Mp4Writer(path, 64, 64, 25) as w:
        w.write(np.zeros((64, 64, 3), np.uint8))
        raise RuntimeError("crash mid-video")
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temporary file
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(path, 63, 64, 25)
    with Mp4Writer(path, 64, 64, 25) as w:
        w.write(np.zeros((64, 64, 3), np.uint8))
        with pytest.raises(ValueError, match=r"frame must be"):
            w.write(np.zeros((32, 64, 3), np.uint8))
    assert path.is_file()
    with (
        pytest.raises(ValueError, match="no frames"),
        Mp4Writer(tmp_path / "empty.mp4", 64, 64, 25),
    ):
        pass
    assert not (tmp_path / "empty.mp4").exists()


def test_a_failed_move_into_place_leaves_no_temp_file(tmp_path):
    """The finished file cannot replace a directory: the error surfaces and the temporary
    file goes (it stayed, as .d.mp4.tmp-..., next to the directory)."""
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(OSError), Mp4Writer(tmp_path / "d.mp4", 64, 64, 25) as w:
        w.write(np.zeros((64, 64, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["d.mp4"]


def test_episode_video_frames_duration_and_impact_sound(tmp_path):
    """Balls hitting the bin make sound: the video's audio track carries it, in sync."""
    kwargs = {"min_events": 2, "max_events": 3, "watch_steps": 30, "answer_steps": 3}
    result = evaluate(make_policy("expert"), "mindloop/CountAnswer-v0", 1, seed=2,
                      env_kwargs=kwargs, record=True)  # fmt: skip
    record = result.records[0]
    hold = 4
    info = write_episodes_video(tmp_path / "c.mp4", [record], size=128, hold_frames=hold)
    frames, v_sec, a_sec, audio, _, size = probe(info.path)
    expected = record.length + 1 + hold
    assert info.frames == len(frames) == expected
    assert size == (128 + PanelLayout.for_records([record]).height(128), 128)
    assert v_sec == pytest.approx(expected / 25) and a_sec == pytest.approx(v_sec, abs=AAC_FRAME_S)
    source = np.concatenate([record.frame_audio(t) for t in range(record.length + 1)], axis=1)
    loud = np.abs(source).max(axis=0) > 0.05
    assert loud.any(), "the episode should contain impacts"
    energy = float((audio**2).sum())
    assert energy > 0.5 * float((source**2).sum())  # the impacts made it into the track
    # ...at the right time: the loudest 40 ms of the track is where the loudest impact was.
    assert abs(loudest_step(audio) - loudest_step(source)) <= 2


def loudest_step(audio: np.ndarray) -> int:
    """Index of the 40 ms chunk of (2, N) audio with the most energy."""
    n = audio.shape[1] // SAMPLES * SAMPLES
    return int(np.argmax((audio[:, :n] ** 2).reshape(2, -1, SAMPLES).sum(axis=(0, 2))))


def test_overlay_panel_and_banner():
    scene = np.full((128, 128, 3), 90, np.uint8)
    layout = PanelLayout(shown=True, said=True, status=True, strip=True)
    text = FrameText(header="Task | agent | t=3", shown="how many balls fell ?", said=("3",),
                     word="3", think=2, think_history=(0, 1, 2), think_max=2,
                     memory={"set": 1, "get": 1, "hit": 1, "occupancy": 2, "store_bytes": 82})  # fmt: skip
    frame = compose_frame(scene, text, inset=np.zeros((64, 64, 3), np.uint8), layout=layout)
    assert frame.shape == (128 + layout.height(128), 128, 3) and frame.dtype == np.uint8
    panel = frame[128:]
    assert panel.std() > 5  # text was drawn
    bare = compose_frame(
        scene, FrameText(header=""), layout=PanelLayout(False, False, False, False)
    )
    assert bare.shape[0] < frame.shape[0]
    won = compose_frame(scene, FrameText(header="", outcome=True), layout=layout)
    lost = compose_frame(scene, FrameText(header="", outcome=False), layout=layout)
    banner = slice(128 - 30, 128 - 15)
    assert won[banner, :, 1].mean() > won[banner, :, 0].mean()  # green
    assert lost[banner, :, 0].mean() > lost[banner, :, 1].mean()  # red


@pytest.mark.parametrize("frames", [3, 2000])
def test_think_strip_highlights_the_current_frame(frames):
    """The current frame's bar is drawn in the bright colour, also once the episode has more
    frames than the strip has room for (then only the latest ones are shown)."""
    from agent.video import _THINK

    scene = np.full((128, 128, 3), 90, np.uint8)
    layout = PanelLayout(shown=False, said=False, status=False, strip=True)
    text = FrameText(header="", think=2, think_history=(2,) * frames, think_max=2)
    panel = compose_frame(scene, text, layout=layout)[128:]
    assert (panel == np.array(_THINK, np.uint8)).all(axis=-1).any()


def test_frame_texts_follow_the_record():
    result = evaluate(make_policy("expert"), "mindloop/CountAnswer-v0", 1, seed=0,
                      env_kwargs={"watch_steps": 30, "max_events": 2}, record=True)  # fmt: skip
    record = result.records[0]
    texts = frame_texts(record, "CountAnswer")
    assert len(texts) == record.length + 1
    assert texts[0].shown == "" and texts[-1].shown == "how many balls fell ?"
    assert texts[-1].said == (result.episodes[0].answer,)  # the count it said
    assert texts[-1].outcome is True and all(t.outcome is None for t in texts[:-1])
    assert texts[-1].episode_return == pytest.approx(record.episode_return)
