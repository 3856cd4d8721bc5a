"""CountAnswer: count the balls that drop, then answer a text question with a number."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces

from envs import vocab
from envs.audio import AudioConfig
from envs.base import Action, MindloopEnv, check_non_negative, check_positive
from envs.reach import COLOR_RGBA

QUESTION = "how many balls fell ?"
_FALL_STEPS = 14
"""Control steps from a release until the ball has landed (0.96 m fall: 0.44 s = 11 steps,
plus margin), so every ball has landed before the question comes."""


class CountAnswerEnv(MindloopEnv):
    """Balls drop into a bin over the episode; then a question asks how many fell.

    **Watch phase** (``watch_steps``): between ``min_events`` and ``max_events`` balls (the
    number is drawn per episode) are released one at a time, at random moments at least
    ``min_gap`` steps apart, from above the camera's view. Each is visible while falling and
    clicks when it lands (an impact sound scaled by its impulse, panned by where it lands);
    the bin's front wall hides the balls that are already in. **Answer phase**
    (``answer_steps``): the ``text`` observation shows "how many balls fell ?" and the agent
    answers with text tokens. Its answer is the non-silent tokens it says after the question,
    up to ``<eos>`` or ``max_answer_tokens`` tokens; it is correct if it is exactly the count.

    **Observation**:

    * ``image`` ``Box(0, 255, (image_size, image_size, 3), uint8)``: the head camera.
    * ``audio`` ``Box(-1, 1, (2, 640), float32)``: impacts of the last 40 ms.
    * ``text`` ``MultiDiscrete([VOCAB_SIZE] * text_length)``: empty (all 0) while watching,
      then the question.

    **Action** ``Dict(text=Discrete(VOCAB_SIZE))``: a token each step; 0 is silence.

    **Reward**: ``correct_reward`` for a correct answer, ``-wrong_penalty`` for a wrong one,
    ``-speech_cost`` per non-silent token said before the question (terms in ``info`` as
    ``reward_answer``, ``reward_speech``). ``info`` also has ``count``, ``answer`` (decoded)
    and ``text_emitted`` (this step's token as a word, "" for silence).

    **Termination**: when the answer is complete. **Truncation**: after ``watch_steps +
    answer_steps`` steps without an answer (a failure).

    **Version history**: v0: initial version.
    """

    OBS_KEYS: ClassVar[tuple[str, ...]] = ("image", "audio", "text")
    _STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        "_count", "_release_steps", "_drop_xy", "_answer", "_done_answer",
    )  # fmt: skip

    def __init__(
        self,
        *,
        min_events: int = 1,
        max_events: int = 5,
        watch_steps: int = 60,
        answer_steps: int = 10,
        min_gap: int = 4,
        max_answer_tokens: int = 1,
        correct_reward: float = 1.0,
        wrong_penalty: float = 0.0,
        speech_cost: float = 0.05,
        text_length: int = 8,
        obs_keys: Sequence[str] | None = None,
        image_size: int = 64,
        render_size: int = 256,
        render_mode: str | None = None,
        audio: AudioConfig | None = None,
        audio_info: bool = False,
    ) -> None:
        check_non_negative("min_events", min_events)
        if not min_events <= max_events <= vocab.MAX_NUMBER:
            raise ValueError(
                f"max_events must be in [min_events={min_events}, {vocab.MAX_NUMBER}] "
                f"(the largest count with a token), got {max_events}"
            )
        check_positive("min_gap", min_gap)
        need = max(max_events - 1, 0) * min_gap + _FALL_STEPS + 1
        if watch_steps < need:
            raise ValueError(
                f"watch_steps={watch_steps} is too short for {max_events} balls {min_gap} steps "
                f"apart; use watch_steps >= {need}"
            )
        check_positive("answer_steps", answer_steps)
        check_positive("max_answer_tokens", max_answer_tokens)
        for name, value in (
            ("correct_reward", correct_reward), ("wrong_penalty", wrong_penalty),
            ("speech_cost", speech_cost),
        ):  # fmt: skip
            check_non_negative(name, value)
        self.min_events, self.max_events = int(min_events), int(max_events)
        self.watch_steps, self.answer_steps = int(watch_steps), int(answer_steps)
        self.min_gap, self.max_answer_tokens = int(min_gap), int(max_answer_tokens)
        self.correct_reward, self.wrong_penalty = float(correct_reward), float(wrong_penalty)
        self.speech_cost = float(speech_cost)
        super().__init__(
            self._build_spec(),
            frame_skip=8,
            camera="head",
            max_steps=self.watch_steps + self.answer_steps,
            obs_keys=obs_keys,
            image_size=image_size,
            render_size=render_size,
            render_mode=render_mode,
            text_length=text_length,
            audio=audio,
            audio_info=audio_info,
        )

    def _build_spec(self) -> mujoco.MjSpec:
        xml = resources.files("envs").joinpath("assets/ball_bin.xml").read_text()
        spec = mujoco.MjSpec.from_string(xml)
        for i in range(max(self.max_events, 1)):
            # Waiting balls float behind the camera, held up by an applied force equal to
            # their weight (``xfrc_applied``: part of the replayable state, and no constraint
            # rows for the solver, unlike a weld) until released.
            body = spec.worldbody.add_body(name=f"ball{i}", pos=[-3.0 + 0.2 * i, -3.0, 3.0])
            body.add_freejoint(name=f"ball{i}")
            body.add_geom(
                name=f"ball{i}", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.03, 0, 0],
                mass=0.05, rgba=[1, 1, 1, 1],
            )  # fmt: skip
        return spec

    def _setup(self) -> None:
        m = self.model
        n = max(self.max_events, 1)
        self._ball_qadr = np.array([m.jnt_qposadr[m.joint(f"ball{i}").id] for i in range(n)])
        self._ball_vadr = np.array([m.jnt_dofadr[m.joint(f"ball{i}").id] for i in range(n)])
        self._ball_geom = np.array([m.geom(f"ball{i}").id for i in range(n)])
        self._ball_body = np.array([m.body(f"ball{i}").id for i in range(n)])
        weight = -m.opt.gravity[2] * m.body_subtreemass[self._ball_body]  # (n,) newtons
        self._hold_force = weight
        self._count = 0
        self._release_steps = np.full(n, -1, dtype=np.int64)
        self._drop_xy = np.zeros((n, 2))
        self._answer = np.zeros(0, dtype=np.int64)
        self._done_answer = False
        self._token = vocab.SILENCE

    def _make_action_space(self) -> spaces.Dict:
        return spaces.Dict({"text": spaces.Discrete(vocab.VOCAB_SIZE)})

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        rng = self.np_random
        n = int(rng.integers(self.min_events, self.max_events + 1))
        # n release steps in [1, last], at least min_gap apart: choose n of the slots left
        # after reserving the gaps, then spread them back out.
        last = self.watch_steps - _FALL_STEPS
        slots = last - (n - 1) * (self.min_gap - 1)
        picks = np.sort(rng.choice(slots, size=n, replace=False)) if n else np.zeros(0, int)
        self._count = n
        self._release_steps[:] = -1
        self._release_steps[:n] = 1 + picks + np.arange(n) * (self.min_gap - 1)
        self._drop_xy[:] = rng.uniform([-0.22, -0.1], [0.22, 0.1], size=self._drop_xy.shape)
        for g in self._ball_geom:
            self.model.geom_rgba[g] = COLOR_RGBA[vocab.COLORS[int(rng.integers(len(vocab.COLORS)))]]
        self._answer = np.zeros(0, dtype=np.int64)
        self._done_answer = False
        self._token = vocab.SILENCE
        self.data.xfrc_applied[self._ball_body, 2] = self._hold_force  # every ball waits

    def _apply_action(self, action: Action) -> None:
        token = int(np.asarray(action["text"]))
        if not 0 <= token < vocab.VOCAB_SIZE:
            raise ValueError(
                f"text action {token} is outside the vocabulary [0, {vocab.VOCAB_SIZE})"
            )
        self._token = token
        # Releases scheduled for the step about to run start now (so they fall during it).
        release = np.flatnonzero(self._release_steps == self._step_count + 1)
        for i in release:
            q = self._ball_qadr[i]
            self.data.qpos[q : q + 7] = [*self._drop_xy[i], 1.0, 1.0, 0.0, 0.0, 0.0]
            self.data.qvel[self._ball_vadr[i] : self._ball_vadr[i] + 6] = 0.0
            self.data.xfrc_applied[self._ball_body[i], 2] = 0.0  # let go

    def _task_step(self) -> tuple[float, bool, dict[str, Any]]:
        t, token = self._step_count, self._token
        asked = t > self.watch_steps  # the question was in the observation this acted on
        if t == self.watch_steps:
            self._set_text(QUESTION)
        r_speech = r_answer = 0.0
        if token != vocab.SILENCE and not asked:
            r_speech = -self.speech_cost
        elif token != vocab.SILENCE and asked and not self._done_answer:
            if token == vocab.EOS:
                self._done_answer = True
            else:
                self._answer = np.append(self._answer, token)
                self._done_answer = len(self._answer) >= self.max_answer_tokens
        correct = self._done_answer and self._answer.tolist() == [vocab.number_token(self._count)]
        if self._done_answer:
            r_answer = self.correct_reward if correct else -self.wrong_penalty
        info = {
            "is_success": bool(correct),
            "count": self._count,
            "answer": vocab.decode(self._answer),
            "text_emitted": "" if token == vocab.SILENCE else vocab.VOCAB[token],
            "reward_answer": r_answer,
            "reward_speech": r_speech,
        }
        return r_answer + r_speech, self._done_answer, info

    def _reset_info(self) -> dict[str, Any]:
        # a step's keys (Minari's DataCollector(record_infos=True) needs them every frame)
        return {
            "is_success": False,
            "count": self._count,
            "answer": "",
            "text_emitted": "",
            "reward_answer": 0.0,
            "reward_speech": 0.0,
        }

    def expert_action(self) -> Action:
        """Silent while watching; then the count's number token (and ``<eos>`` if the
        answer may be longer than one token)."""
        if self._step_count < self.watch_steps or self._done_answer:
            return {"text": vocab.SILENCE}
        if len(self._answer) == 0:
            return {"text": vocab.number_token(self._count)}
        return {"text": vocab.EOS}

    def expert_latent(self) -> np.ndarray:
        """(max_events + 1,) float32 one-hot of the balls landed so far (each clicks as it
        lands): the running count the expert's answer reads out."""
        release = self._release_steps[: self._count]
        landed = int(np.sum((release >= 0) & (release + _FALL_STEPS <= self._step_count)))
        out = np.zeros(self.max_events + 1, dtype=np.float32)
        out[min(landed, self.max_events)] = 1.0
        return out

    def _proprio(self) -> np.ndarray:  # CountAnswer has no body to sense
        raise NotImplementedError

    def _touch(self) -> np.ndarray:
        raise NotImplementedError
